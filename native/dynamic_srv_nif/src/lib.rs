//! NIF glue of libcluster_dynamic_srv: decodes terms, starts lookups on a
//! tokio runtime and encodes answers and errors. The DNS work is in
//! `dynamic_srv_core`.
//!
//! `lookup/3` returns `{ok, Tag}` at once; the answer is sent to the caller
//! as `{dynamic_srv_dns, Tag, Result}`, so no scheduler waits on the
//! network. The scheduler's share of a lookup is kept small (no term is
//! saved per call, the query is encoded by hand): a burst of a thousand
//! lookups must not make other processes late.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use once_cell::sync::Lazy;
use rustler::types::tuple::{get_tuple, make_tuple};
use rustler::{Atom, Binary, Encoder, Env, LocalPid, NifResult, OwnedEnv, Term};
use tokio::runtime::Runtime;

use dynamic_srv_core::config::{self, Nameservers, Protocol, Settings};
use dynamic_srv_core::error::Error;
use dynamic_srv_core::exchange;
use dynamic_srv_core::parse::{self, TargetParser};
use dynamic_srv_core::probe::{self, Probe};
use dynamic_srv_core::types::{Answer, Kind};

mod atoms {
    rustler::atoms! {
        ok,
        error,
        system,
        udp,
        tcp,
        srv,
        a,
        aaaa,
        dynamic_srv_dns,
        nxdomain,
        no_data,
        timeout,
        servfail,
        refused,
        invalid_name,
        bad_settings,
        other,
        nil,
    }
}

/// Most targets accepted by one `parse_targets/2` call; the Elixir side
/// sends chunks.
const MAX_TARGETS_PER_CALL: usize = 1000;

static RUNTIME: Lazy<Result<Runtime, String>> = Lazy::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("dynamic_srv_dns")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the DNS runtime: {e}"))
});

/// The tag of the next lookup: unique for the life of the VM, so a reply
/// can only match the lookup that asked for it.
static NEXT_TAG: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// Each runtime thread builds its replies in one environment, cleared
    /// after every send, instead of allocating one per lookup.
    static REPLY_ENV: RefCell<OwnedEnv> = RefCell::new(OwnedEnv::new());
}

#[rustler::nif]
fn lookup<'a>(env: Env<'a>, kind: Atom, name: Binary<'a>, settings: Term<'a>) -> Term<'a> {
    start(env, kind, name, settings, |request, responder| {
        let reply = Box::new(move |result: Result<Answer, Error>| responder.send(result));
        let handle = request.runtime.handle();
        exchange::start(handle, request.settings, request.name, request.kind, reply);
    })
}

/// A request of `lookup/3` or `probe/3`, decoded and checked.
struct Request {
    runtime: &'static Runtime,
    settings: Settings,
    name: String,
    kind: Kind,
}

/// Decodes and checks a request and hands it to `run` with the responder
/// that will answer the caller; returns `{ok, Tag}`, or `{error, Reason}`
/// when the request is refused.
fn start<'a>(
    env: Env<'a>,
    kind: Atom,
    name: Binary<'a>,
    settings: Term<'a>,
    run: impl FnOnce(Request, Responder),
) -> Term<'a> {
    let request = || -> Result<Request, Error> {
        Ok(Request {
            kind: decode_kind(kind)?,
            settings: decode_settings(settings)?,
            name: parse::query_name(name.as_slice())?,
            runtime: RUNTIME.as_ref().map_err(|e| Error::Other(e.clone()))?,
        })
    };
    match request() {
        Ok(request) => {
            let responder = Responder::new(env);
            let tag = responder.tag;
            run(request, responder);
            (atoms::ok(), tag).encode(env)
        }
        Err(e) => (atoms::error(), encode_error(env, &e)).encode(env),
    }
}

/// Sends `{dynamic_srv_dns, Tag, Result}` to the caller, once. Dropped
/// without having sent (a panic in the lookup), it sends an error instead,
/// so the caller never waits for a reply that cannot come. It only runs on
/// runtime threads, never on a scheduler.
struct Responder {
    pid: LocalPid,
    tag: u64,
    sent: bool,
}

/// A result that a `Responder` sends.
trait Reply {
    fn encode_reply<'a>(&self, env: Env<'a>) -> Term<'a>;
}

impl Reply for Result<Answer, Error> {
    fn encode_reply<'a>(&self, env: Env<'a>) -> Term<'a> {
        match self {
            Ok(answer) => (atoms::ok(), encode_answer(env, answer)).encode(env),
            Err(e) => (atoms::error(), encode_error(env, e)).encode(env),
        }
    }
}

impl Reply for Result<Probe, Error> {
    fn encode_reply<'a>(&self, env: Env<'a>) -> Term<'a> {
        match self {
            Ok(probe) => (atoms::ok(), encode_probe(env, probe)).encode(env),
            Err(e) => (atoms::error(), encode_error(env, e)).encode(env),
        }
    }
}

impl Responder {
    fn new(env: Env) -> Self {
        Responder {
            pid: env.pid(),
            tag: NEXT_TAG.fetch_add(1, Ordering::Relaxed),
            sent: false,
        }
    }

    fn send(mut self, result: impl Reply) {
        self.deliver(&result);
    }

    fn deliver(&mut self, result: &impl Reply) {
        self.sent = true;
        let tag = self.tag;
        let message = |env| (atoms::dynamic_srv_dns(), tag, result.encode_reply(env)).encode(env);
        // A send fails only when the caller has exited; nobody is left to
        // tell. The thread's environment is busy only if building a reply
        // panicked half-way; a fresh one serves then.
        let _ = REPLY_ENV.with(|cell| match cell.try_borrow_mut() {
            Ok(mut env) => env.send_and_clear(&self.pid, message),
            Err(_) => OwnedEnv::new().send_and_clear(&self.pid, message),
        });
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        // On a scheduler (a panic inside the NIF call itself) the caller gets
        // the exception instead; sending from there is not allowed.
        if !self.sent && !rustler::thread::is_scheduler_thread() {
            let failed: Result<Answer, Error> =
                Err(Error::Other("the lookup failed internally".into()));
            self.deliver(&failed);
        }
    }
}

/// Starts a probe of the transport (see `dynamic_srv_core::probe`) and
/// returns `{ok, Tag}`; the caller receives `{dynamic_srv_dns, Tag,
/// {ok, {Ip, Port, UdpBytes, Truncated, UdpRecords, TcpRecords | nil}}}` or
/// `{dynamic_srv_dns, Tag, {error, Reason}}`, within the settings' deadline.
#[rustler::nif]
fn probe<'a>(env: Env<'a>, kind: Atom, name: Binary<'a>, settings: Term<'a>) -> Term<'a> {
    start(env, kind, name, settings, |request, responder| {
        let runtime = request.runtime;
        runtime.spawn(async move {
            let result = probe::probe(&request.settings, &request.name, request.kind).await;
            responder.send(result);
        });
    })
}

fn encode_probe<'a>(env: Env<'a>, probe: &Probe) -> Term<'a> {
    let tcp = match probe.tcp_records {
        Some(count) => count.encode(env),
        None => atoms::nil().encode(env),
    };
    make_tuple(
        env,
        &[
            encode_ip(env, &probe.server.ip()),
            probe.server.port().encode(env),
            probe.udp_bytes.encode(env),
            probe.truncated.encode(env),
            probe.udp_records.encode(env),
            tcp,
        ],
    )
}

#[rustler::nif]
fn parse_targets<'a>(env: Env<'a>, targets: Term<'a>, service: Binary<'a>) -> NifResult<Term<'a>> {
    let reply = match parse_target_list(env, targets, service) {
        Ok(parsed) => (atoms::ok(), parsed).encode(env),
        Err(e) => (atoms::error(), e.to_string()).encode(env),
    };
    Ok(reply)
}

fn parse_target_list<'a>(
    env: Env<'a>,
    targets: Term<'a>,
    service: Binary<'a>,
) -> Result<Vec<Term<'a>>, Error> {
    let service = std::str::from_utf8(service.as_slice())
        .map_err(|_| Error::InvalidName("the service is not valid UTF-8".into()))?;
    let parser = TargetParser::new(service)?;
    let targets: Vec<Term<'a>> = targets
        .decode()
        .map_err(|_| Error::Other("targets must be a list of binaries".into()))?;
    if targets.len() > MAX_TARGETS_PER_CALL {
        return Err(Error::Other(format!(
            "{} targets in one call, at most {MAX_TARGETS_PER_CALL}",
            targets.len()
        )));
    }
    Ok(targets
        .into_iter()
        .map(|target| {
            let parsed = match target.decode::<Binary>() {
                Ok(bytes) => parser
                    .node_name(bytes.as_slice())
                    .map_err(|r| r.describe(parser.service())),
                Err(_) => Err("the target is not a binary".to_owned()),
            };
            match parsed {
                Ok(node) => (atoms::ok(), node).encode(env),
                Err(reason) => (atoms::error(), reason).encode(env),
            }
        })
        .collect())
}

#[rustler::nif]
fn parse_nameservers<'a>(env: Env<'a>, text: Binary<'a>) -> Term<'a> {
    let parsed = std::str::from_utf8(text.as_slice())
        .map_err(|_| "the text is not valid UTF-8".to_owned())
        .and_then(config::parse_nameservers);
    match parsed {
        Ok(servers) => {
            let list: Vec<Term> = servers
                .iter()
                .map(|addr| make_tuple(env, &[encode_ip(env, &addr.ip()), addr.port().encode(env)]))
                .collect();
            (atoms::ok(), list).encode(env)
        }
        Err(reason) => (atoms::error(), reason).encode(env),
    }
}

/// Checks a `nameservers` list of `{Ip, Port}` by the rule every other
/// nameserver list follows (`config::check_nameservers`): `ok` or
/// `{error, Message}`.
#[rustler::nif]
fn check_nameservers<'a>(env: Env<'a>, list: Term<'a>) -> Term<'a> {
    let checked = match decode_nameservers(list) {
        Ok(Nameservers::Explicit(servers)) => config::check_nameservers(&servers),
        Ok(Nameservers::System) => Ok(()),
        Err(Error::BadSettings(message)) => Err(message),
        Err(e) => Err(e.to_string()),
    };
    match checked {
        Ok(()) => atoms::ok().encode(env),
        Err(reason) => (atoms::error(), reason).encode(env),
    }
}

fn decode_kind(kind: Atom) -> Result<Kind, Error> {
    if kind == atoms::srv() {
        Ok(Kind::Srv)
    } else if kind == atoms::a() {
        Ok(Kind::A)
    } else if kind == atoms::aaaa() {
        Ok(Kind::Aaaa)
    } else {
        Err(Error::BadSettings(
            "the record type must be srv, a or aaaa".into(),
        ))
    }
}

fn bad(message: &str) -> Error {
    Error::BadSettings(message.to_owned())
}

fn decode_settings(term: Term) -> Result<Settings, Error> {
    let fields = get_tuple(term).map_err(|_| bad("settings must be a 4-tuple"))?;
    let [nameservers, timeout, attempts, protocol] = fields.as_slice() else {
        return Err(bad("settings must be a 4-tuple"));
    };
    let nameservers = decode_nameservers(*nameservers)?;
    let timeout: i64 = timeout
        .decode()
        .map_err(|_| bad("timeout must be an integer number of milliseconds"))?;
    let attempts: i64 = attempts
        .decode()
        .map_err(|_| bad("attempts must be an integer"))?;
    let protocol: Atom = protocol
        .decode()
        .map_err(|_| bad("protocol must be udp or tcp"))?;
    let protocol = if protocol == atoms::udp() {
        Protocol::Udp
    } else if protocol == atoms::tcp() {
        Protocol::Tcp
    } else {
        return Err(bad("protocol must be udp or tcp"));
    };
    Settings::new(nameservers, timeout, attempts, protocol)
}

fn decode_nameservers(term: Term) -> Result<Nameservers, Error> {
    if let Ok(atom) = term.decode::<Atom>() {
        return if atom == atoms::system() {
            Ok(Nameservers::System)
        } else {
            Err(bad("nameservers must be system or a list of {ip, port}"))
        };
    }
    let items: Vec<Term> = term
        .decode()
        .map_err(|_| bad("nameservers must be system or a list of {ip, port}"))?;
    items
        .into_iter()
        .map(|item| {
            let pair = get_tuple(item).map_err(|_| bad("a nameserver must be {ip, port}"))?;
            let [ip, port] = pair.as_slice() else {
                return Err(bad("a nameserver must be {ip, port}"));
            };
            let port: u16 = port
                .decode()
                .map_err(|_| bad("a nameserver port must be in 1..65535"))?;
            Ok(SocketAddr::new(decode_ip(*ip)?, port))
        })
        .collect::<Result<Vec<_>, Error>>()
        .map(Nameservers::Explicit)
}

fn decode_ip(term: Term) -> Result<IpAddr, Error> {
    let parts = get_tuple(term).map_err(|_| bad("an IP address must be a tuple"))?;
    match parts.len() {
        4 => {
            let mut octets = [0u8; 4];
            for (slot, part) in octets.iter_mut().zip(&parts) {
                *slot = part.decode().map_err(|_| bad("IPv4 parts are 0..255"))?;
            }
            Ok(IpAddr::V4(Ipv4Addr::from(octets)))
        }
        8 => {
            let mut segments = [0u16; 8];
            for (slot, part) in segments.iter_mut().zip(&parts) {
                *slot = part.decode().map_err(|_| bad("IPv6 parts are 0..65535"))?;
            }
            Ok(IpAddr::V6(Ipv6Addr::from(segments)))
        }
        _ => Err(bad("an IP address is a 4-tuple or an 8-tuple")),
    }
}

fn encode_ip<'a>(env: Env<'a>, ip: &IpAddr) -> Term<'a> {
    let parts: Vec<Term> = match ip {
        IpAddr::V4(v4) => v4.octets().iter().map(|o| o.encode(env)).collect(),
        IpAddr::V6(v6) => v6.segments().iter().map(|s| s.encode(env)).collect(),
    };
    make_tuple(env, &parts)
}

fn encode_answer<'a>(env: Env<'a>, answer: &Answer) -> Term<'a> {
    match answer {
        Answer::Srv(records) => records
            .iter()
            .map(|r| {
                let addresses: Vec<Term> =
                    r.addresses.iter().map(|ip| encode_ip(env, ip)).collect();
                make_tuple(
                    env,
                    &[
                        r.priority.encode(env),
                        r.weight.encode(env),
                        r.port.encode(env),
                        r.target.encode(env),
                        r.ttl.encode(env),
                        addresses.encode(env),
                    ],
                )
            })
            .collect::<Vec<Term>>()
            .encode(env),
        Answer::Ip(addresses) => addresses
            .iter()
            .map(|(ip, ttl)| make_tuple(env, &[encode_ip(env, ip), ttl.encode(env)]))
            .collect::<Vec<Term>>()
            .encode(env),
    }
}

fn encode_error<'a>(env: Env<'a>, error: &Error) -> Term<'a> {
    match error {
        Error::NxDomain => atoms::nxdomain().encode(env),
        Error::NoData => atoms::no_data().encode(env),
        Error::Timeout => atoms::timeout().encode(env),
        Error::ServFail => atoms::servfail().encode(env),
        Error::Refused => atoms::refused().encode(env),
        Error::InvalidName(msg) => (atoms::invalid_name(), msg.as_str()).encode(env),
        Error::BadSettings(msg) => (atoms::bad_settings(), msg.as_str()).encode(env),
        Error::Other(msg) => (atoms::other(), msg.as_str()).encode(env),
    }
}

rustler::init!("Elixir.DynamicSrv.Native");
