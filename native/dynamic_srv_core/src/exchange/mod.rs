//! The path for explicit nameservers: a few connected UDP sockets per
//! server, kept for the life of the VM, at most one TCP connection per
//! server, open only while it is used, and a table of the queries in
//! flight.
//!
//! `start` runs on the caller's thread (a BEAM scheduler), so it only
//! encodes the query, registers it and hands it to the runtime; a lone
//! query is sent at once with a non-blocking `try_send`. Answers are
//! matched on the runtime by ID, server and echoed question. One sweeper
//! task, sleeping until the earliest deadline in a heap, drives per-attempt
//! timeouts and retries. A truncated answer is asked again over TCP, and
//! that name goes to TCP for a while. The system configuration (and more
//! than `MAX_SERVERS` servers) goes to `hickory::lookup`.
//!
//! Against a local DNS server this saves hickory's per-query socket and
//! its internal task hops: see the README's benchmark table.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::Message;
use tokio::net::UdpSocket;
use tokio::runtime::Handle;
use tokio::sync::{Notify, Semaphore};

use crate::config::{Nameservers, Protocol, Settings};
use crate::error::Error;
use crate::hickory;
use crate::types::{Answer, Kind};
use crate::wire::{encode, result_of};

mod big;
mod table;
mod tcp;

use big::BigNames;
use table::{Pending, Table};
use tcp::{Tcp, TCP_RESENDS};

/// Called once with the result of a lookup, always on a runtime thread.
pub type Reply = Box<dyn FnOnce(Result<Answer, Error>) + Send + 'static>;

/// Servers with sockets of their own; past this, lookups take the hickory path.
const MAX_SERVERS: usize = 64;
/// Sockets per server.
const SOCKETS_PER_SERVER: usize = 8;
/// The sweeper sleeps until the next attempt deadline, and at most this
/// long, so that a lookup started meanwhile with an earlier deadline is
/// late by at most this much. (Tokio's timers have a 1 ms resolution.)
const TICK: Duration = Duration::from_millis(5);
/// The sweeper parks after this long without anything in flight.
const IDLE: Duration = Duration::from_secs(1);
const RECV_BUFFER: usize = 65_535;
/// The error of an answer cut short even over TCP.
const TOO_BIG: &str = "the answer does not fit in one DNS message (65,535 bytes) and the server cut it short even over TCP";
/// Lookups in flight up to which the caller's thread sends the query itself.
const DIRECT_SENDS: usize = 1;
/// Failed reads in a row after which a UDP socket is replaced by a new one.
const RECV_ERRORS: u32 = 64;
/// Failed reads in a row that are retried at once (an ICMP error reports
/// one lost query); past them, reads are paced, doubling from 1 ms.
const RECV_ERRORS_UNPACED: u32 = 4;
/// The longest pause between two reads of a socket that keeps failing.
const RECV_PAUSE: Duration = Duration::from_millis(100);
/// Lookups the hickory path runs at once; the others wait for their turn
/// and end at their deadline if it does not come. hickory opens a socket
/// per query and does its work on the runtime: 5,000 lookups at once on
/// the system path against a stopped server ended up to 1.1 s past their
/// deadline (20,000 ran out of descriptors: "no connections available").
const HICKORY_LOOKUPS: usize = 128;
/// Queries sent and unanswered at once, per server. A local server
/// reading one socket drops what its receive buffer cannot hold (about 160
/// small datagrams on loopback); a lost query costs a whole attempt timeout.
const WINDOW: usize = 96;

/// A packet to send and the socket to send it on.
type Outgoing = (Arc<UdpSocket>, Vec<u8>);

/// The queries of one server: at most `WINDOW` sent and unanswered, the
/// rest waiting in arrival order.
#[derive(Default)]
struct Window {
    sent: usize,
    backlog: VecDeque<u16>,
}

/// What the transports hand up to the exchange that owns them. The
/// exchange is its one implementation; the transports see nothing else of
/// it.
trait Upstream: Send + Sync + 'static {
    /// A message read from `server`, over TCP when `over_tcp`.
    fn answer(self: &Arc<Self>, packet: &[u8], server: SocketAddr, over_tcp: bool);
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

struct Exchange {
    runtime: Handle,
    sockets: Mutex<HashMap<SocketAddr, Vec<Arc<UdpSocket>>>>,
    tcp: Arc<Tcp>,
    pending: Mutex<Table>,
    big: BigNames,
    sweeping: AtomicBool,
    outbox: Mutex<Vec<Outgoing>>,
    /// Per server: queries sent and not yet ended, and those waiting.
    windows: Mutex<HashMap<SocketAddr, Window>>,
    draining: AtomicBool,
    wake: Notify,
    /// The turn of the next UDP socket.
    counter: AtomicU64,
    /// Turns of the hickory path, `HICKORY_LOOKUPS` of them.
    hickory: Arc<Semaphore>,
}

static EXCHANGE: OnceLock<Arc<Exchange>> = OnceLock::new();

/// Starts a lookup. Returns at once; `reply` runs later on `runtime`.
/// `name` must have been checked by `parse::query_name`. Explicit
/// nameservers take the fast path; the system configuration goes to
/// hickory-resolver.
pub fn start(runtime: &Handle, settings: Settings, name: String, kind: Kind, reply: Reply) {
    let exchange = EXCHANGE.get_or_init(|| Exchange::new(runtime.clone()));
    exchange.start(settings, name, kind, reply);
}

impl Exchange {
    fn new(runtime: Handle) -> Arc<Self> {
        let exchange = Arc::new(Exchange {
            runtime: runtime.clone(),
            sockets: Mutex::new(HashMap::new()),
            tcp: Arc::new(Tcp::new(runtime)),
            pending: Mutex::new(Table::default()),
            big: BigNames::default(),
            sweeping: AtomicBool::new(true),
            outbox: Mutex::new(Vec::new()),
            windows: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            wake: Notify::new(),
            counter: AtomicU64::new(0),
            hickory: Arc::new(Semaphore::new(HICKORY_LOOKUPS)),
        });
        let sweeper = Arc::clone(&exchange);
        exchange.runtime.spawn(async move { sweeper.sweep().await });
        exchange
    }

    fn start(self: &Arc<Self>, settings: Settings, name: String, kind: Kind, reply: Reply) {
        let Nameservers::Explicit(servers) = &settings.nameservers else {
            return self.via_hickory(settings, name, kind, reply);
        };
        let tcp = settings.protocol == Protocol::Tcp || self.big.is_big(&name, kind);
        let servers: Arc<[SocketAddr]> = servers.clone().into();
        // Past MAX_SERVERS servers have no sockets: hickory asks them.
        if !self.has_sockets(&servers) {
            return self.via_hickory(settings, name, kind, reply);
        }

        let now = Instant::now();
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
            settings,
            reply,
        };
        let mut table = lock(&self.pending);
        let Some(id) = table.free_id() else {
            drop(table);
            return self.fail(
                pending.reply,
                Error::Other("too many lookups in flight".into()),
            );
        };
        match encode(id, &pending.name, kind) {
            Ok(packet) => pending.packet = packet,
            Err(e) => {
                drop(table);
                return self.fail(pending.reply, e);
            }
        }
        // Over TCP a lookup neither takes nor waits for a slot.
        let room = pending.tcp || {
            let mut windows = lock(&self.windows);
            let window = windows.entry(pending.servers[0]).or_default();
            if window.sent < WINDOW {
                window.sent += 1;
                pending.slot = true;
                true
            } else {
                // The window is full: the query waits for an answer (or a
                // timeout) to make room, so a burst cannot overflow the
                // server's receive buffer and lose queries.
                window.backlog.push_back(id);
                false
            }
        };
        let send = if room {
            self.next_attempt(&mut pending, now)
        } else {
            pending.queued = true;
            pending.attempt_deadline = pending.deadline;
            None
        };
        table.insert(id, pending);
        let in_flight = table.len();
        drop(table);
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
        // A lone lookup is sent right here, which saves a thread hop; in a
        // burst the runtime sends, so that schedulers do not spend their
        // time in sendto.
        if in_flight <= DIRECT_SENDS {
            self.send_now(send);
        } else {
            self.send_later(send);
        }
    }

    /// `count` lookups holding a slot of `server`'s window have ended: make
    /// room in it and send as many queued ones. Called with the table locked.
    fn finished(
        self: &Arc<Self>,
        table: &mut Table,
        server: SocketAddr,
        count: usize,
    ) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let mut windows = lock(&self.windows);
        let Some(window) = windows.get_mut(&server) else {
            return out;
        };
        window.sent = window.sent.saturating_sub(count);
        let now = Instant::now();
        while window.sent < WINDOW {
            let Some(id) = window.backlog.pop_front() else {
                break;
            };
            if let Some(pending) = table.get_mut(id).filter(|p| p.queued) {
                pending.queued = false;
                pending.slot = true;
                window.sent += 1;
                if let Some(outgoing) = self.next_attempt(pending, now) {
                    out.push(outgoing);
                }
                table.schedule(id);
            }
        }
        out
    }

    /// Books the next attempt (server, deadline) and says what to send.
    fn next_attempt(self: &Arc<Self>, pending: &mut Pending, now: Instant) -> Option<Outgoing> {
        let server = pending.book_attempt(now);
        if pending.tcp {
            self.tcp.send(self, server, &pending.packet);
            return None;
        }
        self.socket(server)
            .map(|socket| (socket, pending.packet.clone()))
    }

    /// Sends without waiting; a full socket buffer hands the packet to the
    /// runtime, which waits until the socket can take it.
    fn send_now(self: &Arc<Self>, send: Option<Outgoing>) {
        if let Some((socket, packet)) = send {
            match socket.try_send(&packet) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.send_later(Some((socket, packet)))
                }
                // Other errors (an ICMP error of an earlier query) only cost
                // this attempt; the sweeper retries.
                _ => {}
            }
        }
    }

    /// Queues a packet for the runtime. One task drains the queue, so a
    /// burst of lookups costs one wake-up of the runtime, not one each.
    fn send_later(self: &Arc<Self>, send: Option<Outgoing>) {
        let Some(outgoing) = send else {
            return;
        };
        lock(&self.outbox).push(outgoing);
        if !self.draining.swap(true, Ordering::AcqRel) {
            let exchange = Arc::clone(self);
            self.runtime.spawn(async move { exchange.drain().await });
        }
    }

    async fn drain(self: Arc<Self>) {
        loop {
            let batch = std::mem::take(&mut *lock(&self.outbox));
            if batch.is_empty() {
                self.draining.store(false, Ordering::Release);
                // A packet queued just before the flag fell is ours to send.
                let more = !lock(&self.outbox).is_empty();
                if more && !self.draining.swap(true, Ordering::AcqRel) {
                    continue;
                }
                return;
            }
            for (socket, packet) in batch {
                match socket.try_send(&packet) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        let _ = socket.send(&packet).await;
                    }
                    _ => {}
                }
            }
        }
    }

    /// Whether every one of `servers` has its sockets, opening those of a
    /// new server (at most `MAX_SERVERS` get any; hickory asks the others).
    fn has_sockets(self: &Arc<Self>, servers: &[SocketAddr]) -> bool {
        let mut sockets = lock(&self.sockets);
        servers
            .iter()
            .all(|server| sockets.contains_key(server) || self.open_pool(&mut sockets, *server))
    }

    /// Opens a server's sockets and starts their receivers. Several sockets
    /// per server spread a burst of answers over several receive buffers
    /// (one buffer overflows at a few hundred answers) and vary the source
    /// port.
    fn open_pool(
        self: &Arc<Self>,
        sockets: &mut HashMap<SocketAddr, Vec<Arc<UdpSocket>>>,
        server: SocketAddr,
    ) -> bool {
        if sockets.len() >= MAX_SERVERS {
            return false;
        }
        let Some(pool) = (0..SOCKETS_PER_SERVER)
            .map(|_| self.open_socket(server))
            .collect::<Option<Vec<_>>>()
        else {
            return false;
        };
        for socket in &pool {
            let exchange = Arc::clone(self);
            let receiver = Arc::clone(socket);
            self.runtime
                .spawn(async move { exchange.receive(receiver, server).await });
        }
        sockets.insert(server, pool);
        true
    }

    /// One of the server's sockets, in turn (opened by `has_sockets`).
    fn socket(&self, server: SocketAddr) -> Option<Arc<UdpSocket>> {
        let sockets = lock(&self.sockets);
        let pool = sockets.get(&server)?;
        let turn = self.counter.fetch_add(1, Ordering::Relaxed) as usize;
        pool.get(turn % pool.len()).map(Arc::clone)
    }

    fn open_socket(&self, server: SocketAddr) -> Option<Arc<UdpSocket>> {
        let local: SocketAddr = if server.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let std_socket = std::net::UdpSocket::bind(local).ok()?;
        std_socket.connect(server).ok()?;
        std_socket.set_nonblocking(true).ok()?;
        let _guard = self.runtime.enter();
        UdpSocket::from_std(std_socket).ok().map(Arc::new)
    }

    /// Reads the answers arriving on one of the server's sockets. A socket
    /// whose reads keep failing is replaced by a new one in the pool (its
    /// queries are retried by the sweeper).
    async fn receive(self: Arc<Self>, socket: Arc<UdpSocket>, server: SocketAddr) {
        let mut socket = socket;
        loop {
            let _persistent = read_datagrams(&*socket, |packet| {
                let _ = catch_unwind(AssertUnwindSafe(|| self.answer(packet, server, false)));
            })
            .await;
            match self.replace_socket(server, &socket) {
                Some(fresh) => socket = fresh,
                None => tokio::time::sleep(RECV_PAUSE).await,
            }
        }
    }

    /// Opens a socket to take `old`'s place in the server's pool; `None`
    /// (the old one stays) when no new one opens.
    fn replace_socket(&self, server: SocketAddr, old: &Arc<UdpSocket>) -> Option<Arc<UdpSocket>> {
        let fresh = self.open_socket(server)?;
        let mut sockets = lock(&self.sockets);
        let slot = sockets
            .get_mut(&server)?
            .iter_mut()
            .find(|socket| Arc::ptr_eq(socket, old))?;
        *slot = Arc::clone(&fresh);
        Some(fresh)
    }

    async fn sweep(self: Arc<Self>) {
        let mut idle_since = Instant::now();
        // The earliest deadline as of the last sweep.
        let mut next: Option<Instant> = None;
        loop {
            let wake_at = tokio::time::Instant::now() + TICK;
            let wake_at = match next {
                Some(due) => wake_at.min(tokio::time::Instant::from_std(due)),
                None => wake_at,
            };
            tokio::time::sleep_until(wake_at).await;
            let now = Instant::now();
            // A panic here must not end the sweeper: nothing else ends
            // lookups at their deadline.
            let (expired, empty, due) = catch_unwind(AssertUnwindSafe(|| self.expire(now)))
                .unwrap_or((Vec::new(), false, None));
            next = due;
            for reply in expired {
                deliver(reply, Err(Error::Timeout));
            }
            if !empty {
                idle_since = now;
                continue;
            }
            if now.duration_since(idle_since) < IDLE {
                continue;
            }
            self.sweeping.store(false, Ordering::Release);
            // Re-check: a lookup may have started just before the flag fell.
            let empty_now = lock(&self.pending).is_empty();
            if empty_now {
                self.wake.notified().await;
            }
            self.sweeping.store(true, Ordering::Release);
            idle_since = Instant::now();
        }
    }

    /// Ends the lookups past their deadline (or out of attempts) and
    /// resends those past their attempt deadline, earliest first. Returns
    /// the replies of the ended ones, whether the table is now empty, and
    /// the next deadline.
    fn expire(self: &Arc<Self>, now: Instant) -> (Vec<Reply>, bool, Option<Instant>) {
        let mut table = lock(&self.pending);
        let mut done = Vec::new();
        let mut retry = Vec::new();
        for id in table.take_due(now) {
            match table.get(id) {
                Some(p) if now >= p.deadline || p.attempts_left == 0 => done.push(id),
                Some(_) => retry.push(id),
                None => {}
            }
        }
        // A TCP query whose attempt timed out on a connection that answers
        // nothing: that connection is closed, so neither its retry nor the
        // next lookup is sent on it.
        for id in done.iter().chain(&retry) {
            if let Some(p) = table.get(*id).filter(|p| p.tcp && !p.queued) {
                let (last, sent) = p.last_attempt();
                self.tcp.reset_stalled(last, sent);
            }
        }
        let removed: Vec<Pending> = done.iter().filter_map(|id| table.remove(*id)).collect();
        let mut finished: HashMap<SocketAddr, usize> = HashMap::new();
        for p in removed.iter().filter(|p| p.slot) {
            *finished.entry(p.servers[0]).or_default() += 1;
        }
        let expired = removed.into_iter().map(|p| p.reply).collect();
        let released: Vec<Outgoing> = finished
            .into_iter()
            .flat_map(|(server, count)| self.finished(&mut table, server, count))
            .collect();
        let mut sends = Vec::with_capacity(retry.len());
        for id in retry {
            if let Some(pending) = table.get_mut(id) {
                sends.push(self.next_attempt(pending, now));
                table.schedule(id);
            }
        }
        let empty = table.is_empty();
        let next = table.next_due();
        drop(table);
        for send in sends {
            self.send_now(send);
        }
        for outgoing in released {
            self.send_now(Some(outgoing));
        }
        (expired, empty, next)
    }

    /// The system configuration's path. The deadline runs from now, the
    /// wait for a turn included, so every lookup ends by it.
    fn via_hickory(&self, settings: Settings, name: String, kind: Kind, reply: Reply) {
        let deadline = tokio::time::Instant::now() + settings.timeout;
        let turns = Arc::clone(&self.hickory);
        self.runtime.spawn(async move {
            let lookup = async {
                // The semaphore is never closed.
                let _turn = turns.acquire().await;
                hickory::lookup(&settings, &name, kind).await
            };
            let result = tokio::time::timeout_at(deadline, lookup)
                .await
                .unwrap_or(Err(Error::Timeout));
            deliver(reply, result);
        });
    }

    /// Replies with an error from the runtime, never from the caller's thread.
    fn fail(&self, reply: Reply, error: Error) {
        self.runtime
            .spawn(async move { deliver(reply, Err(error)) });
    }
}

impl Upstream for Exchange {
    fn answer(self: &Arc<Self>, packet: &[u8], server: SocketAddr, over_tcp: bool) {
        let Ok(message) = Message::from_vec(packet) else {
            return;
        };
        let id = message.metadata.id;
        let pending = {
            let mut table = lock(&self.pending);
            match table.get_mut(id) {
                Some(p) if p.tcp != over_tcp => None,
                // Cut short over UDP: ask the same server again over TCP.
                Some(p)
                    if p.is_answered_by(&message, packet, server)
                        && message.metadata.truncation
                        && !over_tcp =>
                {
                    p.tcp = true;
                    p.switched = true;
                    p.attempt_deadline =
                        (Instant::now() + p.settings.attempt_timeout()).min(p.deadline);
                    let packet = p.packet.clone();
                    table.schedule(id);
                    self.tcp.send(self, server, &packet);
                    None
                }
                Some(p) if p.is_answered_by(&message, packet, server) => {
                    let window = p.slot.then(|| p.servers[0]);
                    let done = table.remove(id);
                    let send = match window {
                        Some(server) => self.finished(&mut table, server, 1),
                        None => Vec::new(),
                    };
                    drop(table);
                    for outgoing in send {
                        self.send_later(Some(outgoing));
                    }
                    done
                }
                _ => None,
            }
        };
        let Some(pending) = pending else {
            return;
        };
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
        deliver(pending.reply, result);
    }

    fn tcp_closed(self: &Arc<Self>, server: SocketAddr) {
        let mut table = lock(&self.pending);
        for pending in table.lookups_mut() {
            if pending.tcp && pending.servers.contains(&server) && pending.resent < TCP_RESENDS {
                pending.resent += 1;
                self.tcp.send(self, server, &pending.packet);
            }
        }
    }
}

/// What a receiver reads: a UDP socket, or a stand-in in tests.
trait Datagrams {
    fn recv(&self, buffer: &mut [u8]) -> impl Future<Output = std::io::Result<usize>> + Send;
}

impl Datagrams for UdpSocket {
    fn recv(&self, buffer: &mut [u8]) -> impl Future<Output = std::io::Result<usize>> + Send {
        UdpSocket::recv(self, buffer)
    }
}

/// Hands every datagram read from `socket` to `on_packet` until reads have
/// failed `RECV_ERRORS` times in a row, and returns the last error then.
async fn read_datagrams<S: Datagrams>(
    socket: &S,
    mut on_packet: impl FnMut(&[u8]),
) -> std::io::Error {
    let mut buffer = vec![0u8; RECV_BUFFER];
    let mut errors = 0;
    loop {
        match socket.recv(&mut buffer).await {
            Ok(len) => {
                errors = 0;
                on_packet(&buffer[..len]);
            }
            // An ICMP error (nothing listens at the server) stands for one
            // query, which times out or is retried by the sweeper. A run of
            // them is paced, so a socket that keeps failing costs no CPU.
            Err(e) => {
                errors += 1;
                if errors >= RECV_ERRORS {
                    return e;
                }
                match recv_pause(errors) {
                    Duration::ZERO => tokio::task::yield_now().await,
                    pause => tokio::time::sleep(pause).await,
                }
            }
        }
    }
}

/// The pause after `errors` failed reads in a row.
fn recv_pause(errors: u32) -> Duration {
    let Some(paced) = errors.checked_sub(RECV_ERRORS_UNPACED + 1) else {
        return Duration::ZERO;
    };
    Duration::from_millis(1u64 << paced.min(16)).min(RECV_PAUSE)
}

fn deliver(reply: Reply, result: Result<Answer, Error>) {
    let _ = catch_unwind(AssertUnwindSafe(move || reply(result)));
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn reply_to(sender: &std::sync::mpsc::Sender<Result<Answer, Error>>) -> Reply {
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
            let _table = holder.pending.lock();
            panic!("a panic while the lookup table is locked (expected by this test)");
        });
        assert!(poisoner.join().is_err());
        assert!(exchange.pending.is_poisoned());
        let reply = replies.recv_timeout(Duration::from_secs(3));
        assert_eq!(reply, Ok(Err(Error::Timeout)));
        // Lookups started afterwards work as before.
        let settings = one_server(server, 100, Protocol::Udp);
        exchange.start(settings, "app.test.".into(), Kind::Srv, reply_to(&sender));
        let reply = replies.recv_timeout(Duration::from_secs(3));
        assert_eq!(reply, Ok(Err(Error::Timeout)));
    }

    /// A socket whose every read fails, counting the reads.
    struct Broken(std::sync::atomic::AtomicUsize);

    impl Datagrams for Broken {
        fn recv(&self, _buffer: &mut [u8]) -> impl Future<Output = std::io::Result<usize>> + Send {
            self.0.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Err(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            )))
        }
    }

    #[test]
    fn a_socket_that_keeps_failing_is_not_read_in_a_loop() {
        let runtime = runtime();
        let broken = Arc::new(Broken(Default::default()));
        let reader = Arc::clone(&broken);
        runtime.block_on(async move {
            let reading = read_datagrams(&*reader, |_| {});
            let _ = tokio::time::timeout(Duration::from_millis(300), reading).await;
        });
        let reads = broken.0.load(Ordering::Relaxed);
        assert!(reads < 50, "{reads} reads in 300 ms");
    }

    #[test]
    fn a_socket_that_keeps_failing_is_given_up() {
        // Paused time: the pauses pass at once.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime");
        let broken = Broken(Default::default());
        let started = tokio::time::Instant::now();
        let (error, paused) = runtime.block_on(async {
            let error = read_datagrams(&broken, |_| {}).await;
            (error, started.elapsed())
        });
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
        assert_eq!(broken.0.load(Ordering::Relaxed), RECV_ERRORS as usize);
        // Paced, but given up within seconds.
        assert!(paused >= Duration::from_secs(1), "{paused:?}");
        assert!(paused <= Duration::from_secs(10), "{paused:?}");
        assert_eq!(recv_pause(1), Duration::ZERO);
        assert_eq!(
            recv_pause(RECV_ERRORS_UNPACED + 1),
            Duration::from_millis(1)
        );
        assert_eq!(recv_pause(RECV_ERRORS), RECV_PAUSE);
    }
}
