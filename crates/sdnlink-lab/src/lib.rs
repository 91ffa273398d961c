//! The one-machine lab (`sdnlink-lab`): several clusters, each node a network namespace running
//! the real daemon, pods as namespaces behind each node, an underlay namespace joining the nodes,
//! a simulated API server per cluster, and end-to-end checks (docs/design.md, "Test tiers", tier 4).
//!
//! `topology` is the lab's shape as a pure value; `net` creates and removes it with iproute2;
//! `servers` runs the pods' echo servers and the upstream DNS server; `daemon` starts and stops
//! `sdnlinkd` processes inside node namespaces; `dns` is the checks' raw DNS client;
//! `manifests` writes the default YAML manifests; `checks` are the end-to-end checks, `quiet`
//! those of a quiet steady state, `faults` the fault scenarios (probed by `probe`) and
//! `openshift` those of the OpenShift-shaped cluster and the shipped RBAC; `run` ties them
//! together (`up`, `down`, `run`); `qemu` is the real-kernel VM harness and `vm` runs the lab
//! and the kernel-only tests inside it.
//!
//! None of this ships: the packages build the `sdnlinkd` crate only.

pub mod api;
pub mod checks;
pub mod control;
pub mod daemon;
pub mod dns;
pub mod faults;
pub mod fdstore;
pub mod hostile;
pub mod kubeprobe;
pub mod manifests;
pub mod net;
pub mod openshift;
pub mod prereq;
pub mod probe;
pub mod qemu;
pub mod quiet;
pub mod run;
pub mod servers;
pub mod topology;
pub mod vm;

use std::path::PathBuf;

/// Everything that can go wrong building, checking or removing the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Netns(#[from] sdnlinkd::netns::NetnsError),
    #[error(transparent)]
    Topology(#[from] topology::TopologyError),
    #[error("a lab is already up (state in {0}); run `sdnlink-lab down` first")]
    AlreadyUp(PathBuf),
    #[error("no lab is up (no state file {0})")]
    NotUp(PathBuf),
    #[error("state file {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("DNS: {0}")]
    Dns(String),
    #[error("API server: {0}")]
    Api(String),
    #[error("daemon binary not found at {0}; build it (`cargo build --release --bin sdnlinkd`) or pass --daemon PATH")]
    NoDaemon(PathBuf),
    #[error("daemon on {node}: {reason}")]
    Daemon { node: String, reason: String },
    #[error("VM: {0}")]
    Vm(String),
}

impl LabError {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> LabError {
        LabError::Io {
            what: what.into(),
            source,
        }
    }
}
