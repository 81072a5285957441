//! The UDP transport: a pool of connected sockets per server, kept for the
//! life of the VM, each read by a receiver task that hands every datagram
//! up to the exchange (`Upstream::answer`); the outbox, where packets wait
//! for the runtime to send them; and the per-server windows of queries
//! sent and unanswered.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::runtime::Handle;

use super::{lock, Upstream};

/// Servers with sockets of their own; past this, lookups take the hickory path.
const MAX_SERVERS: usize = 64;
/// Sockets per server.
const SOCKETS_PER_SERVER: usize = 8;
const RECV_BUFFER: usize = 65_535;
/// Failed reads in a row after which a UDP socket is replaced by a new one.
const RECV_ERRORS: u32 = 64;
/// Failed reads in a row that are retried at once (an ICMP error reports
/// one lost query); past them, reads are paced, doubling from 1 ms.
const RECV_ERRORS_UNPACED: u32 = 4;
/// The longest pause between two reads of a socket that keeps failing.
const RECV_PAUSE: Duration = Duration::from_millis(100);
/// Queries sent and unanswered at once, per server. A local server
/// reading one socket drops what its receive buffer cannot hold (about 160
/// small datagrams on loopback); a lost query costs a whole attempt timeout.
pub(super) const WINDOW: usize = 96;

/// A packet to send and the socket to send it on.
pub(super) type Outgoing = (Arc<UdpSocket>, Vec<u8>);

pub(super) struct Udp {
    runtime: Handle,
    /// Per server: its sockets. Taken after the lookups lock (or alone),
    /// never with the TCP connections lock (see the lock order in
    /// `exchange`).
    pools: Mutex<HashMap<SocketAddr, Vec<Arc<UdpSocket>>>>,
    /// The turn of the next socket taken from a pool.
    next_turn: AtomicUsize,
    /// Packets for the runtime to send. A leaf lock: taken alone.
    outbox: Mutex<Vec<Outgoing>>,
    /// A task drains the outbox.
    draining: AtomicBool,
}

impl Udp {
    pub(super) fn new(runtime: Handle) -> Self {
        Udp {
            runtime,
            pools: Mutex::new(HashMap::new()),
            next_turn: AtomicUsize::new(0),
            outbox: Mutex::new(Vec::new()),
            draining: AtomicBool::new(false),
        }
    }

    /// Whether every one of `servers` has its sockets, opening those of a
    /// new server (at most `MAX_SERVERS` get any; hickory asks the others).
    pub(super) fn has_sockets<U: Upstream>(
        self: &Arc<Self>,
        upstream: &Arc<U>,
        servers: &[SocketAddr],
    ) -> bool {
        let mut pools = lock(&self.pools);
        servers.iter().all(|server| {
            pools.contains_key(server) || self.open_pool(upstream, &mut pools, *server)
        })
    }

    /// Opens a server's sockets and starts their receivers. Several sockets
    /// per server spread a burst of answers over several receive buffers
    /// (one buffer overflows at a few hundred answers) and vary the source
    /// port.
    fn open_pool<U: Upstream>(
        self: &Arc<Self>,
        upstream: &Arc<U>,
        pools: &mut HashMap<SocketAddr, Vec<Arc<UdpSocket>>>,
        server: SocketAddr,
    ) -> bool {
        if pools.len() >= MAX_SERVERS {
            return false;
        }
        let Some(pool) = (0..SOCKETS_PER_SERVER)
            .map(|_| self.open_socket(server))
            .collect::<Option<Vec<_>>>()
        else {
            return false;
        };
        for socket in &pool {
            let udp = Arc::clone(self);
            let upstream = Arc::clone(upstream);
            let receiver = Arc::clone(socket);
            self.runtime
                .spawn(async move { udp.receive(upstream, receiver, server).await });
        }
        pools.insert(server, pool);
        true
    }

    /// One of the server's sockets, in turn (opened by `has_sockets`).
    pub(super) fn socket(&self, server: SocketAddr) -> Option<Arc<UdpSocket>> {
        let pools = lock(&self.pools);
        let pool = pools.get(&server)?;
        let turn = self.next_turn.fetch_add(1, Ordering::Relaxed);
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
    async fn receive<U: Upstream>(
        self: Arc<Self>,
        upstream: Arc<U>,
        socket: Arc<UdpSocket>,
        server: SocketAddr,
    ) {
        let mut socket = socket;
        loop {
            let _persistent = read_datagrams(&*socket, |packet| {
                let _ = catch_unwind(AssertUnwindSafe(|| upstream.answer(packet, server, false)));
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
        let mut pools = lock(&self.pools);
        let slot = pools
            .get_mut(&server)?
            .iter_mut()
            .find(|socket| Arc::ptr_eq(socket, old))?;
        *slot = Arc::clone(&fresh);
        Some(fresh)
    }

    /// Sends without waiting; a full socket buffer hands the packet to the
    /// runtime, which waits until the socket can take it.
    pub(super) fn send_now(self: &Arc<Self>, send: Option<Outgoing>) {
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
    pub(super) fn send_later(self: &Arc<Self>, send: Option<Outgoing>) {
        let Some(outgoing) = send else {
            return;
        };
        lock(&self.outbox).push(outgoing);
        if !self.draining.swap(true, Ordering::AcqRel) {
            let udp = Arc::clone(self);
            self.runtime.spawn(async move { udp.drain().await });
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
}

/// The queries of one server: at most `WINDOW` sent and unanswered, the
/// rest waiting in arrival order.
#[derive(Default)]
struct Window {
    sent: usize,
    backlog: VecDeque<u16>,
}

/// Per server: queries sent over UDP and not yet ended, and those waiting
/// for room. Only lookups sent over UDP take a slot, in the window of
/// their first server.
#[derive(Default)]
pub(super) struct Windows(HashMap<SocketAddr, Window>);

impl Windows {
    /// Takes a slot of `server`'s window for lookup `id`. When the window
    /// is full (false), the lookup waits for an answer or a timeout to
    /// make room, so that a burst cannot overflow the server's receive
    /// buffer and lose queries.
    pub(super) fn enter(&mut self, server: SocketAddr, id: u16) -> bool {
        let window = self.0.entry(server).or_default();
        if window.sent < WINDOW {
            window.sent += 1;
            true
        } else {
            window.backlog.push_back(id);
            false
        }
    }

    /// `count` lookups holding a slot of `server`'s window have ended:
    /// offers the room to the waiting ones in arrival order. `admit` sends
    /// the one offered and says whether it took the slot (not when it has
    /// ended meanwhile).
    pub(super) fn release(
        &mut self,
        server: SocketAddr,
        count: usize,
        mut admit: impl FnMut(u16) -> bool,
    ) {
        let Some(window) = self.0.get_mut(&server) else {
            return;
        };
        window.sent = window.sent.saturating_sub(count);
        while window.sent < WINDOW {
            let Some(id) = window.backlog.pop_front() else {
                break;
            };
            if admit(id) {
                window.sent += 1;
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

#[cfg(test)]
mod tests {
    use super::super::tests::runtime;
    use super::*;

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
