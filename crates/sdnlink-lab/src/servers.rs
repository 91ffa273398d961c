//! Servers the lab runs as threads of its own process, each bound inside a namespace through
//! [`NetNs`]: per pod a TCP and a UDP echo server that answer with the pod's name (so a check can
//! see which endpoint answered), and the upstream DNS server in the underlay.

use super::LabError;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use sdnlinkd::netns::NetNs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often blocked server threads look at the stop flag.
const POLL: Duration = Duration::from_millis(100);

/// Server threads that stop (and close their sockets) when this is dropped.
#[derive(Default)]
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    /// Starts the TCP and UDP echo servers of pod `name` on `port` inside `netns`.
    pub fn start_pod(&mut self, netns: &str, name: &str, port: u16) -> Result<(), LabError> {
        let ns = NetNs::open(netns)?;
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let (tcp, udp) = ns
            .run(move || -> std::io::Result<(TcpListener, UdpSocket)> {
                Ok((TcpListener::bind(addr)?, UdpSocket::bind(addr)?))
            })?
            .map_err(|e| LabError::io(format!("binding the echo servers of pod {name}"), e))?;
        tcp.set_nonblocking(true)
            .map_err(|e| LabError::io("tcp listener nonblocking", e))?;
        udp.set_read_timeout(Some(POLL))
            .map_err(|e| LabError::io("udp read timeout", e))?;
        let reply = Arc::new(format!("{name}\n"));
        let stop = self.stop.clone();
        let r = reply.clone();
        self.threads.push(spawn(format!("tcp-{name}"), move || {
            tcp_echo(tcp, r, stop)
        })?);
        let stop = self.stop.clone();
        self.threads.push(spawn(format!("udp-{name}"), move || {
            udp_echo(udp, reply, stop)
        })?);
        Ok(())
    }

    /// Starts the upstream DNS server on `addr` inside `netns`: it answers `name` with `answer`
    /// and NXDOMAIN for everything else.
    pub fn start_upstream_dns(
        &mut self,
        netns: &str,
        addr: SocketAddr,
        name: &str,
        answer: Ipv4Addr,
    ) -> Result<(), LabError> {
        let ns = NetNs::open(netns)?;
        let udp = ns
            .run(move || UdpSocket::bind(addr))?
            .map_err(|e| LabError::io(format!("binding the upstream DNS server on {addr}"), e))?;
        udp.set_read_timeout(Some(POLL))
            .map_err(|e| LabError::io("udp read timeout", e))?;
        let name = Name::from_ascii(name).map_err(|e| LabError::Dns(e.to_string()))?;
        let stop = self.stop.clone();
        self.threads.push(spawn("upstream-dns".into(), move || {
            upstream_dns(udp, name, answer, stop)
        })?);
        Ok(())
    }

    /// Stops every thread and waits for them.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, LabError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(|e| LabError::io("spawning a server thread", e))
}

fn tcp_echo(listener: TcpListener, reply: Arc<String>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((conn, _)) => {
                let reply = reply.clone();
                let stop = stop.clone();
                // One thread per connection: long-lived connections (the restart check) must
                // not block new ones.
                let _ = std::thread::Builder::new()
                    .name("tcp-conn".into())
                    .spawn(move || tcp_conn(conn, reply, stop));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Answers every line received with the pod's name until the peer closes.
fn tcp_conn(conn: TcpStream, reply: Arc<String>, stop: Arc<AtomicBool>) {
    if conn.set_nonblocking(false).is_err() || conn.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    while !stop.load(Ordering::SeqCst) {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                if line.ends_with('\n') {
                    line.clear();
                    if writer.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

fn udp_echo(sock: UdpSocket, reply: Arc<String>, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::SeqCst) {
        if let Ok((_, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(reply.as_bytes(), from);
        }
    }
}

fn upstream_dns(sock: UdpSocket, name: Name, answer: Ipv4Addr, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        let Ok((len, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let Ok(query) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        if let Some(bytes) = upstream_answer(&query, &name, answer) {
            let _ = sock.send_to(&bytes, from);
        }
    }
}

/// The upstream's answer to `query`: `name` A `answer`, NXDOMAIN for any other name.
pub fn upstream_answer(query: &Message, name: &Name, answer: Ipv4Addr) -> Option<Vec<u8>> {
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut resp = Message::response(query.metadata.id, query.metadata.op_code);
    resp.metadata.recursion_desired = query.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_queries(query.queries.iter().cloned());
    match query.queries.first() {
        Some(q) if q.name() == name => {
            if q.query_type() == RecordType::A {
                resp.add_answer(Record::from_rdata(
                    q.name().clone(),
                    60,
                    RData::A(A(answer)),
                ));
            }
        }
        _ => resp.metadata.response_code = ResponseCode::NXDomain,
    }
    resp.to_vec().ok()
}

/// Sends one line over a TCP connection and reads the one-line answer.
pub fn tcp_ask(conn: &mut TcpStream) -> std::io::Result<String> {
    conn.write_all(b"who\n")?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    Ok(line.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn ask(name: &str, rtype: RecordType) -> Message {
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii(name).expect("literal name"),
            rtype,
        ));
        let served = Name::from_ascii("forwarded.lab.test.").expect("literal name");
        let bytes = upstream_answer(&q, &served, Ipv4Addr::new(198, 51, 100, 53))
            .expect("a query gets an answer");
        let resp = Message::from_vec(&bytes).expect("answer decodes");
        assert_eq!(resp.metadata.id, q.metadata.id);
        resp
    }

    #[test]
    fn upstream_answers_its_name_case_insensitively() {
        let resp = ask("Forwarded.LAB.test.", RecordType::A);
        assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
        assert_eq!(resp.answers.len(), 1);
        assert_eq!(
            resp.answers[0].data,
            RData::A(A(Ipv4Addr::new(198, 51, 100, 53)))
        );
    }

    #[test]
    fn upstream_nxdomain_for_other_names_and_nodata_for_other_types() {
        let resp = ask("other.lab.test.", RecordType::A);
        assert_eq!(resp.metadata.response_code, ResponseCode::NXDomain);
        assert!(resp.answers.is_empty());
        let resp = ask("forwarded.lab.test.", RecordType::AAAA);
        assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
        assert!(resp.answers.is_empty());
    }
}
