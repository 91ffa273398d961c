//! One cluster's watch task: it builds the client, feeds the Service, EndpointSlice, Node and
//! (where discovered) HostSubnet watches into the cluster's store, and wakes the readers.

use super::kubeconfig::make_watch_client;
use super::state::{self, Kind};
use super::{lock, StateCell};
use crate::config::Config;
use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{watcher, WatchStreamExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const HOST_SUBNET_GROUP_VERSION: &str = "network.openshift.io/v1";

fn host_subnet_resource() -> ApiResource {
    ApiResource {
        group: "network.openshift.io".into(),
        version: "v1".into(),
        api_version: HOST_SUBNET_GROUP_VERSION.into(),
        kind: "HostSubnet".into(),
        plural: "hostsubnets".into(),
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.min(6))).min(Duration::from_secs(30))
}

/// What wakes whom when a cluster's store changes.
#[derive(Clone)]
pub(super) struct Wakers {
    /// The daemon's reconcile task.
    pub(super) daemon: Arc<Notify>,
    /// The snapshot writer.
    pub(super) persist: Arc<Notify>,
    /// The node publisher (local cluster only).
    pub(super) local: Option<Arc<Notify>>,
}

impl Wakers {
    fn changed(&self) {
        self.daemon.notify_one();
        self.persist.notify_one();
        if let Some(l) = &self.local {
            l.notify_one();
        }
    }
}

/// The settings a cluster's watch is built from: a reload that changes any of them restarts
/// that cluster's watch (keeping its snapshot); one that changes none leaves it running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct WatchSettings {
    kubeconfig: PathBuf,
    /// The main config file's directory: where a kubeconfig's `tokenFile` may lie.
    config_dir: PathBuf,
    pub(super) pod_cidrs: Vec<IpNet>,
    pub(super) service_cidrs: Vec<IpNet>,
    api_timeout: Duration,
    pub(super) is_local: bool,
}

impl WatchSettings {
    pub(super) fn of(cfg: &Config, name: &str, kubeconfig: &Path) -> WatchSettings {
        WatchSettings {
            kubeconfig: kubeconfig.to_path_buf(),
            config_dir: cfg.config_dir.clone(),
            pod_cidrs: cfg.pod_cidrs_of(name).unwrap_or_default().to_vec(),
            service_cidrs: cfg.service_cidrs_of(name).unwrap_or_default().to_vec(),
            api_timeout: cfg.sync.api_timeout,
            is_local: name == cfg.local.name,
        }
    }
}

pub(super) async fn run_cluster(
    name: String,
    set: WatchSettings,
    cell: StateCell,
    wake: Wakers,
    mut gate: tokio::sync::watch::Receiver<bool>,
) {
    // A dropped sender (the set is gone) also ends the wait; the task is aborted then anyway.
    let _ = gate.wait_for(|open| *open).await;
    let mut attempt = 0;
    let body_cap = lock(&cell).body_cap();
    let client = loop {
        match make_watch_client(
            &name,
            &set.kubeconfig,
            Some(&set.config_dir),
            set.api_timeout,
            body_cap.clone(),
        )
        .await
        {
            Ok(c) => break c,
            Err(e) => {
                lock(&cell).set_client_error(Some(e.to_string()));
                wake.daemon.notify_one();
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
        }
    };
    lock(&cell).set_client_error(None);
    wake.daemon.notify_one();

    // The server ends each watch after half the read timeout (a clean end, resumed from the
    // last resourceVersion without a relist), so only a server that stopped answering trips
    // the read timeout, even when no object changes for hours.
    let watch_secs = u32::try_from((set.api_timeout.as_secs() / 2).max(1)).unwrap_or(u32::MAX);
    let cfg = watcher::Config::default().timeout(watch_secs);
    let stream = |kind: Kind, ar: ApiResource| {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        watcher(api, cfg.clone())
            .default_backoff()
            .map(move |ev| (kind, ev))
            .boxed()
    };
    let main = futures::stream::select_all([
        stream(Kind::Service, ApiResource::erase::<core::Service>(&())),
        stream(
            Kind::EndpointSlice,
            ApiResource::erase::<k8s_openapi::api::discovery::v1::EndpointSlice>(&()),
        ),
        stream(Kind::Node, ApiResource::erase::<core::Node>(&())),
    ]);
    let host_subnets = async {
        let mut attempt = 0;
        loop {
            match client
                .list_api_group_resources(HOST_SUBNET_GROUP_VERSION)
                .await
            {
                Ok(list) if list.resources.iter().any(|r| r.name == "hostsubnets") => {
                    return Some(stream(Kind::HostSubnet, host_subnet_resource()));
                }
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 404 => break,
                Err(e) => {
                    let reason = format!("discovery: {}", state::describe_client_error(&e));
                    lock(&cell).set_error(Kind::HostSubnet, reason);
                    wake.daemon.notify_one();
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
        lock(&cell).host_subnets_absent();
        wake.changed();
        None
    };
    let handle = |(kind, ev)| {
        let changed = {
            let mut s = lock(&cell);
            let before = s.health();
            let changed = s.handle(kind, ev);
            changed || s.health() != before
        };
        if changed {
            wake.changed();
        }
    };
    // Services, slices and nodes start at once; HostSubnets join when discovery has answered.
    let mut main = main;
    tokio::pin!(host_subnets);
    let extra = loop {
        tokio::select! {
            hs = &mut host_subnets => break hs,
            item = main.next() => match item {
                Some(item) => handle(item),
                None => return,
            },
        }
    };
    if let Some(extra) = extra {
        main.push(extra);
    }
    while let Some(item) = main.next().await {
        handle(item);
    }
}
