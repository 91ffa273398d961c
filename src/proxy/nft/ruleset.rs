//! Pure rendering of the owned nftables table: desired objects per virtual service, the full
//! repair transaction, and the incremental transaction between two desired states. Everything
//! here is `nft -f` text, one command per line, so a plan is printable and a golden file is
//! readable.
//!
//! Layout of `table inet sdnlink` (one `inet` table serves both families; the maps are per
//! family because a concatenated key has a fixed address type):
//! - `service-ips` / `service-ips6`: `daddr . l4proto . dport` -> `goto svc-<key>`
//! - `no-endpoint-services` / `no-endpoint-services6`: same key -> `goto reject-chain`, looked
//!   up in filter chains before DNAT so a Service without endpoints is refused at once (TCP
//!   reset, ICMP port-unreachable otherwise) instead of timing out, as kube-proxy does.
//! - `svc-<key>`: affinity lookups, then a cascade of `numgen random` rules (or `jhash` for
//!   the consistent IPVS schedulers `sh`/`mh`) that DNAT to one endpoint;
//! - `ep-<key>-<endpoint>` (only for ClientIP affinity): refreshes the affinity set, then DNATs;
//! - `aff-<key>-<endpoint>`: dynamic set of client addresses with the affinity timeout.
//!
//! Only DNAT is done: the client's address crosses the tunnel and the remote node routes the
//! reply back through its own sdnlinkd (design.md), exactly like IPVS masquerade there.

use crate::proxy::{DesiredProxy, Destination, VirtualKey, VirtualService};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

/// Family of the owned table.
pub const FAMILY: &str = "inet";
/// Name of the one table sdnlinkd owns in its namespace. Everything inside it is ours and is
/// rewritten on a full sync; nothing outside it is ever touched.
pub const TABLE: &str = "sdnlink";
/// Table comment marking ownership for whoever lists the ruleset by hand.
pub const TABLE_COMMENT: &str = "owned by sdnlinkd: rewritten on every sync, do not edit";

const REJECT_CHAIN: &str = "reject-chain";
const SERVICES_CHAIN: &str = "services";

/// A base (hooked) chain of the table.
struct BaseChain {
    name: &'static str,
    kind: &'static str,
    hook: &'static str,
    /// Numeric, because Debian 12's nft 1.0.6 rejects `dstnat` on an `output` nat chain.
    priority: i32,
}

/// Filter chains run just before DNAT (-100) to reject connections to Services without
/// endpoints; nat chains run at the DNAT priority. Prerouting catches traffic arriving from the
/// host over the veth, output catches connections made inside the namespace.
const BASE_CHAINS: [BaseChain; 4] = [
    BaseChain {
        name: "filter-prerouting",
        kind: "filter",
        hook: "prerouting",
        priority: -110,
    },
    BaseChain {
        name: "filter-output",
        kind: "filter",
        hook: "output",
        priority: -110,
    },
    BaseChain {
        name: "nat-prerouting",
        kind: "nat",
        hook: "prerouting",
        priority: -100,
    },
    BaseChain {
        name: "nat-output",
        kind: "nat",
        hook: "output",
        priority: -100,
    },
];

/// The four verdict maps: (name, address type).
const MAPS: [(&str, &str); 4] = [
    ("service-ips", "ipv4_addr"),
    ("service-ips6", "ipv6_addr"),
    ("no-endpoint-services", "ipv4_addr"),
    ("no-endpoint-services6", "ipv6_addr"),
];

/// Names of the fixed (non per-service) chains.
pub fn fixed_chains() -> impl Iterator<Item = &'static str> {
    BASE_CHAINS
        .iter()
        .map(|c| c.name)
        .chain([REJECT_CHAIN, SERVICES_CHAIN])
}

/// Hook parameters sdnlinkd wants for a base chain: (type, hook, priority).
pub fn base_chain_spec(name: &str) -> Option<(&'static str, &'static str, i32)> {
    BASE_CHAINS
        .iter()
        .find(|c| c.name == name)
        .map(|c| (c.kind, c.hook, c.priority))
}

fn fixed_rules(chain: &str) -> Vec<String> {
    let filter = || {
        vec![
            "ct state new ip daddr . meta l4proto . th dport vmap @no-endpoint-services".into(),
            "ct state new ip6 daddr . meta l4proto . th dport vmap @no-endpoint-services6".into(),
        ]
    };
    match chain {
        "filter-prerouting" | "filter-output" => filter(),
        "nat-prerouting" | "nat-output" => vec![format!("jump {SERVICES_CHAIN}")],
        SERVICES_CHAIN => vec![
            "ip daddr . meta l4proto . th dport vmap @service-ips".into(),
            "ip6 daddr . meta l4proto . th dport vmap @service-ips6".into(),
        ],
        REJECT_CHAIN => vec![
            "meta l4proto tcp reject with tcp reset".into(),
            "reject".into(),
        ],
        _ => vec![],
    }
}

/// An address as part of an nft identifier: `:` is not allowed in unquoted names, and no IPv6
/// text form contains `_`, so replacing one with the other keeps names unique.
fn ident_addr(a: IpAddr) -> String {
    a.to_string().replace(':', "_")
}

/// Deterministic suffix naming a virtual service: `10.96.0.10-tcp-80`.
fn key_ident(k: &VirtualKey) -> String {
    format!("{}-{}-{}", ident_addr(k.vip), k.protocol, k.port)
}

fn dest_ident(k: &VirtualKey, d: &Destination) -> String {
    format!("{}-{}-{}", key_ident(k), ident_addr(d.addr), d.port)
}

/// Name of the per-service chain of `key`.
pub fn service_chain(key: &VirtualKey) -> String {
    format!("svc-{}", key_ident(key))
}

/// Name of the per-endpoint chain of `dest` in `key`.
pub fn endpoint_chain(key: &VirtualKey, dest: &Destination) -> String {
    format!("ep-{}", dest_ident(key, dest))
}

/// Name of the affinity set of `dest` in `key`.
pub fn affinity_set(key: &VirtualKey, dest: &Destination) -> String {
    format!("aff-{}", dest_ident(key, dest))
}

fn ip_kw(a: IpAddr) -> &'static str {
    if a.is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

fn addr_type(a: IpAddr) -> &'static str {
    if a.is_ipv4() {
        "ipv4_addr"
    } else {
        "ipv6_addr"
    }
}

fn map_suffix(a: IpAddr) -> &'static str {
    if a.is_ipv4() {
        ""
    } else {
        "6"
    }
}

fn element_key(k: &VirtualKey) -> String {
    format!("{} . {} . {}", k.vip, k.protocol, k.port)
}

/// IPVS's consistent schedulers (source hashing, Maglev hashing) pick by client address;
/// everything else becomes a uniform random choice.
fn consistent(scheduler: &str) -> bool {
    matches!(scheduler, "sh" | "mh")
}

/// A dynamic set's declaration: (address type, timeout seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetDef {
    pub addr_type: &'static str,
    pub timeout: u32,
}

/// Every nftables object one virtual service needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceObjects {
    /// chain name -> rules, in order.
    pub chains: BTreeMap<String, Vec<String>>,
    pub sets: BTreeMap<String, SetDef>,
    /// (map, key) -> verdict.
    pub elements: BTreeMap<(String, String), String>,
}

/// The objects of one virtual service, a pure function of it.
pub fn service_objects(vs: &VirtualService) -> ServiceObjects {
    let k = &vs.key;
    let fam = ip_kw(k.vip);
    let mut o = ServiceObjects::default();
    if vs.destinations.is_empty() {
        o.elements.insert(
            (
                format!("no-endpoint-services{}", map_suffix(k.vip)),
                element_key(k),
            ),
            format!("goto {REJECT_CHAIN}"),
        );
        return o;
    }
    let svc = service_chain(k);
    let mut svc_rules = Vec::new();
    let n = vs.destinations.len();
    let hashed = consistent(&vs.scheduler);
    let mut select = Vec::new();
    for (i, d) in vs.destinations.iter().enumerate() {
        let to = match d.addr {
            IpAddr::V4(a) => format!("{a}:{}", d.port),
            IpAddr::V6(a) => format!("[{a}]:{}", d.port),
        };
        // nft 1.0.6 wants a transport protocol match before `dnat to ADDR:PORT`.
        let dnat = format!("meta l4proto {} dnat {fam} to {to}", k.protocol);
        let target = match vs.affinity_timeout {
            // ClientIP affinity needs a per-endpoint chain: the set update must run for the
            // endpoint finally chosen, whether by affinity or by the selection below.
            Some(timeout) => {
                let ep = endpoint_chain(k, d);
                let set = affinity_set(k, d);
                svc_rules.push(format!("{fam} saddr @{set} goto {ep}"));
                o.chains.insert(
                    ep.clone(),
                    vec![format!("update @{set} {{ {fam} saddr }}"), dnat],
                );
                o.sets.insert(
                    set,
                    SetDef {
                        addr_type: addr_type(k.vip),
                        timeout,
                    },
                );
                format!("goto {ep}")
            }
            // Without affinity the DNAT sits in the service chain itself. nft 1.0.6 fetches
            // every chain of the table before it applies any `add rule`, so the chain count
            // sets the floor of every incremental sync: with a chain per endpoint, one
            // endpoint change at 10k x 10 took ~1 s of nft's cache fetch alone (110k chains),
            // against 0.04 s with 10k chains (measured on this host).
            None => dnat,
        };
        // Selection is a cascade of rules rather than `numgen ... vmap { ... }`: every inline
        // vmap is an anonymous set, and the kernel names and looks up sets by walking the
        // table's set list (nf_tables_set_alloc_name, nft_set_lookup), which made 10k services
        // quadratic (a 257 s soft lockup in nf_tables_newset on this host). Rule i of the
        // random cascade fires with probability 1/(n-i), which is uniform overall, as
        // iptables' `statistic --mode random` chains do. The hash cascade compares one hash
        // with a fixed seed (without `seed`, each expression would draw its own). A DNAT
        // ends the chain (its verdict is accept), so later rules never see the packet.
        let rule = if i + 1 == n {
            target
        } else if hashed {
            format!("jhash {fam} saddr mod {n} seed 0x0 {i} {target}")
        } else {
            format!("numgen random mod {} 0 {target}", n - i)
        };
        select.push(rule);
    }
    svc_rules.extend(select);
    o.chains.insert(svc.clone(), svc_rules);
    o.elements.insert(
        (format!("service-ips{}", map_suffix(k.vip)), element_key(k)),
        format!("goto {svc}"),
    );
    o
}

/// What a full sync found in the kernel's copy of the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Chain name -> hook spec (type, hook, priority) for base chains, `None` for regular ones.
    pub chains: BTreeMap<String, Option<(String, String, i32)>>,
    /// Set name -> (address type, timeout seconds).
    pub sets: BTreeMap<String, (String, Option<u32>)>,
}

/// A transaction being written: one nft command per line, counted.
#[derive(Default)]
pub struct Tx {
    text: String,
    commands: usize,
}

impl Tx {
    fn cmd(&mut self, args: std::fmt::Arguments<'_>) {
        // Writing to a String cannot fail.
        let _ = self.text.write_fmt(args);
        self.text.push('\n');
        self.commands += 1;
    }

    /// The transaction text for `nft -f -`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Number of commands in it.
    pub fn commands(&self) -> usize {
        self.commands
    }

    pub fn is_empty(&self) -> bool {
        self.commands == 0
    }

    fn set_decl(&mut self, name: &str, def: &SetDef) {
        self.cmd(format_args!(
            "add set {FAMILY} {TABLE} {name} {{ type {}; flags dynamic,timeout; timeout {}s; }}",
            def.addr_type, def.timeout
        ));
    }

    fn rule(&mut self, chain: &str, rule: &str) {
        self.cmd(format_args!("add rule {FAMILY} {TABLE} {chain} {rule}"));
    }

    fn element(&mut self, verb: &str, map: &str, key: &str, verdict: Option<&str>) {
        match verdict {
            Some(v) => self.cmd(format_args!(
                "{verb} element {FAMILY} {TABLE} {map} {{ {key} : {v} }}"
            )),
            None => self.cmd(format_args!(
                "{verb} element {FAMILY} {TABLE} {map} {{ {key} }}"
            )),
        }
    }
}

/// The full repair transaction: makes the table equal to `desired` whatever `observed` holds,
/// atomically. Every chain is flushed and rewritten, every map is flushed and refilled, chains
/// and sets that are no longer desired are deleted, and base chains whose hook was changed out
/// of band are recreated. Affinity sets that still match are kept with their contents, so a
/// resync does not move clients.
pub fn full_transaction(desired: &DesiredProxy, observed: &Observed) -> Tx {
    let objects: Vec<ServiceObjects> = desired.services.values().map(service_objects).collect();
    let mut want_chains: BTreeSet<&str> = fixed_chains().collect();
    let mut want_sets: BTreeMap<&str, &SetDef> = BTreeMap::new();
    for o in &objects {
        want_chains.extend(o.chains.keys().map(String::as_str));
        want_sets.extend(o.sets.iter().map(|(n, d)| (n.as_str(), d)));
    }

    let mut tx = Tx::default();
    tx.cmd(format_args!(
        "add table {FAMILY} {TABLE} {{ comment \"{TABLE_COMMENT}\"; }}"
    ));
    // A base chain with the wrong hook cannot be changed in place: drop it first.
    let bad_base: Vec<&str> = BASE_CHAINS
        .iter()
        .filter(|b| {
            matches!(observed.chains.get(b.name), Some(spec)
                if spec.as_ref().map(|(t, h, p)| (t.as_str(), h.as_str(), *p)) != Some((b.kind, b.hook, b.priority)))
        })
        .map(|b| b.name)
        .collect();
    for name in &bad_base {
        tx.cmd(format_args!("flush chain {FAMILY} {TABLE} {name}"));
        tx.cmd(format_args!("delete chain {FAMILY} {TABLE} {name}"));
    }
    for (name, ty) in MAPS {
        tx.cmd(format_args!(
            "add map {FAMILY} {TABLE} {name} {{ type {ty} . inet_proto . inet_service : verdict; }}"
        ));
        tx.cmd(format_args!("flush map {FAMILY} {TABLE} {name}"));
    }
    for b in &BASE_CHAINS {
        tx.cmd(format_args!(
            "add chain {FAMILY} {TABLE} {} {{ type {} hook {} priority {}; policy accept; }}",
            b.name, b.kind, b.hook, b.priority
        ));
    }
    for name in &want_chains {
        if base_chain_spec(name).is_none() {
            tx.cmd(format_args!("add chain {FAMILY} {TABLE} {name}"));
        }
    }
    for name in &want_chains {
        tx.cmd(format_args!("flush chain {FAMILY} {TABLE} {name}"));
    }
    let stale_chains: Vec<&str> = observed
        .chains
        .keys()
        .map(String::as_str)
        .filter(|c| !want_chains.contains(c))
        .collect();
    for name in &stale_chains {
        tx.cmd(format_args!("flush chain {FAMILY} {TABLE} {name}"));
    }
    for name in &stale_chains {
        tx.cmd(format_args!("delete chain {FAMILY} {TABLE} {name}"));
    }
    for (name, (ty, timeout)) in &observed.sets {
        let keep = want_sets
            .get(name.as_str())
            .is_some_and(|d| d.addr_type == ty && Some(d.timeout) == *timeout);
        if !keep {
            tx.cmd(format_args!("delete set {FAMILY} {TABLE} {name}"));
        }
    }
    for (name, def) in &want_sets {
        tx.set_decl(name, def);
    }
    for name in fixed_chains() {
        for r in fixed_rules(name) {
            tx.rule(name, &r);
        }
    }
    for o in &objects {
        for (chain, rules) in &o.chains {
            for r in rules {
                tx.rule(chain, r);
            }
        }
    }
    for o in &objects {
        for ((map, key), verdict) in &o.elements {
            tx.element("add", map, key, Some(verdict));
        }
    }
    tx
}

/// The incremental transaction from the committed state `old` to `new`: only the objects of
/// virtual services that changed, and within them only the chains, sets and map elements that
/// differ. One endpoint change therefore costs a handful of commands whatever the table size.
/// It assumes the kernel still holds `old`; if it does not (out-of-band edits), the
/// transaction fails as a whole and the caller falls back to a full sync.
pub fn incremental_transaction(old: &DesiredProxy, new: &DesiredProxy) -> Tx {
    let empty = ServiceObjects::default();
    let keys: BTreeSet<&VirtualKey> = old.services.keys().chain(new.services.keys()).collect();
    let mut changes: Vec<(ServiceObjects, ServiceObjects)> = Vec::new();
    for k in keys {
        let (o, n) = (old.services.get(k), new.services.get(k));
        if o == n {
            continue;
        }
        changes.push((
            o.map(service_objects).unwrap_or_else(|| empty.clone()),
            n.map(service_objects).unwrap_or_else(|| empty.clone()),
        ));
    }

    let mut tx = Tx::default();
    // Order matters inside one transaction: drop references (map elements, then rules) before
    // the chains and sets they point to, and create chains and sets before rules use them.
    for (o, n) in &changes {
        for ((map, key), verdict) in &o.elements {
            if n.elements.get(&(map.clone(), key.clone())) != Some(verdict) {
                tx.element("delete", map, key, None);
            }
        }
    }
    for (o, n) in &changes {
        for (chain, rules) in &o.chains {
            if n.chains.get(chain) != Some(rules) {
                tx.cmd(format_args!("flush chain {FAMILY} {TABLE} {chain}"));
            }
        }
    }
    for (o, n) in &changes {
        for chain in o.chains.keys() {
            if !n.chains.contains_key(chain) {
                tx.cmd(format_args!("delete chain {FAMILY} {TABLE} {chain}"));
            }
        }
        for (set, def) in &o.sets {
            if n.sets.get(set) != Some(def) {
                tx.cmd(format_args!("delete set {FAMILY} {TABLE} {set}"));
            }
        }
    }
    for (o, n) in &changes {
        for (set, def) in &n.sets {
            if o.sets.get(set) != Some(def) {
                tx.set_decl(set, def);
            }
        }
        for chain in n.chains.keys() {
            if !o.chains.contains_key(chain) {
                tx.cmd(format_args!("add chain {FAMILY} {TABLE} {chain}"));
            }
        }
    }
    for (o, n) in &changes {
        // Endpoint chains first: a service chain's rules jump to them.
        let mut changed: Vec<(&String, &Vec<String>)> = n
            .chains
            .iter()
            .filter(|(c, r)| o.chains.get(*c) != Some(*r))
            .collect();
        changed.sort_by_key(|(c, _)| c.starts_with("svc-"));
        for (chain, rules) in changed {
            for r in rules {
                tx.rule(chain, r);
            }
        }
    }
    for (o, n) in &changes {
        for ((map, key), verdict) in &n.elements {
            if o.elements.get(&(map.clone(), key.clone())) != Some(verdict) {
                tx.element("add", map, key, Some(verdict));
            }
        }
    }
    tx
}

/// The transaction that removes the owned table and everything in it, idempotently: `add`
/// first so that `delete` never fails on a missing table.
pub fn cleanup_transaction() -> Tx {
    let mut tx = Tx::default();
    tx.cmd(format_args!("add table {FAMILY} {TABLE}"));
    tx.cmd(format_args!("delete table {FAMILY} {TABLE}"));
    tx
}

/// Parses `nft -j list chains` / `nft -j list sets` output, keeping only the owned table.
pub fn parse_observed(chains_json: &str, sets_json: &str) -> Result<Observed, serde_json::Error> {
    let mut obs = Observed::default();
    for item in items(chains_json)? {
        let Some(c) = item.get("chain") else { continue };
        if !owned(c) {
            continue;
        }
        let Some(name) = c.get("name").and_then(|v| v.as_str()) else {
            continue;
        };
        let spec = match (c.get("type"), c.get("hook"), c.get("prio")) {
            (Some(t), Some(h), Some(p)) => Some((
                t.as_str().unwrap_or_default().to_string(),
                h.as_str().unwrap_or_default().to_string(),
                p.as_i64()
                    .and_then(|p| i32::try_from(p).ok())
                    .unwrap_or(i32::MIN),
            )),
            _ => None,
        };
        obs.chains.insert(name.to_string(), spec);
    }
    for item in items(sets_json)? {
        let Some(s) = item.get("set") else { continue };
        if !owned(s) {
            continue;
        }
        let Some(name) = s.get("name").and_then(|v| v.as_str()) else {
            continue;
        };
        let ty = s
            .get("type")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let timeout = s
            .get("timeout")
            .and_then(|v| v.as_u64())
            .and_then(|t| u32::try_from(t).ok());
        obs.sets.insert(name.to_string(), (ty, timeout));
    }
    Ok(obs)
}

fn owned(obj: &serde_json::Value) -> bool {
    obj.get("family").and_then(|v| v.as_str()) == Some(FAMILY)
        && obj.get("table").and_then(|v| v.as_str()) == Some(TABLE)
}

fn items(json: &str) -> Result<Vec<serde_json::Value>, serde_json::Error> {
    if json.trim().is_empty() {
        return Ok(vec![]);
    }
    let v: serde_json::Value = serde_json::from_str(json)?;
    Ok(match v.get("nftables") {
        Some(serde_json::Value::Array(a)) => a.clone(),
        _ => vec![],
    })
}

#[cfg(test)]
mod tests {
    //! IP plan: remote ClusterIPs 10.97.0.0/16 (east) and 10.98.0.0/16 (west), fd97::/108;
    //! endpoints 10.1.0.0/16 (east), 10.2.0.0/16 (west), fd01::/64.

    use super::*;
    use crate::model::{Protocol, ServiceKey};

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test literal")
    }

    fn vs(
        vip: &str,
        proto: Protocol,
        port: u16,
        sched: &str,
        aff: Option<u32>,
        dests: &[(&str, u16)],
    ) -> VirtualService {
        VirtualService {
            key: VirtualKey {
                vip: ip(vip),
                protocol: proto,
                port,
            },
            cluster: "east".into(),
            service: ServiceKey {
                namespace: "default".into(),
                name: "x".into(),
            },
            port_name: String::new(),
            scheduler: sched.into(),
            affinity_timeout: aff,
            destinations: dests
                .iter()
                .map(|(a, p)| Destination {
                    addr: ip(a),
                    port: *p,
                })
                .collect(),
        }
    }

    fn desired(list: Vec<VirtualService>) -> DesiredProxy {
        DesiredProxy {
            services: list.into_iter().map(|v| (v.key, v)).collect(),
            ..Default::default()
        }
    }

    use Protocol::{Tcp, Udp};

    /// The table-driven desired state behind both golden files.
    fn before() -> DesiredProxy {
        desired(vec![
            vs(
                "10.97.0.10",
                Tcp,
                80,
                "rr",
                None,
                &[("10.1.0.1", 8080), ("10.1.0.2", 8080)],
            ),
            vs("10.97.0.53", Udp, 53, "rr", None, &[("10.1.0.7", 5353)]),
            vs(
                "10.97.0.30",
                Tcp,
                80,
                "rr",
                Some(600),
                &[("10.1.0.9", 8080), ("10.1.0.10", 8080)],
            ),
            vs(
                "10.98.0.20",
                Tcp,
                443,
                "sh",
                None,
                &[("10.2.0.4", 8443), ("10.2.0.5", 8443)],
            ),
            vs("fd97::10", Tcp, 80, "rr", Some(10800), &[("fd01::1", 8080)]),
            vs("10.97.0.13", Tcp, 80, "rr", None, &[]),
            vs("fd97::13", Udp, 53, "rr", None, &[]),
            vs("10.97.0.14", Tcp, 80, "rr", None, &[("10.1.0.14", 80)]),
        ])
    }

    /// `before` after churn: an endpoint removed, one added under affinity, a service gone, a
    /// service gaining its first endpoint, another losing its last.
    fn after() -> DesiredProxy {
        desired(vec![
            vs("10.97.0.10", Tcp, 80, "rr", None, &[("10.1.0.2", 8080)]),
            vs("10.97.0.53", Udp, 53, "rr", None, &[("10.1.0.7", 5353)]),
            vs(
                "10.97.0.30",
                Tcp,
                80,
                "rr",
                Some(600),
                &[("10.1.0.9", 8080), ("10.1.0.10", 8080), ("10.1.0.11", 8080)],
            ),
            vs("fd97::10", Tcp, 80, "rr", Some(10800), &[("fd01::1", 8080)]),
            vs("10.97.0.13", Tcp, 80, "rr", None, &[("10.1.0.13", 80)]),
            vs("fd97::13", Udp, 53, "rr", None, &[]),
            vs("10.97.0.14", Tcp, 80, "rr", None, &[]),
        ])
    }

    /// What a full sync might find: a stale chain and set of ours, a base chain whose priority
    /// was edited, and a chain that is still wanted.
    fn observed() -> Observed {
        let mut o = Observed::default();
        o.chains.insert(
            "nat-output".into(),
            Some(("nat".into(), "output".into(), 0)),
        );
        o.chains.insert(
            "nat-prerouting".into(),
            Some(("nat".into(), "prerouting".into(), -100)),
        );
        o.chains.insert("svc-10.97.0.99-tcp-80".into(), None);
        o.chains.insert("svc-10.97.0.10-tcp-80".into(), None);
        o.sets.insert(
            "aff-10.97.0.99-tcp-80-10.1.0.99-80".into(),
            ("ipv4_addr".into(), Some(60)),
        );
        o.sets.insert(
            "aff-10.97.0.30-tcp-80-10.1.0.9-8080".into(),
            ("ipv4_addr".into(), Some(600)),
        );
        o.sets.insert(
            "aff-10.97.0.30-tcp-80-10.1.0.10-8080".into(),
            ("ipv4_addr".into(), Some(30)),
        );
        o
    }

    /// Compares with a golden file; `SDNLINK_UPDATE_GOLDEN=1` rewrites it (review the diff).
    fn golden(name: &str, got: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/proxy/nft/testdata")
            .join(name);
        if std::env::var_os("SDNLINK_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, got).expect("writing golden file");
        }
        let want = std::fs::read_to_string(&path).expect("golden file exists");
        assert_eq!(got, want, "golden {name} differs");
    }

    #[test]
    fn golden_full_transaction() {
        golden("full.nft", full_transaction(&before(), &observed()).text());
    }

    #[test]
    fn golden_incremental_transaction() {
        golden(
            "incremental.nft",
            incremental_transaction(&before(), &after()).text(),
        );
    }

    #[test]
    fn incremental_of_identical_states_is_empty() {
        assert!(incremental_transaction(&before(), &before()).is_empty());
    }

    #[test]
    fn one_endpoint_change_at_scale_costs_constant_commands() {
        let big = |extra: bool| {
            let mut list = Vec::new();
            for i in 0..10_000u32 {
                let vip = format!("10.97.{}.{}", i / 250, i % 250 + 1);
                let mut d: Vec<(String, u16)> = (0..10)
                    .map(|j| (format!("10.1.{}.{}", i / 250, j + 1), 8080))
                    .collect();
                if extra && i == 4321 {
                    d.push(("10.1.200.200".into(), 8080));
                }
                let refs: Vec<(&str, u16)> = d.iter().map(|(a, p)| (a.as_str(), *p)).collect();
                list.push(vs(&vip, Tcp, 80, "rr", None, &refs));
            }
            desired(list)
        };
        let tx = incremental_transaction(&big(false), &big(true));
        // flush svc chain, its 11 selection rules: proportional to that service's endpoints,
        // independent of the 10k other services.
        assert_eq!(tx.commands(), 12, "{}", tx.text());
        let back = incremental_transaction(&big(true), &big(false));
        // flush svc chain, its 10 selection rules.
        assert_eq!(back.commands(), 11, "{}", back.text());
    }

    #[test]
    fn names_are_deterministic_and_v6_safe() {
        let k = VirtualKey {
            vip: ip("fd97::10"),
            protocol: Udp,
            port: 53,
        };
        let d = Destination {
            addr: ip("fd01::1"),
            port: 5353,
        };
        assert_eq!(service_chain(&k), "svc-fd97__10-udp-53");
        assert_eq!(endpoint_chain(&k, &d), "ep-fd97__10-udp-53-fd01__1-5353");
        assert_eq!(affinity_set(&k, &d), "aff-fd97__10-udp-53-fd01__1-5353");
    }

    #[test]
    fn observed_parses_only_our_table() {
        let chains = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"chain": {"family": "inet", "table": "sdnlink", "name": "nat-output", "handle": 8, "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}},
            {"chain": {"family": "inet", "table": "sdnlink", "name": "svc-a", "handle": 9}},
            {"chain": {"family": "inet", "table": "other", "name": "svc-b", "handle": 3}},
            {"chain": {"family": "ip", "table": "sdnlink", "name": "svc-c", "handle": 3}}]}"#;
        let sets = r#"{"nftables": [{"set": {"family": "inet", "name": "aff-x", "table": "sdnlink", "type": "ipv4_addr", "flags": ["timeout"], "timeout": 10800}},
            {"set": {"family": "inet", "name": "foreign", "table": "other", "type": "ipv4_addr"}}]}"#;
        let o = parse_observed(chains, sets).expect("valid json");
        assert_eq!(o.chains.len(), 2);
        assert_eq!(
            o.chains["nat-output"],
            Some(("nat".into(), "output".into(), -100))
        );
        assert_eq!(o.chains["svc-a"], None);
        assert_eq!(o.sets.len(), 1);
        assert_eq!(o.sets["aff-x"], ("ipv4_addr".into(), Some(10800)));
        assert_eq!(
            parse_observed("", "").expect("empty is no table"),
            Observed::default()
        );
    }
}
