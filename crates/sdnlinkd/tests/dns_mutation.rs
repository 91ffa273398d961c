//! The DNS fuzz target's check on stable Rust, in every `cargo test`: pods are untrusted, so
//! no byte string may panic the stub, and every answer it gives must decode strictly (every
//! section as counted, no byte left over) and fit the client's UDP limit, also when the answer
//! is too large and truncated. Inputs are
//! seeded mutations (bit flips, truncation, insertion, overwritten length and count fields)
//! of well-formed queries for every record form the zones hold. The libFuzzer target
//! (fuzz/fuzz_targets/dns_query.rs, nightly) explores further from the same zones.

#[path = "../fuzz/zones.rs"]
mod zones;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use sdnlinkd::dns::answer_local_bytes;

/// xorshift64*: deterministic, so a failure names an input that reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn query(name: &str, rtype: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::new(0x5a5a, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("seed name"),
        rtype,
    ));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m.to_vec().expect("seed query encodes")
}

fn seeds() -> Vec<Vec<u8>> {
    let names = [
        ("web.default.svc.cluster.west.", RecordType::A),
        ("web.default.svc.cluster.west.", RecordType::AAAA),
        ("_pg._tcp.web.default.svc.cluster.west.", RecordType::SRV),
        ("db.default.svc.cluster.west.", RecordType::A),
        ("db-0.db.default.svc.cluster.west.", RecordType::A),
        ("_pg._tcp.db.default.svc.cluster.west.", RecordType::SRV),
        ("ext.default.svc.cluster.west.", RecordType::CNAME),
        ("web.default.svc.cluster.all.", RecordType::A),
        ("10.0.31.172.in-addr.arpa.", RecordType::PTR),
        ("10-132-0-5.default.pod.cluster.west.", RecordType::A),
        ("cluster.west.", RecordType::SOA),
        ("missing.default.svc.cluster.west.", RecordType::A),
        // Too large for 512 bytes and for 1232 (the seeds' EDNS size): truncated.
        ("big.default.svc.cluster.west.", RecordType::A),
        ("_pg._tcp.big.default.svc.cluster.west.", RecordType::SRV),
        ("_pg._tcp.big.default.svc.cluster.all.", RecordType::SRV),
    ];
    names
        .iter()
        .flat_map(|(n, t)| [query(n, *t, true), query(n, *t, false)])
        .collect()
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
            2 => b.truncate(rng.below(b.len() + 1)),
            3 => {
                let i = rng.below(b.len() + 1);
                b.insert(i, rng.next() as u8);
            }
            // The header's four section counts (bytes 4..12) and the first label length
            // (byte 12): the fields a parser trusts most.
            4 if b.len() > 12 => {
                let i = 4 + rng.below(9);
                b[i] = [0, 1, 2, 0x3f, 0x40, 0xc0, 0xff][rng.below(7)];
            }
            _ => {
                if !b.is_empty() {
                    let from = rng.below(b.len());
                    let to = (from + rng.below(16)).min(b.len());
                    let chunk = b[from..to].to_vec();
                    let at = rng.below(b.len() + 1);
                    b.splice(at..at, chunk);
                }
            }
        }
    }
    b
}

/// Decodes strictly: hickory's `Message::from_vec` alone ignores trailing bytes.
fn strict(out: &[u8]) -> Result<Message, String> {
    let mut d = BinDecoder::new(out);
    let m = Message::read(&mut d).map_err(|e| e.to_string())?;
    if !d.is_empty() {
        return Err(format!("{} bytes after the last record", d.len()));
    }
    Ok(m)
}

/// The UDP limit a query asks for: its EDNS size (512..=4096 as the stub caps it), else 512.
fn limit(query: &[u8]) -> usize {
    Message::from_vec(query)
        .ok()
        .and_then(|m| {
            m.edns
                .map(|e| usize::from(e.max_payload().clamp(512, 4096)))
        })
        .unwrap_or(512)
}

#[test]
fn seeds_are_answered_as_the_specification_says() {
    let z = zones::zone_data();
    for (i, s) in seeds().iter().enumerate() {
        let out = answer_local_bytes(&z, s).unwrap_or_else(|| panic!("seed {i} not answered"));
        let m = strict(&out).unwrap_or_else(|e| panic!("seed {i}: {e}"));
        assert!(out.len() <= limit(s), "seed {i}: {} bytes", out.len());
        assert_eq!(m.metadata.id, 0x5a5a);
        if i / 2 >= 12 {
            assert!(m.metadata.truncation, "seed {i} is truncated");
            assert!(!m.answers.is_empty(), "seed {i} keeps whole records");
        }
        let want = if i / 2 == 11 {
            ResponseCode::NXDomain
        } else {
            ResponseCode::NoError
        };
        assert_eq!(m.metadata.response_code, want, "seed {i}: {m:?}");
        if i / 2 < 8 {
            assert!(!m.answers.is_empty(), "seed {i} has an answer: {m:?}");
        }
    }
}

#[test]
fn mutated_queries_never_panic_and_every_answer_decodes() {
    // Half the inputs against all-known zones (the rendered fast path), half against zones
    // with an unknown cluster (the hickory path, SERVFAIL answers).
    let both = [zones::zone_data(), zones::zone_data_with_unknown()];
    let seeds = seeds();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut answered, total) = (0usize, 100_000usize);
    for n in 0..total {
        let seed = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, seed);
        let z = &both[n % 2];
        let out = std::panic::catch_unwind(|| answer_local_bytes(z, &input))
            .unwrap_or_else(|_| panic!("input {n} panicked: {input:02x?}"));
        if let Some(out) = out {
            answered += 1;
            if let Err(e) = strict(&out) {
                panic!("input {n}: our answer does not decode ({e}): {input:02x?}");
            }
            if out.len() > limit(&input) {
                panic!(
                    "input {n}: {} bytes for a limit of {}: {input:02x?}",
                    out.len(),
                    limit(&input)
                );
            }
        }
    }
    // Many mutations still parse as a question for our zones (about one in eight with this
    // seed): the run exercised the answering code, not only the parser's early rejections.
    assert!(
        answered > total / 20,
        "only {answered} of {total} mutated queries were answered"
    );
}
