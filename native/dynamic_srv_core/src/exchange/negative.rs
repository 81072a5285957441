//! Negative answers kept as the server says (RFC 2308): an NXDOMAIN or
//! no-data answer that carries its zone's SOA is kept for the smaller of
//! the SOA record's TTL and its MINIMUM field (`wire::negative_ttl`), at
//! most `config::NEGATIVE_MAX`; one without an SOA is not kept. A lookup
//! of a name kept here is answered at once, without a query.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::lock;
use crate::error::Error;
use crate::types::Kind;

/// Answers kept at most; past it the expired ones go, then all of them.
const MAX_NEGATIVE: usize = 4096;

/// (the servers asked, lowercase name, kind).
type Key = (Vec<SocketAddr>, String, Kind);

#[derive(Default)]
pub(super) struct NegativeAnswers {
    /// Key -> the answer and until when it holds. A leaf lock: taken
    /// alone, never with another of the exchange's (see `exchange`).
    kept: Mutex<HashMap<Key, (Error, Instant)>>,
}

impl NegativeAnswers {
    /// The negative answer `servers` gave for `name` that still holds.
    pub(super) fn get(&self, servers: &[SocketAddr], name: &str, kind: Kind) -> Option<Error> {
        let kept = lock(&self.kept);
        if kept.is_empty() {
            return None;
        }
        let key = (servers.to_vec(), name.to_ascii_lowercase(), kind);
        kept.get(&key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(error, _)| error.clone())
    }

    /// Keeps `error` (NXDOMAIN or no data) for `ttl`.
    pub(super) fn put(
        &self,
        servers: &[SocketAddr],
        name: &str,
        kind: Kind,
        error: Error,
        ttl: Duration,
    ) {
        let now = Instant::now();
        let mut kept = lock(&self.kept);
        if kept.len() >= MAX_NEGATIVE {
            kept.retain(|_, (_, until)| *until > now);
            if kept.len() >= MAX_NEGATIVE {
                kept.clear();
            }
        }
        let key = (servers.to_vec(), name.to_ascii_lowercase(), kind);
        kept.insert(key, (error, now + ttl));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_holds_for_its_ttl_for_its_servers_name_and_kind() {
        let negative = NegativeAnswers::default();
        let servers: Vec<SocketAddr> = vec!["127.0.0.1:53".parse().expect("address")];
        let others: Vec<SocketAddr> = vec!["127.0.0.2:53".parse().expect("address")];
        negative.put(
            &servers,
            "Gone.Test.",
            Kind::Srv,
            Error::NxDomain,
            Duration::from_millis(50),
        );
        assert_eq!(
            negative.get(&servers, "gone.test.", Kind::Srv),
            Some(Error::NxDomain)
        );
        assert_eq!(negative.get(&servers, "gone.test.", Kind::A), None);
        assert_eq!(negative.get(&others, "gone.test.", Kind::Srv), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(negative.get(&servers, "gone.test.", Kind::Srv), None);
    }

    #[test]
    fn kept_answers_are_bounded() {
        let negative = NegativeAnswers::default();
        let servers: Vec<SocketAddr> = vec!["127.0.0.1:53".parse().expect("address")];
        for i in 0..2 * MAX_NEGATIVE {
            let name = format!("n{i}.test.");
            negative.put(
                &servers,
                &name,
                Kind::Srv,
                Error::NoData,
                Duration::from_secs(60),
            );
        }
        assert!(lock(&negative.kept).len() <= MAX_NEGATIVE);
    }
}
