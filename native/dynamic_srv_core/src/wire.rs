//! The DNS messages of the exchange and of the probe: the query written
//! by hand (`encode`), whether a reply answers it (`is_answer`,
//! `is_raw_answer`), what a response means (`result_of`, on the one
//! mapping of DNS outcomes to results, `outcome`), and how long a negative
//! one may be kept (`negative_ttl`).

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::Record;

use std::time::Duration;

use hickory_resolver::proto::rr::RData;

use crate::config::{EDNS_PAYLOAD, NEGATIVE_MAX};
use crate::error::Error;
use crate::types::{convert, Answer, Kind};

/// Bytes of a DNS header.
const HEADER: usize = 12;
/// The OPT record advertising `EDNS_PAYLOAD`: root owner, type 41, the
/// payload as class, TTL 0 (version 0, no flags), no data.
const OPT: [u8; 11] = [
    0,
    0,
    41,
    (EDNS_PAYLOAD >> 8) as u8,
    (EDNS_PAYLOAD & 0xff) as u8,
    0,
    0,
    0,
    0,
    0,
    0,
];

/// The query packet: a header asking for recursion, one question of class
/// IN and the OPT record. Written by hand because it runs on the caller's
/// thread (a BEAM scheduler), where hickory's name parsing and message
/// encoding cost several times more. `name` comes from
/// `naming::query_name`; its labels are checked again here all the same.
pub(crate) fn encode(id: u16, name: &str, kind: Kind) -> Result<Vec<u8>, Error> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    let mut packet = Vec::with_capacity(HEADER + bare.len() + 2 + 4 + OPT.len());
    packet.extend_from_slice(&id.to_be_bytes());
    // RD set; one question, no answer or authority records, one additional.
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
    for label in bare.split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|len| (1..=63).contains(len))
            .ok_or_else(|| {
                Error::InvalidName(format!("{name:?} has an empty or too long label"))
            })?;
        packet.push(len);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    if packet.len() - HEADER > 255 {
        return Err(Error::InvalidName(format!(
            "{name:?} is longer than 255 bytes"
        )));
    }
    packet.extend_from_slice(&u16::from(kind.record_type()).to_be_bytes());
    packet.extend_from_slice(&[0, 1]);
    packet.extend_from_slice(&OPT);
    Ok(packet)
}

/// The question of a query made by `encode`: name, type and class.
fn question(packet: &[u8]) -> &[u8] {
    let end = packet.len().saturating_sub(OPT.len());
    packet.get(HEADER..end).unwrap_or_default()
}

/// Whether `reply` echoes the question of `query` (made by `encode`), the
/// name compared without regard to case.
fn echoes_question(query: &[u8], reply: &[u8]) -> bool {
    let asked = question(query);
    reply
        .get(HEADER..HEADER + asked.len())
        .is_some_and(|echoed| echoed.eq_ignore_ascii_case(asked))
}

/// A decoded reply answers `query` when it is a response with one question
/// that echoes ours. Its ID and the server it came from are the caller's
/// to match.
pub(crate) fn is_answer(query: &[u8], message: &Message, raw: &[u8]) -> bool {
    message.metadata.message_type == MessageType::Response
        && message.queries.len() == 1
        && echoes_question(query, raw)
}

/// The same on the bytes alone (a truncated reply may hold too little to
/// decode): a response with the ID of `query`, echoing its question.
pub(crate) fn is_raw_answer(query: &[u8], reply: &[u8]) -> bool {
    reply.len() >= HEADER
        && reply[..2] == query[..2]
        && reply[2] & 0x80 != 0
        && echoes_question(query, reply)
}

/// Whether a UDP answer that does not say it was truncated was likely cut
/// short all the same: some servers (Consul by default) drop records until
/// the message fits the EDNS payload size the query advertised and leave
/// the TC bit clear. Such an answer comes from a server that speaks EDNS,
/// holds several records (`TRIMMED_MIN_ANSWERS` or more) and fills that
/// size, the smaller of ours and the server's own, to within two of its
/// records. Asked again over TCP, it comes whole. A server without EDNS is
/// not taken to trim (a large single record near 512 bytes is no sign).
pub(crate) fn looks_trimmed(message: &Message, len: usize) -> bool {
    let Some(edns) = message.edns.as_ref() else {
        return false;
    };
    if message.answers.len() < TRIMMED_MIN_ANSWERS {
        return false;
    }
    let records = message.answers.len() + message.additionals.len();
    let limit = usize::from(EDNS_PAYLOAD.min(edns.max_payload().max(512)));
    len <= limit && len + 2 * (len / records) > limit
}

/// Fewer answers than this are never taken as trimmed.
const TRIMMED_MIN_ANSWERS: usize = 4;

/// The result a response gives, by its code and records.
pub fn result_of(message: &Message, kind: Kind) -> Result<Answer, Error> {
    outcome(
        message.metadata.response_code,
        kind,
        &message.answers,
        &message.additionals,
    )
}

/// How long a negative answer (NXDOMAIN, or NOERROR without records) may
/// be kept, from the SOA of its authority section (RFC 2308 section 5: the
/// smaller of the SOA record's TTL and its MINIMUM field), at most
/// `NEGATIVE_MAX`; `None` without an SOA, or when that is zero.
pub(crate) fn negative_ttl(message: &Message) -> Option<Duration> {
    let seconds = message
        .authorities
        .iter()
        .find_map(|record| match &record.data {
            RData::SOA(soa) => Some(record.ttl.min(soa.minimum)),
            _ => None,
        })?;
    (seconds > 0).then(|| Duration::from_secs(u64::from(seconds)).min(NEGATIVE_MAX))
}

/// The one reading of a DNS outcome as a result (the exchange and the probe
/// reach it through `result_of`): a response code and, with NOERROR, the
/// records of the asked kind, none of which is no data.
pub(crate) fn outcome(
    code: ResponseCode,
    kind: Kind,
    answers: &[Record],
    additionals: &[Record],
) -> Result<Answer, Error> {
    match code {
        ResponseCode::NoError => {
            let answer = convert(kind, answers, additionals);
            if answer.is_empty() {
                Err(Error::NoData)
            } else {
                Ok(answer)
            }
        }
        ResponseCode::NXDomain => Err(Error::NxDomain),
        ResponseCode::ServFail => Err(Error::ServFail),
        ResponseCode::Refused => Err(Error::Refused),
        code => Err(Error::Other(format!("the server answered {code}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::op::OpCode;
    use hickory_resolver::proto::rr::rdata::SRV;
    use hickory_resolver::proto::rr::Name;
    use hickory_resolver::proto::rr::RData;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn response(code: ResponseCode, answers: Vec<Record>) -> Message {
        let mut message = Message::response(7, OpCode::Query);
        message.metadata.response_code = code;
        message.add_answers(answers);
        message
    }

    fn name(text: &str) -> Name {
        Name::from_str(text).expect("test name")
    }

    fn srv_answer(records: usize, payload: Option<u16>) -> (Message, usize) {
        let mut message = response(ResponseCode::NoError, Vec::new());
        for i in 0..records {
            let target = name(&format!("node-{i}.my-service.service.consul."));
            message.answers.push(Record::from_rdata(
                name("my-service.service.consul."),
                0,
                RData::SRV(SRV::new(0, 1, 4000, target)),
            ));
        }
        if let Some(size) = payload {
            let mut edns = hickory_resolver::proto::op::Edns::new();
            edns.set_max_payload(size);
            message.edns = Some(edns);
        }
        let len = message.to_vec().map(|bytes| bytes.len()).unwrap_or(0);
        (message, len)
    }

    /// The largest SRV answer that fits in `limit` bytes.
    fn fullest(limit: usize, payload: Option<u16>) -> (Message, usize, usize) {
        let mut n = 1;
        while srv_answer(n + 1, payload).1 <= limit {
            n += 1;
        }
        let (message, len) = srv_answer(n, payload);
        (message, len, n)
    }

    #[test]
    fn an_answer_that_fills_the_payload_looks_trimmed() {
        for (limit, payload) in [(4096, Some(4096)), (1232, Some(1232)), (512, Some(512))] {
            let (full, len, n) = fullest(limit, payload);
            assert!(looks_trimmed(&full, len), "{n} records, {len} bytes");
            // Three records fewer is not cut to fit.
            let (roomy, len) = srv_answer(n - 3, payload);
            assert!(
                !looks_trimmed(&roomy, len),
                "{} records, {len} bytes",
                n - 3
            );
        }
        // Without EDNS, or with few records, nothing is taken as trimmed.
        let (plain, len, n) = fullest(512, None);
        assert!(
            !looks_trimmed(&plain, len),
            "{n} records, {len} bytes, no EDNS"
        );
        let (few, len) = srv_answer(3, Some(512));
        assert!(!looks_trimmed(&few, len));
        let (empty, len) = srv_answer(0, Some(512));
        assert!(!looks_trimmed(&empty, len));
    }

    #[test]
    fn response_codes_become_errors() {
        assert_eq!(
            result_of(&response(ResponseCode::NXDomain, vec![]), Kind::Srv),
            Err(Error::NxDomain)
        );
        assert_eq!(
            result_of(&response(ResponseCode::NoError, vec![]), Kind::Srv),
            Err(Error::NoData)
        );
        assert_eq!(
            result_of(&response(ResponseCode::ServFail, vec![]), Kind::A),
            Err(Error::ServFail)
        );
        assert_eq!(
            result_of(&response(ResponseCode::Refused, vec![]), Kind::Aaaa),
            Err(Error::Refused)
        );
        assert!(matches!(
            result_of(&response(ResponseCode::NotImp, vec![]), Kind::Srv),
            Err(Error::Other(_))
        ));
    }

    #[test]
    fn records_of_another_type_are_no_data() {
        let srv = Record::from_rdata(
            name("app.test."),
            0,
            RData::SRV(SRV::new(0, 1, 4000, name("n1.app.test."))),
        );
        assert_eq!(
            result_of(&response(ResponseCode::NoError, vec![srv.clone()]), Kind::A),
            Err(Error::NoData)
        );
        assert!(matches!(
            result_of(&response(ResponseCode::NoError, vec![srv]), Kind::Srv),
            Ok(Answer::Srv(records)) if records.len() == 1
        ));
    }

    #[test]
    fn queries_carry_the_id_the_question_and_edns() {
        for (text, kind) in [
            ("app.test.", Kind::Srv),
            ("App.Test", Kind::A),
            ("localhost", Kind::Aaaa),
        ] {
            let packet = encode(4242, text, kind).expect("encodes");
            let message = Message::from_vec(&packet).expect("decodes");
            assert_eq!(message.metadata.id, 4242);
            assert!(message.metadata.recursion_desired);
            assert_eq!(message.queries.len(), 1);
            let asked = message.queries[0].name().to_ascii();
            assert_eq!(asked.trim_end_matches('.'), text.trim_end_matches('.'));
            assert_eq!(message.queries[0].query_type(), kind.record_type());
            assert_eq!(message.max_payload(), EDNS_PAYLOAD);
            let edns = message.edns.as_ref().expect("an OPT record");
            assert!(!edns.flags().dnssec_ok);
        }
    }

    proptest! {
        #[test]
        fn accepted_names_are_sent_as_given(
            labels in proptest::collection::vec("[a-zA-Z0-9_-]{1,63}", 1..6),
            dot in any::<bool>(),
        ) {
            let text = format!("{}{}", labels.join("."), if dot { "." } else { "" });
            if let Ok(query) = crate::naming::query_name(text.as_bytes()) {
                let packet = encode(1, &query, Kind::Srv).expect("an accepted name encodes");
                let message = Message::from_vec(&packet).expect("decodes");
                let asked: Vec<&[u8]> = message.queries[0].name().iter().collect();
                let given: Vec<&[u8]> = labels.iter().map(|l| l.as_bytes()).collect();
                prop_assert_eq!(asked, given);
            }
        }
    }

    #[test]
    fn names_that_cannot_be_sent_are_refused() {
        let long_label = format!("{}.test", "a".repeat(64));
        let long_name = vec!["abcdefg"; 40].join(".");
        for text in ["", ".", "a..b", long_label.as_str(), long_name.as_str()] {
            assert!(
                matches!(encode(1, text, Kind::A), Err(Error::InvalidName(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn only_responses_to_the_query_count() {
        let query = encode(0x4242, "app.test.", Kind::Srv).expect("encodes");
        let mut reply = query.clone();
        assert!(!is_raw_answer(&query, &reply), "a query is no response");
        reply[2] |= 0x80;
        assert!(is_raw_answer(&query, &reply));
        reply[1] ^= 1;
        assert!(!is_raw_answer(&query, &reply), "another ID");
        assert!(!is_raw_answer(&query, &reply[..5]), "too short");
    }

    fn with_soa(ttl: u32, minimum: u32) -> Message {
        use hickory_resolver::proto::rr::rdata::SOA;
        let mut message = response(ResponseCode::NXDomain, Vec::new());
        let soa = SOA::new(
            name("ns.test."),
            name("admin.test."),
            1,
            60,
            60,
            600,
            minimum,
        );
        message.add_authority(Record::from_rdata(name("test."), ttl, RData::SOA(soa)));
        message
    }

    #[test]
    fn a_negative_answer_is_kept_as_its_soa_says_and_bounded() {
        assert_eq!(negative_ttl(&with_soa(60, 5)), Some(Duration::from_secs(5)));
        assert_eq!(negative_ttl(&with_soa(3, 10)), Some(Duration::from_secs(3)));
        assert_eq!(negative_ttl(&with_soa(86_400, 86_400)), Some(NEGATIVE_MAX));
        assert_eq!(negative_ttl(&with_soa(60, 0)), None);
        assert_eq!(
            negative_ttl(&response(ResponseCode::NXDomain, Vec::new())),
            None
        );
    }
}
