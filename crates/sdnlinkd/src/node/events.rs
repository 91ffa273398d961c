//! Netlink notifications from both namespaces, filtered down to changes of what the plumbing
//! owns and wants ([`concerns_us`]): a hint to run a full sync before the resync period is over.

use super::owned::{concerns_us, OwnedHandle, Reason};
use super::plan::Side;
use super::NodeError;
use crate::netns::NetNs;
use futures::channel::mpsc::UnboundedReceiver;
use futures::{Stream, StreamExt};
use rtnetlink::constants::{
    RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE, RTMGRP_LINK,
};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::AsyncSocket;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

const GROUPS: u32 =
    RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE | RTMGRP_IPV4_ROUTE;

/// A burst ends once no owned object changed for this long. The kernel sends what one change
/// implies (a link's addresses, its IPv6 routes, the link itself, in both namespaces for a
/// veth) back to back, so a short window folds it into one notification.
const QUIET: Duration = Duration::from_millis(50);
/// Receive buffer of each notification socket. 100 CNI-like pod starts and stops (a bridge with
/// an address and a route, and a veth pair, each added and deleted) send 3,300 notifications
/// to a namespace; they fit even while the reader is stalled (tests/node_root.rs).
const RCVBUF: usize = 4 << 20;
/// A burst is reported at the latest this long after its first change, however long it lasts.
const MAX_BURST: Duration = Duration::from_millis(500);

/// Why the daemon is asked to repair: the first change of a burst and how many owned objects
/// the burst changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// The first owned object changed; `None` when notifications were lost (the socket's
    /// receive buffer overran), so anything may have changed.
    pub first: Option<Reason>,
    /// Matching notifications in the burst (or bursts, when the daemon was busy meanwhile).
    pub changes: u64,
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.first {
            Some(r) => write!(f, "{r}")?,
            None => f.write_str("netlink notifications were lost (receive buffer overrun)")?,
        }
        if self.changes > 1 {
            write!(f, " (+{} more changes)", self.changes - 1)?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Shared {
    notify: Notify,
    pending: Mutex<Option<Notice>>,
    notifications: AtomicU64,
    changes: AtomicU64,
}

/// Out-of-band changes to owned objects, from [`watch_events`].
#[derive(Clone)]
pub struct NodeEvents {
    shared: Arc<Shared>,
}

impl NodeEvents {
    /// Waits for the next burst of changes to owned objects. Cancel-safe: a burst that comes
    /// while nobody waits is kept (merged with later ones) for the next call.
    pub async fn notified(&self) -> Notice {
        loop {
            self.shared.notify.notified().await;
            let taken = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(n) = taken {
                return n;
            }
        }
    }

    /// Notifications sent so far (one per burst).
    pub fn notifications(&self) -> u64 {
        self.shared.notifications.load(Ordering::Relaxed)
    }

    /// Netlink messages so far that changed an owned object.
    pub fn changes(&self) -> u64 {
        self.shared.changes.load(Ordering::Relaxed)
    }

    fn publish(&self, first: Option<Reason>, changes: u64) {
        {
            let mut p = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match p.as_mut() {
                Some(n) => n.changes += changes,
                None => *p = Some(Notice { first, changes }),
            }
        }
        self.shared.changes.fetch_add(changes, Ordering::Relaxed);
        self.shared.notifications.fetch_add(1, Ordering::Relaxed);
        self.shared.notify.notify_one();
    }
}

type Messages = UnboundedReceiver<(
    NetlinkMessage<RouteNetlinkMessage>,
    rtnetlink::sys::SocketAddr,
)>;

/// Subscribes to the notification groups in `ns`; the returned stream yields its messages.
async fn subscribe(ns: &NetNs) -> Result<Messages, NodeError> {
    // The socket must be created inside the namespace; binding and reading work from any thread.
    let (mut conn, handle, messages) = ns.rtnetlink_connection().await?;
    let addr = rtnetlink::sys::SocketAddr::new(0, GROUPS);
    let sock = conn.socket_mut().socket_mut();
    // Multicast notifications are dropped, not queued, once the receive buffer is full
    // (ENOBUFS, netlink(7)); the default (net.core.rmem_default, about 208 KiB) holds a few
    // hundred messages, less than a node drain's pod teardown sends while a sync keeps the
    // runtime busy. SO_RCVBUFFORCE (CAP_NET_ADMIN, which the daemon has) passes rmem_max.
    if nix::sys::socket::setsockopt(&*sock, nix::sys::socket::sockopt::RcvBufForce, &RCVBUF)
        .is_err()
    {
        let _ = sock.set_rx_buf_sz(RCVBUF);
    }
    sock.bind(&addr).map_err(|source| NodeError::Io {
        what: format!(
            "subscribing to rtnetlink groups in namespace {:?}",
            ns.name()
        ),
        source,
    })?;
    tokio::spawn(async move {
        // The connection ends when every handle is gone; this task keeps one for it.
        let _handle = handle;
        conn.await;
    });
    Ok(messages)
}

/// What one message means for us: nothing, a change of an owned object, or lost messages.
enum Verdict {
    Foreign,
    Ours(Option<Reason>),
}

fn judge(side: Side, msg: &NetlinkMessage<RouteNetlinkMessage>, owned: &OwnedHandle) -> Verdict {
    match &msg.payload {
        NetlinkPayload::InnerMessage(m) => match concerns_us(side, m, &owned.load()) {
            Some(r) => Verdict::Ours(Some(r)),
            None => Verdict::Foreign,
        },
        // ENOBUFS: the kernel dropped notifications; one of them may have been ours.
        NetlinkPayload::Overrun(_) => Verdict::Ours(None),
        _ => Verdict::Foreign,
    }
}

/// Reads both namespaces' notifications; every burst of changes to owned objects becomes one
/// notification, sent when the burst is over.
async fn run(
    mut messages: impl Stream<Item = (Side, NetlinkMessage<RouteNetlinkMessage>)> + Unpin,
    owned: OwnedHandle,
    events: NodeEvents,
) {
    'bursts: loop {
        let first = loop {
            let Some((side, msg)) = messages.next().await else {
                break 'bursts;
            };
            if let Verdict::Ours(r) = judge(side, &msg, &owned) {
                break r;
            }
        };
        let start = Instant::now();
        let mut last = start;
        let mut changes = 1u64;
        loop {
            let until = (last + QUIET).min(start + MAX_BURST);
            match tokio::time::timeout_at(until, messages.next()).await {
                Ok(Some((side, msg))) => {
                    if let Verdict::Ours(_) = judge(side, &msg, &owned) {
                        changes += 1;
                        last = Instant::now();
                    }
                }
                Ok(None) => {
                    events.publish(first, changes);
                    break 'bursts;
                }
                Err(_) => break,
            }
        }
        tracing::debug!(first = ?first, changes, "owned network objects changed out of band");
        events.publish(first, changes);
    }
    tracing::warn!("netlink event streams ended: out-of-band changes wait for the next resync");
}

/// Subscribes to link, address and route notifications in the host namespace and sdnlinkd's
/// namespace. The returned [`NodeEvents`] fires once per burst of changes to what `owned` (from
/// [`Plumbing::owned`](super::Plumbing::owned)) holds at the time of each message: our veth
/// ends, `lo` and the tunnel link deleted, down, renamed or with another MTU; our addresses
/// and routes deleted. Anything else (other software's links, addresses and routes, and what
/// the plumbing withdrew itself) is ignored. Must be called inside a tokio runtime.
pub async fn watch_events(
    host: &NetNs,
    ns: &NetNs,
    owned: OwnedHandle,
) -> Result<NodeEvents, NodeError> {
    let h = subscribe(host).await?.map(|(m, _)| (Side::Host, m));
    let n = subscribe(ns).await?.map(|(m, _)| (Side::Ns, m));
    let events = NodeEvents {
        shared: Arc::new(Shared::default()),
    };
    tokio::spawn(run(futures::stream::select(h, n), owned, events.clone()));
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::owned::{LinkRole, Owned, OwnedLink};
    use rtnetlink::packet_route::link::LinkMessage;

    fn del_link(index: u32) -> (Side, NetlinkMessage<RouteNetlinkMessage>) {
        let mut m = LinkMessage::default();
        m.header.index = index;
        (
            Side::Host,
            NetlinkMessage::from(RouteNetlinkMessage::DelLink(m)),
        )
    }

    fn owned_veth(index: u32) -> OwnedHandle {
        let h = OwnedHandle::default();
        let mut o = Owned::default();
        o.host.links.push(OwnedLink {
            index,
            name: "sdnlink0".into(),
            role: LinkRole::Veth { mtu: 1500 },
        });
        h.store(o);
        h
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_one_notification_and_foreign_messages_none() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let events = NodeEvents {
            shared: Arc::new(Shared::default()),
        };
        let task = tokio::spawn(run(rx, owned_veth(7), events.clone()));
        for i in 100..200 {
            tx.unbounded_send(del_link(i)).expect("task runs");
        }
        // Three deletions of our link (the kernel would not repeat it; stands in for a burst
        // of addresses and routes), interleaved with foreign ones.
        for i in [7, 300, 7, 301, 7] {
            tx.unbounded_send(del_link(i)).expect("task runs");
        }
        let n = events.notified().await;
        assert_eq!(events.notifications(), 1);
        assert_eq!(n.changes, 3);
        assert!(
            matches!(&n.first, Some(Reason::LinkDeleted { index: 7, .. })),
            "{n:?}"
        );
        assert_eq!(
            n.to_string(),
            "host link sdnlink0 (ifindex 7) deleted (+2 more changes)"
        );
        // A later burst is another notification.
        tokio::time::sleep(QUIET * 4).await;
        tx.unbounded_send(del_link(7)).expect("task runs");
        let n = events.notified().await;
        assert_eq!((events.notifications(), n.changes), (2, 1));
        drop(tx);
        task.await.expect("task ends with its streams");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_reported_within_the_cap_even_when_it_goes_on() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let events = NodeEvents {
            shared: Arc::new(Shared::default()),
        };
        tokio::spawn(run(rx, owned_veth(7), events.clone()));
        let start = Instant::now();
        let feeder = tokio::spawn(async move {
            for _ in 0..100 {
                if tx.unbounded_send(del_link(7)).is_err() {
                    return;
                }
                tokio::time::sleep(QUIET / 2).await;
            }
        });
        let n = events.notified().await;
        assert!(
            start.elapsed() <= MAX_BURST + QUIET,
            "{:?}",
            start.elapsed()
        );
        assert!(n.changes >= 2, "{n:?}");
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn bursts_while_nobody_waits_merge_into_one_notice() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let events = NodeEvents {
            shared: Arc::new(Shared::default()),
        };
        tokio::spawn(run(rx, owned_veth(7), events.clone()));
        tx.unbounded_send(del_link(7)).expect("task runs");
        tokio::time::sleep(QUIET * 4).await;
        tx.unbounded_send(del_link(7)).expect("task runs");
        tokio::time::sleep(QUIET * 4).await;
        assert_eq!(events.notifications(), 2);
        let n = events.notified().await;
        assert_eq!(n.changes, 2);
        assert_eq!(events.changes(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_overrun_counts_as_a_change() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let events = NodeEvents {
            shared: Arc::new(Shared::default()),
        };
        tokio::spawn(run(rx, OwnedHandle::default(), events.clone()));
        let mut m = NetlinkMessage::new(
            Default::default(),
            NetlinkPayload::<RouteNetlinkMessage>::Overrun(Vec::new()),
        );
        m.finalize();
        tx.unbounded_send((Side::Ns, m)).expect("task runs");
        let n = events.notified().await;
        assert_eq!(n.first, None);
        assert!(n.to_string().contains("lost"), "{n}");
    }
}
