//! The stub's sockets: a receive loop per UDP socket and an accept loop per TCP listener, each
//! a tokio task, answering through [`DnsHandler`]. Answers that need no I/O are sent from the
//! receive loop itself; forwarding runs in its own task, at most `max_in_flight` at once.
//!
//! Nothing is logged per query unless `dns.log_queries` is set (then one line at info).

use super::handler::{DnsHandler, Step, Transport};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Idle time after which a client's TCP connection is closed (RFC 7766 6.2.3 leaves it to
/// the server; BIND and Unbound use seconds, not minutes).
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP connections served at once; a connection over the cap is closed at once.
const TCP_MAX_CONNECTIONS: usize = 256;

/// Settings of the running sockets.
#[derive(Clone, Debug)]
pub(crate) struct ServeOptions {
    pub(crate) log_queries: bool,
    /// Queries waiting on an upstream at once.
    pub(crate) max_in_flight: usize,
}

/// The tasks serving the sockets.
pub(crate) struct Serving {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
}

#[derive(Clone)]
struct Ctx {
    handler: DnsHandler,
    opts: ServeOptions,
    stop: CancellationToken,
    in_flight: Arc<Semaphore>,
}

impl Serving {
    pub(crate) fn spawn(
        handler: DnsHandler,
        udp: Vec<UdpSocket>,
        tcp: Vec<TcpListener>,
        opts: ServeOptions,
    ) -> Serving {
        let stop = CancellationToken::new();
        let in_flight = Arc::new(Semaphore::new(opts.max_in_flight));
        let ctx = Ctx {
            handler,
            opts,
            stop: stop.clone(),
            in_flight: in_flight.clone(),
        };
        let mut tasks = Vec::new();
        for s in udp {
            tasks.push(tokio::spawn(udp_loop(Arc::new(s), ctx.clone())));
        }
        for l in tcp {
            tasks.push(tokio::spawn(tcp_accept(l, ctx.clone())));
        }
        Serving {
            stop,
            tasks,
            max_in_flight: ctx.opts.max_in_flight,
            in_flight,
        }
    }

    /// Stops receiving, then waits for the loops and for every forwarded query in flight.
    pub(crate) async fn shutdown(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        let n = u32::try_from(self.max_in_flight).unwrap_or(u32::MAX);
        let _ = self.in_flight.acquire_many(n).await;
    }
}

/// Whether an answer may be sent to `src` at all (hickory-server's rule): not port 0, not an
/// unspecified or broadcast address, which no real client has and which would reflect.
fn answerable(src: SocketAddr) -> bool {
    src.port() != 0
        && match src.ip() {
            IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_broadcast(),
            IpAddr::V6(v6) => !v6.is_unspecified(),
        }
}

/// The one info line per query of `dns.log_queries`.
fn log_query(src: SocketAddr, transport: Transport, query: &[u8], answer: Option<&[u8]>) {
    let (name, qtype) = match hickory_proto::op::Message::from_vec(query) {
        Ok(m) => match m.queries.first() {
            Some(q) => (q.name.to_string(), q.query_type.to_string()),
            None => (String::new(), String::new()),
        },
        Err(_) => ("<malformed>".into(), String::new()),
    };
    let rcode = match answer {
        Some(a) if a.len() >= 4 => {
            hickory_proto::op::ResponseCode::from_low(a[3] & 0x0F).to_string()
        }
        _ => "none".into(),
    };
    tracing::info!(%src, proto = transport.name(), %name, qtype, rcode, "dns query");
}

impl Ctx {
    /// The synchronous part of one message; `Some` holds a forwarding permit and the work.
    fn start(&self, raw: &[u8], src: SocketAddr, transport: Transport) -> Started {
        match self.handler.step(raw, src, transport) {
            Step::Reply(b) => Started::Done(Some(b)),
            Step::Silent => Started::Done(None),
            Step::Later(l) => match self.in_flight.clone().try_acquire_owned() {
                Ok(permit) => Started::Later(l, permit),
                Err(_) => Started::Done(self.handler.overloaded(l)),
            },
        }
    }
}

enum Started {
    Done(Option<Vec<u8>>),
    Later(
        Box<super::handler::Later>,
        tokio::sync::OwnedSemaphorePermit,
    ),
}

/// Datagrams taken per `recvmmsg(2)` and answers sent per `sendmmsg(2)`: one system call for
/// a burst instead of two per query.
const BATCH: usize = 32;
/// Receive buffer per datagram. A DNS query over UDP without EDNS options fits 512 bytes and
/// no client sends more than a few hundred; a longer datagram is cut (MSG_TRUNC) and dropped.
const UDP_QUERY_MAX: usize = 4096;

fn socket_addr(a: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// Receives a burst into `bufs`: (length, source, cut) per datagram.
fn recv_batch(
    fd: std::os::fd::RawFd,
    bufs: &mut [Vec<u8>],
    got: &mut Vec<(usize, Option<SocketAddr>, bool)>,
) -> std::io::Result<()> {
    use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
    // Made per burst: nix's headers hold raw pointers, so they cannot live across an await.
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(bufs.len(), None);
    let headers = &mut headers;
    let mut iovs: Vec<[std::io::IoSliceMut<'_>; 1]> = bufs
        .iter_mut()
        .map(|b| [std::io::IoSliceMut::new(&mut b[..])])
        .collect();
    let res = recvmmsg(fd, headers, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None)
        .map_err(std::io::Error::from)?;
    for m in res {
        got.push((
            m.bytes,
            m.address.as_ref().and_then(socket_addr),
            m.flags.contains(MsgFlags::MSG_TRUNC),
        ));
    }
    Ok(())
}

/// Sends a burst of answers; returns how many the kernel took (the rest wait for room).
fn send_batch(
    fd: std::os::fd::RawFd,
    outs: &[Vec<u8>],
    replies: &[(usize, SocketAddr)],
) -> std::io::Result<usize> {
    use nix::sys::socket::{sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(replies.len(), None);
    let headers = &mut headers;
    let slices: Vec<[std::io::IoSlice<'_>; 1]> = replies
        .iter()
        .map(|(i, _)| [std::io::IoSlice::new(&outs[*i])])
        .collect();
    let addrs: Vec<Option<SockaddrStorage>> = replies
        .iter()
        .map(|(_, a)| Some(SockaddrStorage::from(*a)))
        .collect();
    let none: [ControlMessage<'_>; 0] = [];
    let res = sendmmsg(
        fd,
        headers,
        slices.iter(),
        &addrs,
        none,
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(std::io::Error::from)?;
    Ok(res.count())
}

async fn udp_loop(sock: Arc<UdpSocket>, ctx: Ctx) {
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    let mut bufs = vec![vec![0u8; UDP_QUERY_MAX]; BATCH];
    let mut got = Vec::with_capacity(BATCH);
    // One answer buffer per datagram of a burst, reused (their capacity stays).
    let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(512)).collect();
    let mut replies: Vec<(usize, SocketAddr)> = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            biased;
            _ = ctx.stop.cancelled() => return,
            r = sock.readable() => if let Err(e) = r {
                tracing::debug!(error = %e, "DNS UDP socket failed");
                return;
            },
        }
        loop {
            got.clear();
            let r = sock.try_io(tokio::io::Interest::READABLE, || {
                recv_batch(fd, &mut bufs, &mut got)
            });
            match r {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS UDP receive failed");
                    break;
                }
            }
            replies.clear();
            let zones = ctx.handler.zones();
            let mut fast = 0;
            for (i, (n, src, cut)) in got.iter().enumerate() {
                let (Some(src), false) = (*src, *cut) else {
                    continue;
                };
                if !answerable(src) {
                    continue;
                }
                let raw = &bufs[i][..*n];
                if !ctx.opts.log_queries
                    && ctx
                        .handler
                        .fast(&zones, raw, src, Transport::Udp, &mut outs[i])
                {
                    fast += 1;
                    replies.push((i, src));
                    continue;
                }
                match ctx.start(raw, src, Transport::Udp) {
                    Started::Done(out) => {
                        if ctx.opts.log_queries {
                            log_query(src, Transport::Udp, raw, out.as_deref());
                        }
                        if let Some(b) = out {
                            outs[i] = b;
                            replies.push((i, src));
                        }
                    }
                    Started::Later(later, permit) => {
                        let (ctx, sock, raw) = (ctx.clone(), sock.clone(), raw.to_vec());
                        tokio::spawn(async move {
                            let out = ctx.handler.finish(later).await;
                            drop(permit);
                            if ctx.opts.log_queries {
                                log_query(src, Transport::Udp, &raw, out.as_deref());
                            }
                            if let Some(b) = out {
                                send_one(&sock, &b, src).await;
                            }
                        });
                    }
                }
            }
            drop(zones);
            ctx.handler.count_fast(fast);
            let mut sent = 0;
            while sent < replies.len() {
                match sock.try_io(tokio::io::Interest::WRITABLE, || {
                    send_batch(fd, &outs, &replies[sent..])
                }) {
                    Ok(n) if n > 0 => sent += n,
                    // No room in the send buffer (or an error for the next datagram): the
                    // rest one by one, waiting for room.
                    _ => {
                        for (i, src) in &replies[sent..] {
                            send_one(&sock, &outs[*i], *src).await;
                        }
                        break;
                    }
                }
            }
        }
    }
}

async fn send_one(sock: &UdpSocket, b: &[u8], src: SocketAddr) {
    if let Err(e) = sock.send_to(b, src).await {
        tracing::debug!(error = %e, %src, "sending a DNS answer failed");
    }
}

async fn tcp_accept(listener: TcpListener, ctx: Ctx) {
    let conns = Arc::new(Semaphore::new(TCP_MAX_CONNECTIONS));
    let mut open = tokio::task::JoinSet::new();
    loop {
        let (stream, src) = tokio::select! {
            biased;
            _ = ctx.stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS TCP accept failed");
                    continue;
                }
            },
        };
        while open.try_join_next().is_some() {}
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            // Over the cap: closing at once is the answer RFC 7766 6.2.2 allows.
            continue;
        };
        if !answerable(src) {
            continue;
        }
        let ctx = ctx.clone();
        open.spawn(async move {
            tcp_conn(stream, src, &ctx).await;
            drop(permit);
        });
    }
    while open.join_next().await.is_some() {}
}

/// One TCP client: length-prefixed messages (RFC 1035 4.2.2), answered in order; answers are
/// flushed when no further query is already buffered, so pipelined queries share writes.
async fn tcp_conn(stream: TcpStream, src: SocketAddr, ctx: &Ctx) {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut wr = BufWriter::new(wr);
    let mut body = Vec::with_capacity(512);
    loop {
        let len = tokio::select! {
            biased;
            _ = ctx.stop.cancelled() => return,
            r = tokio::time::timeout(TCP_IDLE_TIMEOUT, rd.read_u16()) => match r {
                Ok(Ok(n)) => usize::from(n),
                _ => return,
            },
        };
        body.resize(len, 0);
        match tokio::time::timeout(TCP_IDLE_TIMEOUT, rd.read_exact(&mut body)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let out = match ctx.start(&body, src, Transport::Tcp) {
            Started::Done(out) => out,
            Started::Later(later, permit) => {
                let out = ctx.handler.finish(later).await;
                drop(permit);
                out
            }
        };
        if ctx.opts.log_queries {
            log_query(src, Transport::Tcp, &body, out.as_deref());
        }
        if let Some(b) = out {
            let Ok(n) = u16::try_from(b.len()) else {
                return;
            };
            if wr.write_all(&n.to_be_bytes()).await.is_err() || wr.write_all(&b).await.is_err() {
                return;
            }
        }
        if rd.buffer().is_empty() && wr.flush().await.is_err() {
            return;
        }
    }
}
