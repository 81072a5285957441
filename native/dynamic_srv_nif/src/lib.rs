//! NIF glue of libcluster_dynamic_srv: decodes terms, starts lookups on a
//! tokio runtime and encodes answers and errors. The DNS work and the
//! naming rule are in `dynamic_srv_core`.
//!
//! | module | job |
//! | --- | --- |
//! | `reason` | the one error shape of every NIF, `{error, Reason}` |
//! | `terms` | settings, addresses, answers and probes to and from terms |
//! | `reply` | the runtime and the responder that sends asynchronous results |
//!
//! `lookup/3` returns `{ok, Tag}` at once; the answer is sent to the caller
//! as `{dynamic_srv_dns, Tag, Result}`, so no scheduler waits on the
//! network. The scheduler's share of a lookup is kept small (no term is
//! saved per call, the query is encoded by hand): a burst of a
//! thousand lookups must not make other processes late.

mod reason;
mod reply;
mod terms;

use rustler::{Binary, Encoder, Env, NifMap, Term};

use dynamic_srv_core::config::{self, Nameservers, Settings};
use dynamic_srv_core::naming::{self, TargetParser};
use dynamic_srv_core::probe::{self, Probe};
use dynamic_srv_core::types::{Answer, Kind};
use dynamic_srv_core::{error::Error, exchange};

use reason::{NifReturn, Reason};
use reply::{Outcome, Responder};
use terms::{AnswerTerm, Ip};

/// Most targets accepted by one `node_names/2` call; the Elixir side sends
/// chunks of this size, which keeps each call well under a millisecond.
const MAX_TARGETS_PER_CALL: usize = 500;

/// A request of `lookup/3` or `probe/3`, decoded and checked.
struct Request {
    settings: Settings,
    name: String,
    kind: Kind,
}

impl Request {
    fn decode(kind: Term, name: Binary, settings: Term) -> Result<Self, Reason> {
        Ok(Request {
            kind: terms::decode_kind(kind)?,
            settings: terms::decode_settings(settings)?,
            name: naming::query_name(name.as_slice())?,
        })
    }
}

impl Outcome for Result<Answer, Error> {
    fn encode_outcome<'a>(&self, env: Env<'a>) -> Term<'a> {
        match self {
            Ok(answer) => Ok::<_, Reason>(AnswerTerm(answer)).encode(env),
            Err(e) => Err::<(), _>(Reason::from(e.clone())).encode(env),
        }
    }
}

impl Outcome for Result<Probe, Error> {
    fn encode_outcome<'a>(&self, env: Env<'a>) -> Term<'a> {
        match self {
            Ok(probe) => Ok::<_, Reason>(terms::ProbeTerm::from(probe)).encode(env),
            Err(e) => Err::<(), _>(Reason::from(e.clone())).encode(env),
        }
    }
}

/// Starts a lookup: `{ok, Tag}` at once, then `{dynamic_srv_dns, Tag,
/// {ok, Records} | {error, Reason}}` within the settings' deadline.
#[rustler::nif]
fn lookup<'a>(
    env: Env<'a>,
    kind: Term<'a>,
    name: Binary<'a>,
    settings: Term<'a>,
) -> NifReturn<u64> {
    let request = Request::decode(kind, name, settings)?;
    let handle = reply::runtime()?.handle();
    let responder = Responder::new(env);
    let tag = responder.tag();
    let reply = Box::new(move |result: Result<Answer, Error>| responder.send(result));
    exchange::start(handle, request.settings, request.name, request.kind, reply);
    Ok(tag)
}

/// Starts a probe of the transport (see `dynamic_srv_core::probe`):
/// `{ok, Tag}`, then `{dynamic_srv_dns, Tag, {ok, {Ip, Port, UdpBytes,
/// Truncated, UdpRecords, TcpRecords | nil}} | {error, Reason}}`.
#[rustler::nif]
fn probe<'a>(env: Env<'a>, kind: Term<'a>, name: Binary<'a>, settings: Term<'a>) -> NifReturn<u64> {
    let request = Request::decode(kind, name, settings)?;
    let runtime = reply::runtime()?;
    let responder = Responder::new(env);
    let tag = responder.tag();
    runtime.spawn(async move {
        let result = probe::probe(&request.settings, &request.name, request.kind).await;
        responder.send(result);
    });
    Ok(tag)
}

/// The node name of each SRV target under `service`: `{ok, [{ok, Name} |
/// {error, {invalid_name, Why}}]}` in the targets' order.
#[rustler::nif]
fn node_names<'a>(
    targets: Vec<Term<'a>>,
    service: Binary<'a>,
) -> NifReturn<Vec<NifReturn<String>>> {
    let service = std::str::from_utf8(service.as_slice())
        .map_err(|_| Reason::InvalidName("the service is not valid UTF-8".into()))?;
    let parser = TargetParser::new(service)?;
    if targets.len() > MAX_TARGETS_PER_CALL {
        return Err(Reason::Other(format!(
            "{} targets in one call, at most {MAX_TARGETS_PER_CALL}",
            targets.len()
        )));
    }
    Ok(targets
        .into_iter()
        .map(|target| match target.decode::<Binary>() {
            Ok(bytes) => parser
                .node_name(bytes.as_slice())
                .map_err(|r| Reason::InvalidName(r.describe(parser.service()))),
            Err(_) => Err(Reason::InvalidName("the target is not a binary".into())),
        })
        .collect())
}

/// `{ok, Name}` when `name` is a node name by the package's rule, else
/// `{error, {invalid_name, Why}}`.
#[rustler::nif]
fn check_node_name(name: Binary) -> NifReturn<String> {
    naming::check_node_name(name.as_slice())
        .map_err(Reason::InvalidName)
        .map(|()| String::from_utf8_lossy(name.as_slice()).into_owned())
}

/// `{ok, Label}` for a label of `[A-Za-z0-9_-]`, 1 to `max` bytes, else
/// `{error, {invalid_name, Why}}`.
#[rustler::nif]
fn check_label(label: Binary, max: usize) -> NifReturn<String> {
    naming::check_label(label.as_slice(), max)
        .map_err(Reason::InvalidName)
        .map(|()| String::from_utf8_lossy(label.as_slice()).into_owned())
}

/// The node a release helper (`rem-<id>-<node>`, `rpc-<id>-<node>`) works
/// for, or `nil`.
#[rustler::nif]
fn helper_of(name: Binary) -> Option<String> {
    let name = std::str::from_utf8(name.as_slice()).ok()?;
    naming::helper_of(name).map(str::to_owned)
}

/// `{ok, [{Ip, Port}]}` from the `DYNAMIC_SRV_NAMESERVERS` syntax, or
/// `{error, {bad_settings, Why}}`.
#[rustler::nif]
fn parse_nameservers(text: Binary) -> NifReturn<Vec<(Ip, u16)>> {
    std::str::from_utf8(text.as_slice())
        .map_err(|_| "the text is not valid UTF-8".to_owned())
        .and_then(config::parse_nameservers)
        .map(|servers| servers.iter().map(terms::server).collect())
        .map_err(Reason::BadSettings)
}

/// Checks a `nameservers` list of `{Ip, Port}` by the rule every other
/// nameserver list follows (`config::check_nameservers`): `{ok, List}` or
/// `{error, {bad_settings, Why}}`.
#[rustler::nif]
fn check_nameservers<'a>(list: Term<'a>) -> NifReturn<Term<'a>> {
    match terms::decode_nameservers(list)? {
        Nameservers::Explicit(servers) => config::check_nameservers(&servers)
            .map(|()| list)
            .map_err(Reason::BadSettings),
        Nameservers::System => Ok(list),
    }
}

/// The bounds the core enforces, for the Elixir side's messages and
/// chunking.
#[derive(NifMap)]
struct Limits {
    max_timeout_ms: u64,
    max_targets_per_call: usize,
}

#[rustler::nif]
fn limits() -> Limits {
    Limits {
        max_timeout_ms: config::MAX_TIMEOUT_MS,
        max_targets_per_call: MAX_TARGETS_PER_CALL,
    }
}

rustler::init!("Elixir.DynamicSrv.Native");
