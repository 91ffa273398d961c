//! The checks' DNS client: raw DNS over UDP from a socket created inside a pod namespace.

use super::LabError;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use sdnlinkd::netns::NetNs;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

/// Sends one query for `name`/`rtype` to `server` from inside `netns` and returns the answer.
pub fn query(
    netns: &str,
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    timeout: Duration,
) -> Result<Message, LabError> {
    let name = Name::from_ascii(name).map_err(|e| LabError::Dns(format!("{name}: {e}")))?;
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(name, rtype));
    let bytes = msg.to_vec().map_err(|e| LabError::Dns(e.to_string()))?;
    let ns = NetNs::open(netns)?;
    let sock = ns
        .run(|| UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))))?
        .map_err(|e| LabError::io(format!("DNS client socket in {netns}"), e))?;
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| LabError::io("DNS read timeout", e))?;
    sock.send_to(&bytes, server)
        .map_err(|e| LabError::io(format!("DNS query to {server}"), e))?;
    let mut buf = [0u8; 4096];
    loop {
        let (len, from) = sock
            .recv_from(&mut buf)
            .map_err(|e| LabError::io(format!("DNS answer from {server}"), e))?;
        if from != server {
            continue;
        }
        let resp = Message::from_vec(&buf[..len]).map_err(|e| LabError::Dns(e.to_string()))?;
        if resp.metadata.id == msg.metadata.id {
            return Ok(resp);
        }
    }
}
