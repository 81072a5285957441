//! Delivery of asynchronous results: the runtime that runs lookups and
//! probes, and the `Responder` that sends `{dynamic_srv_dns, Tag, Result}`
//! to the caller once, from a runtime thread, never from a scheduler.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use once_cell::sync::Lazy;
use rustler::{Encoder, Env, LocalPid, OwnedEnv, Term};
use tokio::runtime::Runtime;

use dynamic_srv_core::error::Error;

use crate::reason::Reason;

mod atoms {
    rustler::atoms! { dynamic_srv_dns }
}

static RUNTIME: Lazy<Result<Runtime, String>> = Lazy::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("dynamic_srv_dns")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the DNS runtime: {e}"))
});

/// The runtime lookups and probes run on, started on first use.
pub fn runtime() -> Result<&'static Runtime, Reason> {
    RUNTIME.as_ref().map_err(|e| Reason::Other(e.clone()))
}

/// The tag of the next lookup: unique for the life of the VM, so a reply
/// can only match the lookup that asked for it.
static NEXT_TAG: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// Each runtime thread builds its replies in one environment, cleared
    /// after every send, instead of allocating one per lookup.
    static REPLY_ENV: RefCell<OwnedEnv> = RefCell::new(OwnedEnv::new());
}

/// A result the responder can send: its `{ok, _}` or `{error, Reason}`
/// term.
pub trait Outcome {
    fn encode_outcome<'a>(&self, env: Env<'a>) -> Term<'a>;
}

/// Sends `{dynamic_srv_dns, Tag, Result}` to the caller, once. Dropped
/// without having sent (a panic in the lookup), it sends an error instead,
/// so the caller never waits for a reply that cannot come.
pub struct Responder {
    pid: LocalPid,
    tag: u64,
    sent: bool,
}

impl Responder {
    pub fn new(env: Env) -> Self {
        Responder {
            pid: env.pid(),
            tag: NEXT_TAG.fetch_add(1, Ordering::Relaxed),
            sent: false,
        }
    }

    pub fn tag(&self) -> u64 {
        self.tag
    }

    pub fn send(mut self, outcome: impl Outcome) {
        self.deliver(&outcome);
    }

    fn deliver(&mut self, outcome: &impl Outcome) {
        self.sent = true;
        let tag = self.tag;
        let message =
            |env| (atoms::dynamic_srv_dns(), tag, outcome.encode_outcome(env)).encode(env);
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
            self.deliver(&Failed);
        }
    }
}

/// What a responder dropped unsent reports.
struct Failed;

impl Outcome for Failed {
    fn encode_outcome<'a>(&self, env: Env<'a>) -> Term<'a> {
        let failed: Result<(), Reason> =
            Err(Error::Other("the lookup failed internally".into()).into());
        failed.encode(env)
    }
}
