//! Parses arbitrary bytes as a DNS query and answers it from zone data covering every record
//! form (see ../zones.rs). Any panic is a bug; an answer must decode strictly (every section
//! as counted, no byte left over).
//!
//! Run: `cargo +nightly fuzz run dns_query` from the repository root. `cargo test --test
//! dns_mutation` runs the same check on stable over seeded mutations.
#![no_main]

#[path = "../zones.rs"]
mod zones;

use libfuzzer_sys::fuzz_target;
use sdnlinkd::dns::{answer_local_bytes, ZoneData};
use std::sync::OnceLock;

fn zones() -> &'static ZoneData {
    static Z: OnceLock<ZoneData> = OnceLock::new();
    Z.get_or_init(zones::zone_data)
}

fuzz_target!(|data: &[u8]| {
    if let Some(out) = answer_local_bytes(zones(), data) {
        use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
        let mut d = BinDecoder::new(&out);
        hickory_proto::op::Message::read(&mut d).expect("our answer decodes");
        assert!(d.is_empty(), "bytes after the last record");
    }
});
