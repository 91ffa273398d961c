//! The lab's per-cluster API servers: [`SimApi`] listening in the underlay namespace, on the
//! lab's own tokio runtime.

use super::topology::{Cluster, Topology, API_TOKEN, LOCAL_TOKEN, REMOTE_TOKEN};
use super::LabError;
use sdnlink_simapi::rbac::Role;
use sdnlink_simapi::{Fault, Refusal, SimApi};
use sdnlinkd::netns::NetNs;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;

/// The RBAC file the packages ship; the lab's API servers enforce its two ClusterRoles.
pub const RBAC_YAML: &str = include_str!("../../../packaging/rbac.yaml");

/// Which of the shipped roles a kubeconfig carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `sdnlinkd-local`: a node's daemon in its own cluster.
    Local,
    /// `sdnlinkd-remote`: the daemons of the other clusters.
    Remote,
}

impl Access {
    fn token(self) -> &'static str {
        match self {
            Access::Local => LOCAL_TOKEN,
            Access::Remote => REMOTE_TOKEN,
        }
    }

    fn service_account(self) -> &'static str {
        match self {
            Access::Local => "sdnlinkd-local",
            Access::Remote => "sdnlinkd-remote",
        }
    }

    /// The role of this access in packaging/rbac.yaml.
    pub fn shipped_role(self) -> Result<Role, LabError> {
        Role::from_yaml(RBAC_YAML, self.service_account())
            .map_err(|e| LabError::Api(format!("packaging/rbac.yaml: {e}")))
    }
}

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
        plan: &Topology,
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
        let api = LabApi {
            cluster: cluster.name.clone(),
            url: sim.url(),
            sim,
        };
        for access in [Access::Local, Access::Remote] {
            api.set_role(access, access.shipped_role()?);
        }
        Ok(api)
    }

    /// Replaces what the ServiceAccount of `access` may do (as an edit of its ClusterRole on
    /// the cluster would).
    pub fn set_role(&self, access: Access, role: Role) {
        let user = format!("system:serviceaccount:sdnlink:{}", access.service_account());
        self.sim.add_identity(access.token(), &user, role);
    }

    /// Requests the roles refused so far.
    pub fn denials(&self) -> u64 {
        self.sim.denials()
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

    /// A kubeconfig for this server (the server's CA, the ServiceAccount token of `access`).
    pub fn kubeconfig_yaml(&self, access: Access) -> String {
        self.sim.kubeconfig_yaml_for(&self.url, access.token())
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

    /// The stored object `kind` `namespace/name` (`namespace` ignored for cluster-scoped kinds).
    pub fn object(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<serde_json::Value, LabError> {
        self.sim
            .object(kind, namespace, name)
            .ok_or_else(|| LabError::Api(format!("{}: no {kind} {namespace}/{name}", self.cluster)))
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
