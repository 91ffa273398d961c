//! Forwarding of names outside our zones to the configured upstream resolvers, with a small
//! TTL-respecting cache. Sockets are opened on the calling tokio worker, which never changes
//! namespace (netns module docs): they live in the host namespace, where the daemon runs, so
//! upstreams are reached exactly as the node reaches them.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, RecordType};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Time one upstream gets to answer one query (UDP, then TCP on truncation).
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(1500);
/// Bound on the whole forwarding of one query over all upstreams: the client gets SERVFAIL by
/// then, before its own resolver times out (glibc waits 5 s).
pub const FORWARD_DEADLINE: Duration = Duration::from_millis(3000);
/// Upper bound on how long any answer is cached, whatever its TTL says.
const MAX_CACHE_TTL: u32 = 3600;
/// Buffer advertised to upstreams: the DNS Flag Day 2020 size that avoids IP fragmentation.
const UPSTREAM_EDNS_SIZE: u16 = 1232;

/// Why forwarding a query failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream resolver configured")]
    NoUpstreams,
    #[error("every upstream is this server itself: refusing to loop")]
    Loop,
    #[error("upstream {upstream}: {source}")]
    Io {
        upstream: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {0}: no answer in time")]
    Timeout(SocketAddr),
    #[error("upstream {upstream}: bad answer: {reason}")]
    BadAnswer {
        upstream: SocketAddr,
        reason: String,
    },
    #[error("forwarding deadline passed")]
    Deadline,
}

impl ForwardError {
    /// The upstream and the kind of failure, which is what the log tells once.
    fn kind(&self) -> Option<(SocketAddr, String)> {
        match self {
            ForwardError::Io { upstream, source } => {
                Some((*upstream, format!("{:?}", source.kind())))
            }
            ForwardError::Timeout(u) => Some((*u, "timeout".into())),
            ForwardError::BadAnswer { upstream, .. } => Some((*upstream, "bad answer".into())),
            ForwardError::Deadline => Some((DEADLINE_KEY, "deadline".into())),
            _ => None,
        }
    }
}

/// Stands for "every upstream" in [`UpstreamLog`]: the deadline is not one upstream's.
const DEADLINE_KEY: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// Remembers which (upstream, kind of failure) pairs were logged, so a failing upstream costs
/// one log line per kind of failure instead of one per query; an answer from it resets it.
#[derive(Default)]
pub(crate) struct UpstreamLog {
    failing: Mutex<HashSet<(SocketAddr, String)>>,
}

impl UpstreamLog {
    fn failed(&self, e: &ForwardError) {
        let Some(key) = e.kind() else { return };
        let Ok(mut failing) = self.failing.lock() else {
            return;
        };
        if failing.insert(key) {
            tracing::warn!(error = %e, "DNS upstream failing (logged once per upstream and kind until it answers)");
        }
    }

    fn answered(&self, upstream: SocketAddr) {
        let Ok(mut failing) = self.failing.lock() else {
            return;
        };
        let before = failing.len();
        failing.retain(|(u, _)| *u != upstream && *u != DEADLINE_KEY);
        if failing.len() != before {
            tracing::info!(%upstream, "DNS upstream answers again");
        }
    }
}

type CacheKey = (LowerName, RecordType, DNSClass);

struct CacheEntry {
    message: Message,
    stored: Instant,
    expires: Instant,
}

/// A bounded cache of upstream answers, keyed by question.
pub(crate) struct Cache {
    capacity: usize,
    entries: Mutex<HashMap<CacheKey, CacheEntry>>,
}

impl Cache {
    /// A cache holding at most `capacity` answers (0 turns it off).
    pub fn new(capacity: usize) -> Cache {
        Cache {
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// A cached answer with its TTLs reduced by the time it spent in the cache.
    pub fn get(&self, key: &CacheKey, now: Instant) -> Option<Message> {
        if self.capacity == 0 {
            return None;
        }
        let mut entries = self.entries.lock().ok()?;
        let entry = entries.get(key)?;
        if entry.expires <= now {
            entries.remove(key);
            return None;
        }
        let age = now.duration_since(entry.stored).as_secs() as u32;
        let mut msg = entry.message.clone();
        for r in msg
            .answers
            .iter_mut()
            .chain(msg.authorities.iter_mut())
            .chain(msg.additionals.iter_mut())
        {
            r.ttl = r.ttl.saturating_sub(age);
        }
        Some(msg)
    }

    /// Stores an answer for as long as its smallest TTL (RFC 2308 for negative answers: the
    /// SOA's TTL and MINIMUM). Truncated or failed answers are not stored.
    pub fn put(&self, key: CacheKey, message: &Message, now: Instant) {
        if self.capacity == 0 || message.metadata.truncation {
            return;
        }
        let ttl = match message.metadata.response_code {
            ResponseCode::NoError if !message.answers.is_empty() => message
                .answers
                .iter()
                .chain(message.authorities.iter())
                .map(|r| r.ttl)
                .min(),
            ResponseCode::NoError | ResponseCode::NXDomain => {
                message.authorities.iter().find_map(|r| match &r.data {
                    hickory_proto::rr::RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                    _ => None,
                })
            }
            _ => None,
        };
        let Some(ttl) = ttl.filter(|t| *t > 0) else {
            return;
        };
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, e| e.expires > now);
            if entries.len() >= self.capacity {
                // Evicting an arbitrary entry is enough for a small stub cache: upstream is
                // the real cache.
                if let Some(victim) = entries.keys().next().cloned() {
                    entries.remove(&victim);
                }
            }
        }
        entries.insert(
            key,
            CacheEntry {
                message: message.clone(),
                stored: now,
                expires: now + Duration::from_secs(u64::from(ttl.min(MAX_CACHE_TTL))),
            },
        );
    }

    /// Answers cached now.
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }
}

/// The upstreams to use: every configured one except ourselves (a loop), or [`ForwardError`].
pub fn usable_upstreams(
    upstreams: &[SocketAddr],
    ourselves: SocketAddr,
) -> Result<Vec<SocketAddr>, ForwardError> {
    if upstreams.is_empty() {
        return Err(ForwardError::NoUpstreams);
    }
    let usable: Vec<SocketAddr> = upstreams
        .iter()
        .copied()
        .filter(|u| *u != ourselves && !u.ip().is_unspecified())
        .collect();
    if usable.is_empty() {
        return Err(ForwardError::Loop);
    }
    Ok(usable)
}

fn query_message(query: &Query, recursion_desired: bool) -> (u16, Vec<u8>) {
    let id: u16 = rand::random();
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = recursion_desired;
    msg.add_query(query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(UPSTREAM_EDNS_SIZE);
    msg.set_edns(edns);
    // Encoding a single well-formed question cannot fail.
    let bytes = msg.to_vec().unwrap_or_default();
    (id, bytes)
}

/// Checks an upstream's answer against our question (RFC 5452 section 9.1: ID, source and
/// question must all match before an answer is accepted).
fn matches(msg: &Message, id: u16, query: &Query) -> bool {
    msg.metadata.id == id
        && msg.metadata.message_type == MessageType::Response
        && msg.queries.len() == 1
        && LowerName::new(&msg.queries[0].name) == LowerName::new(&query.name)
        && msg.queries[0].query_type == query.query_type
        && msg.queries[0].query_class == query.query_class
}

async fn over_udp(
    upstream: SocketAddr,
    id: u16,
    bytes: &[u8],
    query: &Query,
) -> Result<Message, ForwardError> {
    let io = |source| ForwardError::Io { upstream, source };
    let local: SocketAddr = match upstream.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    // A fresh socket (random source port) per query, against spoofed answers (RFC 5452).
    let sock = tokio::net::UdpSocket::bind(local).await.map_err(io)?;
    sock.connect(upstream).await.map_err(io)?;
    sock.send(bytes).await.map_err(io)?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await.map_err(io)?;
        let Ok(msg) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if matches(&msg, id, query) {
            return Ok(msg);
        }
    }
}

async fn over_tcp(
    upstream: SocketAddr,
    id: u16,
    bytes: &[u8],
    query: &Query,
) -> Result<Message, ForwardError> {
    let io = |source| ForwardError::Io { upstream, source };
    let mut stream = tokio::net::TcpStream::connect(upstream).await.map_err(io)?;
    let len = u16::try_from(bytes.len()).map_err(|_| ForwardError::BadAnswer {
        upstream,
        reason: "query too long".into(),
    })?;
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    stream.write_all(&out).await.map_err(io)?;
    let n = stream.read_u16().await.map_err(io)?;
    let mut buf = vec![0u8; usize::from(n)];
    stream.read_exact(&mut buf).await.map_err(io)?;
    let msg = Message::from_vec(&buf).map_err(|e| ForwardError::BadAnswer {
        upstream,
        reason: e.to_string(),
    })?;
    if !matches(&msg, id, query) {
        return Err(ForwardError::BadAnswer {
            upstream,
            reason: "answer does not match the question".into(),
        });
    }
    Ok(msg)
}

/// Asks one upstream: UDP, and over TCP again when the UDP answer is truncated (RFC 7766).
pub async fn ask(upstream: SocketAddr, query: &Query, rd: bool) -> Result<Message, ForwardError> {
    let (id, bytes) = query_message(query, rd);
    let udp = tokio::time::timeout(UPSTREAM_TIMEOUT, over_udp(upstream, id, &bytes, query))
        .await
        .map_err(|_| ForwardError::Timeout(upstream))??;
    if !udp.metadata.truncation {
        return Ok(udp);
    }
    let (id, bytes) = query_message(query, rd);
    tokio::time::timeout(UPSTREAM_TIMEOUT, over_tcp(upstream, id, &bytes, query))
        .await
        .map_err(|_| ForwardError::Timeout(upstream))?
}

/// Asks the upstreams in order until one answers (any response code but SERVFAIL/REFUSED),
/// within [`FORWARD_DEADLINE`]. Returns the last error when none does.
pub(crate) async fn forward(
    upstreams: &[SocketAddr],
    query: &Query,
    rd: bool,
    log: &UpstreamLog,
) -> Result<Message, ForwardError> {
    let attempt = async {
        let mut last = ForwardError::NoUpstreams;
        let mut fallback = None;
        for u in upstreams {
            match ask(*u, query, rd).await {
                Ok(msg)
                    if matches!(
                        msg.metadata.response_code,
                        ResponseCode::ServFail | ResponseCode::Refused
                    ) =>
                {
                    fallback = Some(msg);
                }
                Ok(msg) => {
                    log.answered(*u);
                    return Ok(msg);
                }
                Err(e) => {
                    log.failed(&e);
                    last = e;
                }
            }
        }
        fallback.ok_or(last)
    };
    let done = tokio::time::timeout(FORWARD_DEADLINE, attempt).await;
    done.unwrap_or_else(|_| {
        log.failed(&ForwardError::Deadline);
        Err(ForwardError::Deadline)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::SOA;
    use hickory_proto::rr::{Name, RData, Record};
    use std::net::Ipv4Addr;

    fn key(n: &str) -> CacheKey {
        (
            LowerName::new(&Name::from_ascii(n).expect("name")),
            RecordType::A,
            DNSClass::IN,
        )
    }

    fn answer(ttl: u32) -> Message {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.answers.push(Record::from_rdata(
            Name::from_ascii("a.example.").expect("name"),
            ttl,
            RData::A(Ipv4Addr::new(192, 0, 2, 1).into()),
        ));
        m
    }

    fn nxdomain(soa_ttl: u32, minimum: u32) -> Message {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.metadata.response_code = ResponseCode::NXDomain;
        let apex = Name::from_ascii("example.").expect("name");
        m.authorities.push(Record::from_rdata(
            apex.clone(),
            soa_ttl,
            RData::SOA(SOA::new(apex.clone(), apex, 1, 1, 1, 1, minimum)),
        ));
        m
    }

    #[test]
    fn cache_ages_ttls_and_expires() {
        let c = Cache::new(4);
        let t0 = Instant::now();
        c.put(key("a.example."), &answer(30), t0);
        let hit = c
            .get(&key("A.EXAMPLE."), t0 + Duration::from_secs(10))
            .expect("hit");
        assert_eq!(hit.answers[0].ttl, 20);
        assert!(c
            .get(&key("a.example."), t0 + Duration::from_secs(30))
            .is_none());
    }

    #[test]
    fn negative_answers_cached_for_soa_minimum() {
        let c = Cache::new(4);
        let t0 = Instant::now();
        c.put(key("n.example."), &nxdomain(300, 5), t0);
        assert!(c
            .get(&key("n.example."), t0 + Duration::from_secs(4))
            .is_some());
        assert!(c
            .get(&key("n.example."), t0 + Duration::from_secs(5))
            .is_none());
    }

    #[test]
    fn failures_truncation_and_zero_ttl_are_not_cached() {
        let c = Cache::new(4);
        let t0 = Instant::now();
        let mut servfail = answer(30);
        servfail.metadata.response_code = ResponseCode::ServFail;
        c.put(key("s.example."), &servfail, t0);
        let mut tc = answer(30);
        tc.metadata.truncation = true;
        c.put(key("t.example."), &tc, t0);
        c.put(key("z.example."), &answer(0), t0);
        assert_eq!(c.len(), 0);
        let off = Cache::new(0);
        off.put(key("a.example."), &answer(30), t0);
        assert!(off.get(&key("a.example."), t0).is_none());
    }

    #[test]
    fn cache_is_bounded() {
        let c = Cache::new(3);
        let t0 = Instant::now();
        for i in 0..10 {
            c.put(key(&format!("h{i}.example.")), &answer(30), t0);
        }
        assert_eq!(c.len(), 3);
        // The newest entry is always kept.
        assert!(c.get(&key("h9.example."), t0).is_some());
    }

    #[test]
    fn own_address_is_never_an_upstream() {
        let us: SocketAddr = "169.254.20.53:53".parse().expect("literal");
        let other: SocketAddr = "192.0.2.53:53".parse().expect("literal");
        let same_ip_other_port: SocketAddr = "169.254.20.53:5353".parse().expect("literal");
        assert!(matches!(
            usable_upstreams(&[us], us),
            Err(ForwardError::Loop)
        ));
        assert!(matches!(
            usable_upstreams(&[], us),
            Err(ForwardError::NoUpstreams)
        ));
        assert_eq!(
            usable_upstreams(&[us, other, same_ip_other_port], us).expect("usable"),
            vec![other, same_ip_other_port]
        );
    }
}
