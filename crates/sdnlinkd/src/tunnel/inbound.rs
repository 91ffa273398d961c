//! What may arrive from the tunnel: traffic to the local pod CIDRs, and replies.
//!
//! A remote node's WireGuard peer carries whatever source its allowed IPs admit (our side
//! checks the source against that node's pod subnet), but any destination. Without a filter a
//! remote node could reach sdnlinkd's own namespace (the DNS stub with its recursive
//! forwarding, the transit address) and, routed on through the veth, the host's addresses and
//! services. The table `inet sdnlink-inbound` in sdnlinkd's namespace drops everything that
//! comes in on the tunnel interface except traffic forwarded to a local pod CIDR and packets of
//! connections that started on this side (conntrack `established`/`related`: replies of pods
//! that reached a remote Service, ICMP errors about them). It is apart from the proxy's table
//! (the IPVS backend has none) and the MSS clamp's, and synced like the clamp: listed,
//! compared, only the difference written.

use crate::netns::NetNs;
use crate::proxy::nft::owned::{OwnedTable, OwnedTableError, TableSync};
use crate::proxy::nft::table::{expr, BaseSpec, Chain, Rule, Table};
use ipnet::IpNet;
use serde_json::{json, Value};

/// Family and name of the owned table.
pub const TABLE: &str = "inet sdnlink-inbound";

/// Filter priority (`NF_IP_PRI_FILTER`): after conntrack and the nat chains in prerouting, so
/// a reply arrives here already de-NATed and known as `established`.
const PRIORITY_FILTER: i64 = 0;

/// `nft -j`'s right-hand side for a prefix: a bare address for a host prefix, as nft prints it.
fn prefix(net: IpNet) -> Value {
    let net = net.trunc();
    if net.prefix_len() == net.max_prefix_len() {
        json!(net.addr().to_string())
    } else {
        json!({"prefix": {"addr": net.addr().to_string(), "len": net.prefix_len()}})
    }
}

/// The filter for tunnel interface `iface` and this cluster's pod CIDRs, in config order.
pub fn desired_table(iface: &str, local_pod_cidrs: &[IpNet]) -> Table {
    let from_tunnel = || expr::matches("==", expr::meta("iifname"), json!(iface));
    let replies = || {
        Rule::new(
            format!("iifname \"{iface}\" ct state established,related accept"),
            json!([
                from_tunnel(),
                expr::matches("in", json!({"ct": {"key": "state"}}), json!(["established", "related"])),
                {"accept": null}
            ]),
        )
    };
    let drop = || {
        Rule::new(
            format!("iifname \"{iface}\" drop"),
            json!([from_tunnel(), {"drop": null}]),
        )
    };
    let mut forward: Vec<Rule> = local_pod_cidrs
        .iter()
        .map(|net| {
            let family = match net {
                IpNet::V4(_) => "ip",
                IpNet::V6(_) => "ip6",
            };
            Rule::new(
                format!("iifname \"{iface}\" {family} daddr {} accept", net.trunc()),
                json!([
                    from_tunnel(),
                    expr::matches("==", expr::payload(family, "daddr"), prefix(*net)),
                    {"accept": null}
                ]),
            )
        })
        .collect();
    forward.push(replies());
    forward.push(drop());
    let base = |hook: &str| BaseSpec {
        kind: "filter".into(),
        hook: hook.into(),
        prio: PRIORITY_FILTER,
        policy: "accept".into(),
    };
    let mut t = Table::empty("");
    t.chains.insert(
        "forward".into(),
        Chain {
            base: Some(base("forward")),
            rules: forward,
        },
    );
    t.chains.insert(
        "input".into(),
        Chain {
            base: Some(base("input")),
            rules: vec![replies(), drop()],
        },
    );
    t
}

/// The inbound filter of one namespace.
pub struct InboundFilter {
    table: OwnedTable,
}

impl InboundFilter {
    /// A filter acting in `ns`; the first sync checks the kernel.
    pub fn new(ns: NetNs) -> InboundFilter {
        InboundFilter {
            table: OwnedTable::new(ns, TABLE),
        }
    }

    /// Makes the table hold the filter for `iface` and `local_pod_cidrs`; like the MSS clamp,
    /// nothing when incremental and unchanged, else only the difference to the kernel's.
    pub async fn sync(
        &mut self,
        iface: &str,
        local_pod_cidrs: &[IpNet],
        full: bool,
    ) -> Result<TableSync, OwnedTableError> {
        self.table
            .sync(desired_table(iface, local_pod_cidrs), full)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::nft::table::diff;

    fn cidrs() -> Vec<IpNet> {
        ["10.128.0.0/14", "fd00:128::/64"]
            .iter()
            .map(|s| s.parse().expect("literal CIDR"))
            .collect()
    }

    #[test]
    fn creation_golden() {
        let tx = diff(TABLE, &desired_table("wg0", &cidrs()), &Table::default());
        let want = "add table inet sdnlink-inbound\n\
add chain inet sdnlink-inbound forward { type filter hook forward priority 0; policy accept; }\n\
add chain inet sdnlink-inbound input { type filter hook input priority 0; policy accept; }\n\
add rule inet sdnlink-inbound forward iifname \"wg0\" ip daddr 10.128.0.0/14 accept\n\
add rule inet sdnlink-inbound forward iifname \"wg0\" ip6 daddr fd00:128::/64 accept\n\
add rule inet sdnlink-inbound forward iifname \"wg0\" ct state established,related accept\n\
add rule inet sdnlink-inbound forward iifname \"wg0\" drop\n\
add rule inet sdnlink-inbound input iifname \"wg0\" ct state established,related accept\n\
add rule inet sdnlink-inbound input iifname \"wg0\" drop\n";
        assert_eq!(tx.text(), want);
    }

    /// What nft 1.0.6 (Debian 12) printed for `nft -j -p list table inet sdnlink-inbound` after
    /// the creation transaction above.
    const LISTING: &str = include_str!("testdata/inbound-listing.json");

    fn listed() -> Table {
        OwnedTable::parse_listing(TABLE, LISTING).expect("a real listing parses")
    }

    #[test]
    fn listing_of_the_created_table_matches() {
        let tx = diff(TABLE, &desired_table("wg0", &cidrs()), &listed());
        assert!(tx.is_empty(), "{}", tx.text());
    }

    #[test]
    fn another_cidr_interface_or_a_lost_rule_rewrites_only_that_chain() {
        let t = listed();
        let fewer = &cidrs()[..1];
        assert_eq!(
            diff(TABLE, &desired_table("wg0", fewer), &t).text(),
            "flush chain inet sdnlink-inbound forward\n\
add rule inet sdnlink-inbound forward iifname \"wg0\" ip daddr 10.128.0.0/14 accept\n\
add rule inet sdnlink-inbound forward iifname \"wg0\" ct state established,related accept\n\
add rule inet sdnlink-inbound forward iifname \"wg0\" drop\n"
        );
        let other = diff(TABLE, &desired_table("wg1", &cidrs()), &t);
        assert_eq!(
            other.text().matches("flush chain").count(),
            2,
            "{}",
            other.text()
        );
        let mut lost = t.clone();
        lost.chains.get_mut("input").expect("chain").rules.pop();
        assert_eq!(
            diff(TABLE, &desired_table("wg0", &cidrs()), &lost).text(),
            "flush chain inet sdnlink-inbound input\n\
add rule inet sdnlink-inbound input iifname \"wg0\" ct state established,related accept\n\
add rule inet sdnlink-inbound input iifname \"wg0\" drop\n"
        );
    }

    #[test]
    fn host_prefixes_and_unaligned_cidrs_are_written_as_nft_lists_them() {
        let net: IpNet = "10.128.3.7/14".parse().expect("literal");
        assert_eq!(
            prefix(net),
            json!({"prefix": {"addr": "10.128.0.0", "len": 14}})
        );
        let host: IpNet = "10.0.0.1/32".parse().expect("literal");
        assert_eq!(prefix(host), json!("10.0.0.1"));
    }
}
