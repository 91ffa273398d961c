// figment::Jail closures must return figment::Error, which is large; the tests own that API shape.
#![allow(clippy::result_large_err)]

use super::*;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;

/// A valid base: one local cluster and one remote with a static peer.
const BASE: &str = r#"
[local]
name = "east"
pod_cidrs = ["10.128.0.0/14"]
service_cidrs = ["172.30.0.0/16"]
node_name = "node-1"
[dns]
upstreams = ["192.0.2.53"]
[[remote]]
name = "west"
pod_cidrs = ["10.132.0.0/14"]
service_cidrs = ["172.31.0.0/16"]
[[remote.peers]]
public_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
endpoint = "198.51.100.7:51820"
allowed_ips = ["10.132.0.0/23"]
"#;

fn errors(toml: &str) -> Vec<String> {
    match parse_str(toml) {
        Ok(_) => panic!("config was accepted:\n{toml}"),
        Err(ConfigError(e)) => e,
    }
}

/// Asserts that exactly one error was reported and it equals `expected`.
fn only_error(toml: &str, expected: &str) {
    let e = errors(toml);
    assert_eq!(e, vec![expected.to_string()], "for config:\n{toml}");
}

fn base_with(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "test bug: {from:?} not in BASE");
    BASE.replacen(from, to, 1)
}

#[test]
fn base_is_valid_and_defaults_apply() {
    let c = parse_str(BASE).expect("valid");
    assert_eq!(c.local.name, "east");
    assert_eq!(c.namespace.name, "sdnlink");
    assert_eq!(c.namespace.host_interface, "sdnlink0");
    assert_eq!(c.tunnel.listen_port, 51820);
    assert_eq!(c.tunnel.mode, TunnelMode::Auto);
    assert_eq!(c.proxy.backend, ProxyBackendKind::Auto);
    assert_eq!(c.dns.port, 53);
    assert_eq!(
        c.dns.upstreams,
        vec!["192.0.2.53:53".parse().expect("addr")]
    );
    assert_eq!(c.transit_host_addr().to_string(), "169.254.100.1");
    assert_eq!(c.transit_ns_addr().to_string(), "169.254.100.2");
    assert_eq!(
        c.remote[0].peers[0].allowed_ips[0].to_string(),
        "10.132.0.0/23"
    );
}

#[test]
fn shipped_example_is_valid() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../etc/sdnlink/sdnlink.toml"
    ))
    .expect("example config");
    let c = parse_str(&text).expect("the shipped example must validate");
    assert_eq!(c.local.name, "east");
    assert!(!c.remote.is_empty());
}

#[test]
fn unknown_key_is_an_error() {
    let e = errors(&format!("{BASE}\n[proxy]\nbackends = \"ipvs\"\n"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("unknown field") && e[0].contains("backends"),
        "{e:?}"
    );
}

#[test]
fn malformed_cidr() {
    only_error(
        &base_with(
            r#"pod_cidrs = ["10.128.0.0/14"]"#,
            r#"pod_cidrs = ["10.128.0.0/33"]"#,
        ),
        r#"local.pod_cidrs[0] = "10.128.0.0/33": not a CIDR (expected address/prefix, e.g. "10.128.0.0/14" or "fd00:10::/48")"#,
    );
}

#[test]
fn cidr_with_host_bits() {
    only_error(
        &base_with(
            r#"service_cidrs = ["172.31.0.0/16"]"#,
            r#"service_cidrs = ["172.31.0.1/16"]"#,
        ),
        r#"remote[0].service_cidrs[0] = "172.31.0.1/16": host bits are set; did you mean "172.31.0.0/16"?"#,
    );
}

#[test]
fn empty_pod_cidrs() {
    only_error(
        &base_with(r#"pod_cidrs = ["10.128.0.0/14"]"#, "pod_cidrs = []"),
        r#"local.pod_cidrs is empty: give at least one CIDR, e.g. ["10.128.0.0/14"]"#,
    );
}

#[test]
fn malformed_address() {
    only_error(
        &format!("{BASE}\n[tunnel]\nendpoint = \"203.0.113.10\"\n"),
        r#"tunnel.endpoint = "203.0.113.10": not an address:port (expected e.g. "203.0.113.10:51820" or "[2001:db8::1]:51820")"#,
    );
    only_error(
        &base_with("[dns]\n", "[dns]\naddress = \"169.254.20.530\"\n"),
        r#"dns.address = "169.254.20.530": not an IP address (expected e.g. "169.254.20.53")"#,
    );
}

#[test]
fn cluster_name_not_a_label() {
    only_error(
        &base_with(r#"name = "west""#, r#"name = "West_1""#),
        r#"remote[0].name = "West_1": not a DNS label (1-63 characters a-z, 0-9 and '-', starting and ending with a letter or digit)"#,
    );
}

#[test]
fn repeated_cluster_name() {
    only_error(
        &base_with(r#"name = "west""#, r#"name = "east""#),
        r#"remote[0].name = "east": already used by local.name; cluster names must be unique"#,
    );
}

#[test]
fn reserved_name_all() {
    only_error(
        &base_with(r#"name = "west""#, r#"name = "all""#),
        r#"remote[0].name = "all": reserved for the merged cluster.all zone; choose another name"#,
    );
}

#[test]
fn overlapping_pod_cidrs_name_both_sides() {
    // The static peer is moved along so that only the overlap is wrong.
    let toml = base_with(
        r#"pod_cidrs = ["10.132.0.0/14"]"#,
        r#"pod_cidrs = ["10.130.0.0/15"]"#,
    )
    .replace("10.132.0.0/23", "10.130.0.0/23");
    only_error(
        &toml,
        "local.pod_cidrs[0] 10.128.0.0/14 overlaps remote[0].pod_cidrs[0] 10.130.0.0/15: pod CIDRs, service CIDRs, the transit CIDR and the DNS address must all be disjoint",
    );
}

#[test]
fn overlapping_service_and_transit_and_dns() {
    only_error(
        &base_with("[dns]\n", "[dns]\naddress = \"172.30.0.10\"\n"),
        "local.service_cidrs[0] 172.30.0.0/16 overlaps dns.address 172.30.0.10: pod CIDRs, service CIDRs, the transit CIDR and the DNS address must all be disjoint",
    );
    only_error(
        &format!("{BASE}\n[namespace]\ntransit_cidr = \"172.31.255.0/30\"\n"),
        "remote[0].service_cidrs[0] 172.31.0.0/16 overlaps namespace.transit_cidr 172.31.255.0/30: pod CIDRs, service CIDRs, the transit CIDR and the DNS address must all be disjoint",
    );
}

#[test]
fn peer_allowed_ips_outside_pod_cidrs() {
    only_error(
        &base_with(
            r#"allowed_ips = ["10.132.0.0/23"]"#,
            r#"allowed_ips = ["10.128.0.0/23"]"#,
        ),
        r#"remote[0].peers[0].allowed_ips[0] = "10.128.0.0/23": outside remote[0].pod_cidrs ["10.132.0.0/14"]; a peer may only route that cluster's pod addresses"#,
    );
}

#[test]
fn peer_key_not_32_bytes() {
    only_error(
        &base_with("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "AAAA"),
        r#"remote[0].peers[0].public_key = "AAAA": not a WireGuard key (base64 of 32 bytes, as `wg pubkey` prints)"#,
    );
}

#[test]
fn interface_name_too_long() {
    only_error(
        &format!("{BASE}\n[tunnel]\ninterface = \"sdnlink-wireguard0\"\n"),
        r#"tunnel.interface = "sdnlink-wireguard0": not a valid interface name (1-15 bytes, no '/', ':' or spaces)"#,
    );
}

#[test]
fn invalid_enum_values() {
    only_error(
        &format!("{BASE}\n[tunnel]\nmode = \"fast\"\n"),
        r#"tunnel.mode = "fast": expected one of kernel, userspace, auto"#,
    );
    only_error(
        &format!("{BASE}\n[proxy]\nbackend = \"iptables\"\n"),
        r#"proxy.backend = "iptables": expected one of ipvs, nftables, auto"#,
    );
}

#[test]
fn key_file_readable_by_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("private.key");
    std::fs::write(&key, "x").expect("write");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let k = key.display().to_string();
    only_error(
        &format!("{BASE}\n[tunnel]\nprivate_key_file = \"{k}\"\n"),
        &format!("tunnel.private_key_file = \"{k}\": mode 0644 lets group or others read the private key; run `chmod 600 {k}`"),
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    parse_str(&format!("{BASE}\n[tunnel]\nprivate_key_file = \"{k}\"\n")).expect("0600 is fine");
}

#[test]
fn missing_kubeconfig() {
    let toml = base_with(
        r#"name = "west""#,
        "name = \"west\"\nkubeconfig = \"/nonexistent/west.kubeconfig\"",
    );
    only_error(
        &toml,
        r#"remote[0].kubeconfig = "/nonexistent/west.kubeconfig": cannot read the kubeconfig (No such file or directory (os error 2)); create it or remove the key"#,
    );
}

#[test]
fn kubeconfig_with_exec_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("west.kubeconfig");
    let mut f = std::fs::File::create(&path).expect("create");
    writeln!(
        f,
        "apiVersion: v1\nkind: Config\nusers:\n- name: admin\n  user:\n    exec:\n      command: /bin/evil\n"
    )
    .expect("write");
    let p = path.display().to_string();
    only_error(
        &base_with(r#"name = "west""#, &format!("name = \"west\"\nkubeconfig = \"{p}\"")),
        &format!("remote[0].kubeconfig = \"{p}\": user \"admin\" uses `exec`, which would run a program as root; use a bearer token or a client certificate instead"),
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let toml = base_with(r#"name = "west""#, r#"name = "all""#)
        .replace("10.128.0.0/14", "nonsense")
        .replace("198.51.100.7:51820", "somewhere");
    let e = errors(&toml);
    assert_eq!(e.len(), 3, "{e:#?}");
}

#[test]
fn layering_file_dropin_env() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "sdnlink.toml",
            &format!(
                "{}\n[proxy]\nscheduler = \"lc\"\n",
                base_with("[dns]\n", "[dns]\nttl = 7\n")
            ),
        )?;
        jail.create_dir("sdnlink.d")?;
        jail.create_file("sdnlink.d/10-a.toml", "[dns]\nttl = 9\nport = 5300\n")?;
        jail.create_file("sdnlink.d/20-b.toml", "[dns]\nport = 5301\n")?;
        jail.create_file("sdnlink.d/ignored.conf", "this is not toml = = =\n")?;
        jail.set_env("SDNLINK_DNS__PORT", "5353");
        jail.set_env("SDNLINK_CONFIG", "ignored by the loader");
        let main = jail.directory().join("sdnlink.toml");
        let c = load(&main).map_err(|e| e.to_string())?;
        assert_eq!(c.proxy.scheduler.name(), "lc", "file beats defaults");
        assert_eq!(c.dns.ttl, 9, "drop-in beats file");
        assert_eq!(
            c.dns.port, 5353,
            "environment beats drop-ins (20-b applied after 10-a)"
        );
        jail.clear_env();
        let c = load(&main).map_err(|e| e.to_string())?;
        assert_eq!(c.dns.port, 5301, "later drop-in wins");
        Ok(())
    });
}

#[test]
fn missing_main_file_is_an_error() {
    let e = load(std::path::Path::new("/nonexistent/sdnlink.toml")).expect_err("must fail");
    assert_eq!(
        e.0,
        vec!["config file /nonexistent/sdnlink.toml does not exist or is not a file (give --config PATH or set SDNLINK_CONFIG)".to_string()]
    );
}

#[test]
fn environment_typo_is_an_unknown_key() {
    figment::Jail::expect_with(|jail| {
        jail.create_file("sdnlink.toml", BASE)?;
        jail.set_env("SDNLINK_DNS__PROT", "5353");
        let e = load(&jail.directory().join("sdnlink.toml")).expect_err("typo must fail");
        assert!(e.0.iter().any(|m| m.contains("prot")), "{e}");
        Ok(())
    });
}

#[test]
fn resolv_conf_parsing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("resolv.conf");
    std::fs::write(
        &p,
        "# comment\nsearch example.org\nnameserver 192.0.2.1\nnameserver 2001:db8::53\nnameserver fe80::1%eth0\n",
    )
    .expect("write");
    let got = resolv_conf_nameservers(&p).expect("read");
    assert_eq!(
        got,
        vec![
            "192.0.2.1:53".parse().expect("addr"),
            "[2001:db8::53]:53".parse().expect("addr")
        ]
    );
}

#[test]
fn print_renders_valid_toml_that_reparses_to_the_same_values() {
    let c = parse_str(BASE).expect("valid");
    let printed = to_toml(&c);
    assert!(printed.contains("name = \"east\""), "{printed}");
    let value: toml::Value = toml::from_str(&printed).expect("printed config is TOML");
    assert_eq!(value["dns"]["upstreams"][0].as_str(), Some("192.0.2.53:53"));
}

#[test]
fn api_timeout_defaults_to_60_and_names_the_field_when_out_of_range() {
    let c = parse_str(BASE).expect("valid");
    assert_eq!(c.sync.api_timeout, std::time::Duration::from_secs(60));
    let with_sync = |v: &str| format!("{BASE}\n[sync]\napi_timeout = {v}\n");
    let c = parse_str(&with_sync("5")).expect("valid");
    assert_eq!(c.sync.api_timeout, std::time::Duration::from_secs(5));
    only_error(
        &with_sync("1"),
        "sync.api_timeout = 1: expected 2..=3600 seconds (how long a silent API server is tolerated before its cluster shows degraded; default 60)",
    );
}

#[test]
fn state_dir_defaults_to_var_lib_and_must_be_absolute() {
    let c = parse_str(BASE).expect("valid");
    assert_eq!(c.state_dir, std::path::PathBuf::from("/var/lib/sdnlink"));
    let c = parse_str(&format!("state_dir = \"/srv/sdnlink\"\n{BASE}")).expect("valid");
    assert_eq!(c.state_dir, std::path::PathBuf::from("/srv/sdnlink"));
    for bad in ["var/lib/sdnlink", "", "./state"] {
        only_error(
            &format!("state_dir = {bad:?}\n{BASE}"),
            &format!("state_dir = {bad:?}: must be an absolute path (where the last good cluster snapshots are kept; default \"/var/lib/sdnlink\")"),
        );
    }
    let printed = to_toml(&c);
    assert!(
        printed.contains("state_dir = \"/srv/sdnlink\""),
        "{printed}"
    );
}

#[test]
fn cleanup_loads_the_object_names_of_an_otherwise_broken_config() {
    // In a Jail: loading reads the SDNLINK_ environment, which other tests set inside theirs.
    figment::Jail::expect_with(|jail| {
        let path = jail.directory().join("sdnlink.toml");
        let broken = "state_dir = \"/srv/sdnlink\"\n".to_string()
            + &base_with("[local]", "[proxy]\nbackend = \"bogus\"\n[local]")
            + "\n[namespace]\nname = \"custom-ns\"\n[tunnel]\ninterface = \"custom-wg\"\n";
        jail.create_file("sdnlink.toml", &broken)?;
        assert!(load(&path).is_err(), "the full config is invalid");
        let (cfg, why) = load_for_cleanup(&path).expect("cleanup config");
        assert_eq!(cfg.namespace.name, "custom-ns");
        assert_eq!(cfg.tunnel.interface, "custom-wg");
        assert_eq!(cfg.state_dir, std::path::PathBuf::from("/srv/sdnlink"));
        let why = why
            .expect("the reason the full config did not load")
            .to_string();
        assert!(why.contains("proxy.backend"), "{why}");

        // A broken [namespace] is not guessed around.
        jail.create_file("sdnlink.toml", &broken.replace("custom-ns", "bad/name"))?;
        let e = load_for_cleanup(&path)
            .expect_err("bad namespace name")
            .to_string();
        assert!(e.contains("namespace.name"), "{e}");

        // Nor a relative state_dir: cleanup would remove files relative to its cwd.
        jail.create_file("sdnlink.toml", &broken.replace("/srv/sdnlink", "srv"))?;
        let e = load_for_cleanup(&path)
            .expect_err("relative state_dir")
            .to_string();
        assert!(e.contains("state_dir = \"srv\""), "{e}");

        // A valid config loads as itself, without a warning.
        jail.create_file("sdnlink.toml", BASE)?;
        let (cfg, why) = load_for_cleanup(&path).expect("valid");
        assert!(why.is_none());
        assert_eq!(cfg.local.name, "east");
        Ok(())
    });
}

#[test]
fn endpoint_cidrs_are_validated_and_kept() {
    let ok = base_with(
        "service_cidrs = [\"172.31.0.0/16\"]\n",
        "service_cidrs = [\"172.31.0.0/16\"]\nendpoint_cidrs = [\"198.51.100.0/24\", \"2001:db8::/32\"]\n",
    );
    let c = parse_str(&ok).expect("valid");
    assert_eq!(
        c.remote[0].endpoint_cidrs,
        vec![
            "198.51.100.0/24".parse::<ipnet::IpNet>().expect("net"),
            "2001:db8::/32".parse().expect("net")
        ]
    );
    let bad = base_with(
        "service_cidrs = [\"172.31.0.0/16\"]\n",
        "service_cidrs = [\"172.31.0.0/16\"]\nendpoint_cidrs = [\"198.51.100.1/24\"]\n",
    );
    only_error(
        &bad,
        "remote[0].endpoint_cidrs[0] = \"198.51.100.1/24\": host bits are set; did you mean \"198.51.100.0/24\"?",
    );
}

#[test]
fn a_static_public_key_belongs_to_one_peer() {
    let twice = format!(
        "{BASE}[[remote]]\nname = \"north\"\npod_cidrs = [\"10.140.0.0/16\"]\n[[remote.peers]]\npublic_key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\nallowed_ips = [\"10.140.0.0/24\"]\n"
    );
    only_error(
        &twice,
        "remote[1].peers[0].public_key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\": already used by remote[0].peers[0]; a WireGuard key belongs to one peer",
    );
}

#[test]
fn metrics_listen_is_off_by_default_and_must_be_an_address_with_a_port() {
    assert_eq!(parse_str(BASE).expect("valid").metrics.listen, None);
    let c = parse_str(&format!("{BASE}\n[metrics]\nlisten = \"127.0.0.1:9451\"\n")).expect("valid");
    assert_eq!(
        c.metrics.listen,
        Some("127.0.0.1:9451".parse().expect("literal"))
    );
    only_error(
        &format!("{BASE}\n[metrics]\nlisten = \"localhost\"\n"),
        "metrics.listen = \"localhost\": not an address:port (expected e.g. \"203.0.113.10:51820\" or \"[2001:db8::1]:51820\")",
    );
}
