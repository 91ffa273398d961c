//! The nftables service-proxy backend: one table, `inet sdnlink`, owned by sdnlinkd in its
//! namespace (layout in [`ruleset`]).
//!
//! Why `nft -f -` with text rather than the `nftables` crate's JSON: both run the same `nft`
//! binary and both make one netlink batch (one atomic transaction) per invocation, but the text
//! is what operators read (`nft list table`), what the golden files hold, and what Debian 12's
//! nft 1.0.6 parses fastest; JSON would only add a serialisation layer whose output nobody
//! reviews. Each sync is exactly one `nft -f -` run, so the kernel sees all of it or none of it.
//!
//! Namespace: `nft` must talk to the nf_tables of sdnlinkd's namespace. It is spawned from
//! [`NetNs::run_async`], on the worker thread that has entered the namespace with `setns(2)`.
//! On Linux, `setns` changes the calling *thread's* `nsproxy`, and `fork`/`clone` (which
//! `std::process::Command` uses, through `posix_spawn` or `fork`+`exec`) copies the nsproxy of
//! the calling thread, not the process's main thread; so the child starts in the namespace.
//! `root_nft_child_inherits_thread_namespace` checks that on this kernel.

pub mod ruleset;

use super::{DesiredProxy, ProxyBackend, ProxyError, SyncReport};
use crate::netns::NetNs;
use ruleset::{
    cleanup_transaction, full_transaction, incremental_transaction, parse_observed, Observed, Tx,
};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Failures of the nft program.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("running {program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nft {args} failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("parsing nft JSON output: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<NftError> for ProxyError {
    fn from(e: NftError) -> Self {
        match e {
            NftError::Spawn { program, source } => ProxyError::Io {
                context: format!("running {}", program.display()),
                source,
            },
            other => ProxyError::Backend {
                backend: "nftables",
                message: other.to_string(),
            },
        }
    }
}

/// Whether nftables can be used from the calling thread's namespace: the `nft` program runs and
/// the kernel answers a listing (nf_tables present, CAP_NET_ADMIN held).
pub fn nft_available() -> bool {
    run_nft(Path::new("nft"), &["list", "tables"], None).is_ok()
}

/// Runs `nft ARGS`, feeding `stdin` when given; returns stdout.
pub(crate) fn run_nft(
    program: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, NftError> {
    let spawn_err = |source| NftError::Spawn {
        program: program.to_path_buf(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // nft reads the whole input before it parses or prints anything, so writing all of it
        // before collecting the output cannot deadlock.
        pipe.write_all(text.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(NftError::Failed {
            args: args.join(" "),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The nftables backend, acting in one namespace.
pub struct NftBackend {
    ns: NetNs,
    program: PathBuf,
    /// What the kernel holds after the last successful transaction; `None` until a full sync
    /// succeeded, and again after any failure, so the next sync re-reads the kernel.
    committed: Option<DesiredProxy>,
}

impl NftBackend {
    /// A backend for the namespace `ns`, running `nft` from `PATH`.
    pub fn new(ns: NetNs) -> NftBackend {
        NftBackend {
            ns,
            program: PathBuf::from("nft"),
            committed: None,
        }
    }

    /// Uses another `nft` program.
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> NftBackend {
        self.program = program.into();
        self
    }

    /// The state committed by the last successful sync.
    pub fn committed(&self) -> Option<&DesiredProxy> {
        self.committed.as_ref()
    }

    /// The transaction the next sync would send, without sending it (a printable plan). A full
    /// plan reads the kernel's table first.
    pub async fn plan(&self, desired: &DesiredProxy, full: bool) -> Result<String, ProxyError> {
        match (&self.committed, full) {
            (Some(old), false) => Ok(incremental_transaction(old, desired).text().to_string()),
            _ => {
                let observed = self.observe().await?;
                Ok(full_transaction(desired, &observed).text().to_string())
            }
        }
    }

    /// Reads the names of our chains and sets (not their rules or elements: cheap even at
    /// 100k chains compared to `nft list table`).
    pub async fn observe(&self) -> Result<Observed, ProxyError> {
        let program = self.program.clone();
        let (chains, sets) = self
            .ns
            .run_async(move || -> Result<(String, String), NftError> {
                let chains = run_nft(&program, &["-j", "list", "chains", ruleset::FAMILY], None)?;
                let sets = run_nft(&program, &["-j", "list", "sets", ruleset::FAMILY], None)?;
                Ok((chains, sets))
            })
            .await??;
        Ok(parse_observed(&chains, &sets).map_err(NftError::from)?)
    }

    async fn apply(&self, tx: &Tx) -> Result<(), ProxyError> {
        let program = self.program.clone();
        let text = tx.text().to_string();
        self.ns
            .run_async(move || run_nft(&program, &["-f", "-"], Some(&text)))
            .await??;
        Ok(())
    }

    async fn full_sync(&mut self, desired: &DesiredProxy) -> Result<usize, ProxyError> {
        self.committed = None;
        let observed = self.observe().await?;
        let tx = full_transaction(desired, &observed);
        self.apply(&tx).await?;
        self.committed = Some(desired.clone());
        // Two listings plus the transaction's commands.
        Ok(tx.commands() + 2)
    }
}

impl ProxyBackend for NftBackend {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn needs_vips(&self) -> bool {
        false
    }

    async fn sync(&mut self, desired: &DesiredProxy, full: bool) -> Result<SyncReport, ProxyError> {
        let start = Instant::now();
        if !full {
            if let Some(old) = &self.committed {
                let tx = incremental_transaction(old, desired);
                let operations = tx.commands();
                let applied = if tx.is_empty() {
                    Ok(())
                } else {
                    self.apply(&tx).await
                };
                match applied {
                    Ok(()) => {
                        self.committed = Some(desired.clone());
                        return Ok(SyncReport {
                            full: false,
                            operations,
                            duration: start.elapsed(),
                            failed: vec![],
                        });
                    }
                    Err(e) => {
                        // The transaction was rolled back as a whole: the kernel no longer holds
                        // what we committed (edited out of band). Repair now.
                        tracing::warn!(error = %e, "incremental nftables sync failed; doing a full sync");
                    }
                }
            }
        }
        let operations = self.full_sync(desired).await?;
        Ok(SyncReport {
            full: true,
            operations,
            duration: start.elapsed(),
            failed: vec![],
        })
    }

    async fn cleanup(&mut self) -> Result<(), ProxyError> {
        self.committed = None;
        self.apply(&cleanup_transaction()).await
    }
}
