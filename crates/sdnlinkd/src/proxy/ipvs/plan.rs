//! The pure half of the IPVS backend: the table model, the diff between desired and observed
//! state, and its printable plan.

use super::message::{ipproto, Dest, FwdMethod, IpvsMessage, Service, ServiceId, OWNED_SVC_FLAGS};
use super::nlas::IP_VS_SVC_F_PERSISTENT;
use crate::proxy::{DesiredProxy, Destination, Scheduling, VirtualKey, VirtualService};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The weight of an active destination.
pub const ACTIVE_WEIGHT: u32 = 1;

/// State of one destination that the plan compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestState {
    pub weight: u32,
    pub fwd: FwdMethod,
}

/// One virtual service as the kernel has it (observed) or as we last committed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableService {
    pub service: Service,
    pub dests: BTreeMap<Destination, DestState>,
}

/// Our part of the IPVS table, keyed like the desired state.
pub type Table = BTreeMap<VirtualKey, TableService>;

/// Destinations at weight 0 and since when, waiting for `drain_grace` (kubernetes 57841).
pub type Drains = BTreeMap<(VirtualKey, Destination), Instant>;

/// What happens to an owned service that left the desired state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// Its destinations drain at weight 0 for the grace period, then the service is deleted,
    /// so connections to a Service deleted on the remote side finish like those to a removed
    /// endpoint do. Its VIP stays on the interface meanwhile (`IpvsBackend::lingering_vips`).
    Drain,
    /// Deleted at once: cleanup, or a backend replaced by a reload.
    Immediate,
}

/// Where one leaving destination stands in its drain.
enum DrainStep {
    /// Still weighted: set to 0 now.
    Started,
    /// At weight 0 within the grace period.
    Waiting,
    /// Drained for the whole grace period: may be deleted.
    Expired,
}

/// Advances the drain of destination `d` (state `s`) of service `k`: a weighted destination
/// goes to weight 0 (one op), a weight-0 one waits out `grace` counted from its recorded start
/// (or from now when none is recorded: weights found at 0 after a restart drain in full).
#[allow(clippy::too_many_arguments)]
fn drain_step(
    k: &VirtualKey,
    d: &Destination,
    s: &DestState,
    drains: &Drains,
    now: Instant,
    grace: Duration,
    ops: &mut Vec<Op>,
    new_drains: &mut Drains,
) -> DrainStep {
    if s.weight > 0 {
        ops.push(Op {
            key: *k,
            kind: OpKind::EditDest(
                *d,
                DestState {
                    weight: 0,
                    fwd: s.fwd,
                },
            ),
        });
        new_drains.insert((*k, *d), now);
        return DrainStep::Started;
    }
    let since = drains.get(&(*k, *d)).copied().unwrap_or(now);
    if now.saturating_duration_since(since) >= grace {
        DrainStep::Expired
    } else {
        new_drains.insert((*k, *d), since);
        DrainStep::Waiting
    }
}

/// One kernel change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    AddService(Service),
    EditService(Service),
    DelService,
    AddDest(Destination, DestState),
    EditDest(Destination, DestState),
    DelDest(Destination),
}

/// A change to one virtual service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub key: VirtualKey,
    pub kind: OpKind,
}

/// The ordered changes of one sync (service creation before its destinations), plus the
/// drain bookkeeping it implies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub ops: Vec<Op>,
    /// The drain table after this plan.
    pub drains: Drains,
}

/// The service identity of a virtual key.
pub fn service_id(k: &VirtualKey) -> ServiceId {
    ServiceId {
        addr: k.vip,
        protocol: ipproto(k.protocol),
        port: k.port,
    }
}

/// The kernel service a desired virtual service maps to: `sessionAffinity: ClientIP` is
/// The kernel's name for `s` (`ip_vs_<name>` modules, IP_VS_SVC_ATTR_SCHED_NAME):
/// `proxy.scheduler` takes the kernel's own names, so the mapping is the identity on names.
pub fn sched_name(s: Scheduling) -> &'static str {
    s.name()
}

/// The scheduling a kernel scheduler name stands for.
pub fn scheduling_of(name: &str) -> Option<Scheduling> {
    Scheduling::ALL.into_iter().find(|s| sched_name(*s) == name)
}

/// `IP_VS_SVC_F_PERSISTENT` with the Service's timeout and a whole-host netmask.
pub fn wanted_service(vs: &VirtualService) -> Service {
    let (flags, timeout) = match vs.affinity_timeout {
        Some(t) => (IP_VS_SVC_F_PERSISTENT, t),
        None => (0, 0),
    };
    Service {
        id: service_id(&vs.key),
        scheduler: sched_name(vs.scheduler).to_string(),
        flags,
        timeout,
        netmask: Service::host_netmask(&vs.key.vip),
    }
}

fn same_settings(a: &Service, b: &Service) -> bool {
    a.scheduler == b.scheduler
        && (a.flags & OWNED_SVC_FLAGS) == (b.flags & OWNED_SVC_FLAGS)
        && a.timeout == b.timeout
        && a.netmask == b.netmask
}

/// Whether `have` already is what `vs` asks for, with every destination active and none
/// draining (both sides are sorted, so this is a merge).
fn in_sync(vs: &VirtualService, have: &TableService) -> bool {
    let (flags, timeout) = match vs.affinity_timeout {
        Some(t) => (IP_VS_SVC_F_PERSISTENT, t),
        None => (0, 0),
    };
    let s = &have.service;
    s.scheduler == sched_name(vs.scheduler)
        && (s.flags & OWNED_SVC_FLAGS) == flags
        && s.timeout == timeout
        && s.netmask == Service::host_netmask(&vs.key.vip)
        && have.dests.len() == vs.destinations.len()
        && have
            .dests
            .iter()
            .zip(vs.destinations.iter())
            .all(|((d, st), w)| d == w && *st == ACTIVE)
}

const ACTIVE: DestState = DestState {
    weight: ACTIVE_WEIGHT,
    fwd: FwdMethod::Masq,
};

/// The services of `table` as desired-state values, with only their active destinations (a
/// destination at weight 0 is draining and keeps draining): what [`DesiredProxy::adopting`]
/// takes from the kernel for clusters that have not listed yet. Cluster and Service names are
/// not in the kernel, so they stay empty.
pub fn table_services(table: &Table) -> impl Iterator<Item = VirtualService> + '_ {
    table.iter().map(|(k, have)| {
        let s = &have.service;
        VirtualService {
            key: *k,
            cluster: String::new(),
            service: crate::model::ServiceKey {
                namespace: String::new(),
                name: String::new(),
            },
            port_name: String::new(),
            // Every scheduler the kernel can load has a name here; anything else is adopted
            // as round robin and rewritten to the configured one when its cluster lists.
            scheduler: scheduling_of(&s.scheduler).unwrap_or(Scheduling::RoundRobin),
            affinity_timeout: (s.flags & IP_VS_SVC_F_PERSISTENT != 0).then_some(s.timeout),
            destinations: have
                .dests
                .iter()
                .filter(|(_, st)| st.weight > 0)
                .map(|(d, _)| *d)
                .collect(),
        }
    })
}

/// Diffs `desired` against `observed` (already restricted to services we own). Destinations
/// that leave are set to weight 0 and deleted once they have drained for `grace`; services on
/// `owned_vips` that are not desired drain the same way and are then deleted whole.
pub fn plan(
    desired: &DesiredProxy,
    observed: &Table,
    owned_vips: &BTreeSet<IpAddr>,
    drains: &Drains,
    now: Instant,
    grace: Duration,
) -> Plan {
    plan_with(
        desired,
        observed,
        owned_vips,
        drains,
        now,
        grace,
        Removal::Drain,
    )
}

/// [`plan`] with the treatment of services that left the desired state chosen.
pub fn plan_with(
    desired: &DesiredProxy,
    observed: &Table,
    owned_vips: &BTreeSet<IpAddr>,
    drains: &Drains,
    now: Instant,
    grace: Duration,
    removal: Removal,
) -> Plan {
    let mut ops = Vec::new();
    let mut new_drains = Drains::new();
    for (k, vs) in &desired.services {
        let have = observed.get(k);
        // Fast path for the common case of an unchanged service: one ordered merge, no
        // allocation (this loop is what an incremental sync costs on the CPU).
        if have.is_some_and(|h| in_sync(vs, h)) {
            continue;
        }
        let want = wanted_service(vs);
        let Some(have) = have else {
            ops.push(Op {
                key: *k,
                kind: OpKind::AddService(want),
            });
            for d in &vs.destinations {
                ops.push(Op {
                    key: *k,
                    kind: OpKind::AddDest(*d, ACTIVE),
                });
            }
            continue;
        };
        if !same_settings(&have.service, &want) {
            ops.push(Op {
                key: *k,
                kind: OpKind::EditService(want),
            });
        }
        for d in &vs.destinations {
            match have.dests.get(d) {
                None => ops.push(Op {
                    key: *k,
                    kind: OpKind::AddDest(*d, ACTIVE),
                }),
                // Covers weights left at 0 by a drain or a previous run (kubernetes 92019).
                Some(s) if *s != ACTIVE => ops.push(Op {
                    key: *k,
                    kind: OpKind::EditDest(*d, ACTIVE),
                }),
                Some(_) => {}
            }
        }
        for (d, s) in &have.dests {
            if vs.destinations.contains(d) {
                continue;
            }
            let step = drain_step(k, d, s, drains, now, grace, &mut ops, &mut new_drains);
            if matches!(step, DrainStep::Expired) {
                ops.push(Op {
                    key: *k,
                    kind: OpKind::DelDest(*d),
                });
            }
        }
    }
    for (k, have) in observed {
        if desired.services.contains_key(k) || !owned_vips.contains(&k.vip) {
            continue;
        }
        if removal == Removal::Drain {
            let mut pending = false;
            for (d, s) in &have.dests {
                let step = drain_step(k, d, s, drains, now, grace, &mut ops, &mut new_drains);
                pending |= !matches!(step, DrainStep::Expired);
            }
            if pending {
                continue;
            }
        }
        ops.push(Op {
            key: *k,
            kind: OpKind::DelService,
        });
    }
    Plan {
        ops,
        drains: new_drains,
    }
}

impl Plan {
    /// Earliest instant at which a draining destination becomes deletable.
    pub fn next_deadline(drains: &Drains, grace: Duration) -> Option<Instant> {
        drains.values().min().map(|t| *t + grace)
    }
}

impl Op {
    /// The netlink message that carries this change.
    pub fn message(&self) -> IpvsMessage {
        let id = service_id(&self.key);
        let dest = |d: &Destination, s: &DestState| Dest {
            addr: d.addr,
            port: d.port,
            fwd: s.fwd,
            weight: s.weight,
            active_conns: 0,
            inactive_conns: 0,
        };
        match &self.kind {
            OpKind::AddService(s) => IpvsMessage::new_service(s),
            OpKind::EditService(s) => IpvsMessage::set_service(s),
            OpKind::DelService => IpvsMessage::del_service(&id),
            OpKind::AddDest(d, s) => IpvsMessage::new_dest(&id, &dest(d, s)),
            OpKind::EditDest(d, s) => IpvsMessage::set_dest(&id, &dest(d, s)),
            OpKind::DelDest(d) => IpvsMessage::del_dest(&id, d.addr, d.port),
        }
    }

    /// Records a successful change in a table model (the committed state).
    pub fn apply_to(&self, t: &mut Table) {
        match &self.kind {
            OpKind::AddService(s) | OpKind::EditService(s) => {
                t.entry(self.key)
                    .and_modify(|e| e.service = s.clone())
                    .or_insert_with(|| TableService {
                        service: s.clone(),
                        dests: BTreeMap::new(),
                    });
            }
            OpKind::DelService => {
                t.remove(&self.key);
            }
            OpKind::AddDest(d, s) | OpKind::EditDest(d, s) => {
                if let Some(e) = t.get_mut(&self.key) {
                    e.dests.insert(*d, *s);
                }
            }
            OpKind::DelDest(d) => {
                if let Some(e) = t.get_mut(&self.key) {
                    e.dests.remove(d);
                }
            }
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            OpKind::AddService(s) | OpKind::EditService(s) => {
                let verb = if matches!(self.kind, OpKind::AddService(_)) {
                    "add-service"
                } else {
                    "edit-service"
                };
                write!(f, "{verb} {} sched={}", self.key, s.scheduler)?;
                if s.flags & IP_VS_SVC_F_PERSISTENT != 0 {
                    write!(f, " persistent={}s", s.timeout)?;
                }
                Ok(())
            }
            OpKind::DelService => write!(f, "del-service {}", self.key),
            OpKind::AddDest(d, s) => {
                write!(f, "add-dest {} -> {} weight={}", self.key, d, s.weight)
            }
            OpKind::EditDest(d, s) => {
                write!(f, "edit-dest {} -> {} weight={}", self.key, d, s.weight)
            }
            OpKind::DelDest(d) => write!(f, "del-dest {} -> {}", self.key, d),
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for op in &self.ops {
            writeln!(f, "{op}")?;
        }
        Ok(())
    }
}
