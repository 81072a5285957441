//! The system configuration: the nameservers, search list and `ndots` of
//! `/etc/resolv.conf` (read with hickory-resolver's parser, and again once
//! the copy is older than `REREAD`), and the names a lookup asks in turn,
//! as the OS resolver does. The lookups themselves run on the exchange
//! like those of explicit nameservers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::config::NameServerConfig;
use hickory_resolver::proto::rr::Name;
use hickory_resolver::system_conf;

use super::lock;
use crate::config::MAX_NAMESERVERS;
use crate::error::Error;
use crate::naming::query_name;

/// How long a reading of the system configuration is used.
const REREAD: Duration = Duration::from_secs(5);
/// The server asked when the configuration names none, as glibc does.
const DEFAULT_SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SystemConf {
    pub(super) servers: Vec<SocketAddr>,
    /// Search domains, without their trailing dot.
    search: Vec<String>,
    ndots: usize,
}

static CONF: Mutex<Option<(Instant, Arc<SystemConf>)>> = Mutex::new(None);

/// The system configuration, read at most every `REREAD`. Reads a file:
/// called on the runtime, never on the caller's thread.
pub(super) fn conf() -> Result<Arc<SystemConf>, Error> {
    let now = Instant::now();
    if let Some((read_at, conf)) = lock(&CONF).as_ref() {
        if now.duration_since(*read_at) < REREAD {
            return Ok(Arc::clone(conf));
        }
    }
    let (config, opts) = system_conf::read_system_conf().map_err(|e| {
        Error::BadSettings(format!(
            "cannot read the system resolver configuration: {e}"
        ))
    })?;
    let (domain, search, servers) = config.into_parts();
    let conf = Arc::new(SystemConf::new(&servers, search, domain, opts.ndots));
    *lock(&CONF) = Some((now, Arc::clone(&conf)));
    Ok(conf)
}

impl SystemConf {
    fn new(
        servers: &[NameServerConfig],
        search: Vec<Name>,
        domain: Option<Name>,
        ndots: usize,
    ) -> Self {
        // One address per server (hickory lists UDP and TCP ways to each),
        // in order, at most as many as explicit lists may have.
        let mut addresses: Vec<SocketAddr> = Vec::new();
        for server in servers {
            let port = server.connections.first().map_or(53, |c| c.port);
            let address = SocketAddr::new(server.ip, port);
            if !addresses.contains(&address) && addresses.len() < MAX_NAMESERVERS {
                addresses.push(address);
            }
        }
        if addresses.is_empty() {
            addresses.push(DEFAULT_SERVER);
        }
        // Without a search line, the domain is the search list (resolv.conf(5)).
        let search = if search.is_empty() {
            domain.into_iter().collect()
        } else {
            search
        };
        let search = search
            .iter()
            .map(|name| name.to_ascii().trim_end_matches('.').to_owned())
            .filter(|name| !name.is_empty())
            .collect();
        SystemConf {
            servers: addresses,
            search,
            ndots,
        }
    }

    /// The names to ask for `name`, in order, each ended by a dot: `name`
    /// alone when it ends with a dot; else, when it has at least `ndots`
    /// dots, `name` then `name` under each search domain, and otherwise
    /// the other way round. Names that would be too long are left out.
    pub(super) fn candidates(&self, name: &str) -> Vec<String> {
        if name.ends_with('.') {
            return vec![name.to_owned()];
        }
        let searched = self
            .search
            .iter()
            .map(|domain| format!("{name}.{domain}."))
            .filter(|candidate| query_name(candidate.as_bytes()).is_ok());
        let alone = std::iter::once(format!("{name}."));
        if name.matches('.').count() >= self.ndots {
            alone.chain(searched).collect()
        } else {
            searched.chain(alone).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn conf(search: &[&str], ndots: usize) -> SystemConf {
        let search = search
            .iter()
            .map(|s| Name::from_str(s).expect("name"))
            .collect();
        SystemConf::new(&[], search, None, ndots)
    }

    #[test]
    fn names_go_through_the_search_list_by_the_ndots_rule() {
        let pod = conf(&["svc.cluster.local.", "cluster.local."], 5);
        assert_eq!(
            pod.candidates("web.default"),
            vec![
                "web.default.svc.cluster.local.",
                "web.default.cluster.local.",
                "web.default."
            ]
        );
        assert_eq!(pod.candidates("web.default."), vec!["web.default."]);
        let plain = conf(&["example.com"], 1);
        assert_eq!(plain.candidates("a.b"), vec!["a.b.", "a.b.example.com."]);
        assert_eq!(plain.candidates("a"), vec!["a.example.com.", "a."]);
    }

    #[test]
    fn the_domain_stands_in_for_a_missing_search_list_and_a_server_for_none() {
        let domain = Name::from_str("corp.example.").expect("name");
        let conf = SystemConf::new(&[], Vec::new(), Some(domain), 1);
        assert_eq!(conf.candidates("host"), vec!["host.corp.example.", "host."]);
        assert_eq!(conf.servers, vec![DEFAULT_SERVER]);
    }

    #[test]
    fn candidates_too_long_are_left_out() {
        let long = format!("{}.example", "x".repeat(60));
        let conf = conf(&[&format!("{long}.{long}.{long}.")], 5);
        let name = "y".repeat(60);
        assert_eq!(conf.candidates(&name), vec![format!("{name}.")]);
    }
}
