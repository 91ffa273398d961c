//! The control channel of a lab brought up with `sdnlink-lab up`: the holder process owns the
//! API servers and the daemons' pids, so `sdnlink-lab restart|api|reload` send it one JSON
//! request line over a unix socket in the lab's state directory and print its one-line reply.

use super::run::Lab;
use super::LabError;
use sdnlink_simapi::Fault;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request to the holder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Stop (`kill`: SIGKILL) and start one node's daemon, waiting until ready.
    Restart { node: String, kill: bool },
    /// Set one cluster's API fault by name (`Fault::name`).
    Api { cluster: String, fault: String },
    /// Reload one node's daemon, with a new config text when given.
    Reload {
        node: String,
        config: Option<String>,
    },
}

/// The holder's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub message: String,
}

/// The control socket of the lab whose state directory is `state_dir`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("lab.sock")
}

/// Carries out `req` on `lab` (the same calls the in-process checks use).
pub fn execute(lab: &mut Lab, req: &Request) -> Reply {
    let r = match req {
        Request::Restart { node, kill } => lab.restart_daemon(node, *kill).map(|r| {
            format!(
                "{node}: daemon {} {} (gone in {:.2}s), new pid {} ready in {:.1}s",
                r.old_pid,
                if *kill {
                    "killed (SIGKILL)"
                } else {
                    "stopped (SIGTERM)"
                },
                r.stopped.as_secs_f64(),
                r.pid,
                r.ready.as_secs_f64()
            )
        }),
        Request::Api { cluster, fault } => match Fault::from_name(fault) {
            None => Err(LabError::Api(format!(
                "unknown fault {fault:?}; one of: {}",
                Fault::ALL.map(Fault::name).join(", ")
            ))),
            Some(f) => lab
                .set_api_fault(cluster, f)
                .map(|()| format!("API server of {cluster}: {}", f.name())),
        },
        Request::Reload { node, config } => {
            let text = match config {
                Some(t) => Ok(t.clone()),
                None => lab.node_config(node),
            };
            text.and_then(|t| lab.reload_daemon(node, &t))
                .map(|out| format!("{node}: reloaded {}", out.trim()))
        }
    };
    match r {
        Ok(message) => Reply { ok: true, message },
        Err(e) => Reply {
            ok: false,
            message: e.to_string(),
        },
    }
}

/// Serves requests on `path` for as long as the process lives, one at a time, against the lab
/// in `lab` (`None` once it is being torn down).
pub fn serve(path: &Path, lab: Arc<Mutex<Option<Lab>>>) -> Result<(), LabError> {
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).map_err(|e| LabError::io(format!("{}", path.display()), e))?;
    std::thread::Builder::new()
        .name("lab-control".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let lab = lab.clone();
                // One connection at a time: a restart holds the lab until the daemon is ready.
                let _ = answer(conn, &lab);
            }
        })
        .map_err(|e| LabError::io("starting the control thread", e))?;
    Ok(())
}

fn answer(conn: UnixStream, lab: &Mutex<Option<Lab>>) -> std::io::Result<()> {
    let mut line = String::new();
    BufReader::new(conn.try_clone()?).read_line(&mut line)?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Err(e) => Reply {
            ok: false,
            message: format!("bad request {:?}: {e}", line.trim()),
        },
        Ok(req) => {
            let mut guard = lab.lock().unwrap_or_else(|p| p.into_inner());
            match guard.as_mut() {
                Some(lab) => execute(lab, &req),
                None => Reply {
                    ok: false,
                    message: "the lab is being torn down".into(),
                },
            }
        }
    };
    let mut out = serde_json::to_string(&reply).map_err(std::io::Error::other)?;
    out.push('\n');
    (&conn).write_all(out.as_bytes())
}

/// Sends `req` to the holder of the lab in `state_dir` and returns its reply.
pub fn send(state_dir: &Path, req: &Request) -> Result<Reply, LabError> {
    let path = socket_path(state_dir);
    let conn = UnixStream::connect(&path).map_err(|e| {
        LabError::io(
            format!(
                "connecting to {} (is a lab up with `sdnlink-lab up`?)",
                path.display()
            ),
            e,
        )
    })?;
    // A restart waits for readiness (up to the lab's 90 s) after a stop of up to 10 s.
    conn.set_read_timeout(Some(Duration::from_secs(150)))
        .map_err(|e| LabError::io("control socket timeout", e))?;
    let mut text = serde_json::to_string(req).map_err(|e| LabError::State {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    text.push('\n');
    (&conn)
        .write_all(text.as_bytes())
        .map_err(|e| LabError::io(format!("writing to {}", path.display()), e))?;
    let mut line = String::new();
    BufReader::new(&conn)
        .read_line(&mut line)
        .map_err(|e| LabError::io(format!("reading from {}", path.display()), e))?;
    serde_json::from_str(&line).map_err(|e| LabError::State {
        path,
        reason: format!("bad reply {:?}: {e}", line.trim()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let r = Request::Restart {
            node: "east-n1".into(),
            kill: true,
        };
        let text = serde_json::to_string(&r).expect("serialises");
        assert_eq!(text, r#"{"cmd":"restart","node":"east-n1","kill":true}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).expect("parses"), r);
        let a: Request = serde_json::from_str(r#"{"cmd":"api","cluster":"west","fault":"hang"}"#)
            .expect("parses");
        assert_eq!(
            a,
            Request::Api {
                cluster: "west".into(),
                fault: "hang".into()
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
    }
}
