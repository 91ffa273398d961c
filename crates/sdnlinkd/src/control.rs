//! The control socket under /run/sdnlink: one JSON request line, one JSON response line.
//!
//! `status` is answered here, from the status board (see `daemon::board`), never by the
//! reconcile task, so it answers while a long sync runs; `reload` is forwarded to the task over
//! a channel and answered once the new configuration is applied.

use serde::{Deserialize, Serialize};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Status,
    Reload,
    /// A dry run of a full sync (`sdnlinkd plan`); the answer's `status` holds it.
    Plan,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub cmd: Command,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// Produces the status document (`None` before the daemon published one).
pub type StatusFn = std::sync::Arc<
    dyn Fn() -> futures::future::BoxFuture<'static, Option<serde_json::Value>> + Send + Sync,
>;

/// A request handed to the reconcile task.
pub struct Pending {
    pub cmd: Command,
    pub reply: oneshot::Sender<Response>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot reach the daemon at {path}: {source} (is sdnlinkd running?)")]
    Connect {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("bad answer from the daemon: {0}")]
    Protocol(String),
}

/// Binds the socket (replacing a stale one) and serves until the task is dropped.
pub async fn serve(
    path: &Path,
    to_daemon: mpsc::Sender<Pending>,
    status: StatusFn,
) -> Result<(), ControlError> {
    let err = |source| ControlError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // A socket file left by a killed daemon refuses connections; a live daemon would answer.
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another sdnlinkd is answering on it",
            )));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let tx = to_daemon.clone();
        let status = status.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, tx, status).await {
                tracing::debug!(error = %e, "control connection failed");
            }
        });
    }
}

async fn handle(stream: UnixStream, tx: mpsc::Sender<Pending>, status: StatusFn) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    // A request is one short line; cap it so a client cannot make us buffer without bound.
    let mut reader = BufReader::new(read.take(64 * 1024));
    reader.read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(Request {
            cmd: Command::Status,
        }) => match status().await {
            Some(doc) => Response {
                ok: true,
                error: None,
                status: Some(doc),
            },
            None => Response::error("the daemon is starting and has no status yet"),
        },
        Ok(req) => {
            let (reply, rx) = oneshot::channel();
            if tx
                .send(Pending {
                    cmd: req.cmd,
                    reply,
                })
                .await
                .is_err()
            {
                Response::error("daemon is shutting down")
            } else {
                rx.await
                    .unwrap_or_else(|_| Response::error("daemon dropped the request"))
            }
        }
        Err(e) => Response::error(&format!("bad request: {e}")),
    };
    let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

impl Response {
    pub fn error(msg: &str) -> Response {
        Response {
            ok: false,
            error: Some(msg.to_string()),
            status: None,
        }
    }
}

/// Client side: sends one request and waits for the answer (a reload waits for the apply).
pub async fn request(
    path: &Path,
    cmd: Command,
    timeout: Duration,
) -> Result<Response, ControlError> {
    let p = path.display().to_string();
    let fut = async {
        let mut stream =
            UnixStream::connect(path)
                .await
                .map_err(|source| ControlError::Connect {
                    path: p.clone(),
                    source,
                })?;
        let mut body = serde_json::to_vec(&Request { cmd })
            .map_err(|e| ControlError::Protocol(e.to_string()))?;
        body.push(b'\n');
        stream
            .write_all(&body)
            .await
            .map_err(|source| ControlError::Io {
                path: p.clone(),
                source,
            })?;
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .await
            .map_err(|source| ControlError::Io {
                path: p.clone(),
                source,
            })?;
        serde_json::from_str::<Response>(&line).map_err(|e| ControlError::Protocol(e.to_string()))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ControlError::Protocol(format!("no answer within {timeout:?}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn request_round_trips_through_the_daemon_channel() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.sock");
        let (tx, mut rx) = mpsc::channel(4);
        let server_path = path.clone();
        let status: StatusFn =
            std::sync::Arc::new(|| Box::pin(async { Some(serde_json::json!({"phase": "ready"})) }));
        tokio::spawn(async move { serve(&server_path, tx, status).await });
        // The task only ever sees reloads: status is answered by the server itself.
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                let r = match p.cmd {
                    Command::Status => Response::error("status must not reach the daemon task"),
                    Command::Reload => Response::error("local.name: bad"),
                    Command::Plan => Response {
                        ok: true,
                        error: None,
                        status: Some(serde_json::json!({"node": {"operations": []}})),
                    },
                };
                let _ = p.reply.send(r);
            }
        });
        for _ in 0..100 {
            if path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let s = request(&path, Command::Status, Duration::from_secs(5))
            .await
            .expect("status");
        assert!(s.ok);
        assert_eq!(s.status.expect("status body")["phase"], "ready");
        let p = request(&path, Command::Plan, Duration::from_secs(5))
            .await
            .expect("plan answer");
        assert!(p.ok);
        assert_eq!(
            p.status.expect("plan body")["node"]["operations"],
            serde_json::json!([])
        );
        let r = request(&path, Command::Reload, Duration::from_secs(5))
            .await
            .expect("reload answer");
        assert!(!r.ok);
        assert_eq!(r.error.as_deref(), Some("local.name: bad"));
        let mode = std::fs::metadata(&path)
            .expect("socket")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[tokio::test]
    async fn no_daemon_is_a_clear_error() {
        let e = request(
            Path::new("/nonexistent/control.sock"),
            Command::Status,
            Duration::from_secs(1),
        )
        .await
        .expect_err("must fail");
        assert!(e.to_string().contains("is sdnlinkd running?"), "{e}");
    }
}
