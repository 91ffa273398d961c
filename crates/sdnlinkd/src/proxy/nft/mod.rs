//! The nftables service-proxy backend: one table, `inet sdnlink`, owned by sdnlinkd in its
//! namespace (layout in [`ruleset`], model and diff in [`table`]).
//!
//! A sync compares before it writes. Incremental: the desired state against the last committed
//! one, for the services that changed. Full (periodic resync, repair): the desired table
//! against the kernel's, read with `nft -j list table` and parsed ([`table::parse`]); only the
//! difference is sent, and nothing at all when the kernel matches (no `nft -f` run). Listing a
//! table of 10k Services costs seconds of nft's CPU, so a full sync first reads the namespace's
//! nf_tables generation ([`generation`]): when no transaction at all was committed since the
//! kernel was last verified to hold the committed state, that state is what the kernel holds
//! and the listing is skipped. Any other writer (an operator's `nft delete element`, another
//! program's table, our MSS clamp) moves the generation and the next full sync lists.
//!
//! Why `nft -f -` with text rather than the `nftables` crate's JSON for writes: both run the
//! same `nft` binary and both make one netlink batch (one atomic transaction) per invocation,
//! but the text is what operators read (`nft list table`), what the golden files hold, and what
//! Debian 12's nft 1.0.6 parses fastest. Each write is exactly one `nft -f -` run, so the kernel
//! sees all of it or none of it. Reads use `nft -j`, the format meant for programs.
//!
//! Namespace: `nft` must talk to the nf_tables of sdnlinkd's namespace. It is spawned from
//! [`NetNs::run_async`], on the worker thread that has entered the namespace with `setns(2)`.
//! On Linux, `setns` changes the calling *thread's* `nsproxy`, and `fork`/`clone` (which
//! `std::process::Command` uses, through `posix_spawn` or `fork`+`exec`) copies the nsproxy of
//! the calling thread, not the process's main thread; so the child starts in the namespace.
//! `root_nft_child_inherits_thread_namespace` checks that on this kernel.

pub mod generation;
pub mod owned;
pub mod ruleset;
pub mod table;

use super::{DesiredProxy, ProxyBackend, ProxyError, SyncReport};
use crate::netns::NetNs;
use ruleset::{
    cleanup_transaction, full_transaction, incremental_transaction, parse_listing, table_services,
};
use std::borrow::Cow;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;
use table::{Table, Tx};

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
    #[error(transparent)]
    Parse(#[from] table::ParseError),
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

/// Whether `nft list table` failed because the table does not exist (ENOENT).
pub(crate) fn is_missing_table(e: &NftError) -> bool {
    matches!(e, NftError::Failed { stderr, .. } if stderr.contains("No such file or directory"))
}

/// Lists `table` (`FAMILY NAME`) as JSON from the calling thread's namespace; `None` when it
/// does not exist. `-p` prints protocols as numbers: resolving names costs a read of
/// /etc/protocols per element and rule.
pub(crate) fn list_table_json(program: &Path, table: &str) -> Result<Option<String>, NftError> {
    let mut args = vec!["-j", "-p", "list", "table"];
    args.extend(table.split(' '));
    match run_nft(program, &args, None) {
        Ok(out) => Ok(Some(out)),
        Err(e) if is_missing_table(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The nftables backend, acting in one namespace.
pub struct NftBackend {
    ns: NetNs,
    program: PathBuf,
    /// What the kernel holds after the last successful sync; `None` until a full sync
    /// succeeded, and again after any failure, so the next sync re-reads the kernel.
    committed: Option<DesiredProxy>,
    /// The namespace's nf_tables generation at which the kernel was known to hold `committed`
    /// (after a listing that matched, or right after our own transaction when no other one
    /// came in between). `None`: the next full sync lists the table.
    verified: Option<u32>,
}

/// How a full sync learnt what the kernel holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FullRead {
    /// The generation had not moved since the last verified state: no listing.
    Generation,
    /// The table was listed and parsed.
    Listing,
}

impl NftBackend {
    /// A backend for the namespace `ns`, running `nft` from `PATH`.
    pub fn new(ns: NetNs) -> NftBackend {
        NftBackend {
            ns,
            program: PathBuf::from("nft"),
            committed: None,
            verified: None,
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

    /// Forgets the verified generation, so the next full sync lists the table whatever the
    /// generation says (for benchmarks and tests of the listing path).
    pub fn forget_verification(&mut self) {
        self.verified = None;
    }

    /// The transaction the next sync would send, without sending it (a printable plan). A full
    /// plan reads the kernel's generation, and its table when the generation moved.
    pub async fn plan(&self, desired: &DesiredProxy, full: bool) -> Result<String, ProxyError> {
        if let Some(old) = &self.committed {
            if !full || (self.verified.is_some() && self.generation().await == self.verified) {
                let want = effective(desired, old.services.values().cloned());
                return Ok(incremental_transaction(old, &want).text().to_string());
            }
        }
        let observed = self.observe().await?;
        let want = effective(desired, table_services(&observed));
        Ok(full_transaction(&want, &observed).text().to_string())
    }

    /// Reads and parses the owned table (an absent table is `Table::default()`).
    pub async fn observe(&self) -> Result<Table, ProxyError> {
        let program = self.program.clone();
        let json = self
            .ns
            .run_async(move || list_table_json(&program, ruleset::TARGET))
            .await??;
        match json {
            Some(j) => Ok(parse_listing(&j).map_err(NftError::from)?),
            None => Ok(Table::default()),
        }
    }

    /// The namespace's nf_tables generation; `None` if it cannot be read, which only costs
    /// listings.
    async fn generation(&self) -> Option<u32> {
        match self.ns.run_async(generation::current).await {
            Ok(Ok(g)) => Some(g),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "reading the nf_tables generation");
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, "reading the nf_tables generation");
                None
            }
        }
    }

    /// Sends `tx`; returns the generation right after it.
    async fn apply(&self, tx: &Tx) -> Result<Option<u32>, ProxyError> {
        let program = self.program.clone();
        let text = tx.text().to_string();
        let gen = self
            .ns
            .run_async(move || {
                run_nft(&program, &["-f", "-"], Some(&text)).map(|_| generation::current().ok())
            })
            .await??;
        Ok(gen)
    }

    /// Applies the transaction from the committed state to `want` (assumed to be what the
    /// kernel holds), keeping the verified generation when ours was the only commit.
    async fn sync_from_committed(&mut self, want: DesiredProxy) -> Result<usize, ProxyError> {
        let old = self.committed.take().expect("caller checked committed");
        let tx = incremental_transaction(&old, &want);
        if tx.is_empty() {
            self.committed = Some(want);
            return Ok(0);
        }
        let verified = self.verified.take();
        match self.apply(&tx).await {
            Ok(after) => {
                self.verified = match (verified, after) {
                    (Some(v), Some(g)) if g == generation::next(v) => Some(g),
                    _ => None,
                };
                self.committed = Some(want);
                Ok(tx.commands())
            }
            Err(e) => Err(e),
        }
    }

    /// Lists the table, compares it with `desired` and sends the difference.
    async fn sync_from_listing(&mut self, desired: &DesiredProxy) -> Result<usize, ProxyError> {
        self.committed = None;
        self.verified = None;
        let before = self.generation().await;
        let observed = self.observe().await?;
        let want = effective(desired, table_services(&observed)).into_owned();
        let tx = full_transaction(&want, &observed);
        self.verified = if tx.is_empty() {
            before
        } else {
            let after = self.apply(&tx).await?;
            match (before, after) {
                (Some(b), Some(a)) if a == generation::next(b) => Some(a),
                _ => None,
            }
        };
        self.committed = Some(want);
        Ok(tx.commands())
    }

    /// A full sync; also says how it read the kernel.
    pub async fn full_sync(
        &mut self,
        desired: &DesiredProxy,
    ) -> Result<(usize, FullRead), ProxyError> {
        if self.committed.is_some()
            && self.verified.is_some()
            && self.generation().await == self.verified
        {
            let old = self.committed.as_ref().expect("checked above");
            let want = effective(desired, old.services.values().cloned()).into_owned();
            match self.sync_from_committed(want).await {
                Ok(n) => return Ok((n, FullRead::Generation)),
                Err(e) => {
                    tracing::warn!(error = %e, "nftables transaction failed; re-reading the table");
                }
            }
        }
        let n = self.sync_from_listing(desired).await?;
        Ok((n, FullRead::Listing))
    }
}

/// `desired` with the services of held clusters adopted from `observed` (see
/// [`DesiredProxy::adopting`]); borrowed when nothing is held.
fn effective(
    desired: &DesiredProxy,
    observed: impl IntoIterator<Item = super::VirtualService>,
) -> Cow<'_, DesiredProxy> {
    match desired.adopting(observed) {
        Some(d) => Cow::Owned(d),
        None => Cow::Borrowed(desired),
    }
}

impl ProxyBackend for NftBackend {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn needs_vips(&self) -> bool {
        false
    }

    async fn plan_full(&self, desired: &DesiredProxy) -> Result<String, ProxyError> {
        self.plan(desired, true).await
    }

    /// `SyncReport::operations` counts the nft commands written; reads (the generation, a
    /// listing) are not counted.
    async fn sync(&mut self, desired: &DesiredProxy, full: bool) -> Result<SyncReport, ProxyError> {
        let start = Instant::now();
        if !full {
            if let Some(old) = &self.committed {
                let want = effective(desired, old.services.values().cloned()).into_owned();
                match self.sync_from_committed(want).await {
                    Ok(operations) => {
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
        let (operations, _) = self.full_sync(desired).await?;
        Ok(SyncReport {
            full: true,
            operations,
            duration: start.elapsed(),
            failed: vec![],
        })
    }

    async fn cleanup(&mut self) -> Result<(), ProxyError> {
        self.committed = None;
        self.verified = None;
        self.apply(&cleanup_transaction()).await.map(|_| ())
    }
}
