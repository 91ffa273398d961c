//! The lab's per-cluster API servers: [`SimApi`] listening in the underlay namespace, on the
//! lab's own tokio runtime.

use super::plan::{Cluster, Plan, API_TOKEN};
use super::LabError;
use crate::clusters::simapi::{Fault, Refusal, SimApi};
use crate::netns::NetNs;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;

/// One cluster's API server.
pub struct LabApi {
    /// Cluster name.
    pub cluster: String,
    /// `https://192.0.2.1:644k`.
    pub url: String,
    sim: SimApi,
}

impl LabApi {
    /// Binds the listener inside the underlay namespace and serves every YAML file of
    /// `manifests` with the lab's bearer token, on `rt`.
    pub fn start(
        plan: &Plan,
        cluster: &Cluster,
        manifests: &Path,
        rt: &tokio::runtime::Runtime,
    ) -> Result<LabApi, LabError> {
        if !manifests.is_dir() {
            return Err(LabError::Api(format!(
                "manifest directory {} of cluster {} does not exist",
                manifests.display(),
                cluster.name
            )));
        }
        let addr = SocketAddr::V4(cluster.api_addr);
        let ns = NetNs::open(&plan.underlay_netns)?;
        let listener = ns.run(move || TcpListener::bind(addr))?.map_err(|e| {
            LabError::io(
                format!("binding the API server of {} on {addr}", cluster.name),
                e,
            )
        })?;
        let _entered = rt.enter();
        let sim = SimApi::start(listener, Some(manifests), API_TOKEN)
            .map_err(|e| LabError::Api(format!("{}: {e}", cluster.name)))?;
        Ok(LabApi {
            cluster: cluster.name.clone(),
            url: sim.url(),
            sim,
        })
    }

    /// Injects `fault` (`Fault::None` undoes any).
    pub fn set_fault(&self, fault: Fault) -> Result<(), LabError> {
        self.sim
            .try_set_fault(fault)
            .map_err(|e| LabError::Api(format!("{}: {e}", self.cluster)))
    }

    /// Re-stamps every object with a new resourceVersion and ends every open watch: watches
    /// resuming from an old version get `410 Gone` and relist (see [`SimApi::expire`]).
    pub fn expire(&self) {
        self.sim.expire();
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        self.sim.fault()
    }

    /// Manifest documents the server refused at start (the others loaded).
    pub fn refused(&self) -> Vec<Refusal> {
        self.sim.refused()
    }

    /// A kubeconfig for this server (token user, the server's CA).
    pub fn kubeconfig_yaml(&self) -> Result<String, LabError> {
        Ok(self.sim.kubeconfig_yaml(&self.url))
    }

    /// Creates or replaces the objects of a YAML document stream.
    pub fn apply_yaml(&self, yaml: &str) -> Result<(), LabError> {
        self.sim
            .apply_yaml(yaml)
            .map(|_| ())
            .map_err(|e| LabError::Api(format!("{}: {e}", self.cluster)))
    }

    /// Deletes one object (`kind` as in manifests); an error if it did not exist.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<(), LabError> {
        if self.sim.delete(kind, namespace, name) {
            Ok(())
        } else {
            Err(LabError::Api(format!(
                "{}: no {kind} {namespace}/{name} to delete",
                self.cluster
            )))
        }
    }

    /// The annotations of Node `name`.
    pub fn node_annotations(&self, name: &str) -> Result<BTreeMap<String, String>, LabError> {
        let node = self
            .sim
            .get_node(name)
            .ok_or_else(|| LabError::Api(format!("{}: no Node {name}", self.cluster)))?;
        Ok(node["metadata"]["annotations"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default())
    }
}
