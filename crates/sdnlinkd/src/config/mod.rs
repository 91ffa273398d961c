//! Configuration: TOML via figment (built-in defaults < main file < drop-ins in sorted order <
//! `SDNLINK_` environment with `__` for nesting), then validation of every rule at once into the
//! typed [`Config`]. Nothing downstream re-checks what is validated here.

mod raw;
mod types;
mod validate;

pub use raw::RawConfig;
pub use types::*;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use std::path::{Path, PathBuf};

/// Default location of the main file.
pub const DEFAULT_CONFIG: &str = "/etc/sdnlink/sdnlink.toml";

/// Every problem found in a configuration, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

/// The drop-in directory of a main file: `sdnlink.d` next to it.
pub fn dropin_dir(main: &Path) -> PathBuf {
    main.parent()
        .unwrap_or_else(|| Path::new("/"))
        .join("sdnlink.d")
}

/// The drop-in files in the order they apply (sorted by file name).
pub fn dropins(main: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let dir = dropin_dir(main);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ConfigError(vec![format!(
                "drop-in directory {}: {e}",
                dir.display()
            )]))
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// The merged figment: defaults < `path` (must exist) < drop-ins < environment.
pub fn figment(path: &Path) -> Result<Figment, ConfigError> {
    if !path.is_file() {
        return Err(ConfigError(vec![format!(
            "config file {} does not exist or is not a file (give --config PATH or set SDNLINK_CONFIG)",
            path.display()
        )]));
    }
    // file_exact: never search parent directories for a file of that name.
    let mut fig =
        Figment::from(Serialized::defaults(RawConfig::default())).merge(Toml::file_exact(path));
    for d in dropins(path)? {
        fig = fig.merge(Toml::file_exact(d));
    }
    Ok(fig.merge(env_provider()))
}

fn env_provider() -> Env {
    // SDNLINK_CONFIG names the file itself; it is not a config key.
    Env::prefixed("SDNLINK_")
        .split("__")
        .filter(|k| !k.as_str().eq_ignore_ascii_case("config"))
}

/// Loads `path` (must exist), its drop-ins and the environment, and validates.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let raw: RawConfig = figment(path)?.extract().map_err(figment_errors)?;
    validate::validate(raw, &config_dir(path))
}

/// The directory of main file `path`: kubeconfig token files must lie inside it.
pub fn config_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The configuration `sdnlinkd cleanup` acts on, and why the full one did not load if it did
/// not. Cleanup only needs the settings that name sdnlinkd's objects (`[namespace]`, `[tunnel]`,
/// `control_socket`, `state_dir`): an admin's broken `[proxy]` or `[[remote]]` must not leave
/// the namespace, routes, tunnel and snapshot files behind when the package is removed. Those
/// are still validated, and the file must exist: cleanup never guesses names from built-in
/// defaults alone.
pub fn load_for_cleanup(path: &Path) -> Result<(Config, Option<ConfigError>), ConfigError> {
    let full = match load(path) {
        Ok(cfg) => return Ok((cfg, None)),
        Err(e) => e,
    };
    let fig = figment(path)?;
    let mut raw = RawConfig::default();
    let mut errors = Vec::new();
    match fig.extract_inner("namespace") {
        Ok(v) => raw.namespace = v,
        Err(e) => errors.extend(figment_errors(e).0),
    }
    match fig.extract_inner("tunnel") {
        Ok(v) => raw.tunnel = v,
        Err(e) => errors.extend(figment_errors(e).0),
    }
    match fig.extract_inner("control_socket") {
        Ok(v) => raw.control_socket = v,
        Err(e) => errors.extend(figment_errors(e).0),
    }
    match fig.extract_inner("state_dir") {
        Ok(v) => raw.state_dir = v,
        Err(e) => errors.extend(figment_errors(e).0),
    }
    if !errors.is_empty() {
        return Err(ConfigError(errors));
    }
    // Placeholders for what validation requires and cleanup never reads. 240.0.0.0/4 is
    // reserved (RFC 1112), so it cannot overlap the transit range.
    raw.local.name = "cleanup".into();
    raw.local.pod_cidrs = vec!["240.0.0.0/32".into()];
    raw.dns.enabled = false;
    let cfg = validate::validate(raw, &config_dir(path))?;
    Ok((cfg, Some(full)))
}

/// Parses and validates one TOML document alone (no drop-ins, no environment).
pub fn parse_str(toml: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = Figment::from(Serialized::defaults(RawConfig::default()))
        .merge(Toml::string(toml))
        .extract()
        .map_err(figment_errors)?;
    validate::validate(raw, &config_dir(Path::new(DEFAULT_CONFIG)))
}

/// [`parse_str`] for a main file in `config_dir` (where kubeconfig token files may lie).
pub fn parse_str_in(toml: &str, config_dir: &Path) -> Result<Config, ConfigError> {
    let raw: RawConfig = Figment::from(Serialized::defaults(RawConfig::default()))
        .merge(Toml::string(toml))
        .extract()
        .map_err(figment_errors)?;
    validate::validate(raw, config_dir)
}

fn figment_errors(e: figment::Error) -> ConfigError {
    ConfigError(e.into_iter().map(|e| e.to_string()).collect())
}

/// The `nameserver` lines of a resolv.conf, as socket addresses on port 53.
pub fn resolv_conf_nameservers(path: &Path) -> std::io::Result<Vec<std::net::SocketAddr>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                // A scoped IPv6 link-local (fe80::1%eth0) is not portable into our
                // namespace's forwarder; skip it rather than fail.
                .and_then(|a| a.parse::<std::net::IpAddr>().ok())
        })
        .map(|ip| std::net::SocketAddr::new(ip, 53))
        .collect())
}

/// The effective config as TOML for `check-config --print`. The config holds no secret
/// values (keys live in files, credentials in kubeconfigs), so paths are printed as they are.
pub fn to_toml(cfg: &Config) -> String {
    toml::to_string_pretty(cfg).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
}

#[cfg(test)]
mod tests;
