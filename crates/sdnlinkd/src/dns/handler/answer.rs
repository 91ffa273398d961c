//! The synchronous part of answering one raw message: the client check, the rendered fast
//! path, parsing, our zones and errors; what needs I/O is handed on as [`Later`] work.

use super::decide::{cname_to_chase, decide, Decision};
use super::forwarding::{Later, Work};
use super::response::{encode, encode_error, formerr, response_metadata};
use super::stats::Origin;
use super::{DnsHandler, Transport};
use crate::dns::wire;
use crate::dns::zone::ZoneData;
use hickory_proto::op::{MessageType, ResponseCode};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Answers raw query bytes from the zones only (no forwarding), encoded for a UDP client
/// limited to the size its EDNS advertises (512 without), through the rendered fast path when
/// it applies, as the server does. The fuzzing entry point.
pub fn answer_local_bytes(zones: &ZoneData, raw: &[u8]) -> Option<Vec<u8>> {
    if let Some(b) = wire::answer(&zones.wire, raw, Transport::Udp) {
        return Some(b);
    }
    let src: SocketAddr = ([127, 0, 0, 1], 53).into();
    let request = Request::from_bytes(raw.to_vec(), src, Protocol::Udp).ok()?;
    let error = match decide(zones, &request) {
        Decision::Drop => return None,
        Decision::Error(rc) => rc,
        // Forwarding needs I/O: this entry point answers as a stub without upstreams would.
        Decision::Forward(_) => ResponseCode::Refused,
        Decision::Local {
            rcode,
            answers,
            soa,
        } => {
            let mut md = response_metadata(&request, rcode);
            md.authoritative = true;
            return encode(
                &request,
                md,
                answers.iter(),
                soa.into_iter(),
                std::iter::empty(),
                Transport::Udp,
            )
            .map(|(b, _)| b);
        }
    };
    encode_error(&request, error, Transport::Udp).map(|(b, _)| b)
}

/// The outcome of the synchronous part of answering one message.
pub(crate) enum Step {
    /// Send these bytes.
    Reply(Vec<u8>),
    /// Send nothing.
    Silent,
    /// Finish with [`DnsHandler::finish`].
    Later(Box<Later>),
}

impl DnsHandler {
    /// The answer hickory's path gives, never the rendered one (to compare the two in tests).
    pub async fn answer_without_fast_path(
        &self,
        raw: &[u8],
        src: SocketAddr,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        match self.step_slow(raw, src, transport) {
            Step::Reply(b) => Some(b),
            Step::Silent => None,
            Step::Later(l) => self.finish(l).await,
        }
    }

    /// The whole answer to one raw message from `src` (`None`: send nothing), forwarding when
    /// the name is not ours.
    pub async fn answer(
        &self,
        raw: &[u8],
        src: SocketAddr,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        match self.step(raw, src, transport) {
            Step::Reply(b) => Some(b),
            Step::Silent => None,
            Step::Later(l) => self.finish(l).await,
        }
    }

    pub(super) fn reply(&self, origin: Origin, encoded: Option<(Vec<u8>, ResponseCode)>) -> Step {
        match encoded {
            Some((b, rc)) => {
                self.shared.stats.count_rcode(origin, rc);
                Step::Reply(b)
            }
            None => {
                self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                Step::Silent
            }
        }
    }

    /// The current zones, for a burst of [`DnsHandler::fast`] calls.
    pub(crate) fn zones(&self) -> arc_swap::Guard<Arc<ZoneData>> {
        self.shared.zones.load()
    }

    /// Answers from the rendered index into `out`; false when the query needs
    /// [`DnsHandler::step`]. Not counted: the caller adds its burst with
    /// [`DnsHandler::count_fast`].
    pub(crate) fn fast(
        &self,
        zones: &ZoneData,
        raw: &[u8],
        src: SocketAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> bool {
        self.shared.clients.allows(src.ip()) && wire::answer_into(&zones.wire, raw, transport, out)
    }

    /// Counts `n` answers of [`DnsHandler::fast`] (NOERROR all).
    pub(crate) fn count_fast(&self, n: u64) {
        if n == 0 {
            return;
        }
        let stats = &self.shared.stats;
        stats.queries.fetch_add(n, Ordering::Relaxed);
        stats.fast.fetch_add(n, Ordering::Relaxed);
        stats.rcodes[Origin::Local as usize][0].fetch_add(n, Ordering::Relaxed);
    }

    /// Everything that needs no I/O: parsing, our zones, errors.
    pub(crate) fn step(&self, raw: &[u8], src: SocketAddr, transport: Transport) -> Step {
        if self.shared.clients.allows(src.ip()) {
            if let Some(b) = wire::answer(&self.shared.zones.load().wire, raw, transport) {
                let stats = &self.shared.stats;
                stats.queries.fetch_add(1, Ordering::Relaxed);
                stats.fast.fetch_add(1, Ordering::Relaxed);
                stats.count_rcode(Origin::Local, ResponseCode::NoError);
                return Step::Reply(b);
            }
        }
        self.step_slow(raw, src, transport)
    }

    /// [`DnsHandler::step`] through hickory only.
    fn step_slow(&self, raw: &[u8], src: SocketAddr, transport: Transport) -> Step {
        let stats = &self.shared.stats;
        let allowed = self.shared.clients.allows(src.ip());
        let request = match Request::from_bytes(raw.to_vec(), src, transport.protocol()) {
            Ok(r) => r,
            Err(_) if !allowed => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                return Step::Silent;
            }
            Err(_) => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                return match formerr(raw) {
                    Some(b) => Step::Reply(b),
                    None => Step::Silent,
                };
            }
        };
        stats.queries.fetch_add(1, Ordering::Relaxed);
        if !allowed {
            if request.metadata.message_type != MessageType::Query {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                return Step::Silent;
            }
            stats.clients_refused.fetch_add(1, Ordering::Relaxed);
            return self.reply(
                Origin::Local,
                encode_error(&request, ResponseCode::Refused, transport),
            );
        }
        let zones = self.shared.zones.load();
        match decide(&zones, &request) {
            Decision::Drop => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                Step::Silent
            }
            Decision::Error(rc) => self.reply(Origin::Local, encode_error(&request, rc, transport)),
            Decision::Local {
                rcode,
                answers,
                soa,
            } => {
                let mut md = response_metadata(&request, rcode);
                md.authoritative = true;
                match cname_to_chase(&request, &answers) {
                    None => self.reply(
                        Origin::Local,
                        encode(
                            &request,
                            md,
                            answers.iter(),
                            soa.into_iter(),
                            std::iter::empty(),
                            transport,
                        ),
                    ),
                    Some(target) => {
                        let answers = answers.into_owned();
                        drop(zones);
                        Step::Later(Box::new(Later {
                            request,
                            transport,
                            work: Work::Chase {
                                md,
                                answers,
                                target,
                            },
                        }))
                    }
                }
            }
            Decision::Forward(query) => {
                drop(zones);
                Step::Later(Box::new(Later {
                    request,
                    transport,
                    work: Work::Forward(query),
                }))
            }
        }
    }
}
