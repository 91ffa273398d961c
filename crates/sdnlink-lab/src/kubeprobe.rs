//! A minimal HTTPS GET against a Kubernetes API server from inside a network namespace, with
//! the server, CA and bearer token of a kubeconfig: proves a node namespace reaches its API
//! servers with the kubeconfig the lab generated, independently of the daemon's client.

use super::LabError;
use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sdnlinkd::netns::NetNs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

fn bad(what: impl Into<String>) -> LabError {
    LabError::Api(what.into())
}

/// Server URL, CA certificates (DER) and token of the first cluster and user of a kubeconfig.
pub fn parse_kubeconfig(
    yaml: &str,
) -> Result<(url::Url, Vec<CertificateDer<'static>>, String), LabError> {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(yaml).map_err(|e| bad(format!("kubeconfig: {e}")))?;
    let cluster = &doc["clusters"][0]["cluster"];
    let server = cluster["server"]
        .as_str()
        .ok_or_else(|| bad("kubeconfig without clusters[0].cluster.server"))?;
    let url = url::Url::parse(server).map_err(|e| bad(format!("server {server}: {e}")))?;
    let ca_b64 = cluster["certificate-authority-data"]
        .as_str()
        .ok_or_else(|| bad("kubeconfig without certificate-authority-data"))?;
    let ca_pem = base64::engine::general_purpose::STANDARD
        .decode(ca_b64)
        .map_err(|e| bad(format!("certificate-authority-data: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&ca_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("CA PEM: {e}")))?;
    let token = doc["users"][0]["user"]["token"]
        .as_str()
        .ok_or_else(|| bad("kubeconfig without users[0].user.token"))?
        .to_string();
    Ok((url, certs, token))
}

/// `GET path` on the kubeconfig's server from a socket created inside `netns`; returns the
/// HTTP status and the body.
pub fn get(netns: &str, kubeconfig: &str, path: &str) -> Result<(u16, String), LabError> {
    let (url, certs, token) = parse_kubeconfig(kubeconfig)?;
    let host = url
        .host_str()
        .ok_or_else(|| bad(format!("server {url} has no host")))?
        .to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let ip: std::net::IpAddr = host
        .trim_matches(|c| c == '[' || c == ']')
        .parse()
        .map_err(|e| bad(format!("server host {host} is not an IP address: {e}")))?;
    let addr = SocketAddr::new(ip, port);
    let ns = NetNs::open(netns)?;
    let tcp = ns
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(3)))?
        .map_err(|e| LabError::io(format!("connecting to {addr} from {netns}"), e))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| LabError::io("read timeout", e))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots
            .add(c)
            .map_err(|e| bad(format!("CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::IpAddress(ip.into());
    let conn = rustls::ClientConnection::new(Arc::new(config), name)
        .map_err(|e| bad(format!("TLS: {e}")))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(req.as_bytes())
        .map_err(|e| LabError::io(format!("TLS request to {addr}"), e))?;
    let mut raw = Vec::new();
    // A server that closes without close_notify ends the read with UnexpectedEof; what was read
    // is still the whole response (Connection: close).
    if let Err(e) = tls.read_to_end(&mut raw) {
        if e.kind() != std::io::ErrorKind::UnexpectedEof || raw.is_empty() {
            return Err(LabError::io(format!("TLS response from {addr}"), e));
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("HTTP response without a header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("HTTP status line: {head}")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// Decodes an HTTP/1.1 chunked body.
pub fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_http_bodies() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
        assert_eq!(dechunk("0\r\n\r\n"), "");
    }

    #[test]
    fn kubeconfig_fields_are_required() {
        assert!(parse_kubeconfig("clusters: []").is_err());
        let no_token = "clusters:\n- cluster:\n    server: https://192.0.2.1:6441\n    certificate-authority-data: \"\"\nusers: []\n";
        assert!(parse_kubeconfig(no_token).is_err());
    }
}
