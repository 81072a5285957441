//! The path for explicit nameservers: a fresh UDP socket per query (a
//! random source port and ID each, RFC 5452), at most one TCP connection
//! per server, open only while it is used, a table of the queries in
//! flight, and a record of the servers that fail, which go behind the
//! others until they answer again.
//!
//! `start` runs on the caller's thread (a BEAM scheduler), so it only
//! encodes the query, registers it and hands it to the runtime; a lone
//! query is sent at once with a non-blocking `try_send`. Answers are
//! matched on the runtime by ID, server and echoed question. One sweeper
//! task, sleeping until the earliest deadline in a heap, drives per-attempt
//! timeouts and retries. A truncated answer is asked again over TCP, and
//! that name goes to TCP for a while. The system configuration
//! (`/etc/resolv.conf`) runs here too: its servers, asked its search
//! list's names in turn (`system`).
//!
//! One part per module, below this one: `table` (the lookups in flight,
//! their deadline heap, their query IDs), `udp` (a socket and a reader per
//! query, the outbox, the per-server windows), `tcp` (connections,
//! resends, idle and stalled ones closed), `health` (servers that failed,
//! and when to probe them), `negative` (negative answers kept as their SOA
//! says), `big` (the names that need TCP), `system` (resolv.conf and its
//! search list) and `sweep` (timeouts and retries). This module wires them: it
//! starts lookups, takes the answers the transports hand up (`Upstream`)
//! and owns the locks, whose order is written on `Exchange`. The query
//! bytes and the reading of answers are `wire`'s.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::Message;
use tokio::runtime::Handle;
use tokio::sync::Notify;

use crate::config::{Nameservers, Protocol, Settings};
use crate::error::Error;
use crate::types::{Answer, Kind};
use crate::wire::{self, encode, result_of};

mod big;
mod health;
mod negative;
mod sweep;
mod system;
mod table;
mod tcp;
mod udp;

use big::BigNames;
use health::Health;
use negative::NegativeAnswers;
use table::{Pending, Table};
use tcp::{Tcp, TCP_RESENDS};
use udp::{Outgoing, Udp, Windows};

/// Called once with the result of a lookup, always on a runtime thread.
pub type OnAnswer = Box<dyn FnOnce(Result<Answer, Error>) + Send + 'static>;

/// The error of an answer cut short even over TCP.
const TOO_BIG: &str = "the answer does not fit in one DNS message (65,535 bytes) and the server cut it short even over TCP";
/// Lookups in flight up to which the caller's thread sends the query itself.
const DIRECT_SENDS: usize = 1;

/// What the transports hand up to the exchange that owns them. The
/// exchange is its one implementation; the transports see nothing else of
/// it.
trait Upstream: Send + Sync + 'static {
    /// A message read from `server`, over TCP when `over_tcp`; over UDP,
    /// on the socket of lookup `expected` only. Says whether that socket's
    /// work is done (its lookup answered, ended or moved to TCP).
    fn answer(
        self: &Arc<Self>,
        packet: &[u8],
        server: SocketAddr,
        over_tcp: bool,
        expected: Option<u16>,
    ) -> bool;
    /// `server` refused lookup `id`'s query over UDP (ICMP port
    /// unreachable).
    fn unreachable(self: &Arc<Self>, server: SocketAddr, id: u16);
    /// The TCP connection to `server`, which had been open, has closed:
    /// the queries waiting on it are sent again, at most `TCP_RESENDS`
    /// times each.
    fn tcp_closed(self: &Arc<Self>, server: SocketAddr);
}

/// Locks `mutex`, also after a panic elsewhere poisoned it. The tables
/// behind these locks stay usable when a holder panics (std's collections
/// stay consistent on unwinding; at worst a window count is off by one),
/// while refusing them would leave the lookups in flight without a
/// deadline: the sweeper must always get in.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The lookups in flight and the transports that carry them.
///
/// # Lock order
///
/// The exchange's mutexes are taken in this order only: a thread holding
/// one of them takes only those further down, and every one is taken
/// through `lock`, which also takes a poisoned one.
///
/// 1. `Exchange::lookups`: the table of lookups in flight and the UDP
///    windows. Taken first, or alone.
/// 2. `Tcp::connections`: under `lookups` to send an attempt
///    (`next_attempt`, and the resends of `tcp_closed`) or to close a
///    stalled connection (`expire`); alone to open, replace or retire
///    connections.
/// 3. `TcpLink::last_read`: under `Tcp::connections` (`reset_stalled`),
///    or alone (the reader).
///
/// Three are leaves, taken with no other lock held and holding none:
/// `Udp::outbox` (a packet is queued once `lookups` is released),
/// `BigNames::until` and `NegativeAnswers::kept` (read before `lookups` is
/// taken, written after it is released).
struct Exchange {
    runtime: Handle,
    /// Lock 1.
    lookups: Mutex<Lookups>,
    /// The leaf `outbox`.
    udp: Arc<Udp>,
    /// Lock 2 (`connections`), then lock 3 (`last_read`).
    tcp: Arc<Tcp>,
    /// A leaf lock.
    big: BigNames,
    /// A leaf lock.
    negative: NegativeAnswers,
    /// The sweeper is awake (or about to be); else it waits for `wake`.
    sweeping: AtomicBool,
    wake: Notify,
}

/// What the lookups lock guards: the lookups in flight and the UDP
/// windows, which change together (a lookup takes, waits for or frees a
/// slot of a window as it enters or leaves the table), and the servers'
/// health, read as a lookup starts and written as its attempts end.
#[derive(Default)]
struct Lookups {
    table: Table,
    windows: Windows,
    health: Health,
}

static EXCHANGE: OnceLock<Arc<Exchange>> = OnceLock::new();

/// Starts a lookup. Returns at once; `reply` runs later on `runtime`.
/// `name` must have been checked by `naming::query_name`. Explicit
/// nameservers are asked the name as given; with the system
/// configuration, the names of its search list are asked in turn.
pub fn start(runtime: &Handle, settings: Settings, name: String, kind: Kind, reply: OnAnswer) {
    let exchange = EXCHANGE.get_or_init(|| Exchange::new(runtime.clone()));
    exchange.start(settings, name, kind, reply);
}

impl Exchange {
    fn new(runtime: Handle) -> Arc<Self> {
        let exchange = Arc::new(Exchange {
            runtime: runtime.clone(),
            udp: Arc::new(Udp::new(runtime.clone())),
            tcp: Arc::new(Tcp::new(runtime)),
            lookups: Mutex::new(Lookups::default()),
            big: BigNames::default(),
            negative: NegativeAnswers::default(),
            sweeping: AtomicBool::new(true),
            wake: Notify::new(),
        });
        let sweeper = Arc::clone(&exchange);
        exchange.runtime.spawn(async move { sweeper.sweep().await });
        exchange
    }

    fn start(self: &Arc<Self>, settings: Settings, name: String, kind: Kind, reply: OnAnswer) {
        if let Some(result) = localhost(&name, kind) {
            self.runtime.spawn(async move { deliver(reply, result) });
            return;
        }
        let Nameservers::Explicit(servers) = &settings.nameservers else {
            return self.via_system(settings, name, kind, reply);
        };
        if let Some(error) = self.negative.get(servers, &name, kind) {
            return self.fail(reply, error);
        }
        let tcp = settings.protocol == Protocol::Tcp || self.big.is_big(&name, kind);
        let servers = servers.clone();
        let now = Instant::now();
        let mut lookups = lock(&self.lookups);
        lookups.windows.admit(&servers);
        let probe = lookups.health.probe_due(&servers, now);
        let servers: Arc<[SocketAddr]> = lookups.health.order(&servers).into();
        let mut pending = Pending {
            name,
            kind,
            packet: Vec::new(),
            servers,
            next_server: 0,
            attempts_left: settings.attempts,
            queued: false,
            slot: false,
            tcp,
            switched: false,
            resent: 0,
            attempt_deadline: now,
            deadline: now + settings.timeout,
            ended: Arc::new(Notify::new()),
            settings,
            reply,
        };
        let Some(id) = lookups.table.free_id() else {
            drop(lookups);
            return self.fail(
                pending.reply,
                Error::Other("too many lookups in flight".into()),
            );
        };
        match encode(id, &pending.name, kind) {
            Ok(packet) => pending.packet = packet,
            Err(e) => {
                drop(lookups);
                return self.fail(pending.reply, e);
            }
        }
        // Over TCP a lookup neither takes nor waits for a slot.
        // Otherwise it goes out when the window of its first server has
        // room, and waits in the window's backlog until then.
        let room = pending.tcp || {
            pending.slot = lookups.windows.enter(pending.servers[0], id);
            pending.slot
        };
        let send = if room {
            self.next_attempt(&mut pending, now)
        } else {
            pending.queued = true;
            pending.attempt_deadline = pending.deadline;
            None
        };
        let probe = probe.map(|server| {
            (
                server,
                pending.packet.clone(),
                pending.settings.attempt_timeout(),
            )
        });
        lookups.table.insert(id, pending);
        let in_flight = lookups.table.len();
        drop(lookups);
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
        // A lone lookup is sent right here, which saves a thread hop; in a
        // burst the runtime sends, so that schedulers do not spend their
        // time in sendto.
        if in_flight <= DIRECT_SENDS {
            self.udp.send_now(self, send);
        } else {
            self.udp.send_later(self, send);
        }
        if let Some((server, packet, wait)) = probe {
            self.probe(server, packet, wait);
        }
    }

    /// Sends a copy of a lookup's query (under an ID of its own) to a
    /// server that failed, and records whether it answers within `wait`.
    fn probe(self: &Arc<Self>, server: SocketAddr, mut packet: Vec<u8>, wait: Duration) {
        let id = lock(&self.lookups).table.probe_id();
        packet[..2].copy_from_slice(&id.to_be_bytes());
        let exchange = Arc::clone(self);
        self.runtime.spawn(async move {
            let answered = udp::ask_once(server, &packet, wait).await;
            let mut lookups = lock(&exchange.lookups);
            if answered {
                lookups.health.answered(server);
            } else {
                lookups.health.failed(server, Instant::now());
            }
        });
    }

    /// `count` lookups holding a slot of `server`'s window have ended: make
    /// room in it and send as many queued ones. Called with the lookups
    /// locked.
    fn finished(
        self: &Arc<Self>,
        lookups: &mut Lookups,
        server: SocketAddr,
        count: usize,
    ) -> Vec<Outgoing> {
        let Lookups { table, windows, .. } = lookups;
        let mut out = Vec::new();
        let now = Instant::now();
        windows.release(server, count, |id| {
            let Some(pending) = table.get_mut(id).filter(|p| p.queued) else {
                return false;
            };
            pending.queued = false;
            pending.slot = true;
            if let Some(outgoing) = self.next_attempt(pending, now) {
                out.push(outgoing);
            }
            table.schedule(id);
            true
        });
        out
    }

    /// Books the next attempt (server, deadline) and says what to send.
    fn next_attempt(self: &Arc<Self>, pending: &mut Pending, now: Instant) -> Option<Outgoing> {
        let server = pending.book_attempt(now);
        if pending.tcp {
            self.tcp.send(self, server, &pending.packet);
            return None;
        }
        let id = u16::from_be_bytes([pending.packet[0], pending.packet[1]]);
        // Its socket also takes an answer that comes late, while the next
        // attempt is out.
        let until =
            (pending.attempt_deadline + pending.settings.attempt_timeout()).min(pending.deadline);
        Some(Outgoing {
            server,
            id,
            packet: pending.packet.clone(),
            until,
            ended: Arc::clone(&pending.ended),
        })
    }

    /// The system configuration's path: its servers are asked the names of
    /// its search list in turn (read on the runtime, as it reads a file)
    /// until one has records, or fails otherwise than with NXDOMAIN or no
    /// data; all by the lookup's deadline, counted from now.
    fn via_system(self: &Arc<Self>, settings: Settings, name: String, kind: Kind, reply: OnAnswer) {
        let deadline = Instant::now() + settings.timeout;
        let exchange = Arc::clone(self);
        self.runtime.spawn(async move {
            match system::conf() {
                Err(error) => deliver(reply, Err(error)),
                Ok(conf) => {
                    let names = conf.candidates(&name).into();
                    let step = Settings {
                        nameservers: Nameservers::Explicit(conf.servers.clone()),
                        ..settings
                    };
                    exchange.search(step, names, kind, deadline, reply, Error::NxDomain);
                }
            }
        });
    }

    /// Asks the next of `names`; on NXDOMAIN or no data, the one after it.
    /// `so_far` is what to answer when none is left: no data when any name
    /// had it (the name exists), else NXDOMAIN.
    fn search(
        self: &Arc<Self>,
        settings: Settings,
        mut names: VecDeque<String>,
        kind: Kind,
        deadline: Instant,
        reply: OnAnswer,
        so_far: Error,
    ) {
        let Some(name) = names.pop_front() else {
            return deliver(reply, Err(so_far));
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return deliver(reply, Err(Error::Timeout));
        }
        let step = Settings {
            timeout: left,
            ..settings.clone()
        };
        let exchange = Arc::clone(self);
        let next: OnAnswer = Box::new(move |result| match result {
            Err(error @ (Error::NxDomain | Error::NoData)) if !names.is_empty() => {
                let so_far = if error == Error::NoData {
                    error
                } else {
                    so_far
                };
                exchange.search(settings, names, kind, deadline, reply, so_far);
            }
            other => deliver(reply, other),
        });
        self.start(step, name, kind, next);
    }

    /// Replies with an error from the runtime, never from the caller's thread.
    fn fail(&self, reply: OnAnswer, error: Error) {
        self.runtime
            .spawn(async move { deliver(reply, Err(error)) });
    }
}

impl Upstream for Exchange {
    fn answer(
        self: &Arc<Self>,
        packet: &[u8],
        server: SocketAddr,
        over_tcp: bool,
        expected: Option<u16>,
    ) -> bool {
        let Ok(message) = Message::from_vec(packet) else {
            return false;
        };
        let id = message.metadata.id;
        if expected.is_some_and(|expected| expected != id) {
            return false;
        }
        let pending = {
            let mut lookups = lock(&self.lookups);
            let answered = lookups
                .table
                .get(id)
                .is_some_and(|p| p.is_answered_by(&message, packet, server));
            if answered {
                lookups.health.answered(server);
            }
            match lookups.table.get_mut(id) {
                // Over UDP, a socket whose lookup has ended is done.
                None => return expected.is_some(),
                Some(p) if p.tcp != over_tcp => return expected.is_some(),
                // Cut short over UDP, said (TC) or not (an SRV answer that
                // fills the payload): ask the same server again over TCP.
                Some(p)
                    if !over_tcp
                        && answered
                        && (message.metadata.truncation
                            || (p.kind == Kind::Srv
                                && wire::looks_trimmed(&message, packet.len()))) =>
                {
                    p.tcp = true;
                    p.switched = true;
                    p.attempt_deadline =
                        (Instant::now() + p.settings.attempt_timeout()).min(p.deadline);
                    let packet = p.packet.clone();
                    lookups.table.schedule(id);
                    self.tcp.send(self, server, &packet);
                    return true;
                }
                Some(p) if answered => {
                    let window = p.slot.then(|| p.servers[0]);
                    let done = lookups.table.remove(id);
                    let send = match window {
                        Some(server) => self.finished(&mut lookups, server, 1),
                        None => Vec::new(),
                    };
                    drop(lookups);
                    for outgoing in send {
                        self.udp.send_later(self, Some(outgoing));
                    }
                    done
                }
                _ => None,
            }
        };
        let Some(pending) = pending else {
            return false;
        };
        pending.ended.notify_waiters();
        let result = if over_tcp && message.metadata.truncation {
            // A TCP answer holds at most 65,535 bytes: a server cuts a
            // larger one short (BIND sends the records that fit, with TC).
            // Taken as it is, it would drop every node that did not fit.
            Err(Error::Other(TOO_BIG.into()))
        } else {
            result_of(&message, pending.kind)
        };
        if pending.switched && result.is_ok() {
            self.big.mark(&pending.name, pending.kind);
        }
        if let (Err(error @ (Error::NxDomain | Error::NoData)), Some(ttl)) =
            (&result, wire::negative_ttl(&message))
        {
            if let Nameservers::Explicit(servers) = &pending.settings.nameservers {
                self.negative
                    .put(servers, &pending.name, pending.kind, error.clone(), ttl);
            }
        }
        deliver(pending.reply, result);
        true
    }

    fn unreachable(self: &Arc<Self>, server: SocketAddr, id: u16) {
        let now = Instant::now();
        let mut lookups = lock(&self.lookups);
        lookups.health.failed(server, now);
        // The lookup moves on at once when another server is there to ask
        // and an attempt is left; else its attempt ends at its deadline.
        let Some(pending) = lookups.table.get_mut(id) else {
            return;
        };
        let on_this_server = !pending.tcp && !pending.queued && pending.last_attempt().0 == server;
        let elsewhere = pending.servers.iter().any(|other| *other != server);
        if !on_this_server || !elsewhere || pending.attempts_left == 0 {
            return;
        }
        let send = self.next_attempt(pending, now);
        lookups.table.schedule(id);
        drop(lookups);
        self.udp.send_now(self, send);
    }

    fn tcp_closed(self: &Arc<Self>, server: SocketAddr) {
        let mut lookups = lock(&self.lookups);
        for pending in lookups.table.lookups_mut() {
            if pending.tcp && pending.servers.contains(&server) && pending.resent < TCP_RESENDS {
                pending.resent += 1;
                self.tcp.send(self, server, &pending.packet);
            }
        }
    }
}

/// The answer for `localhost` and the names under it, which never leave
/// the host (RFC 6761 section 6.3): the loopback address, and no records
/// of other types. `None` for any other name.
fn localhost(name: &str, kind: Kind) -> Option<Result<Answer, Error>> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name != "localhost" && !name.ends_with(".localhost") {
        return None;
    }
    Some(match kind {
        Kind::A => Ok(Answer::Ip(vec![(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)])),
        Kind::Aaaa => Ok(Answer::Ip(vec![(IpAddr::V6(Ipv6Addr::LOCALHOST), 0)])),
        Kind::Srv => Err(Error::NoData),
    })
}

fn deliver(reply: OnAnswer, result: Result<Answer, Error>) {
    let _ = catch_unwind(AssertUnwindSafe(move || reply(result)));
}

#[cfg(test)]
mod tests {
    use super::udp::WINDOW;
    use super::*;
    use std::time::Duration;

    pub(super) fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime")
    }

    fn one_server(server: SocketAddr, timeout_ms: i64, protocol: Protocol) -> Settings {
        Settings::new(Nameservers::Explicit(vec![server]), timeout_ms, 1, protocol)
            .expect("settings")
    }

    /// A UDP socket on loopback that reads nothing and answers nothing;
    /// nothing listens on TCP at its port.
    fn silent_server() -> (std::net::UdpSocket, SocketAddr) {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("address");
        (socket, addr)
    }

    type Replies = std::sync::mpsc::Receiver<Result<Answer, Error>>;

    /// An exchange of its own on a runtime of its own, a silent server, and
    /// where the replies of its lookups go.
    struct Bench {
        /// Kept for as long as the test runs.
        _runtime: tokio::runtime::Runtime,
        exchange: Arc<Exchange>,
        silent: std::net::UdpSocket,
        server: SocketAddr,
        sender: std::sync::mpsc::Sender<Result<Answer, Error>>,
        replies: Replies,
    }

    fn bench() -> Bench {
        let runtime = runtime();
        let (silent, server) = silent_server();
        let exchange = Exchange::new(runtime.handle().clone());
        let (sender, replies) = std::sync::mpsc::channel();
        Bench {
            _runtime: runtime,
            exchange,
            silent,
            server,
            sender,
            replies,
        }
    }

    fn reply_to(sender: &std::sync::mpsc::Sender<Result<Answer, Error>>) -> OnAnswer {
        let sender = sender.clone();
        Box::new(move |result| {
            let _ = sender.send(result);
        })
    }

    /// The datagrams arriving on `socket`: waits (up to 5 s each) for
    /// `expected` of them, then counts those that follow until none comes
    /// for `quiet`.
    fn datagrams(socket: &std::net::UdpSocket, expected: usize, quiet: Duration) -> usize {
        let mut buffer = [0u8; 512];
        let mut count = 0;
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        while count < expected && socket.recv(&mut buffer).is_ok() {
            count += 1;
        }
        socket.set_read_timeout(Some(quiet)).expect("timeout");
        while socket.recv(&mut buffer).is_ok() {
            count += 1;
        }
        count
    }

    #[test]
    fn lookups_over_tcp_leave_the_udp_window_alone() {
        let Bench {
            _runtime,
            exchange,
            silent,
            server,
            sender,
            replies,
        } = bench();
        let start = |count: usize, timeout_ms: i64, protocol: Protocol| {
            for i in 0..count {
                let settings = one_server(server, timeout_ms, protocol);
                let name = format!("{protocol:?}-{i}.app.test.");
                exchange.start(settings, name, Kind::Srv, reply_to(&sender));
            }
        };
        // A full window of UDP queries that stay unanswered, and ten more
        // waiting for room in it.
        start(WINDOW + 10, 10_000, Protocol::Udp);
        // Ten lookups over TCP (nothing listens there) that end at their
        // deadline, long before the UDP ones.
        start(10, 50, Protocol::Tcp);
        for _ in 0..10 {
            let reply = replies.recv_timeout(Duration::from_secs(5));
            assert_eq!(reply, Ok(Err(Error::Timeout)), "a TCP lookup ends");
        }
        // The TCP lookups took no room in the UDP window, so their end
        // makes none: the server still has exactly one window of queries.
        assert_eq!(
            datagrams(&silent, WINDOW, Duration::from_millis(300)),
            WINDOW
        );
    }

    #[test]
    fn a_poisoned_table_still_ends_lookups_at_their_deadline() {
        let Bench {
            _runtime,
            exchange,
            silent: _silent,
            server,
            sender,
            replies,
        } = bench();
        let settings = one_server(server, 200, Protocol::Udp);
        exchange.start(settings, "app.test.".into(), Kind::Srv, reply_to(&sender));
        // A thread panics while it holds the table.
        let holder = Arc::clone(&exchange);
        let poisoner = std::thread::spawn(move || {
            let _lookups = holder.lookups.lock();
            panic!("a panic while the lookup table is locked (expected by this test)");
        });
        assert!(poisoner.join().is_err());
        assert!(exchange.lookups.is_poisoned());
        let reply = replies.recv_timeout(Duration::from_secs(3));
        assert_eq!(reply, Ok(Err(Error::Timeout)));
        // Lookups started afterwards work as before.
        let settings = one_server(server, 100, Protocol::Udp);
        exchange.start(settings, "app.test.".into(), Kind::Srv, reply_to(&sender));
        let reply = replies.recv_timeout(Duration::from_secs(3));
        assert_eq!(reply, Ok(Err(Error::Timeout)));
    }

    /// A UDP server on loopback answering every query read from `socket`
    /// with the query itself marked as a response (NOERROR, no records:
    /// `NoData`); the source port of every query goes to `ports`.
    fn answer_on(socket: std::net::UdpSocket, ports: Arc<Mutex<Vec<u16>>>) {
        std::thread::spawn(move || {
            let mut buffer = [0u8; 512];
            let _ = socket.set_read_timeout(Some(Duration::from_secs(30)));
            while let Ok((len, from)) = socket.recv_from(&mut buffer) {
                lock(&ports).push(from.port());
                let mut reply = buffer[..len].to_vec();
                reply[2] |= 0x80;
                let _ = socket.send_to(&reply, from);
            }
        });
    }

    fn answering() -> (SocketAddr, Arc<Mutex<Vec<u16>>>) {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("address");
        let ports = Arc::new(Mutex::new(Vec::new()));
        answer_on(socket, Arc::clone(&ports));
        (addr, ports)
    }

    fn servers(list: Vec<SocketAddr>, timeout_ms: i64) -> Settings {
        Settings::new(Nameservers::Explicit(list), timeout_ms, 2, Protocol::Udp).expect("settings")
    }

    fn lookup_once(bench: &Bench, settings: Settings, name: &str) -> Result<Answer, Error> {
        let exchange = &bench.exchange;
        exchange.start(settings, name.into(), Kind::Srv, reply_to(&bench.sender));
        bench
            .replies
            .recv_timeout(Duration::from_secs(10))
            .expect("a reply")
    }

    #[test]
    fn every_query_goes_out_from_a_port_of_its_own() {
        let bench = bench();
        let (live, ports) = answering();
        for i in 0..50 {
            let reply = lookup_once(
                &bench,
                servers(vec![live], 2_000),
                &format!("n{i}.app.test."),
            );
            assert_eq!(reply, Err(Error::NoData));
        }
        let mut seen = lock(&ports).clone();
        assert_eq!(seen.len(), 50);
        seen.sort_unstable();
        seen.dedup();
        // The kernel picks each port at random: a few may repeat, a pool
        // of sockets would give a handful.
        assert!(seen.len() >= 40, "{} distinct source ports", seen.len());
    }

    #[test]
    fn a_refusing_server_is_passed_at_once_then_asked_last() {
        let bench = bench();
        let (live, _) = answering();
        // Nothing listens there: the kernel answers with ICMP port unreachable.
        let closed = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("a free port");
        let settings = servers(vec![closed, live], 3_000);
        let attempt = settings.attempt_timeout();
        let started = Instant::now();
        assert_eq!(
            lookup_once(&bench, settings.clone(), "first.app.test."),
            Err(Error::NoData)
        );
        // Moved on at the refusal, not at the attempt's deadline.
        assert!(started.elapsed() < attempt, "{:?}", started.elapsed());
        let started = Instant::now();
        for i in 0..20 {
            let name = format!("later-{i}.app.test.");
            assert_eq!(
                lookup_once(&bench, settings.clone(), &name),
                Err(Error::NoData)
            );
        }
        assert!(started.elapsed() < attempt, "{:?}", started.elapsed());
    }

    #[test]
    fn a_silent_server_is_asked_again_only_by_probes_and_used_once_it_answers() {
        let bench = bench();
        let (live, _) = answering();
        let silent = bench.silent.try_clone().expect("clone");
        let server = bench.server;
        let settings = servers(vec![server, live], 400);
        assert_eq!(
            lookup_once(&bench, settings.clone(), "first.app.test."),
            Err(Error::NoData)
        );
        for i in 0..30 {
            let name = format!("later-{i}.app.test.");
            assert_eq!(
                lookup_once(&bench, settings.clone(), &name),
                Err(Error::NoData)
            );
        }
        // Only the first lookup asked it (a probe is due a second later).
        assert_eq!(datagrams(&silent, 1, Duration::from_millis(100)), 1);

        // It answers from now on: a probe finds it, and the lookups that
        // follow ask it first again.
        let ports = Arc::new(Mutex::new(Vec::new()));
        answer_on(silent, Arc::clone(&ports));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut i = 0;
        while lock(&ports).len() < 5 && Instant::now() < deadline {
            i += 1;
            let name = format!("again-{i}.app.test.");
            assert_eq!(
                lookup_once(&bench, settings.clone(), &name),
                Err(Error::NoData)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            lock(&ports).len() >= 5,
            "asked {} times",
            lock(&ports).len()
        );
    }

    #[test]
    fn forged_answers_are_ignored() {
        let bench = bench();
        let server = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = server.local_addr().expect("address");
        let forger = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        std::thread::spawn(move || {
            let mut buffer = [0u8; 512];
            let Ok((len, from)) = server.recv_from(&mut buffer) else {
                return;
            };
            let query = &buffer[..len];
            // NXDOMAIN, were any of these taken.
            let forged = |id: [u8; 2]| {
                let mut reply = query.to_vec();
                reply[..2].copy_from_slice(&id);
                reply[2] |= 0x80;
                reply[3] = (reply[3] & 0xf0) | 3;
                reply
            };
            let right_id = [query[0], query[1]];
            let wrong_id = [query[0] ^ 0x5a, query[1] ^ 0xa5];
            // The right ID from another port; a wrong ID from the server's.
            let _ = forger.send_to(&forged(right_id), from);
            let _ = server.send_to(&forged(wrong_id), from);
            std::thread::sleep(Duration::from_millis(100));
            let mut real = query.to_vec();
            real[2] |= 0x80;
            let _ = server.send_to(&real, from);
        });
        assert_eq!(
            lookup_once(&bench, servers(vec![addr], 2_000), "forged.app.test."),
            Err(Error::NoData)
        );
    }

    #[test]
    fn a_negative_answer_is_kept_for_its_soa_minimum() {
        use hickory_resolver::proto::rr::rdata::SOA;
        use hickory_resolver::proto::rr::{Name, RData, Record};
        use std::str::FromStr;
        let bench = bench();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let server = socket.local_addr().expect("address");
        let asked = Arc::new(Mutex::new(0usize));
        let count = Arc::clone(&asked);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 512];
            let _ = socket.set_read_timeout(Some(Duration::from_secs(30)));
            while let Ok((len, from)) = socket.recv_from(&mut buffer) {
                *lock(&count) += 1;
                let Ok(query) = Message::from_vec(&buffer[..len]) else {
                    continue;
                };
                let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
                reply.metadata.response_code = hickory_resolver::proto::op::ResponseCode::NXDomain;
                reply.add_queries(query.queries.clone());
                let zone = Name::from_str("test.").expect("name");
                let soa = SOA::new(zone.clone(), zone.clone(), 1, 60, 60, 600, 1);
                reply.add_authority(Record::from_rdata(zone, 60, RData::SOA(soa)));
                let _ = socket.send_to(&reply.to_vec().expect("encodes"), from);
            }
        });
        let settings = servers(vec![server], 2_000);
        let ask = || lookup_once(&bench, settings.clone(), "gone.test.");
        assert_eq!(ask(), Err(Error::NxDomain));
        assert_eq!(ask(), Err(Error::NxDomain));
        assert_eq!(
            *lock(&asked),
            1,
            "the second lookup was answered from the SOA's time"
        );
        std::thread::sleep(Duration::from_millis(1_100));
        assert_eq!(ask(), Err(Error::NxDomain));
        assert_eq!(*lock(&asked), 2, "asked again once the SOA minimum passed");
    }

    #[test]
    fn localhost_names_are_answered_without_a_query() {
        let bench = bench();
        let settings = servers(vec![bench.server], 200);
        let loopback = |ip: IpAddr| Ok(Answer::Ip(vec![(ip, 0)]));
        bench.exchange.start(
            settings.clone(),
            "localhost".into(),
            Kind::A,
            reply_to(&bench.sender),
        );
        let reply = bench.replies.recv_timeout(Duration::from_secs(5));
        assert_eq!(reply, Ok(loopback(IpAddr::V4(Ipv4Addr::LOCALHOST))));
        let name = "App.LocalHost.";
        bench.exchange.start(
            settings.clone(),
            name.into(),
            Kind::Aaaa,
            reply_to(&bench.sender),
        );
        let reply = bench.replies.recv_timeout(Duration::from_secs(5));
        assert_eq!(reply, Ok(loopback(IpAddr::V6(Ipv6Addr::LOCALHOST))));
        bench.exchange.start(
            settings,
            "localhost.".into(),
            Kind::Srv,
            reply_to(&bench.sender),
        );
        let reply = bench.replies.recv_timeout(Duration::from_secs(5));
        assert_eq!(reply, Ok(Err(Error::NoData)));
        // The (silent) server was never asked.
        assert_eq!(datagrams(&bench.silent, 0, Duration::from_millis(100)), 0);
    }
}
