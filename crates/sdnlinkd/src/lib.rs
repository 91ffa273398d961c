//! sdnlinkd: joins the pod networks of several Kubernetes clusters on every node.
//!
//! Layout: `config` (schema, loading, validation), `model` (plain per-cluster snapshots),
//! `netns` (the namespace handle, the only place that calls `setns`), `node` (namespace, veth,
//! addresses, routes, sysctls), `clusters` (kube-rs watchers, trust filtering, peer publication,
//! persisted snapshots), `tunnel` (WireGuard), `proxy` (IPVS
//! and nftables service proxying), `dns` (the stub resolver), `daemon` (the reconcile loop),
//! `metrics` (the Prometheus endpoint), `verify` (the connectivity check), `control` (the
//! control socket), `notify` (sd_notify and the fd store).
//!
//! The simulated API server (`crates/sdnlink-simapi`) and the lab with its VM harness
//! (`crates/sdnlink-lab`) are crates of their own: nothing of them ships in this one.

pub mod cli;
pub mod clusters;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dns;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod netns;
pub mod node;
pub mod notify;
pub mod proxy;
pub mod tunnel;
pub mod verify;
