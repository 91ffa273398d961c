//! IPVS generic-netlink attributes, one enum per attribute level, each with an `Other`
//! fallback so attributes added by newer kernels survive a round trip. Constant names and
//! value layouts follow the kernel's `include/uapi/linux/ip_vs.h` and the attribute policies
//! of `net/netfilter/ipvs/ip_vs_ctl.c`.

use netlink_packet_core::{
    emit_u16, emit_u16_be, emit_u32, emit_u64, parse_string, parse_u16, parse_u16_be, parse_u32,
    parse_u64, parse_u8, DecodeError, DefaultNla, Emitable, ErrorContext, Nla, NlaBuffer,
    NlasIterator, Parseable, NLA_F_NESTED,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Generic-netlink family name registered by `ip_vs.ko`.
pub const IPVS_GENL_NAME: &str = "IPVS";
/// `IPVS_GENL_VERSION`.
pub const IPVS_GENL_VERSION: u8 = 0x1;

pub const IPVS_CMD_NEW_SERVICE: u8 = 1;
pub const IPVS_CMD_SET_SERVICE: u8 = 2;
pub const IPVS_CMD_DEL_SERVICE: u8 = 3;
pub const IPVS_CMD_GET_SERVICE: u8 = 4;
pub const IPVS_CMD_NEW_DEST: u8 = 5;
pub const IPVS_CMD_SET_DEST: u8 = 6;
pub const IPVS_CMD_DEL_DEST: u8 = 7;
pub const IPVS_CMD_GET_DEST: u8 = 8;
pub const IPVS_CMD_SET_INFO: u8 = 14;
pub const IPVS_CMD_GET_INFO: u8 = 15;
pub const IPVS_CMD_FLUSH: u8 = 17;

pub const IPVS_CMD_ATTR_SERVICE: u16 = 1;
pub const IPVS_CMD_ATTR_DEST: u16 = 2;

pub const IPVS_SVC_ATTR_AF: u16 = 1;
pub const IPVS_SVC_ATTR_PROTOCOL: u16 = 2;
pub const IPVS_SVC_ATTR_ADDR: u16 = 3;
pub const IPVS_SVC_ATTR_PORT: u16 = 4;
pub const IPVS_SVC_ATTR_FWMARK: u16 = 5;
pub const IPVS_SVC_ATTR_SCHED_NAME: u16 = 6;
pub const IPVS_SVC_ATTR_FLAGS: u16 = 7;
pub const IPVS_SVC_ATTR_TIMEOUT: u16 = 8;
pub const IPVS_SVC_ATTR_NETMASK: u16 = 9;
pub const IPVS_SVC_ATTR_STATS: u16 = 10;
pub const IPVS_SVC_ATTR_PE_NAME: u16 = 11;
pub const IPVS_SVC_ATTR_STATS64: u16 = 12;

pub const IPVS_DEST_ATTR_ADDR: u16 = 1;
pub const IPVS_DEST_ATTR_PORT: u16 = 2;
pub const IPVS_DEST_ATTR_FWD_METHOD: u16 = 3;
pub const IPVS_DEST_ATTR_WEIGHT: u16 = 4;
pub const IPVS_DEST_ATTR_U_THRESH: u16 = 5;
pub const IPVS_DEST_ATTR_L_THRESH: u16 = 6;
pub const IPVS_DEST_ATTR_ACTIVE_CONNS: u16 = 7;
pub const IPVS_DEST_ATTR_INACT_CONNS: u16 = 8;
pub const IPVS_DEST_ATTR_PERSIST_CONNS: u16 = 9;
pub const IPVS_DEST_ATTR_STATS: u16 = 10;
pub const IPVS_DEST_ATTR_ADDR_FAMILY: u16 = 11;
pub const IPVS_DEST_ATTR_STATS64: u16 = 12;
pub const IPVS_DEST_ATTR_TUN_TYPE: u16 = 13;
pub const IPVS_DEST_ATTR_TUN_PORT: u16 = 14;
pub const IPVS_DEST_ATTR_TUN_FLAGS: u16 = 15;

pub const IPVS_STATS_ATTR_CONNS: u16 = 1;
pub const IPVS_STATS_ATTR_INPKTS: u16 = 2;
pub const IPVS_STATS_ATTR_OUTPKTS: u16 = 3;
pub const IPVS_STATS_ATTR_INBYTES: u16 = 4;
pub const IPVS_STATS_ATTR_OUTBYTES: u16 = 5;
pub const IPVS_STATS_ATTR_CPS: u16 = 6;
pub const IPVS_STATS_ATTR_INPPS: u16 = 7;
pub const IPVS_STATS_ATTR_OUTPPS: u16 = 8;
pub const IPVS_STATS_ATTR_INBPS: u16 = 9;
pub const IPVS_STATS_ATTR_OUTBPS: u16 = 10;

pub const IPVS_INFO_ATTR_VERSION: u16 = 1;
pub const IPVS_INFO_ATTR_CONN_TAB_SIZE: u16 = 2;

pub const IP_VS_SVC_F_PERSISTENT: u32 = 0x0001;
pub const IP_VS_SVC_F_HASHED: u32 = 0x0002;
pub const IP_VS_SVC_F_ONEPACKET: u32 = 0x0004;

pub const IP_VS_CONN_F_FWD_MASK: u32 = 0x0007;
pub const IP_VS_CONN_F_MASQ: u32 = 0x0000;
pub const IP_VS_CONN_F_LOCALNODE: u32 = 0x0001;
pub const IP_VS_CONN_F_TUNNEL: u32 = 0x0002;
pub const IP_VS_CONN_F_DROUTE: u32 = 0x0003;

/// `AF_INET` / `AF_INET6` as the kernel stores them in `IPVS_SVC_ATTR_AF`.
pub const AF_INET: u16 = libc::AF_INET as u16;
pub const AF_INET6: u16 = libc::AF_INET6 as u16;
/// `IPPROTO_*` as carried in `IPVS_SVC_ATTR_PROTOCOL`.
pub const IPPROTO_TCP: u16 = libc::IPPROTO_TCP as u16;
pub const IPPROTO_UDP: u16 = libc::IPPROTO_UDP as u16;
pub const IPPROTO_SCTP: u16 = libc::IPPROTO_SCTP as u16;

/// `union nf_inet_addr`: always 16 bytes on the wire; an IPv4 address fills the first four and
/// the family attribute says which it is (attribute order is not guaranteed, so it is decoded
/// lazily).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InetAddr(pub [u8; 16]);

impl InetAddr {
    /// The address as `af` says to read it.
    pub fn to_ip(&self, af: u16) -> Option<IpAddr> {
        match af {
            AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
                self.0[0], self.0[1], self.0[2], self.0[3],
            ))),
            AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(self.0))),
            _ => None,
        }
    }
}

impl From<IpAddr> for InetAddr {
    fn from(ip: IpAddr) -> Self {
        let mut b = [0u8; 16];
        match ip {
            IpAddr::V4(a) => b[..4].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => b = a.octets(),
        }
        InetAddr(b)
    }
}

/// The address family of an IP address, as IPVS wants it.
pub fn af_of(ip: &IpAddr) -> u16 {
    match ip {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

/// `struct ip_vs_flags { __u32 flags; __u32 mask; }`: only bits set in `mask` are changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IpvsFlags {
    pub flags: u32,
    pub mask: u32,
}

/// A counter of a stats nest: `IPVS_SVC_ATTR_STATS` mixes 32-bit counters with 64-bit byte
/// counters, `..._STATS64` is all 64-bit; the width is kept so bytes round-trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    U32(u32),
    U64(u64),
}

impl Counter {
    pub fn value(&self) -> u64 {
        match self {
            Counter::U32(v) => u64::from(*v),
            Counter::U64(v) => *v,
        }
    }
    fn len(&self) -> usize {
        match self {
            Counter::U32(_) => 4,
            Counter::U64(_) => 8,
        }
    }
    fn emit(&self, buf: &mut [u8]) {
        match self {
            Counter::U32(v) => emit_u32(buf, *v).expect("value_len reserved 4 bytes"),
            Counter::U64(v) => emit_u64(buf, *v).expect("value_len reserved 8 bytes"),
        }
    }
    fn parse(payload: &[u8]) -> Result<Self, DecodeError> {
        match payload.len() {
            4 => Ok(Counter::U32(parse_u32(payload)?)),
            8 => Ok(Counter::U64(parse_u64(payload)?)),
            n => Err(DecodeError::from(format!(
                "IPVS stats counter of {n} bytes"
            ))),
        }
    }
}

/// `IPVS_STATS_ATTR_*`, inside `IPVS_{SVC,DEST}_ATTR_STATS{,64}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatsAttr {
    Conns(Counter),
    InPkts(Counter),
    OutPkts(Counter),
    InBytes(Counter),
    OutBytes(Counter),
    Cps(Counter),
    InPps(Counter),
    OutPps(Counter),
    InBps(Counter),
    OutBps(Counter),
    Other(DefaultNla),
}

impl StatsAttr {
    fn counter(&self) -> Option<&Counter> {
        use StatsAttr::*;
        match self {
            Conns(c) | InPkts(c) | OutPkts(c) | InBytes(c) | OutBytes(c) | Cps(c) | InPps(c)
            | OutPps(c) | InBps(c) | OutBps(c) => Some(c),
            Other(_) => None,
        }
    }
}

impl Nla for StatsAttr {
    fn value_len(&self) -> usize {
        match self {
            StatsAttr::Other(n) => n.value_len(),
            s => s.counter().map_or(0, Counter::len),
        }
    }
    fn kind(&self) -> u16 {
        use StatsAttr::*;
        match self {
            Conns(_) => IPVS_STATS_ATTR_CONNS,
            InPkts(_) => IPVS_STATS_ATTR_INPKTS,
            OutPkts(_) => IPVS_STATS_ATTR_OUTPKTS,
            InBytes(_) => IPVS_STATS_ATTR_INBYTES,
            OutBytes(_) => IPVS_STATS_ATTR_OUTBYTES,
            Cps(_) => IPVS_STATS_ATTR_CPS,
            InPps(_) => IPVS_STATS_ATTR_INPPS,
            OutPps(_) => IPVS_STATS_ATTR_OUTPPS,
            InBps(_) => IPVS_STATS_ATTR_INBPS,
            OutBps(_) => IPVS_STATS_ATTR_OUTBPS,
            Other(n) => n.kind(),
        }
    }
    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            StatsAttr::Other(n) => n.emit_value(buf),
            s => {
                if let Some(c) = s.counter() {
                    c.emit(buf)
                }
            }
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for StatsAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let p = buf.value();
        let c = || Counter::parse(p).context("invalid IPVS_STATS_ATTR value");
        Ok(match buf.kind() {
            IPVS_STATS_ATTR_CONNS => Self::Conns(c()?),
            IPVS_STATS_ATTR_INPKTS => Self::InPkts(c()?),
            IPVS_STATS_ATTR_OUTPKTS => Self::OutPkts(c()?),
            IPVS_STATS_ATTR_INBYTES => Self::InBytes(c()?),
            IPVS_STATS_ATTR_OUTBYTES => Self::OutBytes(c()?),
            IPVS_STATS_ATTR_CPS => Self::Cps(c()?),
            IPVS_STATS_ATTR_INPPS => Self::InPps(c()?),
            IPVS_STATS_ATTR_OUTPPS => Self::OutPps(c()?),
            IPVS_STATS_ATTR_INBPS => Self::InBps(c()?),
            IPVS_STATS_ATTR_OUTBPS => Self::OutBps(c()?),
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

fn parse_nested<A, F>(payload: &[u8], f: F, what: &'static str) -> Result<Vec<A>, DecodeError>
where
    F: Fn(&NlaBuffer<&[u8]>) -> Result<A, DecodeError>,
{
    NlasIterator::new(payload)
        .map(|nla| nla.and_then(|nla| f(&nla)))
        .collect::<Result<Vec<_>, _>>()
        .context(what)
}

fn nul_string_len(s: &str) -> usize {
    s.len() + 1
}

fn emit_nul_string(buf: &mut [u8], s: &str) {
    buf[..s.len()].copy_from_slice(s.as_bytes());
    buf[s.len()] = 0;
}

fn parse_inet(payload: &[u8]) -> Result<InetAddr, DecodeError> {
    // The kernel copies at most 16 bytes (nla_memcpy into union nf_inet_addr); shorter
    // attributes leave the rest zero.
    if payload.len() > 16 {
        return Err(DecodeError::from(format!(
            "IPVS address attribute of {} bytes",
            payload.len()
        )));
    }
    let mut b = [0u8; 16];
    b[..payload.len()].copy_from_slice(payload);
    Ok(InetAddr(b))
}

/// `IPVS_SVC_ATTR_*`, inside `IPVS_CMD_ATTR_SERVICE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SvcAttr {
    AddressFamily(u16),
    /// `IPPROTO_TCP`, `IPPROTO_UDP`, `IPPROTO_SCTP`.
    Protocol(u16),
    Address(InetAddr),
    /// Host order here; big-endian on the wire.
    Port(u16),
    Fwmark(u32),
    SchedName(String),
    Flags(IpvsFlags),
    /// Persistence timeout in seconds.
    Timeout(u32),
    /// Persistence netmask: for IPv4 a mask whose wire bytes are the mask in network order
    /// (kept here as the host integer read from those bytes); for IPv6 a prefix length.
    Netmask(u32),
    Stats(Vec<StatsAttr>),
    PeName(String),
    Stats64(Vec<StatsAttr>),
    Other(DefaultNla),
}

impl Nla for SvcAttr {
    fn value_len(&self) -> usize {
        use SvcAttr::*;
        match self {
            AddressFamily(_) | Protocol(_) | Port(_) => 2,
            Address(_) => 16,
            Fwmark(_) | Timeout(_) | Netmask(_) => 4,
            SchedName(s) | PeName(s) => nul_string_len(s),
            Flags(_) => 8,
            Stats(v) | Stats64(v) => v.as_slice().buffer_len(),
            Other(n) => n.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        use SvcAttr::*;
        match self {
            AddressFamily(_) => IPVS_SVC_ATTR_AF,
            Protocol(_) => IPVS_SVC_ATTR_PROTOCOL,
            Address(_) => IPVS_SVC_ATTR_ADDR,
            Port(_) => IPVS_SVC_ATTR_PORT,
            Fwmark(_) => IPVS_SVC_ATTR_FWMARK,
            SchedName(_) => IPVS_SVC_ATTR_SCHED_NAME,
            Flags(_) => IPVS_SVC_ATTR_FLAGS,
            Timeout(_) => IPVS_SVC_ATTR_TIMEOUT,
            Netmask(_) => IPVS_SVC_ATTR_NETMASK,
            Stats(_) => IPVS_SVC_ATTR_STATS | NLA_F_NESTED,
            PeName(_) => IPVS_SVC_ATTR_PE_NAME,
            Stats64(_) => IPVS_SVC_ATTR_STATS64 | NLA_F_NESTED,
            Other(n) => n.kind(),
        }
    }
    fn emit_value(&self, buf: &mut [u8]) {
        use SvcAttr::*;
        match self {
            AddressFamily(v) | Protocol(v) => emit_u16(buf, *v).expect("2 bytes reserved"),
            Port(v) => emit_u16_be(buf, *v).expect("2 bytes reserved"),
            Address(a) => buf.copy_from_slice(&a.0),
            Fwmark(v) | Timeout(v) | Netmask(v) => emit_u32(buf, *v).expect("4 bytes reserved"),
            SchedName(s) | PeName(s) => emit_nul_string(buf, s),
            Flags(f) => {
                emit_u32(&mut buf[..4], f.flags).expect("8 bytes reserved");
                emit_u32(&mut buf[4..8], f.mask).expect("8 bytes reserved");
            }
            Stats(v) | Stats64(v) => v.as_slice().emit(buf),
            Other(n) => n.emit_value(buf),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for SvcAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let p = buf.value();
        Ok(match buf.kind() {
            IPVS_SVC_ATTR_AF => Self::AddressFamily(parse_u16(p).context("IPVS_SVC_ATTR_AF")?),
            IPVS_SVC_ATTR_PROTOCOL => {
                Self::Protocol(parse_u16(p).context("IPVS_SVC_ATTR_PROTOCOL")?)
            }
            IPVS_SVC_ATTR_ADDR => Self::Address(parse_inet(p).context("IPVS_SVC_ATTR_ADDR")?),
            IPVS_SVC_ATTR_PORT => Self::Port(parse_u16_be(p).context("IPVS_SVC_ATTR_PORT")?),
            IPVS_SVC_ATTR_FWMARK => Self::Fwmark(parse_u32(p).context("IPVS_SVC_ATTR_FWMARK")?),
            IPVS_SVC_ATTR_SCHED_NAME => {
                Self::SchedName(parse_string(p).context("IPVS_SVC_ATTR_SCHED_NAME")?)
            }
            IPVS_SVC_ATTR_FLAGS => {
                if p.len() < 8 {
                    return Err(DecodeError::from(
                        "IPVS_SVC_ATTR_FLAGS shorter than 8 bytes",
                    ));
                }
                Self::Flags(IpvsFlags {
                    flags: parse_u32(&p[..4])?,
                    mask: parse_u32(&p[4..8])?,
                })
            }
            IPVS_SVC_ATTR_TIMEOUT => Self::Timeout(parse_u32(p).context("IPVS_SVC_ATTR_TIMEOUT")?),
            IPVS_SVC_ATTR_NETMASK => Self::Netmask(parse_u32(p).context("IPVS_SVC_ATTR_NETMASK")?),
            IPVS_SVC_ATTR_STATS => Self::Stats(parse_nested(
                p,
                |n| StatsAttr::parse(n),
                "IPVS_SVC_ATTR_STATS",
            )?),
            IPVS_SVC_ATTR_PE_NAME => {
                Self::PeName(parse_string(p).context("IPVS_SVC_ATTR_PE_NAME")?)
            }
            IPVS_SVC_ATTR_STATS64 => Self::Stats64(parse_nested(
                p,
                |n| StatsAttr::parse(n),
                "IPVS_SVC_ATTR_STATS64",
            )?),
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// `IPVS_DEST_ATTR_*`, inside `IPVS_CMD_ATTR_DEST`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestAttr {
    Address(InetAddr),
    /// Host order here; big-endian on the wire.
    Port(u16),
    /// `IP_VS_CONN_F_MASQ` / `_TUNNEL` / `_DROUTE` (and `_LOCALNODE` as reported).
    FwdMethod(u32),
    Weight(u32),
    UThresh(u32),
    LThresh(u32),
    ActiveConns(u32),
    InactConns(u32),
    PersistConns(u32),
    Stats(Vec<StatsAttr>),
    AddressFamily(u16),
    Stats64(Vec<StatsAttr>),
    TunType(u8),
    /// Host order here; big-endian on the wire.
    TunPort(u16),
    TunFlags(u16),
    Other(DefaultNla),
}

impl Nla for DestAttr {
    fn value_len(&self) -> usize {
        use DestAttr::*;
        match self {
            Address(_) => 16,
            Port(_) | AddressFamily(_) | TunPort(_) | TunFlags(_) => 2,
            FwdMethod(_) | Weight(_) | UThresh(_) | LThresh(_) | ActiveConns(_) | InactConns(_)
            | PersistConns(_) => 4,
            TunType(_) => 1,
            Stats(v) | Stats64(v) => v.as_slice().buffer_len(),
            Other(n) => n.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        use DestAttr::*;
        match self {
            Address(_) => IPVS_DEST_ATTR_ADDR,
            Port(_) => IPVS_DEST_ATTR_PORT,
            FwdMethod(_) => IPVS_DEST_ATTR_FWD_METHOD,
            Weight(_) => IPVS_DEST_ATTR_WEIGHT,
            UThresh(_) => IPVS_DEST_ATTR_U_THRESH,
            LThresh(_) => IPVS_DEST_ATTR_L_THRESH,
            ActiveConns(_) => IPVS_DEST_ATTR_ACTIVE_CONNS,
            InactConns(_) => IPVS_DEST_ATTR_INACT_CONNS,
            PersistConns(_) => IPVS_DEST_ATTR_PERSIST_CONNS,
            Stats(_) => IPVS_DEST_ATTR_STATS | NLA_F_NESTED,
            AddressFamily(_) => IPVS_DEST_ATTR_ADDR_FAMILY,
            Stats64(_) => IPVS_DEST_ATTR_STATS64 | NLA_F_NESTED,
            TunType(_) => IPVS_DEST_ATTR_TUN_TYPE,
            TunPort(_) => IPVS_DEST_ATTR_TUN_PORT,
            TunFlags(_) => IPVS_DEST_ATTR_TUN_FLAGS,
            Other(n) => n.kind(),
        }
    }
    fn emit_value(&self, buf: &mut [u8]) {
        use DestAttr::*;
        match self {
            Address(a) => buf.copy_from_slice(&a.0),
            Port(v) | TunPort(v) => emit_u16_be(buf, *v).expect("2 bytes reserved"),
            AddressFamily(v) | TunFlags(v) => emit_u16(buf, *v).expect("2 bytes reserved"),
            FwdMethod(v) | Weight(v) | UThresh(v) | LThresh(v) | ActiveConns(v) | InactConns(v)
            | PersistConns(v) => emit_u32(buf, *v).expect("4 bytes reserved"),
            TunType(v) => buf[0] = *v,
            Stats(v) | Stats64(v) => v.as_slice().emit(buf),
            Other(n) => n.emit_value(buf),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for DestAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let p = buf.value();
        let u32_of = |what: &'static str| parse_u32(p).context(what);
        Ok(match buf.kind() {
            IPVS_DEST_ATTR_ADDR => Self::Address(parse_inet(p).context("IPVS_DEST_ATTR_ADDR")?),
            IPVS_DEST_ATTR_PORT => Self::Port(parse_u16_be(p).context("IPVS_DEST_ATTR_PORT")?),
            IPVS_DEST_ATTR_FWD_METHOD => Self::FwdMethod(u32_of("IPVS_DEST_ATTR_FWD_METHOD")?),
            IPVS_DEST_ATTR_WEIGHT => Self::Weight(u32_of("IPVS_DEST_ATTR_WEIGHT")?),
            IPVS_DEST_ATTR_U_THRESH => Self::UThresh(u32_of("IPVS_DEST_ATTR_U_THRESH")?),
            IPVS_DEST_ATTR_L_THRESH => Self::LThresh(u32_of("IPVS_DEST_ATTR_L_THRESH")?),
            IPVS_DEST_ATTR_ACTIVE_CONNS => {
                Self::ActiveConns(u32_of("IPVS_DEST_ATTR_ACTIVE_CONNS")?)
            }
            IPVS_DEST_ATTR_INACT_CONNS => Self::InactConns(u32_of("IPVS_DEST_ATTR_INACT_CONNS")?),
            IPVS_DEST_ATTR_PERSIST_CONNS => {
                Self::PersistConns(u32_of("IPVS_DEST_ATTR_PERSIST_CONNS")?)
            }
            IPVS_DEST_ATTR_STATS => Self::Stats(parse_nested(
                p,
                |n| StatsAttr::parse(n),
                "IPVS_DEST_ATTR_STATS",
            )?),
            IPVS_DEST_ATTR_ADDR_FAMILY => {
                Self::AddressFamily(parse_u16(p).context("IPVS_DEST_ATTR_ADDR_FAMILY")?)
            }
            IPVS_DEST_ATTR_STATS64 => Self::Stats64(parse_nested(
                p,
                |n| StatsAttr::parse(n),
                "IPVS_DEST_ATTR_STATS64",
            )?),
            IPVS_DEST_ATTR_TUN_TYPE => {
                Self::TunType(parse_u8(p).context("IPVS_DEST_ATTR_TUN_TYPE")?)
            }
            IPVS_DEST_ATTR_TUN_PORT => {
                Self::TunPort(parse_u16_be(p).context("IPVS_DEST_ATTR_TUN_PORT")?)
            }
            IPVS_DEST_ATTR_TUN_FLAGS => {
                Self::TunFlags(parse_u16(p).context("IPVS_DEST_ATTR_TUN_FLAGS")?)
            }
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// `IPVS_INFO_ATTR_*`: the top level of the reply to `IPVS_CMD_GET_INFO` (which the kernel
/// sends as `IPVS_CMD_SET_INFO`, as it answers GET_SERVICE with NEW_SERVICE).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InfoAttr {
    /// `IP_VS_VERSION_CODE`, e.g. 0x010201 for 1.2.1.
    Version(u32),
    ConnTabSize(u32),
    Other(DefaultNla),
}

impl Nla for InfoAttr {
    fn value_len(&self) -> usize {
        match self {
            InfoAttr::Version(_) | InfoAttr::ConnTabSize(_) => 4,
            InfoAttr::Other(n) => n.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            InfoAttr::Version(_) => IPVS_INFO_ATTR_VERSION,
            InfoAttr::ConnTabSize(_) => IPVS_INFO_ATTR_CONN_TAB_SIZE,
            InfoAttr::Other(n) => n.kind(),
        }
    }
    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            InfoAttr::Version(v) | InfoAttr::ConnTabSize(v) => {
                emit_u32(buf, *v).expect("4 bytes reserved")
            }
            InfoAttr::Other(n) => n.emit_value(buf),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for InfoAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let p = buf.value();
        Ok(match buf.kind() {
            IPVS_INFO_ATTR_VERSION => {
                Self::Version(parse_u32(p).context("IPVS_INFO_ATTR_VERSION")?)
            }
            IPVS_INFO_ATTR_CONN_TAB_SIZE => {
                Self::ConnTabSize(parse_u32(p).context("IPVS_INFO_ATTR_CONN_TAB_SIZE")?)
            }
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// `IPVS_CMD_ATTR_*`: the top level of every IPVS message except `GET_INFO` replies, whose
/// top level is [`InfoAttr`] (the two numberings overlap, so the command decides: GET_INFO
/// and SET_INFO carry info attributes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpvsAttr {
    Service(Vec<SvcAttr>),
    Dest(Vec<DestAttr>),
    Info(InfoAttr),
    Other(DefaultNla),
}

impl Nla for IpvsAttr {
    fn value_len(&self) -> usize {
        match self {
            IpvsAttr::Service(v) => v.as_slice().buffer_len(),
            IpvsAttr::Dest(v) => v.as_slice().buffer_len(),
            IpvsAttr::Info(i) => i.value_len(),
            IpvsAttr::Other(n) => n.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        // The kernel parses these nests with nla_parse_nested_deprecated, which accepts the
        // NLA_F_NESTED flag; setting it is what strict netlink validation expects.
        match self {
            IpvsAttr::Service(_) => IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED,
            IpvsAttr::Dest(_) => IPVS_CMD_ATTR_DEST | NLA_F_NESTED,
            IpvsAttr::Info(i) => i.kind(),
            IpvsAttr::Other(n) => n.kind(),
        }
    }
    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            IpvsAttr::Service(v) => v.as_slice().emit(buf),
            IpvsAttr::Dest(v) => v.as_slice().emit(buf),
            IpvsAttr::Info(i) => i.emit_value(buf),
            IpvsAttr::Other(n) => n.emit_value(buf),
        }
    }
}

impl IpvsAttr {
    /// Parses one top-level attribute of a message carrying command `cmd`.
    pub fn parse_for<T: AsRef<[u8]> + ?Sized>(
        buf: &NlaBuffer<&T>,
        cmd: u8,
    ) -> Result<Self, DecodeError> {
        if cmd == IPVS_CMD_GET_INFO || cmd == IPVS_CMD_SET_INFO {
            return Ok(IpvsAttr::Info(InfoAttr::parse(buf)?));
        }
        let p = buf.value();
        Ok(match buf.kind() {
            IPVS_CMD_ATTR_SERVICE => IpvsAttr::Service(parse_nested(
                p,
                |n| SvcAttr::parse(n),
                "IPVS_CMD_ATTR_SERVICE",
            )?),
            IPVS_CMD_ATTR_DEST => IpvsAttr::Dest(parse_nested(
                p,
                |n| DestAttr::parse(n),
                "IPVS_CMD_ATTR_DEST",
            )?),
            _ => IpvsAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}
