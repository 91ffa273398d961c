//! WireGuard keys: the node's private key file and the redacting key types.
//!
//! wireguard-control's `Key` prints private keys through `Debug` (docs/design.md), so the private key
//! only ever travels inside [`PrivateKey`], whose `Debug`/`Display` print a fixed placeholder,
//! and is converted to a `Key` at the moment it is handed to the device.

use base64::Engine as _;
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Errors of the key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("private key file {path} is readable by group or others (mode {mode:o}): run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("private key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("private key file {path} does not hold a base64 WireGuard key (32 bytes)")]
    Malformed { path: PathBuf },
    #[error("invalid WireGuard public key {0:?}: not base64 of 32 bytes")]
    InvalidPublic(String),
}

/// A WireGuard public key. Public keys are not secret: `Display` prints the base64 form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parses the base64 form (44 characters, as `wg` prints it).
    pub fn from_base64(s: &str) -> Result<PublicKey, KeyError> {
        decode32(s.trim())
            .map(PublicKey)
            .ok_or_else(|| KeyError::InvalidPublic(s.to_string()))
    }

    /// The base64 form.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// The wireguard-control form.
    pub fn to_wg(self) -> wireguard_control::Key {
        wireguard_control::Key(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

/// A WireGuard private key. Neither `Debug` nor `Display` print it; it has no `Serialize`.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    /// A fresh key from the operating system's random source (clamped as X25519 requires).
    pub fn generate() -> PrivateKey {
        PrivateKey(wireguard_control::Key::generate_private().0)
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.to_wg().get_public().0)
    }

    /// The matching public key, base64 (what `sdnlinkd pubkey` prints and the Node annotation
    /// carries).
    pub fn public_key_b64(&self) -> String {
        self.public_key().to_base64()
    }

    /// The wireguard-control form, for handing to the device only: its `Debug` prints the key.
    pub(crate) fn to_wg(&self) -> wireguard_control::Key {
        wireguard_control::Key(self.0)
    }

    fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// Parses the base64 form (the content of a `wg genkey` file).
    pub fn from_base64(s: &str) -> Option<PrivateKey> {
        decode32(s.trim()).map(PrivateKey)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl fmt::Display for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

fn decode32(s: &str) -> Option<[u8; 32]> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    bytes.try_into().ok()
}

/// Loads the private key at `path`, or creates it (mode 0600, in a 0700 directory created if
/// missing) when the file does not exist. A file readable by group or others is refused, as
/// `wg` warns about and OpenSSH refuses for its keys.
pub fn load_or_create(path: &Path) -> Result<PrivateKey, KeyError> {
    let io_err = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    match fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions {
                    path: path.to_path_buf(),
                    mode,
                });
            }
            let text = fs::read_to_string(path).map_err(io_err)?;
            PrivateKey::from_base64(&text).ok_or_else(|| KeyError::Malformed {
                path: path.to_path_buf(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(io_err)?;
            }
            let key = PrivateKey::generate();
            // create_new: two daemons racing must not both write a key; the loser reads the
            // winner's file.
            let mut file = match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return load_or_create(path),
                Err(e) => return Err(io_err(e)),
            };
            file.write_all(format!("{}\n", key.to_base64()).as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io_err)?;
            Ok(key)
        }
        Err(e) => Err(io_err(e)),
    }
}

/// The base64 public key of the key file at `path`, creating the key if needed
/// (`sdnlinkd pubkey`).
pub fn public_key_b64(path: &Path) -> Result<String, KeyError> {
    load_or_create(path).map(|k| k.public_key().to_base64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_0600_in_0700_dir_and_reloads_same_key() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("sub/private.key");
        let k1 = load_or_create(&path).expect("create");
        let fmode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        let dmode = fs::metadata(tmp.path().join("sub"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(fmode, 0o600);
        assert_eq!(dmode, 0o700);
        let k2 = load_or_create(&path).expect("load");
        assert_eq!(k1.public_key(), k2.public_key());
        assert_eq!(
            public_key_b64(&path).expect("pub"),
            k1.public_key().to_base64()
        );
    }

    #[test]
    fn refuses_group_readable_file_naming_fix() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("private.key");
        load_or_create(&path).expect("create");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        let err = load_or_create(&path).expect_err("must refuse");
        let msg = err.to_string();
        assert!(msg.contains("chmod 600"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }

    #[test]
    fn malformed_file_is_an_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("private.key");
        fs::write(&path, "not a key").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(matches!(
            load_or_create(&path),
            Err(KeyError::Malformed { .. })
        ));
    }

    #[test]
    fn private_key_never_printed() {
        let k = PrivateKey::generate();
        let b64 = k.to_base64();
        assert!(!format!("{k:?}").contains(&b64));
        assert!(!format!("{k}").contains(&b64));
        assert!(!format!("{:?}", Some(&k)).contains(&b64[..10]));
    }

    #[test]
    fn public_key_matches_wg_pubkey_vector() {
        // Vector from wireguard-tools: `echo <priv> | wg pubkey`.
        let k =
            PrivateKey::from_base64("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=").expect("valid");
        assert_eq!(
            k.public_key().to_base64(),
            "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
        );
    }

    #[test]
    fn public_key_rejects_wrong_length() {
        assert!(PublicKey::from_base64("AAAA").is_err());
        assert!(PublicKey::from_base64("!!not base64!!").is_err());
    }
}
