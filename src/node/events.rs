//! Netlink deletion events: a hint to run a full sync before the resync period is over.

use super::NodeError;
use crate::netns::NetNs;
use futures::StreamExt;
use rtnetlink::constants::{
    RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE, RTMGRP_LINK,
};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::AsyncSocket;
use std::sync::Arc;
use tokio::sync::Notify;

const GROUPS: u32 =
    RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE;

async fn subscribe(ns: &NetNs, notify: Arc<Notify>) -> Result<(), NodeError> {
    // The socket must be created inside the namespace; binding and reading work from any thread.
    let (mut conn, handle, mut messages) = ns.rtnetlink_connection().await?;
    let addr = rtnetlink::sys::SocketAddr::new(0, GROUPS);
    conn.socket_mut()
        .socket_mut()
        .bind(&addr)
        .map_err(|source| NodeError::Io {
            what: format!(
                "subscribing to rtnetlink groups in namespace {:?}",
                ns.name()
            ),
            source,
        })?;
    tokio::spawn(conn);
    let name = ns.name().to_string();
    tokio::spawn(async move {
        // The handle keeps the connection task alive.
        let _handle = handle;
        while let Some((msg, _)) = messages.next().await {
            if let NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::DelLink(_)
                | RouteNetlinkMessage::DelAddress(_)
                | RouteNetlinkMessage::DelRoute(_),
            ) = msg.payload
            {
                tracing::debug!(namespace = %name, "netlink deletion event");
                notify.notify_one();
            }
        }
        tracing::warn!(namespace = %name, "netlink event stream ended");
    });
    Ok(())
}

/// Subscribes to link, address and route notifications in both namespaces; the returned
/// `Notify` fires on every deletion (ours or out of band), so the daemon can request a full
/// sync sooner than the resync period. Must be called inside a tokio runtime.
pub async fn watch_events(host: &NetNs, ns: &NetNs) -> Result<Arc<Notify>, NodeError> {
    let notify = Arc::new(Notify::new());
    subscribe(host, notify.clone()).await?;
    subscribe(ns, notify.clone()).await?;
    Ok(notify)
}
