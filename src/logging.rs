//! Logging: journald when its socket exists (the daemon under systemd), otherwise
//! human-readable stderr. The level comes from `RUST_LOG` when set, else config `log_level`.
//! Keys and credentials never reach a log line: the types that hold them redact themselves.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Installs the global subscriber; `prefer_journal` for the long-running daemon only.
pub fn init(level: &str, prefer_journal: bool) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if prefer_journal && std::path::Path::new(JOURNAL_SOCKET).exists() {
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
