//! The owned nftables table of the proxy as a pure function of the desired state, and the
//! transactions between states: full (desired against the kernel's parsed table) and
//! incremental (desired against the last committed state, touching only changed services).
//!
//! Layout of `table inet sdnlink` (one `inet` table serves both families; the maps are per
//! family because a concatenated key has a fixed address type):
//! - `service-ips` / `service-ips6`: `daddr . l4proto . dport` -> `goto svc-<key>`
//! - `no-endpoint-services` / `no-endpoint-services6`: same key -> `goto reject-chain`, looked
//!   up in filter chains before DNAT so a Service without endpoints is refused at once (TCP
//!   reset, ICMP port-unreachable otherwise) instead of timing out, as kube-proxy does.
//! - `endpoints-<proto>` / `endpoints6-<proto>` (tcp, udp, sctp): `daddr . dport . index` ->
//!   `endpoint addr . port`, the `index`-th endpoint (in address order) of each service. One
//!   map per protocol because the key is declared with `typeof ... tcp dport`, and nft 1.0.6
//!   fails to re-evaluate a cached `typeof` key whose protocol differs from the rule's
//!   ("conflicting protocols specified: udp vs. tcp") or is `th`;
//! - `pick<4|6>-<proto>-<random|hash>-<N>`, shared by every service with N endpoints: one
//!   rule, `dnat to daddr . dport . (numgen random mod N) map @endpoints-<proto>` (or `jhash`
//!   of the client address for the consistent IPVS schedulers `sh`/`mh`). A service's element
//!   in `service-ips` jumps to the chain of its endpoint count; the choice among its endpoints
//!   is one map lookup, and endpoints are map elements, not rules;
//! - with ClientIP affinity, the element jumps to `svc-<key>` instead, which holds the
//!   affinity lookups and a cascade of selection rules; `ep-<key>-<endpoint>` refreshes the
//!   affinity set and DNATs, and `aff-<key>-<endpoint>` is the dynamic set of client
//!   addresses with the affinity timeout.
//!
//! Only DNAT is done: the client's address crosses the tunnel and the remote node routes the
//! reply back through its own sdnlinkd (docs/design.md), exactly like IPVS masquerade there.

use super::table::{
    diff, expr, BaseSpec, Chain, ElemKey, ElemValue, Elements, Rule, SetDecl, Table, Tx,
};
use crate::model::{Protocol, ServiceKey};
use crate::proxy::{DesiredProxy, Destination, Scheduling, VirtualKey, VirtualService};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

pub use names::*;

mod names;

/// IPVS's consistent schedulers (source hashing, Maglev hashing) pick by client address;
/// everything else becomes a uniform random choice.
fn consistent(scheduler: &Scheduling) -> bool {
    scheduler.by_client()
}

fn verdict_map_decl(a: IpAddr) -> SetDecl {
    let ty = addr_type(a);
    SetDecl {
        body: format!("type {ty} . inet_proto . inet_service : verdict;"),
        is_map: true,
        key: format!("{ty} . inet_proto . inet_service"),
        data: Some("verdict".into()),
        flags: vec![],
        timeout: None,
    }
}

/// The endpoint map's key ends in the selector's value (a 32-bit integer); `typeof` is the one
/// way to declare it, as no named type is a plain integer.
fn endpoints_map_decl(a: IpAddr, p: Protocol) -> SetDecl {
    let (ty, kw) = (addr_type(a), ip_kw(a));
    SetDecl {
        body: format!(
            "typeof {kw} daddr . {p} dport . numgen random mod 1 : {kw} daddr . {p} dport;"
        ),
        is_map: true,
        key: format!("{ty} . inet_service . integer"),
        data: Some(format!("{ty} . inet_service")),
        flags: vec![],
        timeout: None,
    }
}

fn affinity_set_decl(a: IpAddr, timeout: u32) -> SetDecl {
    SetDecl {
        body: format!(
            "type {}; flags dynamic,timeout; timeout {timeout}s;",
            addr_type(a)
        ),
        is_map: false,
        key: addr_type(a).into(),
        data: None,
        // nft 1.0.6 reports `dynamic` in text listings only.
        flags: vec!["timeout".into()],
        timeout: Some(timeout.into()),
    }
}

fn lookup_key(family: &str) -> Value {
    expr::concat(vec![
        expr::payload(family, "daddr"),
        expr::meta("l4proto"),
        expr::payload("th", "dport"),
    ])
}

/// The maps every table has (declarations only).
fn add_maps(t: &mut Table) {
    for a in ["0.0.0.0", "::"] {
        let a: IpAddr = a.parse().expect("literal address");
        for (m, d) in [
            (service_map(a), verdict_map_decl(a)),
            (no_endpoint_map(a), verdict_map_decl(a)),
        ]
        .into_iter()
        .chain(
            PROTOCOLS
                .iter()
                .map(|p| (endpoints_map(a, *p), endpoints_map_decl(a, *p))),
        ) {
            t.sets.insert(m.clone(), d);
            t.elements.insert(m, Elements::default());
        }
    }
}

fn fixed_chains(t: &mut Table) {
    let filter = |fam: &str, map: &str| {
        Rule::new(
            format!("ct state new {fam} daddr . meta l4proto . th dport vmap @{map}"),
            json!([
                expr::matches("in", json!({"ct": {"key": "state"}}), json!("new")),
                expr::vmap(lookup_key(fam), map)
            ]),
        )
    };
    for b in &BASE_CHAINS {
        let rules = if b.kind == "filter" {
            vec![
                filter("ip", "no-endpoint-services"),
                filter("ip6", "no-endpoint-services6"),
            ]
        } else {
            vec![Rule::new(
                format!("jump {SERVICES_CHAIN}"),
                json!([expr::jump(SERVICES_CHAIN)]),
            )]
        };
        t.chains.insert(
            b.name.into(),
            Chain {
                base: Some(BaseSpec {
                    kind: b.kind.into(),
                    hook: b.hook.into(),
                    prio: b.priority,
                    policy: "accept".into(),
                }),
                rules,
            },
        );
    }
    let lookup = |fam: &str, map: &str| {
        Rule::new(
            format!("{fam} daddr . meta l4proto . th dport vmap @{map}"),
            json!([expr::vmap(lookup_key(fam), map)]),
        )
    };
    t.chains.insert(
        SERVICES_CHAIN.into(),
        Chain {
            base: None,
            rules: vec![lookup("ip", "service-ips"), lookup("ip6", "service-ips6")],
        },
    );
    t.chains.insert(
        REJECT_CHAIN.into(),
        Chain {
            base: None,
            rules: vec![
                Rule::new(
                    "meta l4proto tcp reject with tcp reset",
                    json!([
                        expr::matches("==", expr::meta("l4proto"), json!(6)),
                        {"reject": {"type": "tcp reset"}}
                    ]),
                ),
                // In the inet family a bare `reject` is ICMPx port-unreachable.
                Rule::new(
                    "reject",
                    json!([{"reject": {"type": "icmpx", "expr": "port-unreachable"}}]),
                ),
            ],
        },
    );
}

/// `dnat ip to 10.1.0.1:8080`, with the protocol match nft 1.0.6 wants before a port.
fn dnat_rule(k: &VirtualKey, d: &Destination) -> Rule {
    let fam = ip_kw(k.vip);
    Rule::new(
        format!("meta l4proto {} dnat {fam} to {d}", k.protocol),
        json!([
            expr::matches("==", expr::meta("l4proto"), json!(proto_number(k.protocol))),
            expr::dnat(fam, d.addr.to_string(), d.port)
        ]),
    )
}

/// Which shared selection chains a service without affinity jumps to: per family, protocol
/// and selection method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pick {
    v6: bool,
    protocol: Protocol,
    hashed: bool,
}

impl Pick {
    fn of(vs: &VirtualService) -> Pick {
        Pick {
            v6: v6(vs.key.vip),
            protocol: vs.key.protocol,
            hashed: consistent(&vs.scheduler),
        }
    }
}

/// `pick4-tcp-random-10`: DNAT to one of 10 endpoints, of the service whose address and port
/// the packet is sent to.
fn pick_chain(p: &Pick, n: u32) -> String {
    format!(
        "pick{}-{}-{}-{n}",
        if p.v6 { "6" } else { "4" },
        p.protocol,
        if p.hashed { "hash" } else { "random" }
    )
}

/// Pick chains exist for N = 1..=K per kind in use, K the largest endpoint count of that kind
/// rounded up to a power of two, at least 16: a service whose endpoint count changes then
/// (nearly always) finds its new chain already there, so an endpoint change costs map element
/// updates only. Services share these chains instead of holding one rule each because every
/// rule that looks up a map binds it, and the kernel walks all of a map's bindings for each
/// element added (nft_add_set_elem) and all of its elements for each binding added
/// (nf_tables_bind_check_setelem): with a rule per service, 10k services x 10 endpoints took
/// minutes of system time.
const MIN_PICKS: u32 = 16;

fn add_picks<'a>(t: &mut Table, services: impl IntoIterator<Item = &'a VirtualService>) {
    let mut kinds: BTreeMap<Pick, u32> = BTreeMap::new();
    for vs in services {
        if vs.affinity_timeout.is_some() || vs.destinations.is_empty() {
            continue;
        }
        let n = u32::try_from(vs.destinations.len()).unwrap_or(u32::MAX);
        let max = kinds.entry(Pick::of(vs)).or_insert(0);
        *max = (*max).max(n);
    }
    for (p, max) in kinds {
        let k = max
            .checked_next_power_of_two()
            .unwrap_or(max)
            .max(MIN_PICKS);
        for n in 1..=k {
            t.chains.insert(
                pick_chain(&p, n),
                Chain {
                    base: None,
                    rules: vec![pick_rule(&p, n)],
                },
            );
        }
    }
}

fn pick_rule(p: &Pick, n: u32) -> Rule {
    let a: IpAddr = if p.v6 {
        IpAddr::from([0u16; 8])
    } else {
        IpAddr::from([0u8; 4])
    };
    let (fam, emap) = (ip_kw(a), endpoints_map(a, p.protocol));
    // `tcp dport` rather than `th dport`: the port half of the DNAT target needs a transport
    // protocol in nft's context, which the `tcp` payload gives (with its implicit
    // `meta l4proto tcp` match).
    let proto = p.protocol.as_lower();
    let (sel_text, sel) = if p.hashed {
        (
            format!("jhash {fam} saddr mod {n} seed 0x0"),
            expr::jhash(n, expr::payload(fam, "saddr")),
        )
    } else {
        (format!("numgen random mod {n}"), expr::numgen(n))
    };
    Rule::new(
        format!("dnat {fam} to {fam} daddr . {proto} dport . {sel_text} map @{emap}"),
        json!([expr::dnat_map(
            fam,
            expr::concat(vec![
                expr::payload(fam, "daddr"),
                expr::payload(proto, "dport"),
                sel
            ]),
            &emap
        )]),
    )
}

/// Adds the objects of one virtual service to `t`.
fn add_service(t: &mut Table, vs: &VirtualService) {
    let k = &vs.key;
    let fam = ip_kw(k.vip);
    let ek = service_key(k);
    if vs.destinations.is_empty() {
        t.elements
            .entry(no_endpoint_map(k.vip))
            .or_default()
            .items
            .insert(ek, ElemValue::Goto(REJECT_CHAIN.into()));
        return;
    }
    let n = u32::try_from(vs.destinations.len()).unwrap_or(u32::MAX);
    let hashed = consistent(&vs.scheduler);
    let svc = service_chain(k);
    let rules = match vs.affinity_timeout {
        None => {
            let items = &mut t
                .elements
                .entry(endpoints_map(k.vip, k.protocol))
                .or_default()
                .items;
            for (i, d) in (0u32..).zip(&vs.destinations) {
                items.insert(endpoint_key(k, i), ElemValue::Target(d.addr, d.port));
            }
            t.elements
                .entry(service_map(k.vip))
                .or_default()
                .items
                .insert(ek, ElemValue::Goto(pick_chain(&Pick::of(vs), n)));
            return;
        }
        // ClientIP affinity needs a per-endpoint chain: the set update must run for the
        // endpoint finally chosen, whether by affinity or by the selection below.
        Some(timeout) => {
            let mut lookups = Vec::new();
            let mut select = Vec::new();
            for (i, d) in (0u32..).zip(&vs.destinations) {
                let ep = endpoint_chain(k, d);
                let set = affinity_set(k, d);
                lookups.push(Rule::new(
                    format!("{fam} saddr @{set} goto {ep}"),
                    json!([
                        expr::matches("==", expr::payload(fam, "saddr"), json!(format!("@{set}"))),
                        expr::goto(&ep)
                    ]),
                ));
                t.chains.insert(
                    ep.clone(),
                    Chain {
                        base: None,
                        rules: vec![
                            Rule::new(
                                format!("update @{set} {{ {fam} saddr }}"),
                                json!([{"set": {"op": "update", "elem": expr::payload(fam, "saddr"), "set": format!("@{set}")}}]),
                            ),
                            dnat_rule(k, d),
                        ],
                    },
                );
                t.sets.insert(set, affinity_set_decl(k.vip, timeout));
                // Selection is a cascade of rules rather than `numgen ... vmap { ... }`: every
                // inline vmap is an anonymous set, and the kernel names and looks up sets by
                // walking the table's set list (nf_tables_set_alloc_name, nft_set_lookup),
                // which made 10k services quadratic (a 257 s soft lockup in nf_tables_newset on
                // this host). Rule i of the random cascade fires with probability 1/(n-i),
                // uniform overall, as iptables' `statistic --mode random` chains do. The hash
                // cascade compares one hash with a fixed seed (without `seed`, each expression
                // would draw its own). A goto ends the chain.
                select.push(if i + 1 == n {
                    Rule::new(format!("goto {ep}"), json!([expr::goto(&ep)]))
                } else if hashed {
                    Rule::new(
                        format!("jhash {fam} saddr mod {n} seed 0x0 {i} goto {ep}"),
                        json!([
                            expr::matches(
                                "==",
                                expr::jhash(n, expr::payload(fam, "saddr")),
                                json!(i)
                            ),
                            expr::goto(&ep)
                        ]),
                    )
                } else {
                    Rule::new(
                        format!("numgen random mod {} 0 goto {ep}", n - i),
                        json!([
                            expr::matches("==", expr::numgen(n - i), json!(0)),
                            expr::goto(&ep)
                        ]),
                    )
                });
            }
            lookups.extend(select);
            lookups
        }
    };
    t.chains.insert(svc.clone(), Chain { base: None, rules });
    t.elements
        .entry(service_map(k.vip))
        .or_default()
        .items
        .insert(ek, ElemValue::Goto(svc));
}

/// The whole desired table, a pure function of `desired`.
pub fn desired_table(desired: &DesiredProxy) -> Table {
    let mut t = Table::empty(format!("comment \"{TABLE_COMMENT}\";"));
    add_maps(&mut t);
    fixed_chains(&mut t);
    for vs in desired.services.values() {
        add_service(&mut t, vs);
    }
    add_picks(&mut t, desired.services.values());
    t
}

/// The full repair transaction: makes the kernel's table `observed` equal to `desired`,
/// writing only what differs (nothing when they are equal). Affinity sets that still match
/// keep their contents, so a resync does not move clients.
pub fn full_transaction(desired: &DesiredProxy, observed: &Table) -> Tx {
    diff(TARGET, &desired_table(desired), observed)
}

/// The incremental transaction from the committed state `old` to `new`: the same diff, over
/// the objects of the services that changed only, so one endpoint change costs a handful of
/// commands whatever the table size. It assumes the kernel still holds `old`; if it does not
/// (out-of-band edits), the transaction fails as a whole and the caller falls back to a full
/// sync.
pub fn incremental_transaction(old: &DesiredProxy, new: &DesiredProxy) -> Tx {
    let mut before = Table::empty("");
    let mut after = Table::empty("");
    add_maps(&mut before);
    add_maps(&mut after);
    let keys: BTreeSet<&VirtualKey> = old.services.keys().chain(new.services.keys()).collect();
    for k in keys {
        let (o, n) = (old.services.get(k), new.services.get(k));
        if o == n || o.zip(n).is_some_and(|(o, n)| same_objects(o, n)) {
            continue;
        }
        if let Some(o) = o {
            add_service(&mut before, o);
        }
        if let Some(n) = n {
            add_service(&mut after, n);
        }
    }
    if before == after {
        return Tx::default();
    }
    add_picks(&mut before, old.services.values());
    add_picks(&mut after, new.services.values());
    diff(TARGET, &after, &before)
}

/// Whether two versions of a service render the same objects (names of the cluster or the
/// Service are not in the kernel).
fn same_objects(a: &VirtualService, b: &VirtualService) -> bool {
    a.destinations == b.destinations
        && a.affinity_timeout == b.affinity_timeout
        && consistent(&a.scheduler) == consistent(&b.scheduler)
}

/// The transaction that removes the owned table and everything in it, idempotently: `add`
/// first so that `delete` never fails on a missing table.
pub fn cleanup_transaction() -> Tx {
    let mut tx = Tx::default();
    tx.cmd(1, format_args!("add table {TARGET}"));
    tx.cmd(1, format_args!("delete table {TARGET}"));
    tx
}

/// Parses `nft -j -p list table inet sdnlink`.
pub fn parse_listing(json: &str) -> Result<Table, super::table::ParseError> {
    super::table::parse(json, FAMILY, TABLE)
}

/// The virtual services a table holds, as desired-state values: what
/// [`DesiredProxy::adopting`] takes from the kernel for clusters that have not listed yet.
/// Cluster and Service names are not in the kernel, so they stay empty; the scheduler is `rr`
/// or `sh` (what the rules tell apart). Service chains written by earlier versions (a DNAT
/// cascade per service) are read too, so a held cluster survives an upgrade.
pub fn table_services(t: &Table) -> Vec<VirtualService> {
    let mut out = Vec::new();
    let maps = ["service-ips", "service-ips6"]
        .into_iter()
        .map(|m| (m, false))
        .chain(
            ["no-endpoint-services", "no-endpoint-services6"]
                .into_iter()
                .map(|m| (m, true)),
        );
    for (map, refusing) in maps {
        let Some(els) = t.elements.get(map) else {
            continue;
        };
        for (k, v) in &els.items {
            let (Some(protocol), None) = (k.proto.and_then(protocol_of), k.index) else {
                continue;
            };
            let key = VirtualKey {
                vip: k.addr,
                protocol,
                port: k.port,
            };
            let mut vs = VirtualService {
                key,
                cluster: String::new(),
                service: ServiceKey {
                    namespace: String::new(),
                    name: String::new(),
                },
                port_name: String::new(),
                scheduler: Scheduling::RoundRobin,
                affinity_timeout: None,
                destinations: BTreeSet::new(),
            };
            if refusing {
                out.push(vs);
                continue;
            }
            let ElemValue::Goto(chain) = v else {
                continue;
            };
            let Some(c) = t.chains.get(chain) else {
                continue;
            };
            let mut eps: BTreeSet<&str> = BTreeSet::new();
            for r in &c.rules {
                read_rule(t, &r.expr, k, &mut vs, &mut eps);
            }
            for ep in eps {
                if let Some(c) = t.chains.get(ep) {
                    for r in &c.rules {
                        read_rule(t, &r.expr, k, &mut vs, &mut BTreeSet::new());
                    }
                }
            }
            if !vs.destinations.is_empty() {
                out.push(vs);
            }
        }
    }
    out
}

/// Reads one rule of a service or endpoint chain into `vs`: DNAT targets (direct, or through
/// the endpoint map), the hash selector, affinity set updates, and endpoint chains it jumps to.
fn read_rule<'a>(
    t: &Table,
    e: &'a Value,
    k: &ElemKey,
    vs: &mut VirtualService,
    eps: &mut BTreeSet<&'a str>,
) {
    match e {
        Value::Array(a) => a.iter().for_each(|x| read_rule(t, x, k, vs, eps)),
        Value::Object(o) => {
            if o.contains_key("jhash") {
                vs.scheduler = Scheduling::SourceHash;
            }
            if let Some(ep) = o
                .get("goto")
                .and_then(|g| g.get("target"))
                .and_then(Value::as_str)
            {
                eps.insert(ep);
            }
            if let Some(d) = o.get("dnat") {
                match (d.get("addr"), d.get("port").and_then(Value::as_u64)) {
                    (Some(Value::String(a)), Some(p)) => {
                        if let (Ok(addr), Ok(port)) = (a.parse(), u16::try_from(p)) {
                            vs.destinations.insert(Destination { addr, port });
                        }
                    }
                    (Some(m), None) => {
                        let map = m
                            .get("map")
                            .and_then(|m| m.get("data"))
                            .and_then(Value::as_str)
                            .and_then(|d| d.strip_prefix('@'));
                        if let Some(items) = map.and_then(|m| t.elements.get(m)) {
                            let lo = ElemKey {
                                proto: None,
                                index: Some(0),
                                ..*k
                            };
                            let hi = ElemKey {
                                proto: None,
                                index: Some(u32::MAX),
                                ..*k
                            };
                            for v in items.items.range(lo..=hi).map(|(_, v)| v) {
                                if let ElemValue::Target(addr, port) = v {
                                    vs.destinations.insert(Destination {
                                        addr: *addr,
                                        port: *port,
                                    });
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            if let Some(set) = o
                .get("set")
                .filter(|s| s.get("op").and_then(Value::as_str) == Some("update"))
                .and_then(|s| s.get("set"))
                .and_then(Value::as_str)
                .and_then(|s| s.strip_prefix('@'))
            {
                vs.affinity_timeout = t
                    .sets
                    .get(set)
                    .and_then(|d| d.timeout)
                    .and_then(|s| u32::try_from(s).ok());
            }
            o.values().for_each(|x| read_rule(t, x, k, vs, eps));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
