//! Deciding how to answer one parsed request, without I/O: from our zones, by forwarding, or
//! with an error; and the checks on the question that decision relies on.

use crate::dns::zone::{Lookup, ZoneData};
use hickory_proto::op::{MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_server::zone_handler::MessageRequest;
use std::borrow::Cow;

/// What to do with one request, decided without I/O.
#[derive(Debug)]
pub enum Decision<'a> {
    /// Answer from our zones.
    Local {
        rcode: ResponseCode,
        answers: Cow<'a, [Record]>,
        soa: Option<&'a Record>,
    },
    /// Not ours: forward this question.
    Forward(Query),
    /// Answer with an error and nothing else.
    Error(ResponseCode),
    /// Send nothing (a response sent to us: answering could start a loop).
    Drop,
}

/// Decides how to answer a parsed request from the zone data.
pub fn decide<'a>(zones: &'a ZoneData, request: &MessageRequest) -> Decision<'a> {
    if request.metadata.message_type != MessageType::Query {
        return Decision::Drop;
    }
    if !question_pointers_survive_echo(request.queries.as_bytes()) {
        // hickory-server copies the question section into the response byte for byte. A
        // compression pointer (RFC 1035 4.1.4) into the request's header, or not to an earlier
        // name, is accepted by its parser but would point at other bytes in our response, a
        // malformed message. Such a question is malformed to begin with; no answer is safe.
        return Decision::Drop;
    }
    if request.metadata.op_code != OpCode::Query {
        return Decision::Error(ResponseCode::NotImp);
    }
    let [query] = request.queries.queries() else {
        // RFC 9619: a query carries exactly one question.
        return Decision::Error(ResponseCode::FormErr);
    };
    let class = query.query_class();
    if class != DNSClass::IN && class != DNSClass::ANY {
        return Decision::Forward(query.original().clone());
    }
    match zones.lookup(query.name(), query.query_type()) {
        Lookup::Answer(answers) => Decision::Local {
            rcode: ResponseCode::NoError,
            answers,
            soa: None,
        },
        Lookup::NoData(soa) => Decision::Local {
            rcode: ResponseCode::NoError,
            answers: Cow::Borrowed(&[]),
            soa: Some(soa),
        },
        Lookup::NxDomain(soa) => Decision::Local {
            rcode: ResponseCode::NXDomain,
            answers: Cow::Borrowed(&[]),
            soa: Some(soa),
        },
        // A zone of a cluster that has not listed: no negative answer can be trusted.
        Lookup::Unknown => Decision::Error(ResponseCode::ServFail),
        Lookup::NotOurs => Decision::Forward(query.original().clone()),
    }
}

/// Offset of the question section in every DNS message: after the 12-byte header.
pub(super) const QUESTION_OFFSET: usize = 12;

/// Whether every compression pointer in the raw question section `raw` points backwards into
/// the question section itself (which sits at the same offset in our response, so the copy
/// stays valid). Rejects pointers into the header, forward or self pointers, and the reserved
/// label types 0x40/0x80 (RFC 6891 5).
fn question_pointers_survive_echo(raw: &[u8]) -> bool {
    let mut i = 0;
    while i < raw.len() {
        // One name: labels up to the root label or a pointer.
        loop {
            let Some(&len) = raw.get(i) else {
                return false;
            };
            match len & 0xC0 {
                0x00 if len == 0 => {
                    i += 1;
                    break;
                }
                0x00 => i += 1 + usize::from(len),
                0xC0 => {
                    let Some(&low) = raw.get(i + 1) else {
                        return false;
                    };
                    let target = usize::from(len & 0x3F) << 8 | usize::from(low);
                    if target < QUESTION_OFFSET || target >= QUESTION_OFFSET + i {
                        return false;
                    }
                    i += 2;
                    break;
                }
                _ => return false,
            }
        }
        // QTYPE and QCLASS.
        i += 4;
    }
    i == raw.len()
}

/// The question to ask next when a local answer is a lone CNAME for an address query.
pub(super) fn cname_to_chase(request: &MessageRequest, answers: &[Record]) -> Option<Query> {
    let [q] = request.queries.queries() else {
        return None;
    };
    let qtype = q.query_type();
    if !matches!(qtype, RecordType::A | RecordType::AAAA) {
        return None;
    }
    match answers {
        [Record {
            data: RData::CNAME(target),
            ..
        }] => Some(Query::query(target.0.clone(), qtype)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::question_pointers_survive_echo as ok;

    /// `a.b.` IN A, uncompressed: labels at question offsets 0 ("a") and 2 ("b").
    const PLAIN: &[u8] = &[1, b'a', 1, b'b', 0, 0, 1, 0, 1];

    #[test]
    fn plain_and_backward_pointers_survive_the_echo() {
        assert!(ok(PLAIN));
        // A second question `c.` + pointer to "b." at message offset 12 + 2.
        let mut two = PLAIN.to_vec();
        two.extend_from_slice(&[1, b'c', 0xC0, 14, 0, 1, 0, 1]);
        assert!(ok(&two));
        assert!(ok(&[]));
    }

    #[test]
    fn pointers_into_the_header_forward_or_to_themselves_do_not() {
        // The fuzzer's find: a pointer to offset 2, inside the header.
        assert!(!ok(&[3, b'_', b'p', b'g', 0xC0, 2, 0, 1, 0, 1]));
        assert!(!ok(&[0xC0, 12, 0, 1, 0, 1]), "points at itself");
        assert!(!ok(&[1, b'a', 0xC0, 20, 0, 1, 0, 1]), "points forward");
        assert!(!ok(&[0x41, 0, 0, 1, 0, 1]), "reserved label type");
        assert!(!ok(&[1, b'a', 0, 0, 1, 0]), "truncated class");
        assert!(!ok(&[5, b'a']), "label runs past the end");
    }
}
