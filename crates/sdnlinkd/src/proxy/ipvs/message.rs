//! IPVS generic-netlink messages and the typed service / destination values built from them.

use super::nlas::*;
use crate::model::Protocol;
use netlink_packet_core::{DecodeError, Emitable, NlasIterator, ParseableParametrized};
use netlink_packet_generic::{GenlFamily, GenlHeader};
use std::net::IpAddr;

/// `IPVS_CMD_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpvsCmd {
    NewService,
    SetService,
    DelService,
    GetService,
    NewDest,
    SetDest,
    DelDest,
    GetDest,
    SetInfo,
    GetInfo,
    Flush,
    Other(u8),
}

impl From<IpvsCmd> for u8 {
    fn from(c: IpvsCmd) -> u8 {
        match c {
            IpvsCmd::NewService => IPVS_CMD_NEW_SERVICE,
            IpvsCmd::SetService => IPVS_CMD_SET_SERVICE,
            IpvsCmd::DelService => IPVS_CMD_DEL_SERVICE,
            IpvsCmd::GetService => IPVS_CMD_GET_SERVICE,
            IpvsCmd::NewDest => IPVS_CMD_NEW_DEST,
            IpvsCmd::SetDest => IPVS_CMD_SET_DEST,
            IpvsCmd::DelDest => IPVS_CMD_DEL_DEST,
            IpvsCmd::GetDest => IPVS_CMD_GET_DEST,
            IpvsCmd::SetInfo => IPVS_CMD_SET_INFO,
            IpvsCmd::GetInfo => IPVS_CMD_GET_INFO,
            IpvsCmd::Flush => IPVS_CMD_FLUSH,
            IpvsCmd::Other(v) => v,
        }
    }
}

impl From<u8> for IpvsCmd {
    fn from(v: u8) -> IpvsCmd {
        match v {
            IPVS_CMD_NEW_SERVICE => IpvsCmd::NewService,
            IPVS_CMD_SET_SERVICE => IpvsCmd::SetService,
            IPVS_CMD_DEL_SERVICE => IpvsCmd::DelService,
            IPVS_CMD_GET_SERVICE => IpvsCmd::GetService,
            IPVS_CMD_NEW_DEST => IpvsCmd::NewDest,
            IPVS_CMD_SET_DEST => IpvsCmd::SetDest,
            IPVS_CMD_DEL_DEST => IpvsCmd::DelDest,
            IPVS_CMD_GET_DEST => IpvsCmd::GetDest,
            IPVS_CMD_SET_INFO => IpvsCmd::SetInfo,
            IPVS_CMD_GET_INFO => IpvsCmd::GetInfo,
            IPVS_CMD_FLUSH => IpvsCmd::Flush,
            v => IpvsCmd::Other(v),
        }
    }
}

/// The payload of one IPVS generic-netlink message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsMessage {
    pub cmd: IpvsCmd,
    pub attrs: Vec<IpvsAttr>,
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        IPVS_GENL_NAME
    }
    fn command(&self) -> u8 {
        self.cmd.into()
    }
    fn version(&self) -> u8 {
        IPVS_GENL_VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let attrs = NlasIterator::new(buf)
            .map(|nla| nla.and_then(|nla| IpvsAttr::parse_for(&nla, header.cmd)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(IpvsMessage {
            cmd: header.cmd.into(),
            attrs,
        })
    }
}

/// IPPROTO number of a protocol.
pub fn ipproto(p: Protocol) -> u16 {
    match p {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
        Protocol::Sctp => IPPROTO_SCTP,
    }
}

/// Protocol of an IPPROTO number (None for protocols IPVS may carry that we don't model).
pub fn protocol_of(p: u16) -> Option<Protocol> {
    match p {
        IPPROTO_TCP => Some(Protocol::Tcp),
        IPPROTO_UDP => Some(Protocol::Udp),
        IPPROTO_SCTP => Some(Protocol::Sctp),
        _ => None,
    }
}

/// How a real server is reached (`IP_VS_CONN_F_*` of the forwarding mask).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FwdMethod {
    Masq,
    Local,
    Tunnel,
    Route,
    Other(u32),
}

impl FwdMethod {
    pub fn to_raw(self) -> u32 {
        match self {
            FwdMethod::Masq => IP_VS_CONN_F_MASQ,
            FwdMethod::Local => IP_VS_CONN_F_LOCALNODE,
            FwdMethod::Tunnel => IP_VS_CONN_F_TUNNEL,
            FwdMethod::Route => IP_VS_CONN_F_DROUTE,
            FwdMethod::Other(v) => v,
        }
    }
    pub fn from_raw(v: u32) -> Self {
        match v & IP_VS_CONN_F_FWD_MASK {
            IP_VS_CONN_F_MASQ => FwdMethod::Masq,
            IP_VS_CONN_F_LOCALNODE => FwdMethod::Local,
            IP_VS_CONN_F_TUNNEL => FwdMethod::Tunnel,
            IP_VS_CONN_F_DROUTE => FwdMethod::Route,
            v => FwdMethod::Other(v),
        }
    }
}

/// Identity of an address-based virtual service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId {
    pub addr: IpAddr,
    pub protocol: u16,
    pub port: u16,
}

impl ServiceId {
    /// The attributes that name the service in every service and destination command.
    pub fn attrs(&self) -> Vec<SvcAttr> {
        vec![
            SvcAttr::AddressFamily(af_of(&self.addr)),
            SvcAttr::Protocol(self.protocol),
            SvcAttr::Address(self.addr.into()),
            SvcAttr::Port(self.port),
        ]
    }
}

/// A virtual service with the settings we program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub id: ServiceId,
    pub scheduler: String,
    /// `IP_VS_SVC_F_*` (the kernel adds `IP_VS_SVC_F_HASHED` in dumps).
    pub flags: u32,
    /// Persistence timeout in seconds (meaningful with `IP_VS_SVC_F_PERSISTENT`).
    pub timeout: u32,
    /// See [`SvcAttr::Netmask`].
    pub netmask: u32,
}

/// The flag bits we own in `IPVS_SVC_ATTR_FLAGS`: a change request names them in the mask so
/// bits the kernel keeps (`HASHED`) are untouched.
pub const OWNED_SVC_FLAGS: u32 = IP_VS_SVC_F_PERSISTENT | IP_VS_SVC_F_ONEPACKET;

impl Service {
    /// Full-entry attributes: NEW_SERVICE and SET_SERVICE require scheduler, flags, timeout
    /// and netmask (ip_vs_genl_parse_service rejects a full entry without any of them).
    pub fn attrs(&self) -> Vec<SvcAttr> {
        let mut v = self.id.attrs();
        v.push(SvcAttr::SchedName(self.scheduler.clone()));
        v.push(SvcAttr::Flags(IpvsFlags {
            flags: self.flags & OWNED_SVC_FLAGS,
            mask: OWNED_SVC_FLAGS,
        }));
        v.push(SvcAttr::Timeout(self.timeout));
        v.push(SvcAttr::Netmask(self.netmask));
        v
    }

    /// The whole-host persistence netmask of the service's family.
    pub fn host_netmask(addr: &IpAddr) -> u32 {
        match addr {
            IpAddr::V4(_) => u32::MAX,
            IpAddr::V6(_) => 128,
        }
    }

    /// Reads a service from the attributes of a dump entry (None for fwmark services or
    /// entries missing their identity).
    pub fn from_attrs(attrs: &[SvcAttr]) -> Option<Service> {
        let (mut af, mut proto, mut addr, mut port) = (None, None, None, None);
        let mut s = Service {
            id: ServiceId {
                addr: IpAddr::from([0, 0, 0, 0]),
                protocol: 0,
                port: 0,
            },
            scheduler: String::new(),
            flags: 0,
            timeout: 0,
            netmask: 0,
        };
        for a in attrs {
            match a {
                SvcAttr::AddressFamily(v) => af = Some(*v),
                SvcAttr::Protocol(v) => proto = Some(*v),
                SvcAttr::Address(v) => addr = Some(*v),
                SvcAttr::Port(v) => port = Some(*v),
                SvcAttr::Fwmark(m) if *m != 0 => return None,
                SvcAttr::SchedName(n) => s.scheduler = n.clone(),
                SvcAttr::Flags(f) => s.flags = f.flags,
                SvcAttr::Timeout(t) => s.timeout = *t,
                SvcAttr::Netmask(m) => s.netmask = *m,
                _ => {}
            }
        }
        s.id = ServiceId {
            addr: addr?.to_ip(af?)?,
            protocol: proto?,
            port: port?,
        };
        Some(s)
    }
}

/// A real server with the settings we program and the counters the kernel reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dest {
    pub addr: IpAddr,
    pub port: u16,
    pub fwd: FwdMethod,
    pub weight: u32,
    pub active_conns: u32,
    pub inactive_conns: u32,
}

impl Dest {
    /// Identity attributes (DEL_DEST).
    pub fn id_attrs(addr: IpAddr, port: u16) -> Vec<DestAttr> {
        vec![
            DestAttr::AddressFamily(af_of(&addr)),
            DestAttr::Address(addr.into()),
            DestAttr::Port(port),
        ]
    }

    /// Full-entry attributes: NEW_DEST and SET_DEST require forwarding method, weight and
    /// both thresholds (ip_vs_genl_parse_dest).
    pub fn attrs(&self) -> Vec<DestAttr> {
        let mut v = Self::id_attrs(self.addr, self.port);
        v.push(DestAttr::FwdMethod(self.fwd.to_raw()));
        v.push(DestAttr::Weight(self.weight));
        v.push(DestAttr::UThresh(0));
        v.push(DestAttr::LThresh(0));
        v
    }

    /// Reads a destination of a service of family `svc_af` from a dump entry.
    pub fn from_attrs(attrs: &[DestAttr], svc_af: u16) -> Option<Dest> {
        let (mut addr, mut port, mut af) = (None, None, svc_af);
        let mut d = Dest {
            addr: IpAddr::from([0, 0, 0, 0]),
            port: 0,
            fwd: FwdMethod::Masq,
            weight: 0,
            active_conns: 0,
            inactive_conns: 0,
        };
        for a in attrs {
            match a {
                DestAttr::Address(v) => addr = Some(*v),
                DestAttr::Port(v) => port = Some(*v),
                DestAttr::AddressFamily(v) => af = *v,
                DestAttr::FwdMethod(v) => d.fwd = FwdMethod::from_raw(*v),
                DestAttr::Weight(v) => d.weight = *v,
                DestAttr::ActiveConns(v) => d.active_conns = *v,
                DestAttr::InactConns(v) => d.inactive_conns = *v,
                _ => {}
            }
        }
        d.addr = addr?.to_ip(af)?;
        d.port = port?;
        Some(d)
    }
}

impl IpvsMessage {
    pub fn new_service(s: &Service) -> Self {
        Self::svc(IpvsCmd::NewService, s.attrs())
    }
    pub fn set_service(s: &Service) -> Self {
        Self::svc(IpvsCmd::SetService, s.attrs())
    }
    pub fn del_service(id: &ServiceId) -> Self {
        Self::svc(IpvsCmd::DelService, id.attrs())
    }
    /// A dump request for every service (sent with NLM_F_DUMP).
    pub fn get_services() -> Self {
        IpvsMessage {
            cmd: IpvsCmd::GetService,
            attrs: vec![],
        }
    }
    pub fn new_dest(id: &ServiceId, d: &Dest) -> Self {
        Self::dest(IpvsCmd::NewDest, id, d.attrs())
    }
    pub fn set_dest(id: &ServiceId, d: &Dest) -> Self {
        Self::dest(IpvsCmd::SetDest, id, d.attrs())
    }
    pub fn del_dest(id: &ServiceId, addr: IpAddr, port: u16) -> Self {
        Self::dest(IpvsCmd::DelDest, id, Dest::id_attrs(addr, port))
    }
    /// A dump request for the destinations of one service (sent with NLM_F_DUMP).
    pub fn get_dests(id: &ServiceId) -> Self {
        Self::svc(IpvsCmd::GetDest, id.attrs())
    }
    pub fn get_info() -> Self {
        IpvsMessage {
            cmd: IpvsCmd::GetInfo,
            attrs: vec![],
        }
    }

    fn svc(cmd: IpvsCmd, s: Vec<SvcAttr>) -> Self {
        IpvsMessage {
            cmd,
            attrs: vec![IpvsAttr::Service(s)],
        }
    }
    fn dest(cmd: IpvsCmd, id: &ServiceId, d: Vec<DestAttr>) -> Self {
        IpvsMessage {
            cmd,
            attrs: vec![IpvsAttr::Service(id.attrs()), IpvsAttr::Dest(d)],
        }
    }

    /// The service nest of a message, if any.
    pub fn service_attrs(&self) -> Option<&[SvcAttr]> {
        self.attrs.iter().find_map(|a| match a {
            IpvsAttr::Service(v) => Some(v.as_slice()),
            _ => None,
        })
    }

    /// The destination nest of a message, if any.
    pub fn dest_attrs(&self) -> Option<&[DestAttr]> {
        self.attrs.iter().find_map(|a| match a {
            IpvsAttr::Dest(v) => Some(v.as_slice()),
            _ => None,
        })
    }
}
