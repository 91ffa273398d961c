use super::*;
use crate::model::{Endpoint, EndpointPort, Protocol, ServiceKind, ServicePort, TargetPort};
use std::collections::BTreeSet;

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().expect("literal")
}

fn key(ns: &str, name: &str) -> ServiceKey {
    ServiceKey {
        namespace: ns.into(),
        name: name.into(),
    }
}

/// Every shape the model can hold: dual-stack ClusterIP with affinity, headless, ExternalName,
/// named and numbered target ports, endpoints in every condition, nodes with and without keys.
fn rich() -> ClusterSnapshot {
    let ep =
        |addrs: &[&str], ready, serving, terminating, host: Option<&str>, node: Option<&str>| {
            Endpoint {
                addresses: addrs.iter().map(|a| ip(a)).collect(),
                ready,
                serving,
                terminating,
                hostname: host.map(Into::into),
                node_name: node.map(Into::into),
                ports: vec![
                    EndpointPort {
                        name: "http".into(),
                        protocol: Protocol::Tcp,
                        port: 8080,
                    },
                    EndpointPort {
                        name: "dns".into(),
                        protocol: Protocol::Udp,
                        port: 5353,
                    },
                ]
                .into(),
            }
        };
    let services = vec![
        Service {
            key: key("default", "web"),
            kind: ServiceKind::ClusterIp(vec![ip("172.31.0.10"), ip("fd00:31::10")]),
            ports: vec![
                ServicePort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    target_port: TargetPort::Name("http".into()),
                },
                ServicePort {
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    port: 53,
                    target_port: TargetPort::Number(5353),
                },
                ServicePort {
                    name: "assoc".into(),
                    protocol: Protocol::Sctp,
                    port: 9999,
                    target_port: TargetPort::Number(9999),
                },
            ],
            client_ip_affinity: Some(10800),
            endpoints: vec![
                ep(
                    &["10.132.1.5", "fd00:132::5"],
                    true,
                    true,
                    false,
                    Some("web-0"),
                    Some("w1"),
                ),
                ep(&["10.132.1.6"], false, true, true, None, Some("w2")),
                ep(&["10.132.1.7"], false, false, false, None, None),
            ],
        },
        Service {
            key: key("db", "pg"),
            kind: ServiceKind::Headless,
            ports: vec![ServicePort {
                name: String::new(),
                protocol: Protocol::Tcp,
                port: 5432,
                target_port: TargetPort::Number(5432),
            }],
            client_ip_affinity: None,
            endpoints: vec![ep(
                &["10.132.2.1"],
                true,
                true,
                false,
                Some("pg-0"),
                Some("w1"),
            )],
        },
        Service {
            key: key("ext", "mail"),
            kind: ServiceKind::ExternalName("mail.example.com".into()),
            ports: Vec::new(),
            client_ip_affinity: None,
            endpoints: Vec::new(),
        },
    ];
    let nodes = vec![
        Node {
            name: "w1".into(),
            pod_cidrs: vec![
                "10.132.1.0/24".parse().expect("literal"),
                "fd00:132::/64".parse().expect("literal"),
            ],
            wireguard_public_key: Some("mQ0mr0PDtG8HdXFlGLUkrYd0WGOnDpYSk0Sp5Y5u+2A=".into()),
            wireguard_endpoint: Some("192.0.2.11:51820".into()),
        },
        Node {
            name: "w2".into(),
            pod_cidrs: vec!["10.132.2.0/24".parse().expect("literal")],
            wireguard_public_key: None,
            wireguard_endpoint: None,
        },
    ];
    ClusterSnapshot {
        services: services.into_iter().map(|s| (s.key.clone(), s)).collect(),
        nodes: nodes.into_iter().map(|n| (n.name.clone(), n)).collect(),
    }
}

/// A one-Service snapshot: a small file, for the byte-by-byte corruption tests.
fn small() -> ClusterSnapshot {
    let mut s = rich();
    s.services.retain(|k, _| k.name == "pg");
    s.nodes.retain(|k, _| k == "w2");
    s
}

struct Fixture {
    _tmp: tempfile::TempDir,
    state: PathBuf,
    store: SnapshotStore,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("temp dir");
    let state = tmp.path().join("state");
    let store = SnapshotStore::new(&state, DEFAULT_MAX_BYTES);
    Fixture {
        _tmp: tmp,
        state,
        store,
    }
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").mode() & 0o7777
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect()
}

/// Writes `bytes` as the file of `cluster` (mode 0600, as save does).
fn plant(store: &SnapshotStore, cluster: &str, bytes: &[u8]) {
    std::fs::create_dir_all(store.dir()).expect("mkdir");
    let p = store.path_of(cluster);
    // A fresh file rather than a truncated one: ext4 (auto_da_alloc) flushes a file that is
    // truncated and rewritten on close, which made the byte-by-byte tests wait on the disk.
    match std::fs::remove_file(&p) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => panic!("removing {}: {e}", p.display()),
    }
    std::fs::write(&p, bytes).expect("write");
    std::fs::set_permissions(&p, Permissions::from_mode(0o600)).expect("chmod");
}

fn problem(r: Result<Option<ClusterSnapshot>, PersistError>) -> FileProblem {
    match r {
        Err(PersistError::Invalid { problem, .. }) => problem,
        other => panic!("expected an invalid-file error, got {other:?}"),
    }
}

/// Recomputes the CRC after a header edit, so the edit itself is what load must catch.
fn reseal(b: &mut [u8]) {
    let crc = checksum(b);
    b[CRC_AT..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn round_trip_keeps_every_field() {
    let f = fixture();
    let snap = rich();
    let report = f.store.save("west", &snap).expect("save");
    assert_eq!(report.path, f.state.join("snapshots/west.snap"));
    assert_eq!(report.path, f.store.path_of("west"));
    assert_eq!(
        report.bytes,
        std::fs::metadata(&report.path).expect("metadata").len()
    );
    let back = f.store.load("west").expect("load").expect("a file");
    assert_eq!(back, snap);
    // An empty snapshot is a valid snapshot (a cluster with nothing in it), not "no file".
    f.store
        .save("east", &ClusterSnapshot::default())
        .expect("save");
    assert_eq!(
        f.store.load("east").expect("load"),
        Some(ClusterSnapshot::default())
    );
    // Saving again replaces the file.
    f.store.save("west", &small()).expect("save");
    assert_eq!(f.store.load("west").expect("load"), Some(small()));
}

/// Pins the encoding. When this fails, the model's serde form changed: bump FORMAT_VERSION
/// (older files would otherwise be misread, or refused only by luck) and update the string.
#[test]
fn format_is_pinned() {
    let bytes = encode("west", &small()).expect("encode");
    assert_eq!(&bytes[..8], b"SDNLSNAP");
    assert_eq!(u32_at(&bytes, 8), FORMAT_VERSION);
    assert_eq!(FORMAT_VERSION, 1);
    assert_eq!(u32_at(&bytes, 12), 4);
    assert_eq!(&bytes[HEADER_LEN..HEADER_LEN + 4], b"west");
    let body = std::str::from_utf8(&bytes[HEADER_LEN + 4..]).expect("utf-8");
    assert_eq!(u64_at(&bytes, 16), body.len() as u64);
    assert_eq!(
        body,
        concat!(
            r#"{"services":[[{"namespace":"db","name":"pg"},{"key":{"namespace":"db","name":"pg"},"#,
            r#""kind":{"type":"headless"},"ports":[{"name":"","protocol":"TCP","port":5432,"#,
            r#""target_port":{"number":5432}}],"client_ip_affinity":null,"endpoints":[{"#,
            r#""addresses":["10.132.2.1"],"ready":true,"serving":true,"terminating":false,"#,
            r#""hostname":"pg-0","node_name":"w1","ports":[{"name":"http","protocol":"TCP","#,
            r#""port":8080},{"name":"dns","protocol":"UDP","port":5353}]}]}]],"nodes":{"w2":{"#,
            r#""name":"w2","pod_cidrs":["10.132.2.0/24"],"wireguard_public_key":null,"#,
            r#""wireguard_endpoint":null}}}"#
        )
    );
}

#[test]
fn files_are_0600_and_directories_0700() {
    let f = fixture();
    f.store.save("west", &rich()).expect("save");
    assert_eq!(mode_of(&f.store.path_of("west")), 0o600);
    assert_eq!(mode_of(f.store.dir()), 0o700);
    assert_eq!(mode_of(&f.state), 0o700, "state_dir created by save");
}

#[test]
fn leftover_temp_file_is_ignored_by_load_and_removed_by_remove_all() {
    let f = fixture();
    f.store.save("west", &rich()).expect("save");
    // What a crash between create and rename leaves: a partial temporary file.
    let tmp = f.store.dir().join(".west.snap.Ab12Cd.tmp");
    std::fs::write(&tmp, b"SDNLSNAP\x01\x00").expect("write");
    assert_eq!(f.store.load("west").expect("load"), Some(rich()));
    // A save next to it still works and does not touch it.
    f.store.save("west", &small()).expect("save");
    assert_eq!(f.store.load("west").expect("load"), Some(small()));
    assert!(tmp.exists());
    assert_eq!(f.store.remove_all().expect("remove_all"), 2);
    assert!(!tmp.exists());
    assert!(!f.store.path_of("west").exists());
}

#[test]
fn a_refused_save_keeps_the_previous_file() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let small_len = encode("west", &small()).expect("encode").len() as u64;
    let store = SnapshotStore::new(tmp.path(), small_len);
    store.save("west", &small()).expect("save");
    let before = std::fs::read(store.path_of("west")).expect("read");
    match store.save("west", &rich()) {
        Err(PersistError::TooLarge {
            cluster, size, max, ..
        }) => {
            assert_eq!(cluster, "west");
            assert!(size > max);
            assert_eq!(max, small_len);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(std::fs::read(store.path_of("west")).expect("read"), before);
    assert_eq!(store.load("west").expect("load"), Some(small()));
    assert_eq!(names_in(store.dir()), BTreeSet::from(["west.snap".into()]));
}

#[test]
fn a_failed_rename_leaves_no_temp_file() {
    let f = fixture();
    f.store.save("east", &small()).expect("save");
    // rename(2) of a file over a non-empty directory fails (EISDIR).
    let blocker = f.store.path_of("west");
    std::fs::create_dir_all(blocker.join("inside")).expect("mkdir");
    let err = f.store.save("west", &rich()).expect_err("rename must fail");
    assert!(
        matches!(&err, PersistError::Io { path, .. } if *path == blocker),
        "{err}"
    );
    assert!(err.to_string().contains("west.snap"), "{err}");
    assert_eq!(
        names_in(f.store.dir()),
        BTreeSet::from(["east.snap".into(), "west.snap".into()]),
        "no temporary file left behind"
    );
    assert_eq!(f.store.load("east").expect("load"), Some(small()));
}

#[test]
fn missing_file_and_directory_are_not_errors() {
    let f = fixture();
    assert_eq!(f.store.load("west").expect("load"), None);
    assert!(!f.store.remove("west").expect("remove"));
    assert_eq!(f.store.remove_all().expect("remove_all"), 0);
    assert_eq!(f.store.retain(&[]).expect("retain"), Vec::<String>::new());
    assert!(!f.state.exists(), "nothing was created");
}

#[test]
fn truncated_at_every_offset_is_refused() {
    let f = fixture();
    let bytes = encode("west", &small()).expect("encode");
    for cut in 0..bytes.len() {
        plant(&f.store, "west", &bytes[..cut]);
        let p = problem(f.store.load("west"));
        assert!(
            matches!(p, FileProblem::Truncated { .. }),
            "cut at {cut}: {p}"
        );
    }
    plant(&f.store, "west", &bytes);
    assert_eq!(f.store.load("west").expect("load"), Some(small()));
}

#[test]
fn every_flipped_bit_is_refused() {
    let f = fixture();
    let bytes = encode("west", &small()).expect("encode");
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            plant(&f.store, "west", &b);
            // Which check catches it depends on the field; that one does is what matters.
            let p = problem(f.store.load("west"));
            if i >= HEADER_LEN + 4 {
                assert!(
                    matches!(p, FileProblem::Checksum { .. }),
                    "body byte {i} bit {bit}: {p}"
                );
            }
        }
    }
}

#[test]
fn each_corruption_class_names_its_problem() {
    let f = fixture();
    let good = encode("west", &small()).expect("encode");
    let load = |b: &[u8]| {
        plant(&f.store, "west", b);
        problem(f.store.load("west"))
    };

    assert!(matches!(load(b""), FileProblem::Truncated { len: 0, .. }));

    let mut b = good.clone();
    b[..8].copy_from_slice(b"SDNLSNAQ");
    reseal(&mut b);
    assert!(matches!(load(&b), FileProblem::Magic));
    assert!(matches!(load(b"{\"services\":[]}"), FileProblem::Magic));

    let mut b = good.clone();
    b[8..12].copy_from_slice(&2u32.to_le_bytes());
    reseal(&mut b);
    assert!(matches!(
        load(&b),
        FileProblem::Version {
            found: 2,
            expected: 1
        }
    ));

    // A file written for another cluster, renamed into place.
    let other = encode("wast", &small()).expect("encode");
    match load(&other) {
        FileProblem::OtherCluster { found, expected } => {
            assert_eq!((found.as_str(), expected.as_str()), ("wast", "west"));
        }
        p => panic!("{p}"),
    }

    // A header claiming a huge body must be refused without trying to read or allocate it.
    let mut b = good.clone();
    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    reseal(&mut b);
    assert!(matches!(
        load(&b),
        FileProblem::Oversized { size: u64::MAX, .. }
    ));
    let mut b = good.clone();
    b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut b);
    assert!(matches!(load(&b), FileProblem::NameLength { .. }));

    let mut b = good.clone();
    b.extend_from_slice(b" ");
    assert!(matches!(load(&b), FileProblem::Trailing { .. }));

    let mut b = good.clone();
    b[CRC_AT] ^= 0xff;
    assert!(matches!(load(&b), FileProblem::Checksum { .. }));

    // Sealed (valid CRC) but not a snapshot body, or one listing a Service twice.
    let with_body = |body: &str| {
        let mut b = good[..HEADER_LEN + 4].to_vec();
        b.extend_from_slice(body.as_bytes());
        b[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
        reseal(&mut b);
        b
    };
    assert!(matches!(
        load(&with_body("not json")),
        FileProblem::Decode(_)
    ));
    assert!(matches!(
        load(&with_body(r#"{"services":[],"nodes":{},"extra":1}"#)),
        FileProblem::Decode(_)
    ));
    let one = serde_json::to_string(&BodyOut {
        services: &small().services,
        nodes: &BTreeMap::new(),
    })
    .expect("encode");
    let entry = one
        .strip_prefix(r#"{"services":["#)
        .and_then(|s| s.strip_suffix(r#"],"nodes":{}}"#))
        .expect("one pair");
    let twice = format!(r#"{{"services":[{entry},{entry}],"nodes":{{}}}}"#);
    match load(&with_body(&twice)) {
        FileProblem::DuplicateService(k) => assert_eq!(k, "db/pg"),
        p => panic!("{p}"),
    }
    // The same bytes resealed without the duplicate decode: the check above is not luck.
    plant(
        &f.store,
        "west",
        &with_body(&format!(r#"{{"services":[{entry}],"nodes":{{}}}}"#)),
    );
    assert_eq!(
        f.store
            .load("west")
            .expect("load")
            .map(|s| s.services.len()),
        Some(1)
    );
}

#[test]
fn a_file_over_the_limit_is_not_read() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let big = SnapshotStore::new(tmp.path(), DEFAULT_MAX_BYTES);
    let body = big.save("west", &rich()).expect("save").bytes - (HEADER_LEN + 4) as u64;
    let tight = SnapshotStore::new(tmp.path(), body - 1);
    match problem(tight.load("west")) {
        FileProblem::Oversized { size, max } => {
            assert_eq!(size, body + (HEADER_LEN + 4) as u64);
            assert_eq!(max, body - 1 + (HEADER_LEN + 4) as u64);
        }
        p => panic!("{p}"),
    }
    let exact = SnapshotStore::new(tmp.path(), body);
    assert_eq!(exact.load("west").expect("load"), Some(rich()));
}

#[test]
fn untrusted_files_are_refused() {
    let f = fixture();
    f.store.save("west", &small()).expect("save");
    let p = f.store.path_of("west");
    std::fs::set_permissions(&p, Permissions::from_mode(0o622)).expect("chmod");
    assert!(matches!(
        problem(f.store.load("west")),
        FileProblem::Writable { mode: 0o622 }
    ));
    std::fs::set_permissions(&p, Permissions::from_mode(0o644)).expect("chmod");
    assert_eq!(
        f.store.load("west").expect("read-only for others is fine"),
        Some(small())
    );

    // A symlink to a valid file is not followed.
    std::fs::rename(&p, f.state.join("elsewhere.snap")).expect("rename");
    std::os::unix::fs::symlink(f.state.join("elsewhere.snap"), &p).expect("symlink");
    assert!(matches!(
        problem(f.store.load("west")),
        FileProblem::NotRegular(_)
    ));
    std::fs::remove_file(&p).expect("unlink");

    // A FIFO must not block the load waiting for a writer.
    nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    assert!(matches!(
        problem(f.store.load("west")),
        FileProblem::NotRegular(_)
    ));
}

#[test]
fn bad_names_are_refused_with_the_value() {
    let f = fixture();
    for name in ["", "a/b", "..", ".", "...", ".hidden", "../west", "a\0b"] {
        let want = format!("{name:?}");
        for err in [
            f.store.save(name, &small()).expect_err("save"),
            f.store.load(name).expect_err("load"),
            f.store.remove(name).expect_err("remove"),
        ] {
            assert!(
                matches!(&err, PersistError::InvalidName { name: n, .. } if n == name),
                "{err}"
            );
            assert!(err.to_string().contains(&want), "{err}");
        }
    }
    let long = "a".repeat(201);
    assert!(f.store.save(&long, &small()).is_err());
    assert!(f.store.save(&"a".repeat(200), &small()).is_ok());
    assert_eq!(
        names_in(f.store.dir()),
        BTreeSet::from([format!("{}.snap", "a".repeat(200))]),
        "no refused name wrote anything"
    );
}

/// The state directory also holds the WireGuard private key; the snapshot directory may hold
/// whatever an operator put there. Only the store's own files may go.
#[test]
fn remove_retain_and_remove_all_touch_only_snapshot_files() {
    let f = fixture();
    for c in ["east", "west", "north"] {
        f.store.save(c, &small()).expect("save");
    }
    std::fs::write(f.state.join("private.key"), b"key").expect("write");
    std::fs::write(f.state.join("west.snap"), b"not in the store").expect("write");
    let d = f.store.dir();
    for other in [
        "notes.txt",
        "west.snap.bak",
        ".west.snap.orig",
        "snap",
        ".snap",
    ] {
        std::fs::write(d.join(other), b"operator's").expect("write");
    }
    std::fs::create_dir(d.join("south.snap")).expect("mkdir");
    std::fs::write(d.join(".gone.snap.Zz9Yy8.tmp"), b"stale").expect("write");
    std::fs::write(d.join(".east.snap.Qq1Ww2.tmp"), b"in flight").expect("write");

    assert!(f.store.remove("north").expect("remove"));
    assert!(!f.store.remove("north").expect("remove again"));
    assert_eq!(f.store.load("north").expect("load"), None);

    assert_eq!(
        f.store.retain(&["east"]).expect("retain"),
        vec!["west".to_string()]
    );
    let expected_after_retain: BTreeSet<String> = [
        "east.snap",
        ".east.snap.Qq1Ww2.tmp",
        "notes.txt",
        "west.snap.bak",
        ".west.snap.orig",
        "snap",
        ".snap",
        "south.snap",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(names_in(d), expected_after_retain);
    assert_eq!(f.store.load("east").expect("load"), Some(small()));

    assert_eq!(f.store.remove_all().expect("remove_all"), 2);
    let expected_after_all: BTreeSet<String> = [
        "notes.txt",
        "west.snap.bak",
        ".west.snap.orig",
        "snap",
        ".snap",
        "south.snap",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(
        names_in(d),
        expected_after_all,
        "the directory stays: not empty"
    );
    assert_eq!(
        std::fs::read(f.state.join("private.key")).expect("key survives"),
        b"key"
    );
    assert!(f.state.join("west.snap").exists());
}

#[test]
fn remove_all_removes_the_directory_when_only_snapshots_were_in_it() {
    let f = fixture();
    f.store.save("east", &small()).expect("save");
    f.store.save("west", &small()).expect("save");
    std::fs::write(f.state.join("private.key"), b"key").expect("write");
    assert_eq!(f.store.remove_all().expect("remove_all"), 2);
    assert!(!f.store.dir().exists());
    assert!(f.state.join("private.key").exists());
    assert_eq!(f.store.remove_all().expect("again"), 0);
}

#[test]
fn errors_name_the_path() {
    let f = fixture();
    plant(&f.store, "west", b"garbage");
    let err = f.store.load("west").expect_err("garbage");
    let msg = err.to_string();
    assert!(
        msg.contains(&f.store.path_of("west").display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("magic"), "{msg}");

    // A state_dir that is a file: the io error keeps its source and names the path.
    let file_as_dir = f.state.join("private.key");
    std::fs::create_dir_all(&f.state).expect("mkdir");
    std::fs::write(&file_as_dir, b"key").expect("write");
    let store = SnapshotStore::new(&file_as_dir, DEFAULT_MAX_BYTES);
    let err = store.save("west", &small()).expect_err("not a directory");
    assert!(matches!(err, PersistError::Io { .. }), "{err}");
    assert!(std::error::Error::source(&err).is_some());
    assert!(
        err.to_string().contains(&file_as_dir.display().to_string()),
        "{err}"
    );
}

#[test]
fn classify_recognises_only_store_names() {
    let s = |n: &str| classify(OsStr::new(n));
    assert_eq!(s("east.snap"), Some(Entry::Snapshot("east".into())));
    assert_eq!(s(".east.snap.x1Y2z3.tmp"), Some(Entry::Temp("east".into())));
    assert_eq!(
        s(".a.snap.b.snap.xyz.tmp"),
        Some(Entry::Temp("a.snap.b".into()))
    );
    for other in [
        "east.snap.tmp",
        ".east.snap",
        ".snap",
        "snap",
        "..snap.x.tmp",
        ".east.tmp",
        "east",
        "private.key",
    ] {
        assert_eq!(s(other), None, "{other}");
    }
}
