//! DNS lookups on hickory-resolver: one resolver per distinct settings,
//! answers converted to plain Rust values, errors sorted into `Error`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use hickory_resolver::{system_conf, TokioResolver};

use crate::config::{Nameservers, Protocol, Settings, EDNS_PAYLOAD};
use crate::error::Error;

/// Resolvers kept for reuse (each holds its connections and cache). Callers
/// use a handful of settings; past this many the cache starts over.
const MAX_RESOLVERS: usize = 32;
/// Answers cached per resolver. TTL-0 records and negative answers never
/// stay in it.
const CACHE_SIZE: u64 = 1024;

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

static RESOLVERS: Mutex<Option<HashMap<Settings, TokioResolver>>> = Mutex::new(None);

/// Looks up `name` (already checked by `parse::query_name`), never taking
/// longer than the settings' deadline.
pub async fn lookup(settings: &Settings, name: &str, kind: Kind) -> Result<Answer, Error> {
    let resolver = resolver_for(settings)?;
    let query = resolver.lookup(name, kind.record_type());
    match tokio::time::timeout(settings.timeout, query).await {
        Err(_elapsed) => Err(Error::Timeout),
        Ok(Err(e)) => Err(classify(&e)),
        Ok(Ok(lookup)) => {
            let answer = convert(kind, lookup.answers(), lookup.additionals());
            if is_empty(&answer) {
                Err(Error::NoData)
            } else {
                Ok(answer)
            }
        }
    }
}

pub(crate) fn is_empty(answer: &Answer) -> bool {
    match answer {
        Answer::Srv(records) => records.is_empty(),
        Answer::Ip(addresses) => addresses.is_empty(),
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

fn classify(error: &NetError) -> Error {
    match error {
        NetError::Timeout => Error::Timeout,
        NetError::Dns(DnsError::NoRecordsFound(no))
            if no.response_code == ResponseCode::NXDomain =>
        {
            Error::NxDomain
        }
        NetError::Dns(DnsError::NoRecordsFound(_)) => Error::NoData,
        NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)) => Error::Refused,
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => Error::ServFail,
        NetError::Dns(DnsError::ResponseCode(ResponseCode::NXDomain)) => Error::NxDomain,
        other => Error::Other(other.to_string()),
    }
}

fn resolver_for(settings: &Settings) -> Result<TokioResolver, Error> {
    let mut guard = RESOLVERS
        .lock()
        .map_err(|_| Error::Other("the resolver table is poisoned".into()))?;
    let table = guard.get_or_insert_with(HashMap::new);
    if let Some(resolver) = table.get(settings) {
        return Ok(resolver.clone());
    }
    if table.len() >= MAX_RESOLVERS {
        table.clear();
    }
    let resolver = build(settings)?;
    table.insert(settings.clone(), resolver.clone());
    Ok(resolver)
}

fn build(settings: &Settings) -> Result<TokioResolver, Error> {
    let (config, mut opts) = match &settings.nameservers {
        Nameservers::System => system_conf::read_system_conf().map_err(|e| {
            Error::BadSettings(format!(
                "cannot read the system resolver configuration: {e}"
            ))
        })?,
        Nameservers::Explicit(addrs) => {
            let servers = addrs
                .iter()
                .map(|addr| {
                    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                    for connection in &mut server.connections {
                        connection.port = addr.port();
                    }
                    server
                })
                .collect();
            (
                ResolverConfig::from_name_servers(servers),
                ResolverOpts::default(),
            )
        }
    };
    let config = match settings.protocol {
        Protocol::Udp => config,
        Protocol::Tcp => tcp_only(config),
    };
    opts.timeout = settings.attempt_timeout();
    opts.attempts = settings.attempts;
    opts.edns0 = true;
    opts.edns_payload_len = EDNS_PAYLOAD;
    opts.cache_size = CACHE_SIZE;
    opts.positive_min_ttl = None;
    opts.negative_min_ttl = None;
    opts.negative_max_ttl = Some(Duration::ZERO);
    opts.use_hosts_file = ResolveHosts::Never;
    let mut builder =
        hickory_resolver::Resolver::builder_with_config(config, TokioRuntimeProvider::default());
    *builder.options_mut() = opts;
    builder
        .build()
        .map_err(|e| Error::BadSettings(format!("cannot build a resolver: {e}")))
}

fn tcp_only(config: ResolverConfig) -> ResolverConfig {
    let (domain, search, servers) = config.into_parts();
    let servers = servers
        .into_iter()
        .map(|mut server| {
            let port = server.connections.first().map_or(53, |c| c.port);
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = port;
            server
                .connections
                .retain(|c| matches!(c.protocol, ProtocolConfig::Tcp));
            if server.connections.is_empty() {
                server.connections.push(tcp);
            }
            server
        })
        .collect();
    ResolverConfig::from_parts(domain, search, servers)
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

    #[test]
    fn errors_are_sorted() {
        assert_eq!(classify(&NetError::Timeout), Error::Timeout);
        assert_eq!(
            classify(&NetError::Dns(DnsError::ResponseCode(
                ResponseCode::Refused
            ))),
            Error::Refused
        );
        assert_eq!(
            classify(&NetError::Dns(DnsError::ResponseCode(
                ResponseCode::ServFail
            ))),
            Error::ServFail
        );
        assert!(matches!(
            classify(&NetError::Msg("boom".into())),
            Error::Other(m) if m == "boom"
        ));
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
