//! The lab's per-cluster API servers: `crate::clusters::simapi::SimApi` listening in the
//! underlay namespace.
//!
//! Until the simulated API server lands on main (branch `kube`), [`LabApi::start`] fails with a
//! clear error instead of faking one; everything that needs an API server then reports FAIL.

use super::plan::{Cluster, Plan, API_TOKEN};
use super::LabError;
use crate::netns::NetNs;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;

/// One cluster's API server.
pub struct LabApi {
    /// Cluster name.
    pub cluster: String,
    /// `https://192.0.2.1:644k`.
    pub url: String,
}

impl LabApi {
    /// Binds the listener inside the underlay namespace and serves `manifests` (a directory of
    /// YAML files) with the lab's bearer token.
    pub fn start(
        plan: &Plan,
        cluster: &Cluster,
        manifests: &Path,
        rt: &tokio::runtime::Runtime,
    ) -> Result<LabApi, LabError> {
        let addr = SocketAddr::V4(cluster.api_addr);
        let ns = NetNs::open(&plan.underlay_netns)?;
        let listener = ns.run(move || TcpListener::bind(addr))?.map_err(|e| {
            LabError::io(
                format!("binding the API server of {} on {addr}", cluster.name),
                e,
            )
        })?;
        let _entered = rt.enter();
        simapi_start(listener, manifests, API_TOKEN)?;
        Ok(LabApi {
            cluster: cluster.name.clone(),
            url: format!("https://{addr}"),
        })
    }

    /// A kubeconfig for this server (token user, the server's CA).
    pub fn kubeconfig_yaml(&self) -> Result<String, LabError> {
        Err(not_merged())
    }

    /// Creates or replaces the objects of a YAML document stream.
    pub fn apply_yaml(&self, yaml: &str) -> Result<(), LabError> {
        let _ = yaml;
        Err(not_merged())
    }

    /// The annotations of Node `name`.
    pub fn node_annotations(
        &self,
        name: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, LabError> {
        let _ = name;
        Err(not_merged())
    }
}

fn not_merged() -> LabError {
    LabError::Api(
        "the simulated API server (clusters::simapi, branch kube) is not merged yet".into(),
    )
}

/// Placeholder for `SimApi::start` until branch `kube` is merged; replaced then.
fn simapi_start(listener: TcpListener, manifests: &Path, token: &str) -> Result<(), LabError> {
    let _ = (listener, manifests, token);
    Err(not_merged())
}
