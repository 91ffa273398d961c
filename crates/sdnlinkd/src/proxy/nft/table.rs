//! One owned nftables table as a value: its chains and their rules, its sets and maps, and the
//! elements of its maps. Both sides of a sync have this shape: the desired table is built by
//! pure functions ([`super::ruleset`], `crate::tunnel::mss`), the kernel's is parsed from
//! `nft -j -p list table FAMILY NAME` ([`parse`]). [`diff`] turns the pair into the smallest
//! `nft -f` transaction that makes the kernel equal to the desired table, and nothing at all
//! when they are equal.
//!
//! What is compared:
//! - chains by name, with their hook (type, hook, priority, policy) and their rules in order;
//!   a rule is compared by its expression list as nft 1.0.6 (Debian 12) prints it in JSON, so a
//!   desired rule carries that JSON next to the text it is written with. A rule edited out of
//!   band (or printed differently by another nft version) makes its chain differ, and the
//!   repair rewrites that chain only;
//! - sets and maps by name and declaration (key type, data type, flags, timeout);
//! - the elements of maps, key by key. Elements of plain sets are not compared: sdnlinkd's sets
//!   are dynamic (affinity sets filled by the datapath), and a resync must not move clients.
//!
//! Everything inside the table is the table owner's: a chain or set found there that the
//! desired table lacks is deleted. Nothing outside the table is read or written.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

/// Hook parameters of a base chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseSpec {
    pub kind: String,
    pub hook: String,
    pub prio: i64,
    pub policy: String,
}

/// One rule: the text it is written with (empty for a rule read from the kernel) and its
/// expression list as `nft -j` prints it, which is what two rules are compared by.
#[derive(Clone, Debug)]
pub struct Rule {
    pub text: String,
    pub expr: Value,
}

impl PartialEq for Rule {
    fn eq(&self, other: &Rule) -> bool {
        self.expr == other.expr
    }
}

impl Rule {
    pub fn new(text: impl Into<String>, expr: Value) -> Rule {
        Rule {
            text: text.into(),
            expr,
        }
    }

    /// Names this rule refers to: sets and maps (`@name`) and chains (`jump`/`goto` targets).
    fn references(&self) -> (BTreeSet<&str>, BTreeSet<&str>) {
        let mut sets = BTreeSet::new();
        let mut chains = BTreeSet::new();
        walk_refs(&self.expr, &mut sets, &mut chains);
        (sets, chains)
    }
}

fn walk_refs<'a>(v: &'a Value, sets: &mut BTreeSet<&'a str>, chains: &mut BTreeSet<&'a str>) {
    match v {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix('@') {
                sets.insert(name);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| walk_refs(x, sets, chains)),
        Value::Object(o) => {
            for (k, x) in o {
                if k == "jump" || k == "goto" {
                    if let Some(t) = x.get("target").and_then(Value::as_str) {
                        chains.insert(t);
                    }
                }
                walk_refs(x, sets, chains);
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chain {
    /// `None` for a regular chain.
    pub base: Option<BaseSpec>,
    pub rules: Vec<Rule>,
}

/// A set or map declaration. Two declarations are equal when the fields the kernel reports
/// agree; `body` is the text inside `{ }` that creates it.
#[derive(Clone, Debug)]
pub struct SetDecl {
    pub body: String,
    pub is_map: bool,
    /// Key type, concatenations joined with ` . ` (`ipv4_addr . inet_proto . inet_service`).
    pub key: String,
    /// Data type of a map (`verdict`, `ipv4_addr . inet_service`).
    pub data: Option<String>,
    /// Flags as `nft -j` reports them, sorted (nft 1.0.6 does not report `dynamic`).
    pub flags: Vec<String>,
    /// Default element timeout, seconds.
    pub timeout: Option<u64>,
}

impl PartialEq for SetDecl {
    fn eq(&self, o: &SetDecl) -> bool {
        (
            self.is_map,
            &self.key,
            &self.data,
            &self.flags,
            self.timeout,
        ) == (o.is_map, &o.key, &o.data, &o.flags, o.timeout)
    }
}

/// Key of a map element: `ADDR [. PROTO] . PORT [. INDEX]`, the components the map's key type
/// has (`ipv4_addr . inet_proto . inet_service`, `ipv4_addr . inet_service . integer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ElemKey {
    pub addr: IpAddr,
    /// IP protocol number (written numerically: nft resolves a protocol name through
    /// getprotobyname(3), which reads /etc/protocols once per element).
    pub proto: Option<u8>,
    pub port: u16,
    pub index: Option<u32>,
}

impl std::fmt::Display for ElemKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.addr)?;
        if let Some(p) = self.proto {
            write!(f, " . {p}")?;
        }
        write!(f, " . {}", self.port)?;
        if let Some(i) = self.index {
            write!(f, " . {i}")?;
        }
        Ok(())
    }
}

/// Data of a map element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElemValue {
    /// `goto CHAIN`
    Goto(String),
    /// `ADDR . PORT` (a DNAT target)
    Target(IpAddr, u16),
    /// Anything else, as JSON text: never desired, so always replaced.
    Other(String),
}

impl std::fmt::Display for ElemValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ElemValue::Goto(c) => write!(f, "goto {c}"),
            ElemValue::Target(a, p) => write!(f, "{a} . {p}"),
            ElemValue::Other(s) => f.write_str(s),
        }
    }
}

/// The elements of one map.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Elements {
    pub items: BTreeMap<ElemKey, ElemValue>,
    /// The kernel's map held elements whose key is not of the `ElemKey` shape: they cannot be
    /// named for deletion, so the repair flushes the map and refills it.
    pub foreign: bool,
}

/// One table's content.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    /// Whether the table exists (a listing of a missing table is an absent table).
    pub exists: bool,
    /// Text inside `{ }` when the table is created (a comment).
    pub decl: String,
    pub chains: BTreeMap<String, Chain>,
    pub sets: BTreeMap<String, SetDecl>,
    /// Elements per map (maps only; see the module documentation).
    pub elements: BTreeMap<String, Elements>,
}

impl Table {
    /// An existing, empty table.
    pub fn empty(decl: impl Into<String>) -> Table {
        Table {
            exists: true,
            decl: decl.into(),
            ..Default::default()
        }
    }
}

/// A listing that is not what `nft -j list table` prints.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("parsing nft JSON output: {0}")]
    Json(#[from] serde_json::Error),
    #[error("nft JSON output: {what} of {object} {name:?} is {value}; expected {expected}")]
    Field {
        what: &'static str,
        object: &'static str,
        name: String,
        value: String,
        expected: &'static str,
    },
}

/// Parses `nft -j -p list table FAMILY NAME` output into a [`Table`], keeping only objects of
/// that table. Empty input is an absent table.
pub fn parse(json: &str, family: &str, name: &str) -> Result<Table, ParseError> {
    let mut t = Table::default();
    if json.trim().is_empty() {
        return Ok(t);
    }
    let mut root: Value = serde_json::from_str(json)?;
    let Some(Value::Array(items)) = root.get_mut("nftables").map(Value::take) else {
        return Ok(t);
    };
    let ours = |o: &Value, table_key: &str| {
        o.get("family").and_then(Value::as_str) == Some(family)
            && o.get(table_key).and_then(Value::as_str) == Some(name)
    };
    let mut rules: Vec<(String, Value)> = Vec::new();
    for mut item in items {
        let Value::Object(obj) = &mut item else {
            continue;
        };
        let Some((kind, mut o)) = obj.iter_mut().next().map(|(k, v)| (k.clone(), v.take())) else {
            continue;
        };
        match kind.as_str() {
            "table" if ours(&o, "name") => t.exists = true,
            "chain" if ours(&o, "table") => {
                let cname = str_field(&o, "name");
                let base = match (o.get("type"), o.get("hook")) {
                    (Some(_), Some(_)) => Some(BaseSpec {
                        kind: str_field(&o, "type"),
                        hook: str_field(&o, "hook"),
                        prio: o.get("prio").and_then(Value::as_i64).ok_or_else(|| {
                            ParseError::Field {
                                what: "prio",
                                object: "chain",
                                name: cname.clone(),
                                value: o.get("prio").map(|v| v.to_string()).unwrap_or_default(),
                                expected: "an integer (nft -j prints priorities numerically)",
                            }
                        })?,
                        policy: str_field(&o, "policy"),
                    }),
                    _ => None,
                };
                t.chains.insert(
                    cname,
                    Chain {
                        base,
                        rules: vec![],
                    },
                );
            }
            "rule" if ours(&o, "table") => {
                let chain = str_field(&o, "chain");
                let expr = o.get_mut("expr").map(Value::take).unwrap_or(Value::Null);
                rules.push((chain, expr));
            }
            "set" | "map" if ours(&o, "table") => {
                let sname = str_field(&o, "name");
                let is_map = kind == "map";
                let decl = SetDecl {
                    body: String::new(),
                    is_map,
                    key: type_text(o.get("type")),
                    data: is_map.then(|| type_text(o.get("map"))),
                    flags: {
                        let mut f: Vec<String> = match o.get("flags") {
                            Some(Value::Array(a)) => a
                                .iter()
                                .filter_map(Value::as_str)
                                .map(String::from)
                                .collect(),
                            Some(Value::String(s)) => vec![s.clone()],
                            _ => vec![],
                        };
                        f.sort();
                        f
                    },
                    timeout: o.get("timeout").and_then(Value::as_u64),
                };
                if is_map {
                    let types: Vec<&str> = decl.key.split(" . ").collect();
                    let els = parse_elements(o.get_mut("elem").map(Value::take), &types);
                    t.elements.insert(sname.clone(), els);
                }
                t.sets.insert(sname, decl);
            }
            _ => {}
        }
    }
    // `nft -j list table` prints every chain before any rule, in rule order per chain.
    for (chain, expr) in rules {
        t.chains
            .entry(chain)
            .or_default()
            .rules
            .push(Rule::new("", expr));
    }
    Ok(t)
}

fn str_field(o: &Value, key: &str) -> String {
    o.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn type_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().unwrap_or("?"))
            .collect::<Vec<_>>()
            .join(" . "),
        _ => String::new(),
    }
}

fn parse_elements(elem: Option<Value>, types: &[&str]) -> Elements {
    let mut out = Elements::default();
    let Some(Value::Array(list)) = elem else {
        return out;
    };
    for e in list {
        let parsed = match &e {
            Value::Array(pair) if pair.len() == 2 => {
                parse_key(&pair[0], types).map(|k| (k, parse_value(&pair[1])))
            }
            _ => None,
        };
        match parsed {
            Some((k, v)) => {
                out.items.insert(k, v);
            }
            None => out.foreign = true,
        }
    }
    out
}

/// An element key of the map whose key type is `types`, if it has the `ElemKey` shape.
fn parse_key(v: &Value, types: &[&str]) -> Option<ElemKey> {
    let parts = v.get("concat")?.as_array()?;
    if parts.len() != types.len() {
        return None;
    }
    let (mut addr, mut proto, mut port, mut index) = (None, None, None, None);
    for (i, (part, ty)) in parts.iter().zip(types).enumerate() {
        match (i, *ty) {
            (0, "ipv4_addr" | "ipv6_addr") => addr = part.as_str()?.parse().ok(),
            (1, "inet_proto") => {
                proto = Some(match part {
                    Value::Number(n) => u8::try_from(n.as_u64()?).ok()?,
                    Value::String(s) => proto_number(s)?,
                    _ => return None,
                })
            }
            (_, "inet_service") if port.is_none() => {
                port = Some(u16::try_from(part.as_u64()?).ok()?)
            }
            (_, "integer") if port.is_some() && i + 1 == parts.len() => {
                index = Some(u32::try_from(part.as_u64()?).ok()?)
            }
            _ => return None,
        }
    }
    Some(ElemKey {
        addr: addr?,
        proto,
        port: port?,
        index,
    })
}

/// Protocol names nft prints without `-p`.
fn proto_number(name: &str) -> Option<u8> {
    match name {
        "tcp" => Some(6),
        "udp" => Some(17),
        "sctp" => Some(132),
        _ => None,
    }
}

fn parse_value(v: &Value) -> ElemValue {
    if let Some(t) = v
        .get("goto")
        .and_then(|g| g.get("target"))
        .and_then(Value::as_str)
    {
        return ElemValue::Goto(t.to_string());
    }
    if let Some(parts) = v.get("concat").and_then(Value::as_array) {
        if let [a, p] = parts.as_slice() {
            if let (Some(addr), Some(port)) = (
                a.as_str().and_then(|s| s.parse::<IpAddr>().ok()),
                p.as_u64().and_then(|p| u16::try_from(p).ok()),
            ) {
                return ElemValue::Target(addr, port);
            }
        }
    }
    ElemValue::Other(v.to_string())
}

/// A transaction being written: `nft -f` text, its number of commands, and the number of
/// kernel objects those commands add, change or delete (one per chain, rule, set and element:
/// one `add element` command can carry many elements, and a `flush chain` removes every rule).
#[derive(Debug, Default)]
pub struct Tx {
    text: String,
    commands: usize,
    objects: usize,
}

impl Tx {
    /// The transaction text for `nft -f -`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Commands in it.
    pub fn commands(&self) -> usize {
        self.commands
    }

    /// Kernel objects it writes.
    pub fn objects(&self) -> usize {
        self.objects
    }

    pub fn is_empty(&self) -> bool {
        self.commands == 0
    }

    /// One command writing `objects` objects.
    pub fn cmd(&mut self, objects: usize, args: std::fmt::Arguments<'_>) {
        // Writing to a String cannot fail.
        let _ = self.text.write_fmt(args);
        self.text.push('\n');
        self.commands += 1;
        self.objects += objects;
    }

    fn elements<'a>(
        &mut self,
        verb: &str,
        target: &str,
        map: &str,
        items: impl ExactSizeIterator<Item = (&'a ElemKey, Option<&'a ElemValue>)>,
    ) {
        let n = items.len();
        if n == 0 {
            return;
        }
        let _ = write!(self.text, "{verb} element {target} {map} {{");
        for (i, (k, v)) in items.enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = match v {
                Some(v) => write!(self.text, "{sep}\n\t{k} : {v}"),
                None => write!(self.text, "{sep}\n\t{k}"),
            };
        }
        self.text.push_str("\n}\n");
        self.commands += 1;
        self.objects += n;
    }
}

/// The transaction that makes the kernel's table `have` equal to `want`, for the table
/// `target` (`inet sdnlink`). Empty when they are equal. Granularity: a chain whose rules differ
/// is flushed and rewritten (its rules have no identity of their own); sets, maps, chains and
/// elements are added, replaced or deleted one by one.
///
/// Order inside the one transaction: references go before what they point to, so elements
/// are deleted first, then chains are flushed, then sets and chains deleted; creation runs
/// the other way (sets, chains, rules, elements).
pub fn diff(target: &str, want: &Table, have: &Table) -> Tx {
    let mut tx = Tx::default();
    if !have.exists {
        if want.decl.is_empty() {
            tx.cmd(1, format_args!("add table {target}"));
        } else {
            tx.cmd(1, format_args!("add table {target} {{ {} }}", want.decl));
        }
    }

    let mut gone_sets: BTreeSet<&str> = BTreeSet::new();
    let mut new_sets: BTreeSet<&str> = BTreeSet::new();
    for (name, have_decl) in &have.sets {
        if want.sets.get(name) != Some(have_decl) {
            gone_sets.insert(name);
        }
    }
    for name in want.sets.keys() {
        if !have.sets.contains_key(name) || gone_sets.contains(name.as_str()) {
            new_sets.insert(name);
        }
    }
    let mut gone_chains: BTreeSet<&str> = BTreeSet::new();
    let mut new_chains: BTreeSet<&str> = BTreeSet::new();
    for (name, c) in &have.chains {
        match want.chains.get(name) {
            Some(w) if w.base == c.base => {}
            _ => {
                gone_chains.insert(name);
            }
        }
    }
    for name in want.chains.keys() {
        if !have.chains.contains_key(name) || gone_chains.contains(name.as_str()) {
            new_chains.insert(name);
        }
    }
    // Kept chains whose rules differ, or point at a set or chain that is replaced.
    let mut rewrite: BTreeSet<&str> = BTreeSet::new();
    for (name, w) in &want.chains {
        let Some(h) = have.chains.get(name) else {
            continue;
        };
        if gone_chains.contains(name.as_str()) {
            continue;
        }
        let stale_ref = h.rules.iter().any(|r| {
            let (s, c) = r.references();
            s.iter().any(|x| gone_sets.contains(x)) || c.iter().any(|x| gone_chains.contains(x))
        });
        if h.rules != w.rules || stale_ref {
            rewrite.insert(name);
        }
    }

    // Element changes of maps that stay.
    let empty = Elements::default();
    let mut del_elems: Vec<(&str, Vec<&ElemKey>)> = Vec::new();
    let mut add_elems: Vec<(&str, Vec<(&ElemKey, &ElemValue)>)> = Vec::new();
    let mut flush_maps: Vec<&str> = Vec::new();
    let points_at_gone =
        |v: &ElemValue| matches!(v, ElemValue::Goto(c) if gone_chains.contains(c.as_str()));
    for (map, decl) in &want.sets {
        if !decl.is_map {
            continue;
        }
        let w = want.elements.get(map).unwrap_or(&empty);
        if new_sets.contains(map.as_str()) {
            add_elems.push((map, w.items.iter().collect()));
            continue;
        }
        let h = have.elements.get(map).unwrap_or(&empty);
        if h.foreign {
            flush_maps.push(map);
            add_elems.push((map, w.items.iter().collect()));
            continue;
        }
        let mut del = Vec::new();
        for (k, hv) in &h.items {
            if w.items.get(k) != Some(hv) || points_at_gone(hv) {
                del.push(k);
            }
        }
        let mut add = Vec::new();
        for (k, wv) in &w.items {
            if h.items.get(k) != Some(wv) || points_at_gone(wv) {
                add.push((k, wv));
            }
        }
        del_elems.push((map, del));
        add_elems.push((map, add));
    }

    for (map, keys) in &del_elems {
        tx.elements("delete", target, map, keys.iter().map(|k| (*k, None)));
    }
    for map in &flush_maps {
        let n = have.elements.get(*map).map_or(0, |e| e.items.len().max(1));
        tx.cmd(n, format_args!("flush map {target} {map}"));
    }
    // Deleting a chain deletes its rules with it (nf_tables_delchain), but only at that
    // command: a gone chain is flushed first when its rules jump to other chains or use a set
    // that goes, because the kernel refuses (EBUSY) to delete a chain or set while a rule
    // still refers to it, and the sets and chains are deleted before the chains below.
    let blocks = |c: &Chain| {
        c.rules.iter().any(|r| {
            let (sets, chains) = r.references();
            !chains.is_empty() || sets.iter().any(|s| gone_sets.contains(s))
        })
    };
    let mut flushed: BTreeSet<&str> = BTreeSet::new();
    for name in rewrite.iter().chain(gone_chains.iter()) {
        let c = &have.chains[*name];
        if !c.rules.is_empty() && (rewrite.contains(name) || blocks(c)) {
            tx.cmd(c.rules.len(), format_args!("flush chain {target} {name}"));
            flushed.insert(name);
        }
    }
    for name in &gone_sets {
        let kind = if have.sets[*name].is_map {
            "map"
        } else {
            "set"
        };
        tx.cmd(1, format_args!("delete {kind} {target} {name}"));
    }
    for name in &gone_chains {
        let rules = if flushed.contains(name) {
            0
        } else {
            have.chains[*name].rules.len()
        };
        tx.cmd(1 + rules, format_args!("delete chain {target} {name}"));
    }
    for name in &new_sets {
        let d = &want.sets[*name];
        let kind = if d.is_map { "map" } else { "set" };
        tx.cmd(
            1,
            format_args!("add {kind} {target} {name} {{ {} }}", d.body),
        );
    }
    for name in &new_chains {
        match &want.chains[*name].base {
            Some(b) => tx.cmd(
                1,
                format_args!(
                    "add chain {target} {name} {{ type {} hook {} priority {}; policy {}; }}",
                    b.kind, b.hook, b.prio, b.policy
                ),
            ),
            None => tx.cmd(1, format_args!("add chain {target} {name}")),
        }
    }
    for name in new_chains.iter().chain(rewrite.iter()) {
        for r in &want.chains[*name].rules {
            tx.cmd(1, format_args!("add rule {target} {name} {}", r.text));
        }
    }
    for (map, items) in add_elems {
        tx.elements(
            "add",
            target,
            map,
            items.into_iter().map(|(k, v)| (k, Some(v))),
        );
    }
    tx
}

/// Builders of the JSON expressions `nft -j` prints, for the desired side of a comparison.
pub mod expr {
    use serde_json::{json, Value};

    pub fn payload(protocol: &str, field: &str) -> Value {
        json!({"payload": {"protocol": protocol, "field": field}})
    }

    pub fn meta(key: &str) -> Value {
        json!({"meta": {"key": key}})
    }

    pub fn matches(op: &str, left: Value, right: Value) -> Value {
        json!({"match": {"op": op, "left": left, "right": right}})
    }

    pub fn concat(parts: Vec<Value>) -> Value {
        json!({ "concat": parts })
    }

    pub fn goto(chain: &str) -> Value {
        json!({"goto": {"target": chain}})
    }

    pub fn jump(chain: &str) -> Value {
        json!({"jump": {"target": chain}})
    }

    pub fn numgen(modulus: u32) -> Value {
        json!({"numgen": {"mode": "random", "mod": modulus, "offset": 0}})
    }

    pub fn jhash(modulus: u32, of: Value) -> Value {
        json!({"jhash": {"mod": modulus, "seed": 0, "expr": of}})
    }

    pub fn vmap(key: Value, map: &str) -> Value {
        json!({"vmap": {"key": key, "data": format!("@{map}")}})
    }

    /// `dnat FAMILY to ADDR:PORT`
    pub fn dnat(family: &str, addr: String, port: u16) -> Value {
        json!({"dnat": {"family": family, "addr": addr, "port": port}})
    }

    /// `dnat FAMILY to KEY map @MAP` (address and port from the map's concatenated data)
    pub fn dnat_map(family: &str, key: Value, map: &str) -> Value {
        json!({"dnat": {"family": family, "addr": {"map": {"key": key, "data": format!("@{map}")}}}})
    }
}

#[cfg(test)]
mod tests;
