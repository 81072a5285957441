//! The values a lookup gives back, whichever path answered it: the kinds
//! of records asked for (`Kind`), the answer (`Answer`, `SrvRecord`), and
//! the conversion of DNS records into it (`convert`).

use std::net::IpAddr;

use hickory_resolver::proto::rr::{RData, Record, RecordType};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Srv,
    A,
    Aaaa,
}

impl Kind {
    pub(crate) fn record_type(self) -> RecordType {
        match self {
            Kind::Srv => RecordType::SRV,
            Kind::A => RecordType::A,
            Kind::Aaaa => RecordType::AAAA,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// The target in presentation form, without the trailing dot.
    pub target: String,
    pub ttl: u32,
    /// Addresses of the target found in the additional section.
    pub addresses: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Srv(Vec<SrvRecord>),
    Ip(Vec<(IpAddr, u32)>),
}

impl Answer {
    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Answer::Srv(records) => records.is_empty(),
            Answer::Ip(addresses) => addresses.is_empty(),
        }
    }
}

/// Keeps the records of the asked kind (CNAMEs and others are skipped) and
/// attaches to each SRV record the A/AAAA records of its target.
pub fn convert(kind: Kind, answers: &[Record], additionals: &[Record]) -> Answer {
    match kind {
        Kind::Srv => Answer::Srv(
            answers
                .iter()
                .filter_map(|record| match &record.data {
                    RData::SRV(srv) => Some(SrvRecord {
                        priority: srv.priority,
                        weight: srv.weight,
                        port: srv.port,
                        target: presentation(&srv.target.to_ascii()),
                        ttl: record.ttl,
                        addresses: addresses_of(&srv.target, additionals),
                    }),
                    _ => None,
                })
                .collect(),
        ),
        Kind::A | Kind::Aaaa => Answer::Ip(
            answers
                .iter()
                .filter_map(|record| match (&record.data, kind) {
                    (RData::A(a), Kind::A) => Some((IpAddr::V4(a.0), record.ttl)),
                    (RData::AAAA(aaaa), Kind::Aaaa) => Some((IpAddr::V6(aaaa.0), record.ttl)),
                    _ => None,
                })
                .collect(),
        ),
    }
}

fn addresses_of(target: &hickory_resolver::proto::rr::Name, additionals: &[Record]) -> Vec<IpAddr> {
    additionals
        .iter()
        .filter(|record| record.name == *target)
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect()
}

fn presentation(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME, SRV};
    use hickory_resolver::proto::rr::Name;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn name(text: &str) -> Name {
        Name::from_str(text).expect("test name")
    }

    fn srv(target: &str, port: u16, ttl: u32) -> Record {
        Record::from_rdata(
            name("app.service.consul."),
            ttl,
            RData::SRV(SRV::new(1, 10, port, name(target))),
        )
    }

    #[test]
    fn srv_records_carry_their_additional_addresses() {
        let answers = vec![
            srv("node-1.app.service.consul.", 4001, 0),
            srv("node-2.app.service.consul.", 4002, 30),
            Record::from_rdata(
                name("app.service.consul."),
                5,
                RData::CNAME(CNAME(name("x.example."))),
            ),
        ];
        let additionals = vec![
            Record::from_rdata(
                name("NODE-1.app.service.consul."),
                0,
                RData::A(A::new(10, 0, 0, 1)),
            ),
            Record::from_rdata(
                name("node-1.app.service.consul."),
                0,
                RData::AAAA(AAAA::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
            ),
            Record::from_rdata(
                name("other.app.service.consul."),
                0,
                RData::A(A::new(10, 0, 0, 9)),
            ),
        ];
        let Answer::Srv(records) = convert(Kind::Srv, &answers, &additionals) else {
            panic!("expected SRV records");
        };
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].target, "node-1.app.service.consul");
        assert_eq!(records[0].port, 4001);
        assert_eq!(
            records[0].addresses,
            vec![
                IpAddr::from([10, 0, 0, 1]),
                IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, 1])
            ]
        );
        assert_eq!(records[1].ttl, 30);
        assert!(records[1].addresses.is_empty());
    }

    #[test]
    fn ip_answers_keep_only_the_asked_family() {
        let answers = vec![
            Record::from_rdata(name("h."), 7, RData::A(A::new(127, 0, 0, 1))),
            Record::from_rdata(
                name("h."),
                7,
                RData::AAAA(AAAA::new(0, 0, 0, 0, 0, 0, 0, 1)),
            ),
        ];
        assert_eq!(
            convert(Kind::A, &answers, &[]),
            Answer::Ip(vec![(IpAddr::from([127, 0, 0, 1]), 7)])
        );
        assert_eq!(
            convert(Kind::Aaaa, &answers, &[]),
            Answer::Ip(vec![(IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1]), 7)])
        );
    }

    proptest! {
        #[test]
        fn conversion_keeps_every_srv_record(
            ports in proptest::collection::vec(any::<u16>(), 0..300),
            ttl in any::<u32>(),
        ) {
            let answers: Vec<Record> = ports
                .iter()
                .enumerate()
                .map(|(i, port)| srv(&format!("n{i}.app.service.consul."), *port, ttl))
                .collect();
            let Answer::Srv(records) = convert(Kind::Srv, &answers, &[]) else {
                panic!("expected SRV records");
            };
            prop_assert_eq!(records.len(), ports.len());
            for (record, port) in records.iter().zip(&ports) {
                prop_assert_eq!(record.port, *port);
                prop_assert_eq!(record.ttl, ttl);
                prop_assert!(!record.target.ends_with('.'));
            }
        }
    }
}
