//! A blocking IPVS generic-netlink socket. It is opened on a thread inside the target
//! namespace (the socket keeps that namespace for its life) and can then be driven from any
//! thread. Changes are pipelined: many requests go out in one `sendmsg`, acknowledgements are
//! matched back by sequence number, and a window bounds the acknowledgements in flight so the
//! receive buffer never overflows (an overflow would lose acks with `ENOBUFS`).

use super::message::{Dest, IpvsMessage, Service, ServiceId};
use super::nlas::{af_of, InfoAttr, IpvsAttr, IPVS_GENL_NAME};
use super::IpvsError;
use crate::netns::NetNs;
use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLMSG_DONE, NLMSG_ERROR,
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};
use std::io;

/// Requests whose acknowledgement may be outstanding at once. Each ack is its own skb in the
/// receive queue (about 1 KiB of truesize); 512 of them fit the 4 MiB buffer we ask for with
/// room to spare.
const WINDOW: usize = 512;
/// Upper bound of one `sendmsg` carrying several requests.
const SEND_CHUNK: usize = 60 * 1024;
const RECV_BUF: usize = 256 * 1024;

/// An IPVS generic-netlink socket bound in one namespace.
pub struct IpvsSocket {
    sock: Socket,
    family: u16,
    seq: u32,
    recv: Vec<u8>,
    /// Requests sent on this socket (changes and dumps), for sync reports and benchmarks.
    pub messages_sent: u64,
}

impl std::fmt::Debug for IpvsSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpvsSocket")
            .field("family", &self.family)
            .finish()
    }
}

fn io_err(context: &str, source: io::Error) -> IpvsError {
    IpvsError::Io {
        context: context.to_string(),
        source,
    }
}

impl IpvsSocket {
    /// Opens a socket inside `ns` and resolves the "IPVS" family there.
    pub fn open(ns: &NetNs) -> Result<IpvsSocket, IpvsError> {
        ns.run(IpvsSocket::open_here)?
    }

    /// Opens a socket in the calling thread's namespace and resolves the "IPVS" family.
    /// `IpvsError::Unavailable` when the kernel has no IPVS (the family is unknown).
    pub fn open_here() -> Result<IpvsSocket, IpvsError> {
        let mut sock = Socket::new(NETLINK_GENERIC).map_err(|e| io_err("netlink socket", e))?;
        sock.bind_auto().map_err(|e| io_err("netlink bind", e))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| io_err("netlink connect", e))?;
        // Capped acks echo only the request header, not the whole request.
        let _ = sock.set_cap_ack(true);
        let _ = sock.set_rx_buf_sz(4 * 1024 * 1024usize);
        force_rcvbuf(&sock, 4 * 1024 * 1024);
        let mut s = IpvsSocket {
            sock,
            family: 0,
            seq: 0,
            recv: Vec::with_capacity(RECV_BUF),
            messages_sent: 0,
        };
        s.family = s.resolve_family()?;
        Ok(s)
    }

    /// The generic-netlink family id the kernel assigned to IPVS.
    pub fn family_id(&self) -> u16 {
        self.family
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        if self.seq == 0 {
            self.seq = 1;
        }
        self.seq
    }

    fn recv_datagram(&mut self) -> Result<(), IpvsError> {
        self.recv.clear();
        loop {
            match self.sock.recv(&mut self.recv, 0) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("netlink recv", e)),
            }
        }
    }

    fn resolve_family(&mut self) -> Result<u16, IpvsError> {
        let mut genl = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(IPVS_GENL_NAME.to_string())],
        });
        genl.finalize();
        let seq = self.next_seq();
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST | NLM_F_ACK;
        hdr.sequence_number = seq;
        let mut msg = NetlinkMessage::new(hdr, NetlinkPayload::InnerMessage(genl));
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.sock
            .send(&buf, 0)
            .map_err(|e| io_err("netlink send", e))?;
        let mut family = None;
        loop {
            self.recv_datagram()?;
            let mut off = 0;
            while off < self.recv.len() {
                let (len, ty, mseq) = header_at(&self.recv[off..])?;
                let chunk = &self.recv[off..off + len];
                off += align4(len);
                if mseq != seq {
                    continue;
                }
                if ty == NLMSG_ERROR {
                    let code = error_code(chunk);
                    if code == 0 {
                        return family.ok_or(IpvsError::Unavailable);
                    }
                    if code == -libc::ENOENT {
                        return Err(IpvsError::Unavailable);
                    }
                    return Err(io_err(
                        "resolving the IPVS genl family",
                        io::Error::from_raw_os_error(-code),
                    ));
                }
                let parsed = NetlinkMessage::<GenlMessage<GenlCtrl>>::deserialize(chunk)?;
                if let NetlinkPayload::InnerMessage(m) = parsed.payload {
                    for a in m.payload.nlas {
                        if let GenlCtrlAttrs::FamilyId(id) = a {
                            family = Some(id);
                        }
                    }
                }
            }
        }
    }

    fn encode(&mut self, m: &IpvsMessage, flags: u16, out: &mut Vec<u8>) -> u32 {
        let mut genl = GenlMessage::from_payload(m.clone());
        genl.set_resolved_family_id(self.family);
        let seq = self.next_seq();
        let mut hdr = NetlinkHeader::default();
        hdr.flags = flags;
        hdr.sequence_number = seq;
        let mut msg = NetlinkMessage::new(hdr, NetlinkPayload::InnerMessage(genl));
        msg.finalize();
        let start = out.len();
        out.resize(start + msg.buffer_len(), 0);
        msg.serialize(&mut out[start..]);
        seq
    }

    /// Sends every message (each expecting an ack) pipelined, and returns one result per
    /// message in order. A failing message does not stop the others.
    pub fn execute(
        &mut self,
        msgs: &[IpvsMessage],
    ) -> Result<Vec<Result<(), io::Error>>, IpvsError> {
        let mut results: Vec<Option<Result<(), io::Error>>> =
            (0..msgs.len()).map(|_| None).collect();
        let mut next = 0usize;
        let mut outstanding = 0usize;
        let mut done = 0usize;
        let mut buf = Vec::with_capacity(SEND_CHUNK + 4096);
        // seq -> index: sequence numbers are consecutive per message, so (first seq, first
        // index) of the whole run is enough while seq does not wrap inside one call.
        let base_seq = self.seq.wrapping_add(1);
        while done < msgs.len() {
            buf.clear();
            while next < msgs.len() && outstanding < WINDOW && buf.len() < SEND_CHUNK {
                self.encode(&msgs[next], NLM_F_REQUEST | NLM_F_ACK, &mut buf);
                next += 1;
                outstanding += 1;
            }
            if !buf.is_empty() {
                self.send_all(&buf)?;
            }
            if outstanding == 0 {
                break;
            }
            self.recv_datagram()?;
            let mut off = 0;
            while off < self.recv.len() {
                let (len, ty, seq) = header_at(&self.recv[off..])?;
                let chunk_off = off;
                off += align4(len);
                if ty != NLMSG_ERROR {
                    continue;
                }
                let idx = seq.wrapping_sub(base_seq) as usize;
                if idx >= msgs.len() || results[idx].is_some() {
                    continue;
                }
                let code = error_code(&self.recv[chunk_off..chunk_off + len]);
                results[idx] = Some(if code == 0 {
                    Ok(())
                } else {
                    Err(io::Error::from_raw_os_error(-code))
                });
                outstanding -= 1;
                done += 1;
            }
        }
        self.messages_sent += msgs.len() as u64;
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(io::Error::other("no acknowledgement"))))
            .collect())
    }

    fn send_all(&mut self, buf: &[u8]) -> Result<(), IpvsError> {
        loop {
            match self.sock.send(buf, 0) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("netlink send", e)),
            }
        }
    }

    /// Runs one dump request and returns the messages of the reply.
    fn dump(&mut self, m: &IpvsMessage) -> Result<Vec<IpvsMessage>, IpvsError> {
        let mut buf = Vec::new();
        let seq = self.encode(m, NLM_F_REQUEST | NLM_F_DUMP, &mut buf);
        self.send_all(&buf)?;
        self.messages_sent += 1;
        let mut out = Vec::new();
        loop {
            self.recv_datagram()?;
            let mut off = 0;
            while off < self.recv.len() {
                let (len, ty, mseq) = header_at(&self.recv[off..])?;
                let chunk = &self.recv[off..off + len];
                off += align4(len);
                if mseq != seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = error_code(chunk);
                        if code == 0 {
                            return Ok(out);
                        }
                        return Err(io_err("IPVS dump", io::Error::from_raw_os_error(-code)));
                    }
                    _ => {
                        let parsed =
                            NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(chunk)?;
                        if let NetlinkPayload::InnerMessage(g) = parsed.payload {
                            out.push(g.payload);
                        }
                    }
                }
            }
        }
    }

    /// Every address-based virtual service in the table (fwmark services are skipped).
    pub fn services(&mut self) -> Result<Vec<Service>, IpvsError> {
        let msgs = self.dump(&IpvsMessage::get_services())?;
        Ok(msgs
            .iter()
            .filter_map(|m| m.service_attrs().and_then(Service::from_attrs))
            .collect())
    }

    /// The destinations of one service.
    pub fn dests(&mut self, id: &ServiceId) -> Result<Vec<Dest>, IpvsError> {
        let af = af_of(&id.addr);
        let msgs = self.dump(&IpvsMessage::get_dests(id))?;
        Ok(msgs
            .iter()
            .filter_map(|m| m.dest_attrs().and_then(|d| Dest::from_attrs(d, af)))
            .collect())
    }

    /// `(IP_VS_VERSION_CODE, connection table size)`.
    pub fn info(&mut self) -> Result<(u32, u32), IpvsError> {
        let mut buf = Vec::new();
        let seq = self.encode(&IpvsMessage::get_info(), NLM_F_REQUEST, &mut buf);
        self.send_all(&buf)?;
        self.messages_sent += 1;
        loop {
            self.recv_datagram()?;
            let (len, ty, mseq) = header_at(&self.recv)?;
            if mseq != seq {
                continue;
            }
            if ty == NLMSG_ERROR {
                let code = error_code(&self.recv[..len]);
                return Err(io_err("IPVS GET_INFO", io::Error::from_raw_os_error(-code)));
            }
            let parsed =
                NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(&self.recv[..len])?;
            let (mut v, mut t) = (0, 0);
            if let NetlinkPayload::InnerMessage(g) = parsed.payload {
                for a in g.payload.attrs {
                    match a {
                        IpvsAttr::Info(InfoAttr::Version(x)) => v = x,
                        IpvsAttr::Info(InfoAttr::ConnTabSize(x)) => t = x,
                        _ => {}
                    }
                }
            }
            return Ok((v, t));
        }
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// (length, type, sequence) of the netlink message at the start of `buf`.
fn header_at(buf: &[u8]) -> Result<(usize, u16, u32), IpvsError> {
    let nb = NetlinkBuffer::new_checked(buf)?;
    let len = nb.length() as usize;
    if len < 16 || len > buf.len() {
        return Err(IpvsError::Decode(format!(
            "netlink message length {len} in a {}-byte datagram",
            buf.len()
        )));
    }
    Ok((len, nb.message_type(), nb.sequence_number()))
}

/// The `error` field of an NLMSG_ERROR message (0 = ack).
fn error_code(msg: &[u8]) -> i32 {
    if msg.len() < 20 {
        return -libc::EBADMSG;
    }
    i32::from_ne_bytes([msg[16], msg[17], msg[18], msg[19]])
}

fn force_rcvbuf(sock: &Socket, size: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SO_RCVBUFFORCE (root) goes past net.core.rmem_max; the pipelining window relies on it
    // only loosely, so failure is not fatal.
    // SAFETY: setsockopt with a valid fd and a c_int option value of the stated size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Whether the kernel in `ns` has IPVS (its generic-netlink family resolves), for
/// `backend = "auto"`.
pub fn ipvs_available(ns: &NetNs) -> bool {
    IpvsSocket::open(ns).is_ok()
}
