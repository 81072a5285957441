//! Resolver settings: nameserver lists (parsed from the
//! `DYNAMIC_SRV_NAMESERVERS` syntax or given as addresses), the deadline,
//! attempts and transport. Validation lives here so the NIF glue only moves
//! values across.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::error::Error;

/// Upper bound of a lookup deadline (10 minutes).
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// Upper bound of tries per nameserver.
pub const MAX_ATTEMPTS: u64 = 10;
/// Upper bound of explicit nameservers.
pub const MAX_NAMESERVERS: usize = 16;
/// The longest a negative answer is kept (RFC 2308: the SOA says how long,
/// and a resolver bounds it).
pub const NEGATIVE_MAX: Duration = Duration::from_secs(300);
/// EDNS0 UDP payload advertised to servers. Consul trims SRV answers to
/// the classic 512 bytes unless a larger payload is advertised.
pub const EDNS_PAYLOAD: u16 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Nameservers {
    /// Read `/etc/resolv.conf`.
    System,
    /// Ask these servers, in order.
    Explicit(Vec<SocketAddr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// UDP, retried over TCP when the answer is truncated.
    Udp,
    /// TCP only.
    Tcp,
}

/// Validated settings of one lookup; also the key of the resolver cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Settings {
    pub nameservers: Nameservers,
    pub timeout: Duration,
    pub attempts: usize,
    pub protocol: Protocol,
}

impl Settings {
    pub fn new(
        nameservers: Nameservers,
        timeout_ms: i64,
        attempts: i64,
        protocol: Protocol,
    ) -> Result<Self, Error> {
        let timeout_ms = u64::try_from(timeout_ms)
            .ok()
            .filter(|ms| (1..=MAX_TIMEOUT_MS).contains(ms))
            .ok_or_else(|| {
                Error::BadSettings(format!(
                    "timeout {timeout_ms} is outside 1..{MAX_TIMEOUT_MS} ms"
                ))
            })?;
        let attempts = u64::try_from(attempts)
            .ok()
            .filter(|n| (1..=MAX_ATTEMPTS).contains(n))
            .ok_or_else(|| {
                Error::BadSettings(format!("attempts {attempts} is outside 1..{MAX_ATTEMPTS}"))
            })?;
        if let Nameservers::Explicit(list) = &nameservers {
            check_nameservers(list).map_err(Error::BadSettings)?;
        }
        Ok(Settings {
            nameservers,
            timeout: Duration::from_millis(timeout_ms),
            attempts: attempts as usize,
            protocol,
        })
    }

    /// The time one try may take, so that all tries fit in the deadline.
    pub fn attempt_timeout(&self) -> Duration {
        let per = self.timeout / self.attempts as u32;
        per.max(Duration::from_millis(1))
    }
}

/// The local address a socket to `server` binds: the unspecified address
/// of its family, port 0 (the kernel picks a random free port).
pub fn local_for(server: SocketAddr) -> SocketAddr {
    if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    }
}

/// The one rule of a nameserver list, however it was given
/// (`DYNAMIC_SRV_NAMESERVERS`, `--nameserver`, a `nameservers` list of
/// `{ip, port}` in a strategy's or runner's config, or a lookup's options):
/// 1 to `MAX_NAMESERVERS` servers, each passing `check_nameserver`.
pub fn check_nameservers(list: &[SocketAddr]) -> Result<(), String> {
    if list.is_empty() {
        return Err("the nameserver list is empty".into());
    }
    if list.len() > MAX_NAMESERVERS {
        return Err(format!(
            "{} nameservers given, at most {MAX_NAMESERVERS} are allowed",
            list.len()
        ));
    }
    list.iter().try_for_each(check_nameserver)
}

/// A nameserver is one host that answers queries: not the unspecified
/// address (0.0.0.0, ::), not a broadcast or multicast address, and a port.
pub fn check_nameserver(server: &SocketAddr) -> Result<(), String> {
    let ip = server.ip();
    let kind = if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        Some("the broadcast address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else {
        None
    };
    if let Some(kind) = kind {
        return Err(format!(
            "{server} is {kind}, not a DNS server: give the address of a DNS server, \
             such as 127.0.0.1:8600 for a local Consul agent"
        ));
    }
    if server.port() == 0 {
        return Err(format!(
            "{server} has port 0: give the port the DNS server listens on, 1..65535"
        ));
    }
    Ok(())
}

/// Parses a comma-separated nameserver list: `ip`, `ip:port`, `[v6]`,
/// `[v6]:port` or a bare IPv6 address; the port defaults to 53. A bare
/// IPv6 address that reads as an address and a port as well (`::1:53`)
/// is refused: brackets say which is meant.
pub fn parse_nameservers(text: &str) -> Result<Vec<SocketAddr>, String> {
    let items: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .collect();
    if items.is_empty() {
        return Err("no nameserver given".into());
    }
    let servers = items
        .into_iter()
        .map(parse_nameserver)
        .collect::<Result<Vec<_>, _>>()?;
    check_nameservers(&servers)?;
    Ok(servers)
}

fn parse_nameserver(item: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = item.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = item.parse::<IpAddr>() {
        if let Some((host, port)) = item.rsplit_once(':') {
            if ip.is_ipv6() && host.parse::<Ipv6Addr>().is_ok() && port.parse::<u16>().is_ok() {
                return Err(format!(
                    "{item:?} reads two ways: {host} on port {port}, or the address {ip} \
                     on port 53; write [{host}]:{port} or [{ip}]"
                ));
            }
        }
        return Ok(SocketAddr::new(ip, 53));
    }
    if let Some(inner) = item.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        if let Ok(ip) = inner.parse::<Ipv6Addr>() {
            return Ok(SocketAddr::new(IpAddr::V6(ip), 53));
        }
    }
    if let Some((host, port)) = item.rsplit_once(':') {
        if host.parse::<Ipv4Addr>().is_ok() {
            return Err(format!("{item:?} has a port outside 1..65535 ({port:?})"));
        }
    }
    Err(format!(
        "{item:?} is not an IP address with an optional port (write IPv6 as [::1]:53)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    #[test]
    fn parses_every_form() {
        let parsed =
            parse_nameservers("127.0.0.1:8600, 10.0.0.2 ,[::1]:5353,[fe80::1],::2").expect("valid");
        assert_eq!(
            parsed,
            vec![
                sa("127.0.0.1:8600"),
                sa("10.0.0.2:53"),
                sa("[::1]:5353"),
                sa("[fe80::1]:53"),
                sa("[::2]:53")
            ]
        );
    }

    #[test]
    fn rejects_bad_items() {
        for bad in [
            "",
            " , ",
            "localhost:53",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            "127.0.0.1:",
            "[::1]:x",
            "1.2.3",
            "[::1",
        ] {
            assert!(
                parse_nameservers(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn refuses_addresses_that_name_no_server() {
        for (text, says) in [
            ("0.0.0.0", "unspecified"),
            ("[::]:53", "unspecified"),
            ("::", "unspecified"),
            ("255.255.255.255:53", "broadcast"),
            ("224.0.0.251:5353", "multicast"),
            ("[ff02::fb]:5353", "multicast"),
        ] {
            let message = parse_nameservers(text).expect_err(text);
            assert!(message.contains(says), "{text}: {message}");
            assert!(message.contains("DNS server"), "{text}: {message}");
        }
        // The same rule for a list given as addresses.
        for bad in [
            "0.0.0.0:53",
            "255.255.255.255:53",
            "239.1.2.3:53",
            "[ff05::1]:53",
        ] {
            let given = Nameservers::Explicit(vec![sa(bad)]);
            let refused = Settings::new(given, 100, 1, Protocol::Udp);
            assert!(matches!(refused, Err(Error::BadSettings(_))), "{bad}");
        }
    }

    #[test]
    fn refuses_text_that_reads_two_ways() {
        // ::1 on port 53, or the address ::1:53 on the default port?
        let message = parse_nameservers("::1:53").expect_err("ambiguous");
        assert!(message.contains("[::1]:53"), "{message}");
        assert!(message.contains("[::1:53]"), "{message}");
        let message = parse_nameservers("2001:db8::1:8600").expect_err("ambiguous");
        assert!(message.contains("[2001:db8::1]:8600"), "{message}");
        // Brackets say which.
        assert_eq!(parse_nameservers("[::1]:53"), Ok(vec![sa("[::1]:53")]));
        assert_eq!(parse_nameservers("[::1:53]"), Ok(vec![sa("[::1:53]:53")]));
    }

    #[test]
    fn bounds_the_list() {
        let many = vec!["127.0.0.1"; MAX_NAMESERVERS + 1].join(",");
        assert!(parse_nameservers(&many).is_err());
    }

    #[test]
    fn validates_settings() {
        let ok = Settings::new(Nameservers::System, 3000, 2, Protocol::Udp).expect("valid");
        assert_eq!(ok.attempt_timeout(), Duration::from_millis(1500));
        assert!(Settings::new(Nameservers::System, 0, 2, Protocol::Udp).is_err());
        assert!(Settings::new(Nameservers::System, 600_001, 2, Protocol::Udp).is_err());
        assert!(Settings::new(Nameservers::System, 100, 0, Protocol::Udp).is_err());
        assert!(Settings::new(Nameservers::System, 100, 11, Protocol::Tcp).is_err());
        assert!(Settings::new(Nameservers::Explicit(vec![]), 100, 1, Protocol::Tcp).is_err());
        assert!(Settings::new(
            Nameservers::Explicit(vec![sa("127.0.0.1:0")]),
            100,
            1,
            Protocol::Tcp
        )
        .is_err());
    }

    #[test]
    fn attempt_timeout_never_zero() {
        let s = Settings::new(Nameservers::System, 1, 10, Protocol::Udp).expect("valid");
        assert_eq!(s.attempt_timeout(), Duration::from_millis(1));
    }
}
