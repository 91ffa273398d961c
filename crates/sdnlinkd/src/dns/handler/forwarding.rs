//! The part of answering that needs I/O, run off the server's receive loop: forwarding a
//! question upstream (through the cache) and chasing an ExternalName's target.

use super::answer::Step;
use super::response::{encode, encode_error, response_metadata};
use super::stats::Origin;
use super::{DnsHandler, Transport};
use crate::dns::forward::{self, ForwardError};
use crate::dns::zone::Lookup;
use hickory_proto::op::{Metadata, Query, ResponseCode};
use hickory_proto::rr::{LowerName, Record};
use hickory_server::server::Request;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// One request's work that needs I/O (forwarding, or chasing an ExternalName's target): the
/// server runs it off its receive loop.
pub(crate) struct Later {
    pub(super) request: Request,
    pub(super) transport: Transport,
    pub(super) work: Work,
}

pub(super) enum Work {
    Forward(Query),
    Chase {
        md: Metadata,
        answers: Vec<Record>,
        target: Query,
    },
}

impl DnsHandler {
    /// SERVFAIL for work that found every forwarding slot taken.
    pub(crate) fn overloaded(&self, later: Box<Later>) -> Option<Vec<u8>> {
        self.shared.stats.over_cap.fetch_add(1, Ordering::Relaxed);
        let step = self.reply(
            Origin::Forwarded,
            encode_error(&later.request, ResponseCode::ServFail, later.transport),
        );
        match step {
            Step::Reply(b) => Some(b),
            _ => None,
        }
    }

    /// The I/O part of answering: forwarding or chasing, then encoding.
    pub(crate) async fn finish(&self, later: Box<Later>) -> Option<Vec<u8>> {
        let Later {
            request,
            transport,
            work,
        } = *later;
        let step = match work {
            Work::Chase {
                md,
                mut answers,
                target,
            } => {
                answers.extend(self.chase(target).await);
                let none = std::iter::empty();
                self.reply(
                    Origin::Local,
                    encode(&request, md, answers.iter(), none.clone(), none, transport),
                )
            }
            Work::Forward(query) => {
                match self
                    .forwarded(&query, request.metadata.recursion_desired)
                    .await
                {
                    Ok(msg) => {
                        let mut md = response_metadata(&request, msg.metadata.response_code);
                        md.recursion_available = msg.metadata.recursion_available;
                        self.reply(
                            Origin::Forwarded,
                            encode(
                                &request,
                                md,
                                msg.answers.iter(),
                                msg.authorities.iter(),
                                msg.additionals.iter(),
                                transport,
                            ),
                        )
                    }
                    Err(e) => {
                        let rc = if matches!(e, ForwardError::Loop) {
                            self.shared
                                .stats
                                .loops_refused
                                .fetch_add(1, Ordering::Relaxed);
                            ResponseCode::Refused
                        } else {
                            self.shared
                                .stats
                                .upstream_errors
                                .fetch_add(1, Ordering::Relaxed);
                            ResponseCode::ServFail
                        };
                        self.reply(Origin::Forwarded, encode_error(&request, rc, transport))
                    }
                }
            }
        };
        match step {
            Step::Reply(b) => Some(b),
            _ => None,
        }
    }

    async fn forwarded(
        &self,
        query: &Query,
        rd: bool,
    ) -> Result<hickory_proto::op::Message, ForwardError> {
        let key = (
            LowerName::new(&query.name),
            query.query_type,
            query.query_class,
        );
        let now = Instant::now();
        if let Some(hit) = self.shared.cache.get(&key, now) {
            self.shared.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        let upstreams = self.shared.upstreams.load();
        let usable = forward::usable_upstreams(&upstreams, self.shared.ourselves)?;
        self.shared.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let msg = forward::forward(&usable, query, rd, &self.shared.upstream_log).await;
        let done = Instant::now();
        self.shared.forward_times.observe(done.duration_since(now));
        let msg = msg?;
        self.shared.cache.put(key, &msg, done);
        Ok(msg)
    }

    /// The records of an ExternalName's target, one step: from our zones, or from the
    /// upstreams. Stub resolvers (glibc, musl) do not follow a bare CNAME themselves, and
    /// CoreDNS answers ExternalName the same way; failures leave the CNAME alone.
    async fn chase(&self, target: Query) -> Vec<Record> {
        let local = {
            let zones = self.shared.zones.load();
            match zones.lookup(&LowerName::new(&target.name), target.query_type) {
                Lookup::Answer(r) => Some(
                    r.iter()
                        .filter(|r| r.record_type() == target.query_type)
                        .cloned()
                        .collect(),
                ),
                Lookup::NoData(_) | Lookup::NxDomain(_) | Lookup::Unknown => Some(Vec::new()),
                Lookup::NotOurs => None,
            }
        };
        if let Some(records) = local {
            return records;
        }
        match self.forwarded(&target, true).await {
            Ok(msg) if msg.metadata.response_code == ResponseCode::NoError => msg.answers,
            Ok(_) => Vec::new(),
            Err(e) => {
                tracing::debug!(error = %e, name = %target.name, "ExternalName target not resolved");
                Vec::new()
            }
        }
    }
}
