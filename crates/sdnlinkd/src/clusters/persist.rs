//! Persisted last-good snapshots: one file per cluster under `<state_dir>/snapshots/`, so a
//! restart can serve DNS and reconcile the dataplane from what the clusters last said before
//! any API server has answered (warm restart).
//!
//! File layout (integers little-endian):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `SDNLSNAP` |
//! | 8 | 4 | format version ([`FORMAT_VERSION`]) |
//! | 12 | 4 | length of the cluster name |
//! | 16 | 8 | length of the body |
//! | 24 | 4 | CRC-32 (IEEE) of every byte of the file except these four |
//! | 28 | name | the cluster name, UTF-8 |
//! | 28 + name | body | the snapshot as JSON |
//!
//! The body is JSON because the model's enums are internally and adjacently tagged, which only a
//! self-describing format decodes. A file is only ever replaced by rename(2) of a complete,
//! fsynced temporary file in the same directory, so a crash leaves either the old or the new
//! file, plus at worst a stale `.<cluster>.snap.<random>.tmp` that [`SnapshotStore::load`]
//! never reads and [`SnapshotStore::remove_all`] removes.
//!
//! Every method does blocking file I/O (a 10k-Service snapshot is tens of megabytes, and fsync
//! waits for the disk): call it from `tokio::task::spawn_blocking`, never on the runtime.

use crate::model::{ClusterSnapshot, Node, Service, ServiceKey};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Bump whenever the encoding of [`ClusterSnapshot`] changes (a field added, renamed or retyped
/// in `src/model.rs`): a daemon then ignores, with a warning, the files of an older or newer
/// version instead of misreading them. `format_is_pinned` fails when the encoding changes.
pub const FORMAT_VERSION: u32 = 1;

/// Largest body accepted by default. 10,000 Services of 10 endpoints each encode to 24.6 MiB
/// (about 257 bytes per endpoint, measured by `benches/snapshot_store.rs`), so 128 MiB holds
/// five times that (50,000 such Services, or 10,000 of 50 endpoints); it also bounds what a
/// load of a damaged file can make the daemon read into memory.
pub const DEFAULT_MAX_BYTES: u64 = 128 << 20;

const MAGIC: [u8; 8] = *b"SDNLSNAP";
/// Length of the fixed part of the header (the cluster name follows it).
pub const HEADER_LEN: usize = 28;
const CRC_AT: usize = 24;
/// A file name is at most 255 bytes (NAME_MAX); the name also gets `.` and `.snap.XXXXXX.tmp`.
const MAX_NAME_LEN: usize = 200;
const SNAP_SUFFIX: &str = ".snap";
const TMP_SUFFIX: &str = ".tmp";

/// Errors of the snapshot store.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The cluster name cannot be a file name in the store.
    #[error("cluster name {name:?} cannot name a snapshot file: {why} (cluster names are DNS labels such as \"east\")")]
    InvalidName { name: String, why: &'static str },
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The snapshot could not be encoded.
    #[error("snapshot of cluster {cluster}: encoding: {source}")]
    Encode {
        cluster: String,
        #[source]
        source: serde_json::Error,
    },
    /// `save` refused a snapshot over the store's limit; the previous file was kept.
    #[error("snapshot of cluster {cluster} encodes to {size} bytes, over the limit of {max}; kept {path} as it was")]
    TooLarge {
        cluster: String,
        path: PathBuf,
        size: u64,
        max: u64,
    },
    /// `load` found a file it will not use (corrupt, truncated, oversized, another version or
    /// cluster, untrusted); the caller ignores it.
    #[error("snapshot file {path}: {problem}")]
    Invalid {
        path: PathBuf,
        #[source]
        problem: FileProblem,
    },
}

/// Why a snapshot file was not used.
#[derive(Debug, thiserror::Error)]
pub enum FileProblem {
    #[error("not a regular file ({0})")]
    NotRegular(&'static str),
    /// Snapshots decide routes and DNS answers: a file another user could have written is not
    /// trusted.
    #[error("mode {mode:04o} lets group or others write it")]
    Writable { mode: u32 },
    #[error("owned by uid {uid}, not by this process's uid {euid}")]
    Owner { uid: u32, euid: u32 },
    #[error("{size} bytes, over the limit of {max}")]
    Oversized { size: u64, max: u64 },
    #[error("truncated: {len} bytes where its header needs {needed}")]
    Truncated { len: u64, needed: u64 },
    #[error("{len} bytes where its header says {expected}: trailing bytes")]
    Trailing { len: u64, expected: u64 },
    #[error("no snapshot magic: not a sdnlinkd snapshot file")]
    Magic,
    #[error("format version {found}, this sdnlinkd reads version {expected}")]
    Version { found: u32, expected: u32 },
    #[error("cluster name of {len} bytes in the header, more than {MAX_NAME_LEN}")]
    NameLength { len: u64 },
    #[error("written for cluster {found:?}, not {expected:?}")]
    OtherCluster { found: String, expected: String },
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x}): corrupt")]
    Checksum { stored: u32, computed: u32 },
    #[error("body does not decode: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("service {0} appears twice")]
    DuplicateService(String),
}

/// What a successful [`SnapshotStore::save`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaveReport {
    pub path: PathBuf,
    /// Size of the file, header included.
    pub bytes: u64,
}

/// The per-cluster snapshot files of one state directory.
#[derive(Clone, Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    max_bytes: u64,
}

/// The body as written. `services` is a list of `[key, service]` pairs because JSON object keys
/// are strings and [`ServiceKey`] is a struct; the map's own keys are kept as they were.
#[derive(Serialize)]
struct BodyOut<'a> {
    #[serde(serialize_with = "pairs")]
    services: &'a BTreeMap<ServiceKey, Service>,
    nodes: &'a BTreeMap<String, Node>,
}

fn pairs<S: Serializer>(m: &BTreeMap<ServiceKey, Service>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(m.iter())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyIn {
    services: Vec<(ServiceKey, Service)>,
    nodes: BTreeMap<String, Node>,
}

/// A file of the store, by name.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Snapshot(String),
    Temp(String),
}

/// Refuses names that would escape the directory or collide with the temporary files (which
/// start with a dot); the config already requires DNS labels.
fn check_name(name: &str) -> Result<(), PersistError> {
    let why = if name.is_empty() {
        "empty"
    } else if name.contains('/') || name.contains('\0') {
        "contains a path separator or NUL"
    } else if name.starts_with('.') {
        "starts with a dot"
    } else if name.len() > MAX_NAME_LEN {
        "longer than 200 bytes"
    } else {
        return Ok(());
    };
    Err(PersistError::InvalidName {
        name: name.to_string(),
        why,
    })
}

fn classify(file_name: &OsStr) -> Option<Entry> {
    let s = file_name.to_str()?;
    if let Some(rest) = s.strip_prefix('.') {
        let (cluster, _random) = rest.strip_suffix(TMP_SUFFIX)?.rsplit_once(".snap.")?;
        check_name(cluster).ok()?;
        return Some(Entry::Temp(cluster.to_string()));
    }
    let cluster = s.strip_suffix(SNAP_SUFFIX)?;
    check_name(cluster).ok()?;
    Some(Entry::Snapshot(cluster.to_string()))
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> PersistError + 'a {
    move |source| PersistError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The whole file: header, name, body.
fn encode(cluster: &str, snap: &ClusterSnapshot) -> Result<Vec<u8>, PersistError> {
    let mut buf = Vec::with_capacity(HEADER_LEN + cluster.len() + 4096);
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    buf.extend_from_slice(&(cluster.len() as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 12]); // body length and CRC, filled in below
    buf.extend_from_slice(cluster.as_bytes());
    let body_at = buf.len();
    let body = BodyOut {
        services: &snap.services,
        nodes: &snap.nodes,
    };
    serde_json::to_writer(&mut buf, &body).map_err(|source| PersistError::Encode {
        cluster: cluster.to_string(),
        source,
    })?;
    let body_len = (buf.len() - body_at) as u64;
    buf[16..24].copy_from_slice(&body_len.to_le_bytes());
    let crc = checksum(&buf);
    buf[CRC_AT..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

/// CRC-32 of a whole file except its CRC field. CRC-32 catches every burst of up to 32 flipped
/// bits, which is what a torn or bit-rotted file looks like; nothing here defends against a
/// deliberate forger (the directory is root's, mode 0700).
fn checksum(file: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&file[..CRC_AT]);
    h.update(&file[HEADER_LEN..]);
    h.finalize()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Checks and decodes a whole file's bytes.
fn decode(cluster: &str, max_bytes: u64, b: &[u8]) -> Result<ClusterSnapshot, FileProblem> {
    let len = b.len() as u64;
    if b.len() < 8 {
        // A short prefix of a real header is a truncated file; anything else is not ours.
        return Err(if MAGIC.starts_with(b) {
            FileProblem::Truncated {
                len,
                needed: HEADER_LEN as u64,
            }
        } else {
            FileProblem::Magic
        });
    }
    if b[..8] != MAGIC {
        return Err(FileProblem::Magic);
    }
    if b.len() < HEADER_LEN {
        return Err(FileProblem::Truncated {
            len,
            needed: HEADER_LEN as u64,
        });
    }
    let version = u32_at(b, 8);
    if version != FORMAT_VERSION {
        return Err(FileProblem::Version {
            found: version,
            expected: FORMAT_VERSION,
        });
    }
    let name_len = u64::from(u32_at(b, 12));
    if name_len > MAX_NAME_LEN as u64 {
        return Err(FileProblem::NameLength { len: name_len });
    }
    let body_len = u64_at(b, 16);
    if body_len > max_bytes {
        return Err(FileProblem::Oversized {
            size: body_len,
            max: max_bytes,
        });
    }
    let name_end = HEADER_LEN as u64 + name_len;
    let expected = name_end.saturating_add(body_len);
    if len < expected {
        return Err(FileProblem::Truncated {
            len,
            needed: expected,
        });
    }
    if len > expected {
        return Err(FileProblem::Trailing { len, expected });
    }
    let name_end = name_end as usize;
    let name = &b[HEADER_LEN..name_end];
    if name != cluster.as_bytes() {
        return Err(FileProblem::OtherCluster {
            found: String::from_utf8_lossy(name).into_owned(),
            expected: cluster.to_string(),
        });
    }
    let stored = u32_at(b, CRC_AT);
    let computed = checksum(b);
    if stored != computed {
        return Err(FileProblem::Checksum { stored, computed });
    }
    let body: BodyIn = serde_json::from_slice(&b[name_end..]).map_err(FileProblem::Decode)?;
    let mut services = BTreeMap::new();
    for (k, s) in body.services {
        if let Some(dup) = services.insert(k, s) {
            return Err(FileProblem::DuplicateService(dup.key.to_string()));
        }
    }
    Ok(ClusterSnapshot {
        services,
        nodes: body.nodes,
    })
}

/// fsync(2) of a directory, so a rename or unlink in it survives a crash.
fn sync_dir(dir: &Path) -> Result<(), PersistError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}

impl SnapshotStore {
    /// Files live in `<state_dir>/snapshots/`. Bodies over `max_bytes` are neither written nor
    /// read.
    pub fn new(state_dir: impl Into<PathBuf>, max_bytes: u64) -> SnapshotStore {
        SnapshotStore {
            dir: state_dir.into().join("snapshots"),
            max_bytes,
        }
    }

    /// The directory of the snapshot files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `cluster` (meaningful for names `save` accepts).
    pub fn path_of(&self, cluster: &str) -> PathBuf {
        self.dir.join(format!("{cluster}{SNAP_SUFFIX}"))
    }

    /// Writes `snap` as the file of `cluster`, atomically: a temporary file (mode 0600) in the
    /// same directory, written, fsynced, renamed over the old file, then the directory fsynced.
    /// Creates the directories (0700) when missing. An error leaves the previous file as it was
    /// and no temporary file behind; a body over `max_bytes` is refused before anything is
    /// written.
    pub fn save(&self, cluster: &str, snap: &ClusterSnapshot) -> Result<SaveReport, PersistError> {
        check_name(cluster)?;
        let path = self.path_of(cluster);
        let bytes = encode(cluster, snap)?;
        let body = (bytes.len() - HEADER_LEN - cluster.len()) as u64;
        if body > self.max_bytes {
            return Err(PersistError::TooLarge {
                cluster: cluster.to_string(),
                path,
                size: body,
                max: self.max_bytes,
            });
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io_err("creating directory", &self.dir))?;
        let prefix = format!(".{cluster}{SNAP_SUFFIX}.");
        // Dropping the NamedTempFile on any error below unlinks it.
        let mut tmp = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(TMP_SUFFIX)
            .permissions(Permissions::from_mode(0o600))
            .tempfile_in(&self.dir)
            .map_err(io_err("creating a temporary file in", &self.dir))?;
        let tmp_path = tmp.path().to_path_buf();
        tmp.write_all(&bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(io_err("writing", &tmp_path))?;
        tmp.persist(&path)
            .map_err(|e| io_err("renaming the new snapshot to", &path)(e.error))?;
        sync_dir(&self.dir)?;
        Ok(SaveReport {
            path,
            bytes: bytes.len() as u64,
        })
    }

    /// The last saved snapshot of `cluster`; `Ok(None)` when it has no file. Any file that is
    /// not exactly what `save` wrote for this cluster and format version gives `Err` (the
    /// caller logs it once and ignores it); no byte content makes it panic or read more than
    /// `max_bytes` plus the header.
    pub fn load(&self, cluster: &str) -> Result<Option<ClusterSnapshot>, PersistError> {
        check_name(cluster)?;
        let path = self.path_of(cluster);
        let invalid = |problem| PersistError::Invalid {
            path: path.clone(),
            problem,
        };
        // O_NOFOLLOW: a symlink is not ours to follow. O_NONBLOCK: opening a FIFO for reading
        // would otherwise wait for a writer (fifo(7)); it has no effect on regular files.
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(invalid(FileProblem::NotRegular("a symbolic link")))
            }
            Err(e) => return Err(io_err("opening", &path)(e)),
        };
        let meta = file
            .metadata()
            .map_err(io_err("reading metadata of", &path))?;
        if !meta.file_type().is_file() {
            return Err(invalid(FileProblem::NotRegular("not a plain file")));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(invalid(FileProblem::Writable { mode }));
        }
        let euid = nix::unistd::geteuid().as_raw();
        if meta.uid() != euid {
            return Err(invalid(FileProblem::Owner {
                uid: meta.uid(),
                euid,
            }));
        }
        let limit = ((HEADER_LEN + cluster.len()) as u64).saturating_add(self.max_bytes);
        if meta.len() > limit {
            return Err(invalid(FileProblem::Oversized {
                size: meta.len(),
                max: limit,
            }));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        // take(): the file may grow between fstat and read; never read past the limit.
        file.take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io_err("reading", &path))?;
        decode(cluster, self.max_bytes, &bytes)
            .map(Some)
            .map_err(invalid)
    }

    /// Removes the file of `cluster` (a cluster removed from the config); `Ok(false)` when it
    /// had none.
    pub fn remove(&self, cluster: &str) -> Result<bool, PersistError> {
        check_name(cluster)?;
        let path = self.path_of(cluster);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("removing", &path)(e)),
        }
        sync_dir(&self.dir)?;
        Ok(true)
    }

    /// Removes every snapshot and stale temporary file of the store, then the snapshot
    /// directory when nothing else is left in it (`sdnlinkd cleanup`). Other files stay. A
    /// missing directory is not an error. Returns the number of files removed.
    pub fn remove_all(&self) -> Result<usize, PersistError> {
        let entries = self.entries()?;
        for (path, _) in &entries {
            std::fs::remove_file(path).map_err(io_err("removing", path))?;
        }
        if !entries.is_empty() {
            sync_dir(&self.dir)?;
        }
        match std::fs::remove_dir(&self.dir) {
            Ok(()) => Ok(entries.len()),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::DirectoryNotEmpty) => {
                Ok(entries.len())
            }
            Err(e) => Err(io_err("removing directory", &self.dir)(e)),
        }
    }

    /// Removes the snapshot files (and stale temporary files) of every cluster not in `keep`;
    /// returns the clusters whose snapshot file went, sorted. Stop saving a cluster before
    /// retaining without it, or a save in flight may bring its file back.
    pub fn retain(&self, keep: &[&str]) -> Result<Vec<String>, PersistError> {
        let mut removed = Vec::new();
        let mut any = false;
        for (path, entry) in self.entries()? {
            let (Entry::Snapshot(name) | Entry::Temp(name)) = &entry;
            if keep.contains(&name.as_str()) {
                continue;
            }
            std::fs::remove_file(&path).map_err(io_err("removing", &path))?;
            any = true;
            if let Entry::Snapshot(name) = entry {
                removed.push(name);
            }
        }
        if any {
            sync_dir(&self.dir)?;
        }
        removed.sort();
        Ok(removed)
    }

    /// The store's files (snapshots and temporaries, never directories); none when the
    /// directory does not exist.
    fn entries(&self) -> Result<Vec<(PathBuf, Entry)>, PersistError> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("listing", &self.dir)(e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(io_err("listing", &self.dir))?;
            let Some(entry) = classify(&e.file_name()) else {
                continue;
            };
            let ft = e
                .file_type()
                .map_err(io_err("reading type of", &e.path()))?;
            if !ft.is_dir() {
                out.push((e.path(), entry));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
