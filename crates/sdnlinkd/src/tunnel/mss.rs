//! TCP MSS clamping on the tunnel interface, in both directions.
//!
//! Pods on either side advertise an MSS derived from their own interface MTU (1460 on a 1500
//! veth), larger than what fits through WireGuard (its MTU minus the IP and TCP headers).
//! Path-MTU discovery across clusters depends on ICMP "fragmentation needed" messages crossing
//! every NAT and firewall on the way, which production networks often drop. So every SYN and
//! SYN-ACK crossing the tunnel gets its MSS option lowered to fit: on the way out (postrouting,
//! `oifname`) and on the way in (prerouting, `iifname`). Clamping both directions matters: a
//! SYN-only clamp (Submariner issue 1488) leaves the SYN-ACK's MSS alone, and the initiator then
//! sends full-size segments that the tunnel cannot carry.
//!
//! The rules live in their own table, `inet sdnlink-mss`, in sdnlinkd's namespace, apart from the
//! proxy's `inet sdnlink` table: the IPVS backend has no nftables table at all, and the nft
//! backend's full sync deletes chains it does not know. A sync compares the kernel's table
//! (`nft -j list table`, parsed by `crate::proxy::nft::table`) with the desired one and writes
//! only the difference, nothing when they match.

use crate::netns::NetNs;
use crate::proxy::nft::owned::{OwnedTable, OwnedTableError, TableSync};
use crate::proxy::nft::table::{self, diff, expr, BaseSpec, Chain, Rule, Table, Tx};
use serde_json::json;

/// Family and name of the owned table.
pub const TABLE: &str = "inet sdnlink-mss";

/// IPv4 header (20) + TCP header (20) without options (RFC 879: MSS = MTU - 40).
const V4_OVERHEAD: u32 = 40;
/// IPv6 header (40) + TCP header (20) (RFC 8200 section 8.3: MSS = MTU - 60).
const V6_OVERHEAD: u32 = 60;

/// The MSS values that fit through a tunnel of `mtu`: (IPv4, IPv6).
pub fn mss_for(mtu: u32) -> (u32, u32) {
    (
        mtu.saturating_sub(V4_OVERHEAD),
        mtu.saturating_sub(V6_OVERHEAD),
    )
}

/// Mangle priority: before the nat chains (-100) and IPVS, so the clamped SYN is what the rest
/// of the stack sees.
const PRIORITY_MANGLE: i64 = -150;

/// The table for `iface` of `mtu`: one rule per direction and family. Rules only lower an MSS
/// (`> n`): a smaller one (a path with a lower MTU elsewhere) is left alone.
pub fn desired_table(iface: &str, mtu: u32) -> Table {
    let (v4, v6) = mss_for(mtu);
    let rule = |dir: &str, family: &str, mss: u32| {
        let maxseg = json!({"tcp option": {"name": "maxseg", "field": "size"}});
        Rule::new(
            format!(
                "{dir} \"{iface}\" meta nfproto {family} tcp flags & (syn | rst) == syn \
                 tcp option maxseg size > {mss} tcp option maxseg size set {mss}"
            ),
            json!([
                expr::matches("==", expr::meta(dir), json!(iface)),
                expr::matches("==", expr::meta("nfproto"), json!(family)),
                expr::matches(
                    "==",
                    json!({"&": [expr::payload("tcp", "flags"), ["syn", "rst"]]}),
                    json!("syn")
                ),
                expr::matches(">", maxseg.clone(), json!(mss)),
                {"mangle": {"key": maxseg, "value": mss}}
            ]),
        )
    };
    let mut t = Table::empty("");
    for (chain, dir) in [("prerouting", "iifname"), ("postrouting", "oifname")] {
        t.chains.insert(
            chain.into(),
            Chain {
                base: Some(BaseSpec {
                    kind: "filter".into(),
                    hook: chain.into(),
                    prio: PRIORITY_MANGLE,
                    policy: "accept".into(),
                }),
                rules: vec![rule(dir, "ipv4", v4), rule(dir, "ipv6", v6)],
            },
        );
    }
    t
}

/// Parses `nft -j -p list table inet sdnlink-mss`.
pub fn parse_listing(json: &str) -> Result<Table, table::ParseError> {
    let (family, name) = TABLE.split_once(' ').expect("TABLE is `FAMILY NAME`");
    table::parse(json, family, name)
}

/// The transaction that makes `observed` hold the rules for `iface` and `mtu`: empty when it
/// does, else only the chains that differ.
pub fn transaction(iface: &str, mtu: u32, observed: &Table) -> Tx {
    diff(TABLE, &desired_table(iface, mtu), observed)
}

/// The MSS clamp of one namespace.
pub struct MssClamp {
    table: OwnedTable,
}

impl MssClamp {
    /// A clamp acting in `ns`; the first sync checks the kernel.
    pub fn new(ns: NetNs) -> MssClamp {
        MssClamp {
            table: OwnedTable::new(ns, TABLE),
        }
    }

    /// Makes the table hold the rules for `iface` and `mtu`. Incremental: nothing when the
    /// config did not change. Full, or a changed config: lists the table and writes only what
    /// differs.
    pub async fn sync(
        &mut self,
        iface: &str,
        mtu: u32,
        full: bool,
    ) -> Result<TableSync, OwnedTableError> {
        self.table.sync(desired_table(iface, mtu), full).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mss_fits_the_tunnel_mtu_per_family() {
        assert_eq!(mss_for(1420), (1380, 1360));
        assert_eq!(mss_for(1280), (1240, 1220));
        assert_eq!(mss_for(20), (0, 0));
    }

    #[test]
    fn creation_golden() {
        let tx = transaction("wg0", 1420, &Table::default());
        let want = "add table inet sdnlink-mss\n\
add chain inet sdnlink-mss postrouting { type filter hook postrouting priority -150; policy accept; }\n\
add chain inet sdnlink-mss prerouting { type filter hook prerouting priority -150; policy accept; }\n\
add rule inet sdnlink-mss postrouting oifname \"wg0\" meta nfproto ipv4 tcp flags & (syn | rst) == syn tcp option maxseg size > 1380 tcp option maxseg size set 1380\n\
add rule inet sdnlink-mss postrouting oifname \"wg0\" meta nfproto ipv6 tcp flags & (syn | rst) == syn tcp option maxseg size > 1360 tcp option maxseg size set 1360\n\
add rule inet sdnlink-mss prerouting iifname \"wg0\" meta nfproto ipv4 tcp flags & (syn | rst) == syn tcp option maxseg size > 1380 tcp option maxseg size set 1380\n\
add rule inet sdnlink-mss prerouting iifname \"wg0\" meta nfproto ipv6 tcp flags & (syn | rst) == syn tcp option maxseg size > 1360 tcp option maxseg size set 1360\n";
        assert_eq!(tx.text(), want);
    }

    /// What nft 1.0.6 (Debian 12) printed for `nft -j -p list table inet sdnlink-mss` after
    /// the creation transaction above.
    const LISTING: &str = include_str!("testdata/mss-listing.json");

    fn listed() -> Table {
        parse_listing(LISTING).expect("a real listing parses")
    }

    #[test]
    fn listing_of_the_created_table_matches() {
        let tx = transaction("wg0", 1420, &listed());
        assert!(tx.is_empty(), "{}", tx.text());
    }

    #[test]
    fn listing_with_other_mtu_interface_or_extra_rule_does_not_match() {
        let t = listed();
        assert!(!transaction("wg0", 1380, &t).is_empty());
        assert!(!transaction("wg1", 1420, &t).is_empty());
        let mut missing = t.clone();
        missing
            .chains
            .get_mut("postrouting")
            .expect("chain")
            .rules
            .pop();
        assert_eq!(
            transaction("wg0", 1420, &missing).text(),
            "flush chain inet sdnlink-mss postrouting\n\
add rule inet sdnlink-mss postrouting oifname \"wg0\" meta nfproto ipv4 tcp flags & (syn | rst) == syn tcp option maxseg size > 1380 tcp option maxseg size set 1380\n\
add rule inet sdnlink-mss postrouting oifname \"wg0\" meta nfproto ipv6 tcp flags & (syn | rst) == syn tcp option maxseg size > 1360 tcp option maxseg size set 1360\n",
            "only the chain that lost a rule is rewritten"
        );
        let mut extra = t.clone();
        extra
            .chains
            .get_mut("prerouting")
            .expect("chain")
            .rules
            .push(Rule::new("", json!([{"drop": null}])));
        assert!(transaction("wg0", 1420, &extra)
            .text()
            .starts_with("flush chain inet sdnlink-mss prerouting\n"));
        let mut stray = t.clone();
        stray.chains.insert("input".into(), Chain::default());
        assert_eq!(
            transaction("wg0", 1420, &stray).text(),
            "delete chain inet sdnlink-mss input\n"
        );
        assert!(!transaction("wg0", 1420, &Table::default()).is_empty());
    }

    #[test]
    fn a_new_mtu_rewrites_the_rules_in_place() {
        let tx = transaction("wg0", 1300, &listed());
        assert_eq!(tx.commands(), 6, "{}", tx.text());
        assert!(!tx.text().contains("table"), "{}", tx.text());
        assert!(tx.text().contains("maxseg size set 1260"), "{}", tx.text());
    }
}
