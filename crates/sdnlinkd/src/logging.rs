//! Logging: journald when stderr is connected to the journal (the daemon as a systemd service),
//! otherwise human-readable stderr. The level comes from `RUST_LOG` when set, else config `log_level`.
//! Keys and credentials never reach a log line: the types that hold them redact themselves.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Whether stderr is the journal stream systemd gave this process: systemd.exec(5) sets
/// `JOURNAL_STREAM=<device>:<inode>` of that stream, and a program whose stderr still is that
/// file should use the native protocol. A daemon started by hand or by the lab on a systemd host
/// keeps its stderr (the socket alone does not say where the operator looks).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let stderr = std::os::fd::AsFd::as_fd(&std::io::stderr())
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata());
    stderr.is_ok_and(|m| names_stream(&stream, m.dev(), m.ino()))
}

/// Whether a `JOURNAL_STREAM` value (`<device>:<inode>`, decimal) names this device and inode.
fn names_stream(value: &str, dev: u64, ino: u64) -> bool {
    value
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

/// The filter for config `log_level`. kube-client's tracing layer logs every failed request
/// at ERROR ("failed with error ...") and every ended watch at WARN, several lines a second
/// while an API server is away; the clusters subsystem reports each failure once, naming the
/// cluster and what it keeps. A level that names `kube_client` itself is taken as it is, and
/// `RUST_LOG` is never changed.
fn directives(level: &str) -> String {
    if level.contains("kube_client") {
        level.to_string()
    } else {
        format!("{level},kube_client=off")
    }
}

/// Installs the global subscriber; `prefer_journal` for the long-running daemon only.
pub fn init(level: &str, prefer_journal: bool) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(directives(level)).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if prefer_journal && stderr_is_journal() && std::path::Path::new(JOURNAL_SOCKET).exists() {
        if let Ok(journald) = tracing_journald::layer() {
            let _ = registry
                .with(journald.with_syslog_identifier("sdnlinkd".into()))
                .try_init();
            return;
        }
    }
    let _ = registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false),
        )
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::{directives, names_stream};

    #[test]
    fn kube_clients_request_logging_is_off_unless_asked_for() {
        assert_eq!(directives("info"), "info,kube_client=off");
        assert_eq!(directives("debug"), "debug,kube_client=off");
        assert_eq!(
            directives("info,kube_client=debug"),
            "info,kube_client=debug"
        );
        let f = tracing_subscriber::EnvFilter::try_new(directives("warn")).expect("valid");
        assert!(f.to_string().contains("kube_client=off"), "{f}");
    }

    #[test]
    fn journal_stream_must_name_the_same_device_and_inode() {
        assert!(names_stream("8:12345", 8, 12345));
        assert!(!names_stream("8:12345", 8, 12346));
        assert!(!names_stream("9:12345", 8, 12345));
        assert!(!names_stream("8-12345", 8, 12345));
        assert!(!names_stream("", 8, 12345));
        assert!(!names_stream("x:1", 8, 1));
    }
}
