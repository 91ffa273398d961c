//! Encoding responses: our OPT record and header flags, the size limit of the transport, and
//! cutting an oversized answer at a record boundary.

use super::decide::QUESTION_OFFSET;
use super::Transport;
use hickory_proto::op::{Edns, Header, MessageType, Metadata, ResponseCode};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_server::zone_handler::MessageRequest;

/// Largest UDP answer we send even when a client advertises more (BIND's and Unbound's default
/// ceiling; larger datagrams fragment).
const MAX_UDP_PAYLOAD: u16 = 4096;

/// The OPT record of our response: present when the client sent one (RFC 6891 7), carrying the
/// client's buffer size (capped), which is the UDP size limit of the answer.
fn response_edns(request: &MessageRequest) -> Option<Edns> {
    request.edns.as_ref().map(|e| {
        let mut ours = Edns::new();
        ours.set_max_payload(e.max_payload().clamp(512, MAX_UDP_PAYLOAD));
        ours
    })
}

pub(super) fn response_metadata(request: &MessageRequest, rcode: ResponseCode) -> Metadata {
    let mut md = Metadata::response_from_request(&request.metadata);
    md.response_code = rcode;
    // We forward on the client's behalf, so recursion is available to it.
    md.recursion_available = true;
    md
}

/// Encodes a response to `request` for `transport`: UDP limited to the response's EDNS size,
/// 512 bytes without EDNS (RFC 1035 4.2.1), TCP unlimited. The question is encoded as a name,
/// not copied, so the answers' names compress against it. The whole message is encoded first
/// and then cut at a record boundary ([`fit`]): hickory-server 0.26.3's encoder, given a size
/// limit, rolls back its record count on overflow but not its buffer, leaving half a record.
pub(super) fn encode<'a>(
    request: &MessageRequest,
    metadata: Metadata,
    answers: impl Iterator<Item = &'a Record>,
    authorities: impl Iterator<Item = &'a Record>,
    additionals: impl Iterator<Item = &'a Record>,
    transport: Transport,
) -> Option<(Vec<u8>, ResponseCode)> {
    let rcode = metadata.response_code;
    let edns = response_edns(request);
    let limit = match (transport, &edns) {
        (Transport::Udp, Some(e)) => usize::from(e.max_payload()),
        (Transport::Udp, None) => 512,
        (Transport::Tcp, _) => usize::from(u16::MAX),
    };
    let mut message =
        hickory_proto::op::Message::new(metadata.id, metadata.message_type, metadata.op_code);
    message.metadata = metadata;
    message.queries = request
        .queries
        .queries()
        .iter()
        .map(|q| q.original().clone())
        .collect();
    message.answers = answers.cloned().collect();
    message.authorities = authorities.cloned().collect();
    message.additionals = additionals.cloned().collect();
    message.edns = edns;
    let mut out = match message.to_vec() {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(error = %e, "encoding a DNS response failed");
            return None;
        }
    };
    if out.len() > limit {
        out = fit(&out, limit)?;
    }
    Some((out, rcode))
}

/// An answer with only a response code (and the OPT record when the client sent one).
pub(super) fn encode_error(
    request: &MessageRequest,
    rcode: ResponseCode,
    transport: Transport,
) -> Option<(Vec<u8>, ResponseCode)> {
    let mut md = Metadata::response_from_request(&request.metadata);
    md.response_code = rcode;
    let none = std::iter::empty();
    encode(request, md, none.clone(), none.clone(), none, transport)
}

/// Skips one encoded name at `i`: labels up to the root label or a compression pointer.
fn skip_name(m: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *m.get(i)?;
        match len & 0xC0 {
            0x00 if len == 0 => return Some(i + 1),
            0x00 => i += 1 + usize::from(len),
            0xC0 => return (i + 2 <= m.len()).then_some(i + 2),
            _ => return None,
        }
    }
}

/// Skips one resource record at `i` (name, type, class, TTL, RDLENGTH, RDATA); returns its end
/// and its type.
fn skip_record(m: &[u8], i: usize) -> Option<(usize, u16)> {
    let fixed = skip_name(m, i)?;
    let f = m.get(fixed..fixed + 10)?;
    let rtype = u16::from_be_bytes([f[0], f[1]]);
    let end = fixed + 10 + usize::from(u16::from_be_bytes([f[8], f[9]]));
    (end <= m.len()).then_some((end, rtype))
}

/// RR type of the EDNS pseudo-record (RFC 6891 6.1.2).
const OPT: u16 = 41;

/// Cuts a well-formed encoded message that exceeds `limit` to one that fits: TC set (RFC 1035
/// 4.1.1), the question, as many whole answer records as fit, no authority or additional
/// records except the OPT record (RFC 6891 7: a truncated answer still carries it). Answers
/// keep their order, and every compression pointer in a kept record points backwards into
/// what is kept. `None` when the message does not parse (our own encoding always does).
pub(crate) fn fit(m: &[u8], limit: usize) -> Option<Vec<u8>> {
    let count = |at: usize| m.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let (qd, an, ns, ar) = (count(4)?, count(6)?, count(8)?, count(10)?);
    let mut i = QUESTION_OFFSET;
    for _ in 0..qd {
        i = skip_name(m, i)? + 4;
    }
    let question_end = i;
    let mut answer_ends = Vec::with_capacity(usize::from(an));
    for _ in 0..an {
        i = skip_record(m, i)?.0;
        answer_ends.push(i);
    }
    for _ in 0..ns {
        i = skip_record(m, i)?.0;
    }
    let mut opt: &[u8] = &[];
    for _ in 0..ar {
        let (end, rtype) = skip_record(m, i)?;
        if rtype == OPT {
            opt = &m[i..end];
        }
        i = end;
    }
    let room = limit.saturating_sub(opt.len());
    let end = answer_ends
        .iter()
        .rev()
        .copied()
        .find(|e| *e <= room)
        .unwrap_or(question_end);
    let kept = answer_ends.iter().take_while(|e| **e <= end).count();
    let mut out = Vec::with_capacity(end + opt.len());
    out.extend_from_slice(&m[..end]);
    out[2] |= 0x02;
    let kept = u16::try_from(kept).ok()?;
    out[6..8].copy_from_slice(&kept.to_be_bytes());
    out[8..10].copy_from_slice(&0u16.to_be_bytes());
    out[10..12].copy_from_slice(&u16::from(!opt.is_empty()).to_be_bytes());
    out.extend_from_slice(opt);
    Some(out)
}

/// The FORMERR answer to a message whose header decodes but whose body does not (what
/// hickory-server sent); nothing for a runt, or for a response (no reflection).
pub(super) fn formerr(raw: &[u8]) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(raw)).ok()?;
    if header.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut m = hickory_proto::op::Message::new(
        header.metadata.id,
        MessageType::Response,
        header.metadata.op_code,
    );
    m.metadata = Metadata::response_from_request(&header.metadata);
    m.metadata.response_code = ResponseCode::FormErr;
    m.to_vec().ok()
}
