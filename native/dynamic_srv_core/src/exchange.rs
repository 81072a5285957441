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
//! than `MAX_SERVERS` servers) goes to `resolver::lookup`.
//!
//! Against a local DNS server this saves hickory's per-query socket and
//! its internal task hops: see the README's benchmark table.

use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::sync::Notify;

use crate::config::{Nameservers, Protocol, Settings, EDNS_PAYLOAD};
use crate::error::Error;
use crate::resolver::{self, convert, is_empty, Answer, Kind};

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
/// How long a name whose UDP answer was truncated goes straight to TCP.
const BIG_FOR: Duration = Duration::from_secs(60);
const MAX_BIG: usize = 1024;
const RECV_BUFFER: usize = 65_535;
/// How long opening a TCP connection to a server may take.
const TCP_CONNECT: Duration = Duration::from_secs(2);
/// Times a TCP query is sent again when its connection closes.
const TCP_RESENDS: u8 = 2;
/// A TCP connection with no query unanswered for this long is closed.
/// Servers serve a bounded number of TCP connections at once (dnsmasq 20
/// by default), so a slot held by an idle client is one that another node
/// waits for: long enough to carry a burst of lookups, short enough that a
/// hundred nodes polling every second fit in twenty slots.
const TCP_IDLE: Duration = Duration::from_millis(100);
/// Lookups in flight up to which the caller's thread sends the query itself.
const DIRECT_SENDS: usize = 1;
/// Queries sent and unanswered at once, per server. A local server
/// reading one socket drops what its receive buffer cannot hold (about 160
/// small datagrams on loopback); a lost query costs a whole attempt timeout.
const WINDOW: usize = 96;

/// Per server: the open TCP connection's number, its query queue and its
/// progress.
type TcpConnections = HashMap<SocketAddr, (u64, mpsc::UnboundedSender<Vec<u8>>, Arc<TcpLink>)>;

/// What the sweeper needs to know of a TCP connection to tell a slow one
/// from a dead one: queries written and not answered, and when it last
/// made progress (opened, or an answer read).
struct TcpLink {
    unanswered: AtomicU64,
    progress: Mutex<Instant>,
}

impl TcpLink {
    fn new() -> Self {
        TcpLink {
            unanswered: AtomicU64::new(0),
            progress: Mutex::new(Instant::now()),
        }
    }

    fn answered(&self) {
        let _ = self
            .unanswered
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if let Ok(mut progress) = self.progress.lock() {
            *progress = Instant::now();
        }
    }

    /// Whether nothing came back for `quiet` while queries were waiting.
    fn stalled(&self, now: Instant, quiet: Duration) -> bool {
        self.unanswered.load(Ordering::Acquire) > 0
            && self
                .progress
                .lock()
                .map_or(true, |at| now.duration_since(*at) >= quiet)
    }
}

/// A packet to send and the socket to send it on.
type Outgoing = (Arc<UdpSocket>, Vec<u8>);

/// The queries of one server: at most `WINDOW` sent and unanswered, the
/// rest waiting in arrival order.
#[derive(Default)]
struct Window {
    sent: usize,
    backlog: VecDeque<u16>,
}

struct Pending {
    /// The name asked, as given to `start`.
    name: String,
    kind: Kind,
    /// The query as sent; its question (from byte 12) is what an answer
    /// must echo.
    packet: Vec<u8>,
    servers: Arc<[SocketAddr]>,
    next_server: usize,
    attempts_left: usize,
    /// Waiting for room in the window of queries sent.
    queued: bool,
    /// Sent over TCP (the settings ask for it, the name's answers are big,
    /// or the UDP answer came back truncated).
    tcp: bool,
    /// Moved to TCP by a truncated UDP answer.
    switched: bool,
    /// Times sent again because its TCP connection closed.
    resent: u8,
    attempt_deadline: Instant,
    deadline: Instant,
    settings: Settings,
    reply: Reply,
}

/// The lookups in flight, by query ID, and when each is next due.
#[derive(Default)]
struct Table {
    lookups: HashMap<u16, Pending>,
    /// (attempt deadline, ID), earliest first: the sweeper pops what is due
    /// instead of walking every lookup. An entry is stale once its lookup
    /// has ended or been given a new deadline, and is skipped when popped.
    due: BinaryHeap<Reverse<(Instant, u16)>>,
}

impl Table {
    /// Records that lookup `id` is due at its (new) attempt deadline.
    fn schedule(&mut self, id: u16) {
        let Some(at) = self.lookups.get(&id).map(|p| p.attempt_deadline) else {
            return;
        };
        // Answered lookups leave stale entries behind; past a bound the
        // heap is rebuilt from the live lookups.
        if self.due.len() > 2 * self.lookups.len() + 1024 {
            self.due = self
                .lookups
                .iter()
                .map(|(id, p)| Reverse((p.attempt_deadline, *id)))
                .collect();
        } else {
            self.due.push(Reverse((at, id)));
        }
    }

    /// The lookups whose attempt deadline has passed, earliest first.
    fn take_due(&mut self, now: Instant) -> Vec<u16> {
        let mut ids = Vec::new();
        let mut last = None;
        while let Some(&Reverse(entry)) = self.due.peek() {
            let (at, id) = entry;
            if at > now {
                break;
            }
            self.due.pop();
            // Equal entries (scheduled twice) pop one after the other.
            let live = self
                .lookups
                .get(&id)
                .is_some_and(|p| p.attempt_deadline == at);
            if live && last != Some(entry) {
                ids.push(id);
            }
            last = Some(entry);
        }
        ids
    }

    fn next_due(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((at, _))| *at)
    }
}

struct Exchange {
    runtime: Handle,
    sockets: Mutex<HashMap<SocketAddr, Vec<Arc<UdpSocket>>>>,
    tcp: Mutex<TcpConnections>,
    pending: Mutex<Table>,
    big: Mutex<HashMap<(String, Kind), Instant>>,
    sweeping: AtomicBool,
    outbox: Mutex<Vec<Outgoing>>,
    /// Per server: queries sent and not yet ended, and those waiting.
    windows: Mutex<HashMap<SocketAddr, Window>>,
    draining: AtomicBool,
    wake: Notify,
    ids: RandomState,
    counter: AtomicU64,
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
            runtime,
            sockets: Mutex::new(HashMap::new()),
            tcp: Mutex::new(HashMap::new()),
            pending: Mutex::new(Table::default()),
            big: Mutex::new(HashMap::new()),
            sweeping: AtomicBool::new(true),
            outbox: Mutex::new(Vec::new()),
            windows: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            wake: Notify::new(),
            ids: RandomState::new(),
            counter: AtomicU64::new(0),
        });
        let sweeper = Arc::clone(&exchange);
        exchange.runtime.spawn(async move { sweeper.sweep().await });
        exchange
    }

    fn start(self: &Arc<Self>, settings: Settings, name: String, kind: Kind, reply: Reply) {
        let Nameservers::Explicit(servers) = &settings.nameservers else {
            return self.via_hickory(settings, name, kind, reply);
        };
        let tcp = settings.protocol == Protocol::Tcp || self.is_big(&name, kind);
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
            tcp,
            switched: false,
            resent: 0,
            attempt_deadline: now,
            deadline: now + settings.timeout,
            settings,
            reply,
        };
        let mut table = match self.pending.lock() {
            Ok(table) => table,
            Err(_) => {
                return self.fail(
                    pending.reply,
                    Error::Other("the lookup table is poisoned".into()),
                )
            }
        };
        let Some(id) = self.free_id(&table) else {
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
        let room = pending.tcp
            || self
                .windows
                .lock()
                .map(|mut windows| {
                    let window = windows.entry(pending.servers[0]).or_default();
                    if window.sent < WINDOW {
                        window.sent += 1;
                        true
                    } else {
                        // The window is full: the query waits for an answer
                        // (or a timeout) to make room, so a burst cannot
                        // overflow the server's receive buffer and lose queries.
                        window.backlog.push_back(id);
                        false
                    }
                })
                .unwrap_or(true);
        let send = if room {
            self.next_attempt(&mut pending, now)
        } else {
            pending.queued = true;
            pending.attempt_deadline = pending.deadline;
            None
        };
        table.lookups.insert(id, pending);
        table.schedule(id);
        let in_flight = table.lookups.len();
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

    /// `count` sent queries to `server` have ended: make room in its window
    /// and send as many queued ones. Called with the table locked.
    fn finished(
        self: &Arc<Self>,
        table: &mut Table,
        server: SocketAddr,
        count: usize,
    ) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let Ok(mut windows) = self.windows.lock() else {
            return out;
        };
        let Some(window) = windows.get_mut(&server) else {
            return out;
        };
        window.sent = window.sent.saturating_sub(count);
        let now = Instant::now();
        while window.sent < WINDOW {
            let Some(id) = window.backlog.pop_front() else {
                break;
            };
            if let Some(pending) = table.lookups.get_mut(&id).filter(|p| p.queued) {
                pending.queued = false;
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
        let server = pending.servers[pending.next_server % pending.servers.len()];
        pending.next_server += 1;
        pending.attempts_left = pending.attempts_left.saturating_sub(1);
        pending.attempt_deadline = (now + pending.settings.attempt_timeout()).min(pending.deadline);
        if pending.tcp {
            self.tcp_send(server, &pending.packet);
            return None;
        }
        self.socket(server)
            .map(|socket| (socket, pending.packet.clone()))
    }

    /// Sends a query on the server's TCP connection, opening one if needed.
    /// Never waits: the connection's task writes.
    fn tcp_send(self: &Arc<Self>, server: SocketAddr, packet: &[u8]) {
        let Ok(len) = u16::try_from(packet.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(packet.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(packet);
        let Ok(mut conns) = self.tcp.lock() else {
            return;
        };
        if let Some((_, sender, _)) = conns.get(&server) {
            match sender.send(framed) {
                Ok(()) => return,
                Err(returned) => framed = returned.0,
            }
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        let _ = sender.send(framed);
        let conn = self.counter.fetch_add(1, Ordering::Relaxed);
        let link = Arc::new(TcpLink::new());
        conns.insert(server, (conn, sender, Arc::clone(&link)));
        let exchange = Arc::clone(self);
        self.runtime
            .spawn(async move { exchange.tcp_connection(server, conn, link, receiver).await });
    }

    /// Closes the server's TCP connection if it has stalled: queries wait
    /// on it and nothing came back for `quiet` (a server that accepted the
    /// connection but does not serve it, or a dead peer). The next query
    /// opens a new one. Called with the table locked, before the retries
    /// are sent.
    fn tcp_reset_stalled(&self, server: SocketAddr, now: Instant, quiet: Duration) {
        if let Ok(mut conns) = self.tcp.lock() {
            if conns
                .get(&server)
                .is_some_and(|(_, _, link)| link.stalled(now, quiet))
            {
                // Dropping the sender ends the connection's task.
                conns.remove(&server);
            }
        }
    }

    /// Forgets connection `conn` if nothing waits on it: no query queued,
    /// none unanswered. Under the lock, so no query can be queued after.
    fn tcp_retire_idle(
        &self,
        server: SocketAddr,
        conn: u64,
        link: &TcpLink,
        queries: &mpsc::UnboundedReceiver<Vec<u8>>,
    ) -> bool {
        let Ok(mut conns) = self.tcp.lock() else {
            return true;
        };
        let idle = queries.is_empty() && link.unanswered.load(Ordering::Acquire) == 0;
        if idle && conns.get(&server).is_some_and(|(c, _, _)| *c == conn) {
            conns.remove(&server);
        }
        idle
    }

    /// Owns one TCP connection: writes the queries sent to it, while a
    /// reader task hands answers to `answer`. The connection ends when the
    /// server closes it, on an error, when it has been idle for
    /// `TCP_IDLE`, or when the sweeper drops it as stalled.
    async fn tcp_connection(
        self: Arc<Self>,
        server: SocketAddr,
        conn: u64,
        link: Arc<TcpLink>,
        mut queries: mpsc::UnboundedReceiver<Vec<u8>>,
    ) {
        let connect = tokio::time::timeout(TCP_CONNECT, TcpStream::connect(server));
        let Ok(Ok(stream)) = connect.await else {
            // Its queries are retried when their attempts time out.
            return self.tcp_closed(server, conn, false);
        };
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = stream.into_split();
        if let Ok(mut progress) = link.progress.lock() {
            *progress = Instant::now();
        }
        let exchange = Arc::clone(&self);
        let read_link = Arc::clone(&link);
        let reading = self.runtime.spawn(async move {
            loop {
                let mut len = [0u8; 2];
                if reader.read_exact(&mut len).await.is_err() {
                    break;
                }
                let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if reader.read_exact(&mut message).await.is_err() {
                    break;
                }
                read_link.answered();
                let _ = catch_unwind(AssertUnwindSafe(|| exchange.answer(&message, server, true)));
            }
            // Closing drops the senders, which ends the writer below.
            exchange.tcp_closed(server, conn, true);
        });
        loop {
            match tokio::time::timeout(TCP_IDLE, queries.recv()).await {
                Ok(Some(packet)) => {
                    link.unanswered.fetch_add(1, Ordering::AcqRel);
                    if writer.write_all(&packet).await.is_err() {
                        reading.abort();
                        self.tcp_closed(server, conn, true);
                        return;
                    }
                }
                // Replaced, or dropped as stalled.
                Ok(None) => break,
                Err(_) if self.tcp_retire_idle(server, conn, &link, &queries) => break,
                Err(_) => {}
            }
        }
        // The reader stops here; the writer half closes when dropped.
        reading.abort();
    }

    /// Forgets connection `conn` (unless a newer one replaced it). When it
    /// had been open, the queries waiting on the server over TCP are sent
    /// again on a new connection (at most `TCP_RESENDS` times each), since a
    /// server may close an idle connection just as a query is written.
    fn tcp_closed(self: &Arc<Self>, server: SocketAddr, conn: u64, was_open: bool) {
        let current = self.tcp.lock().is_ok_and(|mut conns| {
            let current = conns.get(&server).is_some_and(|(c, _, _)| *c == conn);
            if current {
                conns.remove(&server);
            }
            current
        });
        if !(current && was_open) {
            return;
        }
        let Ok(mut table) = self.pending.lock() else {
            return;
        };
        for pending in table.lookups.values_mut() {
            if pending.tcp && pending.servers.contains(&server) && pending.resent < TCP_RESENDS {
                pending.resent += 1;
                self.tcp_send(server, &pending.packet);
            }
        }
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
        if let Ok(mut outbox) = self.outbox.lock() {
            outbox.push(outgoing);
        }
        if !self.draining.swap(true, Ordering::AcqRel) {
            let exchange = Arc::clone(self);
            self.runtime.spawn(async move { exchange.drain().await });
        }
    }

    async fn drain(self: Arc<Self>) {
        loop {
            let batch = self
                .outbox
                .lock()
                .map(|mut outbox| std::mem::take(&mut *outbox))
                .unwrap_or_default();
            if batch.is_empty() {
                self.draining.store(false, Ordering::Release);
                // A packet queued just before the flag fell is ours to send.
                let more = self.outbox.lock().map(|o| !o.is_empty()).unwrap_or(false);
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

    fn free_id(&self, table: &Table) -> Option<u16> {
        if table.lookups.len() >= usize::from(u16::MAX) {
            return None;
        }
        loop {
            let mut hasher = self.ids.build_hasher();
            hasher.write_u64(self.counter.fetch_add(1, Ordering::Relaxed));
            let id = hasher.finish() as u16;
            if !table.lookups.contains_key(&id) {
                return Some(id);
            }
        }
    }

    /// Whether every one of `servers` has its sockets, opening those of a
    /// new server (at most `MAX_SERVERS` get any; hickory asks the others).
    fn has_sockets(self: &Arc<Self>, servers: &[SocketAddr]) -> bool {
        let Ok(mut sockets) = self.sockets.lock() else {
            return false;
        };
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
        let sockets = self.sockets.lock().ok()?;
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

    async fn receive(self: Arc<Self>, socket: Arc<UdpSocket>, server: SocketAddr) {
        let mut buffer = vec![0u8; RECV_BUFFER];
        loop {
            match socket.recv(&mut buffer).await {
                Ok(len) => {
                    let packet = &buffer[..len];
                    let _ = catch_unwind(AssertUnwindSafe(|| self.answer(packet, server, false)));
                }
                // ICMP errors (nothing listening) surface here; the queries
                // concerned time out or are retried by the sweeper.
                Err(_) => tokio::task::yield_now().await,
            }
        }
    }

    fn answer(self: &Arc<Self>, packet: &[u8], server: SocketAddr, over_tcp: bool) {
        let Ok(message) = Message::from_vec(packet) else {
            return;
        };
        let id = message.metadata.id;
        let pending = {
            let Ok(mut table) = self.pending.lock() else {
                return;
            };
            match table.lookups.get_mut(&id) {
                Some(p) if p.tcp != over_tcp => None,
                // Cut short over UDP: ask the same server again over TCP.
                Some(p)
                    if matches_query(p, &message, packet, server)
                        && message.metadata.truncation
                        && !over_tcp =>
                {
                    p.tcp = true;
                    p.switched = true;
                    p.attempt_deadline =
                        (Instant::now() + p.settings.attempt_timeout()).min(p.deadline);
                    let packet = p.packet.clone();
                    table.schedule(id);
                    self.tcp_send(server, &packet);
                    None
                }
                Some(p) if matches_query(p, &message, packet, server) => {
                    let window = p.servers[0];
                    let done = table.lookups.remove(&id);
                    let send = self.finished(&mut table, window, 1);
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
        let result = result_of(&message, pending.kind);
        if pending.switched && result.is_ok() {
            self.mark_big(&pending.name, pending.kind);
        }
        deliver(pending.reply, result);
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
            let (expired, empty, due) = self.expire(now);
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
            let empty_now = self
                .pending
                .lock()
                .map(|t| t.lookups.is_empty())
                .unwrap_or(true);
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
        let Ok(mut table) = self.pending.lock() else {
            return (Vec::new(), true, None);
        };
        let mut done = Vec::new();
        let mut retry = Vec::new();
        for id in table.take_due(now) {
            match table.lookups.get(&id) {
                Some(p) if now >= p.deadline || p.attempts_left == 0 => done.push(id),
                Some(_) => retry.push(id),
                None => {}
            }
        }
        // A TCP query whose attempt timed out on a connection that answers
        // nothing: that connection is closed, so neither its retry nor the
        // next lookup is sent on it.
        for id in done.iter().chain(&retry) {
            if let Some(p) = table.lookups.get(id).filter(|p| p.tcp && !p.queued) {
                let last = p.servers[(p.next_server + p.servers.len() - 1) % p.servers.len()];
                self.tcp_reset_stalled(last, now, p.settings.attempt_timeout());
            }
        }
        let removed: Vec<Pending> = done
            .iter()
            .filter_map(|id| table.lookups.remove(id))
            .collect();
        let mut finished: HashMap<SocketAddr, usize> = HashMap::new();
        for p in removed.iter().filter(|p| !p.queued) {
            *finished.entry(p.servers[0]).or_default() += 1;
        }
        let expired = removed.into_iter().map(|p| p.reply).collect();
        let released: Vec<Outgoing> = finished
            .into_iter()
            .flat_map(|(server, count)| self.finished(&mut table, server, count))
            .collect();
        let mut sends = Vec::with_capacity(retry.len());
        for id in retry {
            if let Some(pending) = table.lookups.get_mut(&id) {
                sends.push(self.next_attempt(pending, now));
                table.schedule(id);
            }
        }
        let empty = table.lookups.is_empty();
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

    fn is_big(&self, name: &str, kind: Kind) -> bool {
        let Ok(big) = self.big.lock() else {
            return false;
        };
        if big.is_empty() {
            return false;
        }
        big.get(&(name.to_ascii_lowercase(), kind))
            .is_some_and(|until| *until > Instant::now())
    }

    fn mark_big(&self, name: &str, kind: Kind) {
        if let Ok(mut big) = self.big.lock() {
            if big.len() >= MAX_BIG {
                let now = Instant::now();
                big.retain(|_, until| *until > now);
                if big.len() >= MAX_BIG {
                    big.clear();
                }
            }
            big.insert((name.to_ascii_lowercase(), kind), Instant::now() + BIG_FOR);
        }
    }

    fn via_hickory(&self, settings: Settings, name: String, kind: Kind, reply: Reply) {
        self.runtime.spawn(async move {
            deliver(reply, resolver::lookup(&settings, &name, kind).await);
        });
    }

    /// Replies with an error from the runtime, never from the caller's thread.
    fn fail(&self, reply: Reply, error: Error) {
        self.runtime
            .spawn(async move { deliver(reply, Err(error)) });
    }
}

fn deliver(reply: Reply, result: Result<Answer, Error>) {
    let _ = catch_unwind(AssertUnwindSafe(move || reply(result)));
}

/// Bytes of a DNS header.
const HEADER: usize = 12;
/// The OPT record advertising `EDNS_PAYLOAD`: root owner, type 41, the
/// payload as class, TTL 0 (version 0, no flags), no data.
const OPT: [u8; 11] = [
    0,
    0,
    41,
    (EDNS_PAYLOAD >> 8) as u8,
    (EDNS_PAYLOAD & 0xff) as u8,
    0,
    0,
    0,
    0,
    0,
    0,
];

/// The query packet: a header asking for recursion, one question of class
/// IN and the OPT record. Written by hand because it runs on the caller's
/// thread (a BEAM scheduler), where hickory's name parsing and message
/// encoding cost several times more. `name` comes from
/// `parse::query_name`; its labels are checked again here all the same.
fn encode(id: u16, name: &str, kind: Kind) -> Result<Vec<u8>, Error> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    let mut packet = Vec::with_capacity(HEADER + bare.len() + 2 + 4 + OPT.len());
    packet.extend_from_slice(&id.to_be_bytes());
    // RD set; one question, no answer or authority records, one additional.
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
    for label in bare.split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|len| (1..=63).contains(len))
            .ok_or_else(|| {
                Error::InvalidName(format!("{name:?} has an empty or too long label"))
            })?;
        packet.push(len);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    if packet.len() - HEADER > 255 {
        return Err(Error::InvalidName(format!(
            "{name:?} is longer than 255 bytes"
        )));
    }
    packet.extend_from_slice(&u16::from(kind.record_type()).to_be_bytes());
    packet.extend_from_slice(&[0, 1]);
    packet.extend_from_slice(&OPT);
    Ok(packet)
}

/// The question of a query made by `encode`: name, type and class.
fn question(packet: &[u8]) -> &[u8] {
    let end = packet.len().saturating_sub(OPT.len());
    packet.get(HEADER..end).unwrap_or_default()
}

/// An answer is ours when it is a response from one of the servers asked
/// and echoes our question (the name compared without regard to case).
fn matches_query(pending: &Pending, message: &Message, raw: &[u8], server: SocketAddr) -> bool {
    let asked = question(&pending.packet);
    message.metadata.message_type == MessageType::Response
        && pending.servers.contains(&server)
        && message.queries.len() == 1
        && raw
            .get(HEADER..HEADER + asked.len())
            .is_some_and(|echoed| echoed.eq_ignore_ascii_case(asked))
}

/// The result a response gives, by its code and records.
pub fn result_of(message: &Message, kind: Kind) -> Result<Answer, Error> {
    match message.metadata.response_code {
        ResponseCode::NoError => {
            let answer = convert(kind, &message.answers, &message.additionals);
            if is_empty(&answer) {
                Err(Error::NoData)
            } else {
                Ok(answer)
            }
        }
        ResponseCode::NXDomain => Err(Error::NxDomain),
        ResponseCode::ServFail => Err(Error::ServFail),
        ResponseCode::Refused => Err(Error::Refused),
        code => Err(Error::Other(format!("the server answered {code}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::op::{OpCode, Query};
    use hickory_resolver::proto::rr::rdata::SRV;
    use hickory_resolver::proto::rr::Name;
    use hickory_resolver::proto::rr::{RData, Record};
    use proptest::prelude::*;
    use std::str::FromStr;

    fn response(code: ResponseCode, answers: Vec<Record>) -> Message {
        let mut message = Message::response(7, OpCode::Query);
        message.metadata.response_code = code;
        message.add_answers(answers);
        message
    }

    fn name(text: &str) -> Name {
        Name::from_str(text).expect("test name")
    }

    #[test]
    fn response_codes_become_errors() {
        assert_eq!(
            result_of(&response(ResponseCode::NXDomain, vec![]), Kind::Srv),
            Err(Error::NxDomain)
        );
        assert_eq!(
            result_of(&response(ResponseCode::NoError, vec![]), Kind::Srv),
            Err(Error::NoData)
        );
        assert_eq!(
            result_of(&response(ResponseCode::ServFail, vec![]), Kind::A),
            Err(Error::ServFail)
        );
        assert_eq!(
            result_of(&response(ResponseCode::Refused, vec![]), Kind::Aaaa),
            Err(Error::Refused)
        );
        assert!(matches!(
            result_of(&response(ResponseCode::NotImp, vec![]), Kind::Srv),
            Err(Error::Other(_))
        ));
    }

    #[test]
    fn records_of_another_type_are_no_data() {
        let srv = Record::from_rdata(
            name("app.test."),
            0,
            RData::SRV(SRV::new(0, 1, 4000, name("n1.app.test."))),
        );
        assert_eq!(
            result_of(&response(ResponseCode::NoError, vec![srv.clone()]), Kind::A),
            Err(Error::NoData)
        );
        assert!(matches!(
            result_of(&response(ResponseCode::NoError, vec![srv]), Kind::Srv),
            Ok(Answer::Srv(records)) if records.len() == 1
        ));
    }

    #[test]
    fn queries_carry_the_id_the_question_and_edns() {
        for (text, kind) in [
            ("app.test.", Kind::Srv),
            ("App.Test", Kind::A),
            ("localhost", Kind::Aaaa),
        ] {
            let packet = encode(4242, text, kind).expect("encodes");
            let message = Message::from_vec(&packet).expect("decodes");
            assert_eq!(message.metadata.id, 4242);
            assert!(message.metadata.recursion_desired);
            assert_eq!(message.queries.len(), 1);
            let asked = message.queries[0].name().to_ascii();
            assert_eq!(asked.trim_end_matches('.'), text.trim_end_matches('.'));
            assert_eq!(message.queries[0].query_type(), kind.record_type());
            assert_eq!(message.max_payload(), EDNS_PAYLOAD);
            let edns = message.edns.as_ref().expect("an OPT record");
            assert!(!edns.flags().dnssec_ok);
        }
    }

    proptest! {
        #[test]
        fn accepted_names_are_sent_as_given(
            labels in proptest::collection::vec("[a-zA-Z0-9_-]{1,63}", 1..6),
            dot in any::<bool>(),
        ) {
            let text = format!("{}{}", labels.join("."), if dot { "." } else { "" });
            if let Ok(query) = crate::parse::query_name(text.as_bytes()) {
                let packet = encode(1, &query, Kind::Srv).expect("an accepted name encodes");
                let message = Message::from_vec(&packet).expect("decodes");
                let asked: Vec<&[u8]> = message.queries[0].name().iter().collect();
                let given: Vec<&[u8]> = labels.iter().map(|l| l.as_bytes()).collect();
                prop_assert_eq!(asked, given);
            }
        }
    }

    #[test]
    fn names_that_cannot_be_sent_are_refused() {
        let long_label = format!("{}.test", "a".repeat(64));
        let long_name = vec!["abcdefg"; 40].join(".");
        for text in ["", ".", "a..b", long_label.as_str(), long_name.as_str()] {
            assert!(
                matches!(encode(1, text, Kind::A), Err(Error::InvalidName(_))),
                "{text:?}"
            );
        }
    }

    fn pending_for(server: SocketAddr, packet: Vec<u8>) -> Pending {
        Pending {
            name: "app.test.".into(),
            kind: Kind::Srv,
            packet,
            servers: vec![server].into(),
            next_server: 0,
            attempts_left: 1,
            queued: false,
            tcp: false,
            switched: false,
            resent: 0,
            attempt_deadline: Instant::now(),
            deadline: Instant::now(),
            settings: Settings::new(Nameservers::Explicit(vec![server]), 100, 1, Protocol::Udp)
                .expect("settings"),
            reply: Box::new(|_| {}),
        }
    }

    #[test]
    fn due_lookups_come_out_earliest_first_and_stale_entries_are_skipped() {
        let server: SocketAddr = "127.0.0.1:53".parse().expect("address");
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut table = Table::default();
        for (id, ms) in [(3, 30), (1, 10), (2, 20)] {
            let mut p = pending_for(server, Vec::new());
            p.attempt_deadline = at(ms);
            table.lookups.insert(id, p);
            table.schedule(id);
        }
        assert_eq!(table.next_due(), Some(at(10)));
        assert_eq!(table.take_due(at(5)), Vec::<u16>::new());
        assert_eq!(table.take_due(at(20)), vec![1, 2]);
        // Lookup 1 was not removed: its entry is gone all the same.
        assert_eq!(table.take_due(at(20)), Vec::<u16>::new());
        // Lookup 3 gets a later deadline; its first entry goes stale.
        if let Some(p) = table.lookups.get_mut(&3) {
            p.attempt_deadline = at(50);
        }
        table.schedule(3);
        assert_eq!(table.take_due(at(40)), Vec::<u16>::new());
        assert_eq!(table.take_due(at(50)), vec![3]);
        // An ended lookup is never due.
        table.schedule(2);
        table.lookups.remove(&2);
        assert_eq!(table.take_due(at(100)), Vec::<u16>::new());
        assert_eq!(table.next_due(), None);
    }

    #[test]
    fn stale_entries_are_bounded() {
        let server: SocketAddr = "127.0.0.1:53".parse().expect("address");
        let mut table = Table::default();
        table.lookups.insert(7, pending_for(server, Vec::new()));
        for _ in 0..10_000 {
            table.schedule(7);
        }
        assert!(table.due.len() <= 2 * table.lookups.len() + 1025);
        assert_eq!(table.take_due(Instant::now()), vec![7]);
    }

    #[test]
    fn answers_must_echo_the_question_in_any_case() {
        let packet = encode(9, "app.test.", Kind::Srv).expect("encodes");
        let server: SocketAddr = "127.0.0.1:53".parse().expect("address");
        let pending = pending_for(server, packet.clone());
        let answer_to = |text: &str, kind: Kind| {
            let mut message = Message::response(9, OpCode::Query);
            message.add_query(Query::query(name(text), kind.record_type()));
            let raw = message.to_vec().expect("encodes");
            (message, raw)
        };
        let (same, raw) = answer_to("APP.test.", Kind::Srv);
        assert!(matches_query(&pending, &same, &raw, server));
        let other_server: SocketAddr = "127.0.0.2:53".parse().expect("address");
        assert!(!matches_query(&pending, &same, &raw, other_server));
        let (other_name, raw) = answer_to("app.test2.", Kind::Srv);
        assert!(!matches_query(&pending, &other_name, &raw, server));
        let (other_type, raw) = answer_to("app.test.", Kind::A);
        assert!(!matches_query(&pending, &other_type, &raw, server));
        let query = Message::from_vec(&packet).expect("decodes");
        assert!(!matches_query(&pending, &query, &packet, server));
    }
}

#[cfg(test)]
#[path = "exchange_tcp_tests.rs"]
mod tcp_tests;
