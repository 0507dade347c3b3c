//! From bytes received to bytes sent: what a datagram or TCP message is, and the responses
//! built for it (sized to what the client can take). Wire format by hickory-proto.

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

/// The payload size we advertise in our OPT records (the DNS flag day 2020 value: no IP
/// fragmentation on any sane path).
pub const EDNS_PAYLOAD: u16 = 1232;
/// The most a UDP response to one client may carry, whatever it advertises.
const UDP_CEILING: usize = 4096;

/// What one received message is.
#[derive(Debug)]
pub enum Incoming {
    /// A query to answer (exactly one question, opcode QUERY).
    Query(Message),
    /// Not answerable, but the client deserves to know: FORMERR, NOTIMP.
    Error(Vec<u8>, ResponseCode),
    /// Nothing to send back: too short for a header, or a response (never answer those: two
    /// servers would bounce them forever).
    Drop(&'static str),
}

pub fn parse(bytes: &[u8]) -> Incoming {
    let header = match hickory_proto::op::Header::read(&mut BinDecoder::new(bytes)) {
        Ok(h) => h,
        Err(_) => return Incoming::Drop("malformed"),
    };
    if header.metadata.message_type == MessageType::Response {
        return Incoming::Drop("response");
    }
    let msg = match Message::from_vec(bytes) {
        Ok(m) => m,
        Err(_) => return error_for(&header.metadata, ResponseCode::FormErr, None),
    };
    if msg.metadata.op_code != OpCode::Query {
        return error_for(&msg.metadata, ResponseCode::NotImp, Some(&msg));
    }
    if msg.queries.len() != 1 {
        return error_for(&msg.metadata, ResponseCode::FormErr, None);
    }
    Incoming::Query(msg)
}

fn error_for(req: &Metadata, rcode: ResponseCode, echo: Option<&Message>) -> Incoming {
    let mut resp = Message::new(req.id, MessageType::Response, req.op_code);
    resp.metadata = Metadata::response_from_request(req);
    resp.metadata.response_code = rcode;
    if let Some(q) = echo {
        resp.queries = q.queries.clone();
    }
    match resp.to_vec() {
        Ok(bytes) => Incoming::Error(bytes, rcode),
        Err(_) => Incoming::Drop("malformed"),
    }
}

/// The response skeleton for `req`: same id, question and RD/CD bits, RA set (we recurse by
/// forwarding), an OPT record if the client sent one.
fn response_to(req: &Message, rcode: ResponseCode) -> Message {
    let mut resp = Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
    resp.metadata = Metadata::response_from_request(&req.metadata);
    resp.metadata.recursion_available = true;
    resp.metadata.response_code = rcode;
    resp.queries = req.queries.clone();
    if req.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        resp.edns = Some(edns);
    }
    resp
}

/// An answer of our own zones.
pub fn local(req: &Message, rcode: ResponseCode, answers: Vec<Record>, authorities: Vec<Record>) -> Message {
    let mut resp = response_to(req, rcode);
    resp.metadata.authoritative = true;
    resp.answers = answers;
    resp.authorities = authorities;
    resp
}

/// An upstream's answer (fresh or cached), re-addressed to `req`.
pub fn relayed(req: &Message, records: &super::cache::Records) -> Message {
    let mut resp = response_to(req, records.rcode);
    resp.answers = records.answers.clone();
    resp.authorities = records.authorities.clone();
    resp.additionals = records.additionals.clone();
    resp
}

/// Just a response code.
pub fn error(req: &Message, rcode: ResponseCode) -> Message {
    response_to(req, rcode)
}

/// How many bytes a UDP response to `req` may have: 512 without EDNS, else what it
/// advertises, within [`UDP_CEILING`].
pub fn udp_limit(req: &Message) -> usize {
    usize::from(req.max_payload()).clamp(512, UDP_CEILING)
}

/// The wire form of `resp` within `limit` bytes: truncated (TC set, question only) when the
/// whole does not fit, so the client retries over TCP; SERVFAIL if it cannot be encoded.
pub fn encode(resp: &Message, limit: usize) -> Vec<u8> {
    match resp.to_vec() {
        Ok(bytes) if bytes.len() <= limit => bytes,
        Ok(_) => resp.truncate().to_vec().unwrap_or_else(|_| servfail_bytes(resp)),
        Err(_) => servfail_bytes(resp),
    }
}

fn servfail_bytes(resp: &Message) -> Vec<u8> {
    let mut m = Message::new(resp.metadata.id, MessageType::Response, resp.metadata.op_code);
    m.metadata.response_code = ResponseCode::ServFail;
    m.to_vec().unwrap_or_default()
}

/// The metric label of a response code.
pub fn rcode_label(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "noerror",
        ResponseCode::NXDomain => "nxdomain",
        ResponseCode::ServFail => "servfail",
        ResponseCode::Refused => "refused",
        ResponseCode::FormErr => "formerr",
        ResponseCode::NotImp => "notimp",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, RecordType};

    use super::*;

    fn query(name: &str) -> Message {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
        m
    }

    #[test]
    fn garbage_is_dropped_or_answered_formerr() {
        assert!(matches!(parse(&[1, 2, 3]), Incoming::Drop("malformed")));
        // A header claiming questions that are not there: FORMERR with the same id.
        let mut bytes = vec![0xab, 0xcd, 0x01, 0x00, 0x00, 0x05, 0, 0, 0, 0, 0, 0];
        bytes.extend_from_slice(&[0xff; 7]);
        match parse(&bytes) {
            Incoming::Error(out, ResponseCode::FormErr) => {
                let m = Message::from_vec(&out).unwrap();
                assert_eq!(m.metadata.id, 0xabcd);
                assert_eq!(m.metadata.message_type, MessageType::Response);
            }
            other => panic!("{other:?}"),
        }
        // A response is never answered.
        let mut resp = query("a.");
        resp.metadata.message_type = MessageType::Response;
        assert!(matches!(
            parse(&resp.to_vec().unwrap()),
            Incoming::Drop("response")
        ));
        // Two questions.
        let mut two = query("a.");
        two.add_query(Query::query(Name::from_str("b.").unwrap(), RecordType::A));
        assert!(matches!(
            parse(&two.to_vec().unwrap()),
            Incoming::Error(_, ResponseCode::FormErr)
        ));
        // An UPDATE.
        let mut update = query("a.");
        update.metadata.op_code = OpCode::Update;
        assert!(matches!(
            parse(&update.to_vec().unwrap()),
            Incoming::Error(_, ResponseCode::NotImp)
        ));
        assert!(matches!(
            parse(&query("a.").to_vec().unwrap()),
            Incoming::Query(_)
        ));
    }

    #[test]
    fn oversized_udp_answers_are_truncated_and_keep_the_question() {
        let req = query("big.blue.overlay.");
        let answers: Vec<Record> = (0..60u8)
            .map(|i| {
                Record::from_rdata(
                    Name::from_str("big.blue.overlay.").unwrap(),
                    1,
                    RData::A(A::new(10, 1, 0, i)),
                )
            })
            .collect();
        let resp = local(&req, ResponseCode::NoError, answers, vec![]);
        let limit = udp_limit(&req);
        assert_eq!(limit, 512);
        let out = encode(&resp, limit);
        assert!(out.len() <= 512);
        let m = Message::from_vec(&out).unwrap();
        assert!(m.metadata.truncation);
        assert_eq!(m.queries, req.queries);
        assert!(m.answers.is_empty());
        // Over TCP it all fits.
        let m = Message::from_vec(&encode(&resp, 65_535)).unwrap();
        assert_eq!(m.answers.len(), 60);
        assert!(!m.metadata.truncation);
    }

    #[test]
    fn edns_is_answered_with_edns() {
        let mut req = query("a.");
        let mut edns = Edns::new();
        edns.set_max_payload(9000);
        req.edns = Some(edns);
        assert_eq!(udp_limit(&req), 4096);
        let m = Message::from_vec(&encode(&error(&req, ResponseCode::ServFail), 4096)).unwrap();
        assert_eq!(m.edns.map(|e| e.max_payload()), Some(EDNS_PAYLOAD));
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(m.metadata.id, req.metadata.id);
    }
}
