//! One DNS message in, one out: decoding a query, answering it from a lookup, encoding the
//! response. No sockets here; [`super::server`] carries the bytes.
//!
//! Every answer is final and authoritative (AA): ztunnel never forwards a query, so a name it
//! does not know does not exist for the pod (NXDOMAIN). A known name with no address of the
//! asked type is NOERROR with no answers. RA is set, as the proxy is the pod's whole resolver.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};

use super::TTL;

/// Fixed size of a DNS header.
const HEADER_LEN: usize = 12;
/// What a UDP response may carry when the client did not say (RFC 1035).
const CLASSIC_UDP_LIMIT: usize = 512;
/// The UDP payload size this proxy advertises and accepts (the DNS flag day's safe size).
pub const EDNS_UDP_LIMIT: u16 = 1232;

/// Which transport a response goes back on: UDP responses must fit the client's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// An encoded response.
#[derive(Debug)]
pub struct Response {
    pub bytes: Vec<u8>,
    pub code: ResponseCode,
}

/// Why a message got no response at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Malformed {
    #[error("{0} bytes is shorter than a DNS header")]
    TooShort(usize),
    #[error("a response, not a query")]
    NotAQuery,
    #[error("{questions} questions and {records} answer or authority records")]
    Shape { questions: u16, records: u32 },
    #[error("undecodable: {0}")]
    Decode(String),
    #[error("cannot encode the response: {0}")]
    Encode(String),
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// What the mesh knows of a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Known {
    /// The name's addresses.
    Addresses(Vec<IpAddr>),
    /// No such name in the mesh.
    NoSuchName,
    /// No configuration has arrived yet: nothing can be said of any name, and a definite "no
    /// such name" could be cached by the client (SERVFAIL makes it ask again).
    NothingYet,
}

/// Answers the query in `request`, asking `lookup` what the mesh knows of the name it asks
/// about.
pub fn respond(
    request: &[u8],
    transport: Transport,
    lookup: impl FnOnce(&str) -> Known,
) -> Result<Response, Malformed> {
    // Check the header before decoding: a query has exactly one question and nothing else
    // but (EDNS) additional records, and garbage should cost nothing to refuse.
    if request.len() < HEADER_LEN {
        return Err(Malformed::TooShort(request.len()));
    }
    if request[2] & 0x80 != 0 {
        return Err(Malformed::NotAQuery);
    }
    let questions = u16_at(request, 4);
    let records = u32::from(u16_at(request, 6)) + u32::from(u16_at(request, 8));
    if questions != 1 || records != 0 {
        return Err(Malformed::Shape { questions, records });
    }
    let query = Message::from_vec(request).map_err(|e| Malformed::Decode(e.to_string()))?;
    let question = query.queries.first().cloned().ok_or(Malformed::Shape {
        questions: 0,
        records: 0,
    })?;

    let mut response = Message::new(query.id, MessageType::Response, query.op_code);
    response.metadata = Metadata::response_from_request(&query.metadata);
    response.metadata.authoritative = true;
    response.metadata.recursion_available = true;
    response.add_query(question.clone());
    let limit = match (&query.edns, transport) {
        (_, Transport::Tcp) => usize::from(u16::MAX),
        (Some(edns), Transport::Udp) => usize::from(
            edns.max_payload()
                .clamp(CLASSIC_UDP_LIMIT as u16, EDNS_UDP_LIMIT),
        ),
        (None, Transport::Udp) => CLASSIC_UDP_LIMIT,
    };
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_UDP_LIMIT);
        response.set_edns(edns);
    }

    let class_ok = matches!(question.query_class(), DNSClass::IN | DNSClass::ANY);
    response.metadata.response_code = if query.op_code != OpCode::Query || !class_ok {
        ResponseCode::NotImp
    } else {
        match lookup(&question.name().to_ascii()) {
            Known::NoSuchName => ResponseCode::NXDomain,
            Known::NothingYet => ResponseCode::ServFail,
            Known::Addresses(addresses) => {
                let qtype = question.query_type();
                for ip in addresses {
                    let rdata = match (ip, qtype) {
                        (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(v4)),
                        (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => {
                            RData::AAAA(AAAA(v6))
                        }
                        _ => continue,
                    };
                    response.add_answer(Record::from_rdata(question.name().clone(), TTL, rdata));
                }
                ResponseCode::NoError
            }
        }
    };

    let mut bytes = response
        .to_vec()
        .map_err(|e| Malformed::Encode(e.to_string()))?;
    if bytes.len() > limit {
        // Too big for the client's UDP buffer: say so, and let it ask again over TCP.
        response.answers.clear();
        response.metadata.truncation = true;
        bytes = response
            .to_vec()
            .map_err(|e| Malformed::Encode(e.to_string()))?;
    }
    Ok(Response {
        bytes,
        code: response.metadata.response_code,
    })
}

/// The response code as DNS tools print it, for metrics and logs.
pub fn code_name(code: ResponseCode) -> &'static str {
    match code {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn query(name: &str, qtype: RecordType) -> Message {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m
    }

    fn echo(name: &str) -> Known {
        match name {
            "echo.default.svc.cluster.local." => Known::Addresses(vec![
                "10.96.0.10".parse().unwrap(),
                "fd00::10".parse().unwrap(),
            ]),
            "many." => Known::Addresses((0..100u8).map(|i| IpAddr::from([10, 96, 1, i])).collect()),
            _ => Known::NoSuchName,
        }
    }

    fn ask(m: &Message, transport: Transport) -> Message {
        let r = respond(&m.to_vec().unwrap(), transport, echo).unwrap();
        let decoded = Message::from_vec(&r.bytes).unwrap();
        assert_eq!(decoded.response_code, r.code);
        decoded
    }

    #[test]
    fn answers_a_and_aaaa_with_the_question_echoed() {
        let q = query("echo.default.svc.cluster.local.", RecordType::A);
        let r = ask(&q, Transport::Udp);
        assert_eq!(r.id, 0x1234);
        assert_eq!(r.message_type, MessageType::Response);
        assert!(r.authoritative && r.recursion_desired && r.recursion_available);
        assert_eq!(r.response_code, ResponseCode::NoError);
        assert_eq!(r.queries, q.queries);
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].ttl, TTL);
        assert_eq!(
            r.answers[0].data.ip_addr(),
            Some("10.96.0.10".parse().unwrap())
        );

        let r = ask(
            &query("echo.default.svc.cluster.local.", RecordType::AAAA),
            Transport::Tcp,
        );
        assert_eq!(r.answers.len(), 1);
        assert_eq!(
            r.answers[0].data.ip_addr(),
            Some("fd00::10".parse().unwrap())
        );
    }

    #[test]
    fn known_name_without_that_type_is_empty_noerror() {
        for qtype in [RecordType::MX, RecordType::TXT, RecordType::SRV] {
            let r = ask(
                &query("echo.default.svc.cluster.local.", qtype),
                Transport::Udp,
            );
            assert_eq!(r.response_code, ResponseCode::NoError);
            assert!(r.answers.is_empty());
        }
    }

    #[test]
    fn unknown_name_is_nxdomain() {
        let r = ask(&query("www.example.com.", RecordType::A), Transport::Udp);
        assert_eq!(r.response_code, ResponseCode::NXDomain);
        assert!(r.authoritative);
        assert!(r.answers.is_empty());
        assert_eq!(r.queries.len(), 1);
    }

    #[test]
    fn edns_is_answered_with_edns() {
        let mut q = query("echo.default.svc.cluster.local.", RecordType::A);
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        q.set_edns(edns);
        let r = ask(&q, Transport::Udp);
        assert_eq!(r.edns.as_ref().unwrap().max_payload(), EDNS_UDP_LIMIT);
        assert_eq!(r.answers.len(), 1);
    }

    #[test]
    fn oversized_udp_answers_are_truncated() {
        let q = query("many.", RecordType::A);
        let r = ask(&q, Transport::Udp);
        assert!(r.truncation);
        assert!(r.answers.is_empty());
        let r = ask(&q, Transport::Tcp);
        assert!(!r.truncation);
        assert_eq!(r.answers.len(), 100);
    }

    #[test]
    fn other_opcodes_and_classes_are_not_implemented() {
        let mut q = query("echo.default.svc.cluster.local.", RecordType::A);
        q.metadata.op_code = OpCode::Status;
        assert_eq!(ask(&q, Transport::Udp).response_code, ResponseCode::NotImp);
        let mut q = query("version.bind.", RecordType::TXT);
        q.queries[0].set_query_class(DNSClass::CH);
        assert_eq!(ask(&q, Transport::Udp).response_code, ResponseCode::NotImp);
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let good = query("echo.", RecordType::A).to_vec().unwrap();
        let mut response = good.clone();
        response[2] |= 0x80;
        let mut two_questions = good.clone();
        two_questions[5] = 2;
        let mut cut = good.clone();
        cut.truncate(good.len() - 3);
        let mut bad_label = good.clone();
        bad_label[HEADER_LEN] = 0xc0; // a compression pointer to nowhere
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "empty"),
            (vec![0; 5], "short"),
            (vec![0xff; 12], "all ones"),
            (response, "a response"),
            (two_questions, "two questions"),
            (cut, "cut short"),
            (bad_label, "bad label"),
            ((0..=255u8).cycle().take(700).collect(), "noise"),
        ];
        for (bytes, what) in cases {
            assert!(
                respond(&bytes, Transport::Udp, echo).is_err(),
                "{what} was answered"
            );
        }
        assert!(respond(&good, Transport::Udp, echo).is_ok());
    }
}
