use super::*;
use serde_json::json;

fn rule(text: &str, expr: Value) -> Rule {
    Rule::new(text, expr)
}

fn jump_rule(to: &str) -> Rule {
    rule(&format!("jump {to}"), json!([expr::jump(to)]))
}

fn map_decl() -> SetDecl {
    SetDecl {
        body: "type ipv4_addr . inet_proto . inet_service : verdict;".into(),
        is_map: true,
        key: "ipv4_addr . inet_proto . inet_service".into(),
        data: Some("verdict".into()),
        flags: vec![],
        timeout: None,
    }
}

fn key(a: &str, port: u16) -> ElemKey {
    ElemKey {
        addr: a.parse().expect("literal"),
        proto: Some(6),
        port,
        index: None,
    }
}

fn sample() -> Table {
    let mut t = Table::empty("comment \"x\";");
    t.chains.insert(
        "in".into(),
        Chain {
            base: Some(BaseSpec {
                kind: "nat".into(),
                hook: "prerouting".into(),
                prio: -100,
                policy: "accept".into(),
            }),
            rules: vec![jump_rule("a")],
        },
    );
    t.chains.insert(
        "a".into(),
        Chain {
            base: None,
            rules: vec![jump_rule("b")],
        },
    );
    t.chains.insert("b".into(), Chain::default());
    t.sets.insert("m".into(), map_decl());
    t.elements.insert(
        "m".into(),
        Elements {
            items: [(key("10.0.0.1", 80), ElemValue::Goto("b".into()))].into(),
            foreign: false,
        },
    );
    t
}

#[test]
fn equal_tables_need_no_transaction() {
    assert!(diff("inet t", &sample(), &sample()).is_empty());
    assert_eq!(diff("inet t", &sample(), &sample()).text(), "");
}

#[test]
fn absent_table_is_created_whole_in_dependency_order() {
    let tx = diff("inet t", &sample(), &Table::default());
    assert_eq!(
        tx.text(),
        "add table inet t { comment \"x\"; }\n\
         add map inet t m { type ipv4_addr . inet_proto . inet_service : verdict; }\n\
         add chain inet t a\n\
         add chain inet t b\n\
         add chain inet t in { type nat hook prerouting priority -100; policy accept; }\n\
         add rule inet t a jump b\n\
         add rule inet t in jump a\n\
         add element inet t m {\n\t10.0.0.1 . 6 . 80 : goto b\n}\n"
    );
    assert_eq!((tx.commands(), tx.objects()), (8, 8));
}

#[test]
fn a_changed_base_chain_is_recreated_and_a_stale_chain_unreferenced_first() {
    let want = sample();
    let mut have = sample();
    have.chains.get_mut("in").expect("present").base = Some(BaseSpec {
        kind: "nat".into(),
        hook: "prerouting".into(),
        prio: 0,
        policy: "accept".into(),
    });
    // A stale chain that a kept chain and an element point at.
    have.chains.insert("old".into(), Chain::default());
    have.chains.get_mut("a").expect("present").rules = vec![jump_rule("old")];
    have.elements
        .get_mut("m")
        .expect("present")
        .items
        .insert(key("10.0.0.2", 80), ElemValue::Goto("old".into()));
    let tx = diff("inet t", &want, &have);
    assert_eq!(
        tx.text(),
        "delete element inet t m {\n\t10.0.0.2 . 6 . 80\n}\n\
         flush chain inet t a\n\
         flush chain inet t in\n\
         delete chain inet t in\n\
         delete chain inet t old\n\
         add chain inet t in { type nat hook prerouting priority -100; policy accept; }\n\
         add rule inet t in jump a\n\
         add rule inet t a jump b\n"
    );
}

#[test]
fn a_replaced_map_takes_its_elements_and_the_rules_using_it_along() {
    let mut want = sample();
    want.chains.get_mut("b").expect("present").rules = vec![rule(
        "ip daddr . meta l4proto . th dport vmap @m",
        json!([expr::vmap(
            expr::concat(vec![
                expr::payload("ip", "daddr"),
                expr::meta("l4proto"),
                expr::payload("th", "dport")
            ]),
            "m"
        )]),
    )];
    let mut have = want.clone();
    have.sets.get_mut("m").expect("present").data = Some("ipv4_addr".into());
    let tx = diff("inet t", &want, &have);
    assert_eq!(
        tx.text(),
        "flush chain inet t b\n\
         delete map inet t m\n\
         add map inet t m { type ipv4_addr . inet_proto . inet_service : verdict; }\n\
         add rule inet t b ip daddr . meta l4proto . th dport vmap @m\n\
         add element inet t m {\n\t10.0.0.1 . 6 . 80 : goto b\n}\n"
    );
}

#[test]
fn a_gone_chain_is_flushed_first_only_when_its_rules_refer_to_what_goes() {
    let want = sample();
    let mut have = sample();
    let accept = rule("accept", json!([{"accept": null}]));
    have.chains.insert(
        "plain".into(),
        Chain {
            base: None,
            rules: vec![accept.clone(), accept],
        },
    );
    let mut s = map_decl();
    s.is_map = false;
    have.sets.insert("s".into(), s);
    have.chains.insert(
        "uses-s".into(),
        Chain {
            base: None,
            rules: vec![rule(
                "ip saddr @s accept",
                json!([expr::matches("==", expr::payload("ip", "saddr"), json!("@s")), {"accept": null}]),
            )],
        },
    );
    let tx = diff("inet t", &want, &have);
    assert_eq!(
        tx.text(),
        "flush chain inet t uses-s\n\
         delete set inet t s\n\
         delete chain inet t plain\n\
         delete chain inet t uses-s\n"
    );
    // The unflushed chain's two rules go with it.
    assert_eq!((tx.commands(), tx.objects()), (4, 6));
}

#[test]
fn a_map_with_unnameable_elements_is_flushed_and_refilled() {
    let want = sample();
    let mut have = sample();
    have.elements.get_mut("m").expect("present").foreign = true;
    let tx = diff("inet t", &want, &have);
    assert_eq!(
        tx.text(),
        "flush map inet t m\n\
         add element inet t m {\n\t10.0.0.1 . 6 . 80 : goto b\n}\n"
    );
}

#[test]
fn parse_keeps_only_the_named_table_and_reads_elements_of_maps() {
    let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
      {"table": {"family": "inet", "name": "t", "handle": 1}},
      {"table": {"family": "ip", "name": "t", "handle": 2}},
      {"map": {"family": "inet", "name": "m", "table": "t", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 1, "map": "verdict",
         "elem": [[{"concat": ["10.0.0.1", 6, 80]}, {"goto": {"target": "b"}}],
                  [{"concat": ["10.0.0.3", "udp", 53]}, {"accept": null}],
                  [{"prefix": {"addr": "10.0.0.0", "len": 8}}, {"goto": {"target": "b"}}]]}},
      {"set": {"family": "inet", "name": "s", "table": "t", "type": "ipv4_addr", "handle": 4, "size": 65535, "flags": ["timeout"], "timeout": 600,
         "elem": [{"elem": {"val": "192.0.2.1", "timeout": 600, "expires": 10}}]}},
      {"chain": {"family": "inet", "table": "t", "name": "in", "handle": 5, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
      {"chain": {"family": "ip", "table": "t", "name": "x", "handle": 5}},
      {"rule": {"family": "inet", "table": "t", "chain": "in", "handle": 9, "expr": [{"jump": {"target": "a"}}]}},
      {"rule": {"family": "inet", "table": "u", "chain": "in", "handle": 9, "expr": [{"jump": {"target": "z"}}]}}]}"#;
    let t = parse(json, "inet", "t").expect("valid listing");
    assert!(t.exists);
    assert_eq!(t.chains.len(), 1);
    assert_eq!(t.chains["in"].rules, vec![jump_rule("a")]);
    assert_eq!(
        t.chains["in"].base.as_ref().map(|b| b.prio),
        Some(-100),
        "{t:?}"
    );
    assert_eq!(t.sets["m"], map_decl());
    assert_eq!(t.sets["s"].timeout, Some(600));
    assert!(!t.elements.contains_key("s"), "set contents are not read");
    let m = &t.elements["m"];
    assert!(m.foreign, "the prefix element has no ElemKey shape");
    assert_eq!(m.items[&key("10.0.0.1", 80)], ElemValue::Goto("b".into()));
    let udp = ElemKey {
        proto: Some(17),
        ..key("10.0.0.3", 53)
    };
    assert_eq!(m.items[&udp], ElemValue::Other(r#"{"accept":null}"#.into()));
    assert_eq!(parse("", "inet", "t").expect("empty"), Table::default());
    assert!(parse("{", "inet", "t").is_err());
}
