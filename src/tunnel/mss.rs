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
//! backend's full sync deletes chains it does not know.

use crate::netns::{NetNs, NetnsError};
use crate::proxy::nft::{run_nft, NftError};
use std::path::PathBuf;

/// Errors of the MSS clamp.
#[derive(Debug, thiserror::Error)]
pub enum MssError {
    #[error("MSS clamp table {TABLE}: {0}")]
    Nft(#[from] NftError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

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

/// The rules for `iface` of `mtu`, one per direction and family, as they appear in the body of
/// the table's chains. Rules only lower an MSS (`> n`): a smaller one (a path with a lower MTU
/// elsewhere) is left alone.
fn rules(iface: &str, mtu: u32) -> [(&'static str, String); 4] {
    let (v4, v6) = mss_for(mtu);
    let rule = |dir: &str, family: &str, mss: u32| {
        format!(
            "{dir} \"{iface}\" meta nfproto {family} tcp flags & (syn | rst) == syn \
             tcp option maxseg size > {mss} tcp option maxseg size set {mss}"
        )
    };
    [
        ("prerouting", rule("iifname", "ipv4", v4)),
        ("prerouting", rule("iifname", "ipv6", v6)),
        ("postrouting", rule("oifname", "ipv4", v4)),
        ("postrouting", rule("oifname", "ipv6", v6)),
    ]
}

/// The whole table as one `nft -f` transaction that replaces any previous version atomically
/// (declare, delete, re-create: the idiom that works whether or not the table exists).
pub fn render(iface: &str, mtu: u32) -> String {
    let rules = rules(iface, mtu);
    let mut text = format!("table {TABLE}\ndelete table {TABLE}\ntable {TABLE} {{\n");
    // Mangle priority (-150): before the nat chains (-100) and IPVS, so the clamped SYN is what
    // the rest of the stack sees.
    for (chain, hook) in [("prerouting", "prerouting"), ("postrouting", "postrouting")] {
        text.push_str(&format!(
            "\tchain {chain} {{\n\t\ttype filter hook {hook} priority mangle; policy accept;\n"
        ));
        for (c, rule) in &rules {
            if *c == chain {
                text.push_str(&format!("\t\t{rule}\n"));
            }
        }
        text.push_str("\t}\n");
    }
    text.push_str("}\n");
    text
}

/// Whether a listing of the table (`nft list table`) holds every rule for `iface` and `mtu`:
/// the check of a full sync that repairs a table edited or deleted out of band.
pub fn listing_matches(listing: &str, iface: &str, mtu: u32) -> bool {
    let (v4, v6) = mss_for(mtu);
    let want = [
        (format!("iifname \"{iface}\""), v4),
        (format!("iifname \"{iface}\""), v6),
        (format!("oifname \"{iface}\""), v4),
        (format!("oifname \"{iface}\""), v6),
    ];
    let lines: Vec<&str> = listing.lines().map(str::trim).collect();
    let count_rules = lines
        .iter()
        .filter(|l| l.contains("maxseg size set"))
        .count();
    count_rules == want.len()
        && want.iter().all(|(dir, mss)| {
            let set = format!("maxseg size set {mss}");
            lines
                .iter()
                .any(|l| l.starts_with(dir.as_str()) && l.ends_with(&set))
        })
}

/// What a sync of the clamp did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClampSync {
    /// The table already held the rules.
    Unchanged,
    /// The table was (re)written.
    Applied,
}

/// The MSS clamp of one namespace: the table's last committed content.
pub struct MssClamp {
    ns: NetNs,
    program: PathBuf,
    committed: Option<String>,
}

impl MssClamp {
    /// A clamp acting in `ns`; the first sync checks the kernel.
    pub fn new(ns: NetNs) -> MssClamp {
        MssClamp {
            ns,
            program: PathBuf::from("nft"),
            committed: None,
        }
    }

    /// Makes the table hold the rules for `iface` and `mtu`. Incremental: nothing when the
    /// config did not change. Full: lists the table and rewrites it if it differs.
    pub async fn sync(&mut self, iface: &str, mtu: u32, full: bool) -> Result<ClampSync, MssError> {
        let text = render(iface, mtu);
        if !full && self.committed.as_deref() == Some(text.as_str()) {
            return Ok(ClampSync::Unchanged);
        }
        if full || self.committed.is_none() {
            let p = self.program.clone();
            let listing = self
                .ns
                .run_async(move || run_nft(&p, &["list", "table", TABLE], None))
                .await?;
            // A missing table is an error of `nft list`: the rewrite below creates it.
            if let Ok(listing) = listing {
                if listing_matches(&listing, iface, mtu) {
                    self.committed = Some(text);
                    return Ok(ClampSync::Unchanged);
                }
            }
        }
        self.committed = None;
        let tx = text.clone();
        let p = self.program.clone();
        self.ns
            .run_async(move || run_nft(&p, &["-f", "-"], Some(&tx)))
            .await??;
        self.committed = Some(text);
        Ok(ClampSync::Applied)
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
    fn render_golden() {
        let want = "table inet sdnlink-mss\n\
delete table inet sdnlink-mss\n\
table inet sdnlink-mss {\n\
\tchain prerouting {\n\
\t\ttype filter hook prerouting priority mangle; policy accept;\n\
\t\tiifname \"wg0\" meta nfproto ipv4 tcp flags & (syn | rst) == syn tcp option maxseg size > 1380 tcp option maxseg size set 1380\n\
\t\tiifname \"wg0\" meta nfproto ipv6 tcp flags & (syn | rst) == syn tcp option maxseg size > 1360 tcp option maxseg size set 1360\n\
\t}\n\
\tchain postrouting {\n\
\t\ttype filter hook postrouting priority mangle; policy accept;\n\
\t\toifname \"wg0\" meta nfproto ipv4 tcp flags & (syn | rst) == syn tcp option maxseg size > 1380 tcp option maxseg size set 1380\n\
\t\toifname \"wg0\" meta nfproto ipv6 tcp flags & (syn | rst) == syn tcp option maxseg size > 1360 tcp option maxseg size set 1360\n\
\t}\n\
}\n";
        assert_eq!(render("wg0", 1420), want);
    }

    /// The listing format of nft 1.0.6 (Debian 12) for the rendered table.
    const LISTING: &str = "table inet sdnlink-mss {
\tchain prerouting {
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\tiifname \"wg0\" meta nfproto ipv4 tcp flags & (syn | rst) == syn tcp option maxseg size > 1380 tcp option maxseg size set 1380
\t\tiifname \"wg0\" meta nfproto ipv6 tcp flags & (syn | rst) == syn tcp option maxseg size > 1360 tcp option maxseg size set 1360
\t}

\tchain postrouting {
\t\ttype filter hook postrouting priority mangle; policy accept;
\t\toifname \"wg0\" meta nfproto ipv4 tcp flags & (syn | rst) == syn tcp option maxseg size > 1380 tcp option maxseg size set 1380
\t\toifname \"wg0\" meta nfproto ipv6 tcp flags & (syn | rst) == syn tcp option maxseg size > 1360 tcp option maxseg size set 1360
\t}
}
";

    #[test]
    fn listing_of_the_rendered_table_matches() {
        assert!(listing_matches(LISTING, "wg0", 1420));
    }

    #[test]
    fn listing_with_other_mtu_interface_or_extra_rule_does_not_match() {
        assert!(!listing_matches(LISTING, "wg0", 1380));
        assert!(!listing_matches(LISTING, "wg1", 1420));
        let missing: String = LISTING
            .lines()
            .filter(|l| !l.contains("oifname \"wg0\" meta nfproto ipv6"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(!listing_matches(&missing, "wg0", 1420));
        let extra = LISTING.replace(
            "\t}\n}\n",
            "\t\toifname \"x\" tcp option maxseg size set 1\n\t}\n}\n",
        );
        assert!(!listing_matches(&extra, "wg0", 1420));
        assert!(!listing_matches("", "wg0", 1420));
    }
}
