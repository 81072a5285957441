//! The slow path: DNS lookups on hickory-resolver, for the system
//! configuration and for more servers than the exchange keeps sockets for
//! (see `exchange`). One resolver per distinct settings, answers
//! converted to plain Rust values (`types`), outcomes read by
//! `wire::outcome`.

use std::collections::HashMap;
use std::sync::Mutex;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::{system_conf, TokioResolver};

use crate::config::{Nameservers, Protocol, Settings, EDNS_PAYLOAD, NEGATIVE_MAX};
use crate::error::Error;
use crate::types::{Answer, Kind};
use crate::wire::outcome;

/// Resolvers kept for reuse (each holds its connections and cache). Callers
/// use a handful of settings; past this many the cache starts over.
const MAX_RESOLVERS: usize = 32;
/// Answers cached per resolver. TTL-0 records and negative answers never
/// stay in it.
const CACHE_SIZE: u64 = 1024;

static RESOLVERS: Mutex<Option<HashMap<Settings, TokioResolver>>> = Mutex::new(None);

/// Looks up `name` (already checked by `naming::query_name`), never taking
/// longer than the settings' deadline.
pub async fn lookup(settings: &Settings, name: &str, kind: Kind) -> Result<Answer, Error> {
    let resolver = resolver_for(settings)?;
    let query = resolver.lookup(name, kind.record_type());
    match tokio::time::timeout(settings.timeout, query).await {
        Err(_elapsed) => Err(Error::Timeout),
        Ok(Err(e)) => classify(&e, kind),
        Ok(Ok(lookup)) => outcome(
            ResponseCode::NoError,
            kind,
            lookup.answers(),
            lookup.additionals(),
        ),
    }
}

/// The result of a failed lookup. hickory reports a response without
/// records (NXDOMAIN, or NOERROR with none of the asked type) and one with
/// an error code as errors: those are read as every response is, by
/// `wire::outcome`. The others (no response in time, the network) are
/// errors of their own.
fn classify(error: &NetError, kind: Kind) -> Result<Answer, Error> {
    let code = match error {
        NetError::Timeout => return Err(Error::Timeout),
        NetError::Dns(DnsError::NoRecordsFound(no))
            if no.response_code == ResponseCode::NXDomain =>
        {
            ResponseCode::NXDomain
        }
        NetError::Dns(DnsError::NoRecordsFound(_)) => ResponseCode::NoError,
        NetError::Dns(DnsError::ResponseCode(code)) => *code,
        other => return Err(Error::Other(other.to_string())),
    };
    outcome(code, kind, &[], &[])
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
    // Negative answers as their SOA says (none without one), bounded.
    opts.negative_min_ttl = None;
    opts.negative_max_ttl = Some(NEGATIVE_MAX);
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

    #[test]
    fn errors_are_sorted() {
        assert_eq!(classify(&NetError::Timeout, Kind::Srv), Err(Error::Timeout));
        assert_eq!(
            classify(
                &NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)),
                Kind::Srv
            ),
            Err(Error::Refused)
        );
        assert_eq!(
            classify(
                &NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)),
                Kind::Srv
            ),
            Err(Error::ServFail)
        );
        assert!(matches!(
            classify(&NetError::Msg("boom".into()), Kind::Srv),
            Err(Error::Other(m)) if m == "boom"
        ));
    }

    #[test]
    fn response_codes_read_as_on_the_fast_path() {
        use hickory_resolver::proto::op::{Message, OpCode};
        for code in [
            ResponseCode::NXDomain,
            ResponseCode::ServFail,
            ResponseCode::Refused,
            ResponseCode::NotImp,
            ResponseCode::FormErr,
        ] {
            let mut response = Message::response(7, OpCode::Query);
            response.metadata.response_code = code;
            let error = NetError::Dns(DnsError::ResponseCode(code));
            assert_eq!(
                classify(&error, Kind::Srv),
                crate::wire::result_of(&response, Kind::Srv),
                "{code}"
            );
        }
    }
}
