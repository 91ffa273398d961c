//! What the DNS limit tests share: a two-cluster config with extra `[dns]` keys, and an A query.

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use sdnlinkd::config::{self, Config};

pub fn config_with(extra_dns: &str, upstream: &str) -> Result<Config, String> {
    config::parse_str(&format!(
        r#"
[local]
name = "east"
pod_cidrs = ["10.128.0.0/14", "fd00:128::/64"]
service_cidrs = ["172.30.0.0/16"]
node_name = "node-1"
[namespace]
transit_cidr = "169.254.100.0/30"
[dns]
address = "169.254.20.53"
upstreams = ["{upstream}"]
{extra_dns}
[[remote]]
name = "west"
pod_cidrs = ["10.132.0.0/14"]
service_cidrs = ["172.31.0.0/16"]
"#
    ))
    .map_err(|e| e.to_string())
}

pub fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    m.to_vec().expect("encode")
}
