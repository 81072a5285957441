//! Terms in and out: settings, nameserver lists and addresses decoded from
//! Erlang terms, answers and probe results encoded to them. Decoding
//! checks shapes only; the rules (ranges, which addresses serve) are the
//! core's (`dynamic_srv_core::config`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use rustler::types::tuple::{get_tuple, make_tuple};
use rustler::{Encoder, Env, NifTuple, NifUnitEnum, Term};

use dynamic_srv_core::config::{Nameservers, Protocol, Settings};
use dynamic_srv_core::probe::Probe;
use dynamic_srv_core::types::{Answer, Kind};

use crate::reason::{bad_settings, Reason};

/// The record type of a lookup: `srv`, `a` or `aaaa`.
#[derive(NifUnitEnum, Clone, Copy)]
pub enum KindTerm {
    Srv,
    A,
    Aaaa,
}

impl From<KindTerm> for Kind {
    fn from(kind: KindTerm) -> Self {
        match kind {
            KindTerm::Srv => Kind::Srv,
            KindTerm::A => Kind::A,
            KindTerm::Aaaa => Kind::Aaaa,
        }
    }
}

#[derive(NifUnitEnum)]
enum ProtocolTerm {
    Udp,
    Tcp,
}

#[derive(NifUnitEnum)]
enum SystemTerm {
    System,
}

pub fn decode_kind(term: Term) -> Result<Kind, Reason> {
    term.decode::<KindTerm>()
        .map(Kind::from)
        .map_err(|_| bad_settings("the record type must be srv, a or aaaa"))
}

/// `{Nameservers, TimeoutMs, Attempts, udp | tcp}`, checked by
/// `Settings::new`.
pub fn decode_settings(term: Term) -> Result<Settings, Reason> {
    let fields = get_tuple(term).map_err(|_| bad_settings("settings must be a 4-tuple"))?;
    let [nameservers, timeout, attempts, protocol] = fields.as_slice() else {
        return Err(bad_settings("settings must be a 4-tuple"));
    };
    let nameservers = decode_nameservers(*nameservers)?;
    let timeout: i64 = timeout
        .decode()
        .map_err(|_| bad_settings("timeout must be an integer number of milliseconds"))?;
    let attempts: i64 = attempts
        .decode()
        .map_err(|_| bad_settings("attempts must be an integer"))?;
    let protocol = match protocol.decode::<ProtocolTerm>() {
        Ok(ProtocolTerm::Udp) => Protocol::Udp,
        Ok(ProtocolTerm::Tcp) => Protocol::Tcp,
        Err(_) => return Err(bad_settings("protocol must be udp or tcp")),
    };
    Ok(Settings::new(nameservers, timeout, attempts, protocol)?)
}

/// `system` or a list of `{Ip, Port}`.
pub fn decode_nameservers(term: Term) -> Result<Nameservers, Reason> {
    const SHAPE: &str = "nameservers must be system or a list of {ip, port}";
    if term.decode::<SystemTerm>().is_ok() {
        return Ok(Nameservers::System);
    }
    let items: Vec<Term> = term.decode().map_err(|_| bad_settings(SHAPE))?;
    items
        .into_iter()
        .map(|item| {
            let (ip, port): (Term, Term) = item
                .decode()
                .map_err(|_| bad_settings("a nameserver must be {ip, port}"))?;
            let port: u16 = port
                .decode()
                .map_err(|_| bad_settings("a nameserver port must be in 1..65535"))?;
            Ok(SocketAddr::new(decode_ip(ip)?, port))
        })
        .collect::<Result<Vec<_>, Reason>>()
        .map(Nameservers::Explicit)
}

fn decode_ip(term: Term) -> Result<IpAddr, Reason> {
    let parts = get_tuple(term).map_err(|_| bad_settings("an IP address must be a tuple"))?;
    match parts.len() {
        4 => {
            decode_parts::<u8, 4>(&parts, "IPv4 parts are 0..255").map(|o| Ipv4Addr::from(o).into())
        }
        8 => decode_parts::<u16, 8>(&parts, "IPv6 parts are 0..65535")
            .map(|s| Ipv6Addr::from(s).into()),
        _ => Err(bad_settings("an IP address is a 4-tuple or an 8-tuple")),
    }
}

fn decode_parts<'a, T: rustler::Decoder<'a> + Default + Copy, const N: usize>(
    parts: &[Term<'a>],
    message: &str,
) -> Result<[T; N], Reason> {
    let mut out = [T::default(); N];
    for (slot, part) in out.iter_mut().zip(parts) {
        *slot = part.decode().map_err(|_| bad_settings(message))?;
    }
    Ok(out)
}

/// An address as `inet` writes it: a 4-tuple of octets or an 8-tuple of
/// 16-bit segments.
pub struct Ip(pub IpAddr);

impl Encoder for Ip {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        match self.0 {
            IpAddr::V4(v4) => {
                let [a, b, c, d] = v4.octets();
                (a, b, c, d).encode(env)
            }
            IpAddr::V6(v6) => {
                let segments: Vec<Term> = v6.segments().iter().map(|s| s.encode(env)).collect();
                make_tuple(env, &segments)
            }
        }
    }
}

/// `{Ip, Port}`.
pub fn server(addr: &SocketAddr) -> (Ip, u16) {
    (Ip(addr.ip()), addr.port())
}

/// One SRV record: `{Priority, Weight, Port, Target, Ttl, Addresses}`.
#[derive(NifTuple)]
#[rustler(encode)]
struct SrvTerm {
    priority: u16,
    weight: u16,
    port: u16,
    target: String,
    ttl: u32,
    addresses: Vec<Ip>,
}

/// The records of an answer: SRV tuples, or `{Ip, Ttl}` pairs for A/AAAA.
pub struct AnswerTerm<'r>(pub &'r Answer);

impl Encoder for AnswerTerm<'_> {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        match self.0 {
            Answer::Srv(records) => records
                .iter()
                .map(|r| {
                    SrvTerm {
                        priority: r.priority,
                        weight: r.weight,
                        port: r.port,
                        target: r.target.clone(),
                        ttl: r.ttl,
                        addresses: r.addresses.iter().copied().map(Ip).collect(),
                    }
                    .encode(env)
                })
                .collect::<Vec<Term>>()
                .encode(env),
            Answer::Ip(addresses) => addresses
                .iter()
                .map(|(ip, ttl)| (Ip(*ip), *ttl).encode(env))
                .collect::<Vec<Term>>()
                .encode(env),
        }
    }
}

/// A probe: `{Ip, Port, UdpBytes, Truncated, UdpRecords, TcpRecords | nil}`.
#[derive(NifTuple)]
#[rustler(encode)]
pub struct ProbeTerm {
    ip: Ip,
    port: u16,
    udp_bytes: usize,
    truncated: bool,
    udp_records: usize,
    tcp_records: Option<usize>,
}

impl From<&Probe> for ProbeTerm {
    fn from(probe: &Probe) -> Self {
        ProbeTerm {
            ip: Ip(probe.server.ip()),
            port: probe.server.port(),
            udp_bytes: probe.udp_bytes,
            truncated: probe.truncated,
            udp_records: probe.udp_records,
            tcp_records: probe.tcp_records,
        }
    }
}
