//! Kubeconfigs read under the daemon's rules (no `exec` or `auth-provider`, no `tokenFile`
//! outside the config directory) and the API clients built from them: the daemon runs as root,
//! so a remote cluster's kubeconfig must not make it run code or read arbitrary files.

use super::{body_limit, state, ClustersError};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

/// Where the `tokenFile` of kubeconfig `kubeconfig` may lie: the kubeconfig's own directory
/// when that is inside `config_dir` (the directory of the main config file), else `config_dir`
/// itself; both with symlinks resolved. Without a `config_dir` (a caller that does not know
/// it), the kubeconfig's own directory.
fn token_root(kubeconfig: &Path, config_dir: Option<&Path>) -> std::io::Result<PathBuf> {
    let own = std::fs::canonicalize(kubeconfig)?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let Some(dir) = config_dir else {
        return Ok(own);
    };
    let dir = std::fs::canonicalize(dir)?;
    Ok(if own.starts_with(&dir) { own } else { dir })
}

/// Why `token_file` (as written in kubeconfig `kubeconfig`, relative to its directory) may not
/// be read, or `None` when it lies inside [`token_root`]. Symlinks are resolved first, so a
/// link inside the directory that points out of it is refused too.
pub fn token_file_problem(
    kubeconfig: &Path,
    token_file: &str,
    config_dir: Option<&Path>,
) -> Option<String> {
    let root = match token_root(kubeconfig, config_dir) {
        Ok(r) => r,
        Err(e) => {
            return Some(format!(
                "tokenFile {token_file:?}: cannot resolve the config directory ({e})"
            ))
        }
    };
    let raw = Path::new(token_file);
    let joined = if raw.is_relative() {
        kubeconfig
            .parent()
            .map_or_else(|| raw.to_path_buf(), |d| d.join(raw))
    } else {
        raw.to_path_buf()
    };
    let fix = format!(
        "sdnlinkd reads a token file as root and sends its content to the API server, so it must lie inside {}; move the token file there or write the token inline (`token:`)",
        root.display()
    );
    match std::fs::canonicalize(&joined) {
        Ok(real) if real.starts_with(&root) => None,
        Ok(real) => Some(format!(
            "tokenFile {token_file:?} is {}, outside {}: {fix}",
            real.display(),
            root.display()
        )),
        Err(e) => Some(format!(
            "tokenFile {token_file:?} ({}) cannot be read ({e}): {fix}",
            joined.display()
        )),
    }
}

/// Reads a kubeconfig and refuses users with `exec` or `auth-provider`, and a `tokenFile`
/// outside the config directory (see [`token_file_problem`]).
pub(super) fn read_kubeconfig(
    cluster: &str,
    path: &Path,
    config_dir: Option<&Path>,
) -> Result<Kubeconfig, ClustersError> {
    let kc = Kubeconfig::read_from(path).map_err(|source| ClustersError::Kubeconfig {
        cluster: cluster.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    for named in &kc.auth_infos {
        let Some(ai) = &named.auth_info else { continue };
        let mechanism = if ai.exec.is_some() {
            "exec"
        } else if ai.auth_provider.is_some() {
            "auth-provider"
        } else {
            continue;
        };
        return Err(ClustersError::RefusedAuth {
            cluster: cluster.to_string(),
            path: path.to_path_buf(),
            user: named.name.clone(),
            mechanism,
        });
    }
    for named in &kc.auth_infos {
        let Some(tf) = named
            .auth_info
            .as_ref()
            .and_then(|a| a.token_file.as_deref())
        else {
            continue;
        };
        if let Some(reason) = token_file_problem(path, tf, config_dir) {
            return Err(ClustersError::RefusedTokenFile {
                cluster: cluster.to_string(),
                path: path.to_path_buf(),
                user: named.name.clone(),
                reason,
            });
        }
    }
    Ok(kc)
}

/// A client for `cluster` from kubeconfig `path`; a `tokenFile` must lie inside the
/// kubeconfig's own directory (see [`make_watch_client`] for the config-directory rule).
pub(super) async fn make_client(
    cluster: &str,
    path: &Path,
    api_timeout: Duration,
) -> Result<Client, ClustersError> {
    // The publisher reads and patches one Node: its answers are one object each.
    let cap = Arc::new(AtomicUsize::new(body_limit::MAX_EVENT_BYTES));
    make_watch_client(cluster, path, None, api_timeout, cap).await
}

/// A client for `cluster` from kubeconfig `path`, whose `tokenFile` must lie inside
/// `config_dir` (or the kubeconfig's own directory when that is inside it).
pub(super) async fn make_watch_client(
    cluster: &str,
    path: &Path,
    config_dir: Option<&Path>,
    api_timeout: Duration,
    body_cap: Arc<AtomicUsize>,
) -> Result<Client, ClustersError> {
    let kc = read_kubeconfig(cluster, path, config_dir)?;
    let err = |reason: String| ClustersError::Client {
        cluster: cluster.to_string(),
        reason,
    };
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| err(e.to_string()))?;
    // kube's default read timeout (295 s) leaves a wedged API server, one that accepts
    // connections and never answers, looking healthy for five minutes.
    config.read_timeout = Some(api_timeout);
    config.connect_timeout = Some(api_timeout.min(Duration::from_secs(10)));
    let builder = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| err(state::describe_client_error(&e)))?;
    Ok(builder
        .with_layer(&body_limit::BodyLimitLayer::new(body_cap))
        .build())
}
