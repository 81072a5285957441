//! The UDP transport: a fresh socket for every query sent (RFC 5452: its
//! source port is the kernel's random pick, the query ID the table's), read
//! by a task of its own that hands the datagrams up to the exchange
//! (`Upstream::answer`) until the lookup is answered or its time is up; the
//! outbox, where queries wait for the runtime to send them; and the
//! per-server windows of queries sent and unanswered.
//!
//! Each socket is connected to the server asked, so the kernel delivers
//! only datagrams from that address and port, and reports an ICMP "port
//! unreachable" as a refused read (`Upstream::unreachable`), on which the
//! lookup moves on at once.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::runtime::Handle;
use tokio::sync::Notify;

use super::{lock, Upstream};
use crate::config::local_for;
use crate::wire;

/// Windows kept before those without queries are forgotten.
const MAX_SERVERS: usize = 64;
const RECV_BUFFER: usize = 65_535;
/// Failed reads in a row that are retried at once; past them, reads are
/// paced, doubling from 1 ms.
const RECV_ERRORS_UNPACED: u32 = 4;
/// Failed reads in a row after which a query's socket is given up (the
/// sweeper retries the query).
const RECV_ERRORS: u32 = 64;
/// The longest pause between two reads of a socket that keeps failing.
const RECV_PAUSE: Duration = Duration::from_millis(100);
/// Queries sent and unanswered at once, per server. A local server
/// reading one socket drops what its receive buffer cannot hold (about 160
/// small datagrams on loopback); a lost query costs a whole attempt timeout.
pub(super) const WINDOW: usize = 96;

/// A query to send over UDP.
pub(super) struct Outgoing {
    pub(super) server: SocketAddr,
    /// The lookup it belongs to.
    pub(super) id: u16,
    pub(super) packet: Vec<u8>,
    /// Until when its socket waits for an answer (an answer to an earlier
    /// attempt still counts while a later one is out).
    pub(super) until: Instant,
    /// Notified when the lookup ends, so that its sockets close early.
    pub(super) ended: Arc<Notify>,
}

pub(super) struct Udp {
    runtime: Handle,
    /// Queries for the runtime to send. A leaf lock: taken alone.
    outbox: Mutex<Vec<Outgoing>>,
    /// A task drains the outbox.
    draining: AtomicBool,
}

impl Udp {
    pub(super) fn new(runtime: Handle) -> Self {
        Udp {
            runtime,
            outbox: Mutex::new(Vec::new()),
            draining: AtomicBool::new(false),
        }
    }

    /// Sends without waiting, from the caller's thread: opens the query's
    /// socket (no network I/O), sends on it if its buffer has room, and
    /// leaves the reading to the runtime.
    pub(super) fn send_now<U: Upstream>(
        self: &Arc<Self>,
        upstream: &Arc<U>,
        send: Option<Outgoing>,
    ) {
        let Some(outgoing) = send else {
            return;
        };
        let Some(socket) = self.open_socket(outgoing.server) else {
            // No socket (out of descriptors): the sweeper retries at the
            // attempt deadline.
            return;
        };
        match socket.try_send(&outgoing.packet) {
            Ok(_) => self.listen(upstream, socket, outgoing, false),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.listen(upstream, socket, outgoing, true)
            }
            // Refused at once: an ICMP error already queued can only be
            // for this fresh socket's own peer.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                upstream.unreachable(outgoing.server, outgoing.id)
            }
            Err(_) => {}
        }
    }

    /// Queues a query for the runtime. One task drains the queue, so a
    /// burst of lookups costs one wake-up of the runtime, not one each.
    pub(super) fn send_later<U: Upstream>(
        self: &Arc<Self>,
        upstream: &Arc<U>,
        send: Option<Outgoing>,
    ) {
        let Some(outgoing) = send else {
            return;
        };
        lock(&self.outbox).push(outgoing);
        if !self.draining.swap(true, Ordering::AcqRel) {
            let udp = Arc::clone(self);
            let upstream = Arc::clone(upstream);
            self.runtime.spawn(async move { udp.drain(upstream).await });
        }
    }

    async fn drain<U: Upstream>(self: Arc<Self>, upstream: Arc<U>) {
        loop {
            let batch = std::mem::take(&mut *lock(&self.outbox));
            if batch.is_empty() {
                self.draining.store(false, Ordering::Release);
                // A query queued just before the flag fell is ours to send.
                let more = !lock(&self.outbox).is_empty();
                if more && !self.draining.swap(true, Ordering::AcqRel) {
                    continue;
                }
                return;
            }
            for outgoing in batch {
                self.send_now(&upstream, Some(outgoing));
            }
        }
    }

    /// A new socket connected to `server`, on a port the kernel picks at
    /// random from its ephemeral range.
    fn open_socket(&self, server: SocketAddr) -> Option<UdpSocket> {
        let std_socket = std::net::UdpSocket::bind(local_for(server)).ok()?;
        std_socket.connect(server).ok()?;
        std_socket.set_nonblocking(true).ok()?;
        let _guard = self.runtime.enter();
        UdpSocket::from_std(std_socket).ok()
    }

    /// Starts the task that reads the answers to one query (and first
    /// sends it, when the socket's buffer was full).
    fn listen<U: Upstream>(
        &self,
        upstream: &Arc<U>,
        socket: UdpSocket,
        outgoing: Outgoing,
        send_first: bool,
    ) {
        let upstream = Arc::clone(upstream);
        self.runtime.spawn(async move {
            if send_first && socket.send(&outgoing.packet).await.is_err() {
                return;
            }
            let Outgoing {
                server,
                id,
                until,
                ended,
                ..
            } = outgoing;
            let ended = ended.notified();
            let until = tokio::time::sleep_until(tokio::time::Instant::from_std(until));
            let reading = read_datagrams(&socket, |packet| {
                catch_unwind(AssertUnwindSafe(|| {
                    upstream.answer(packet, server, false, Some(id))
                }))
                .unwrap_or(true)
            });
            tokio::select! {
                _ = ended => {}
                _ = until => {}
                error = reading => {
                    if error.is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused) {
                        upstream.unreachable(server, id);
                    }
                }
            }
        });
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
    /// Makes room for the windows of `servers`: past `MAX_SERVERS`
    /// windows, those with no query sent or waiting are forgotten (a window
    /// is made again when a lookup enters it).
    pub(super) fn admit(&mut self, servers: &[SocketAddr]) {
        if self.0.len() + servers.len() > MAX_SERVERS {
            self.0.retain(|server, w| {
                w.sent > 0 || !w.backlog.is_empty() || servers.contains(server)
            });
        }
    }

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

/// Sends `packet` to `server` on a socket of its own and says whether an
/// answer to it (any response code) comes back within `wait`: a probe of a
/// server that failed.
pub(super) async fn ask_once(server: SocketAddr, packet: &[u8], wait: Duration) -> bool {
    let Ok(socket) = UdpSocket::bind(local_for(server)).await else {
        return false;
    };
    if socket.connect(server).await.is_err() || socket.send(packet).await.is_err() {
        return false;
    }
    let answered = read_datagrams(&socket, |raw| wire::is_raw_answer(packet, raw));
    matches!(tokio::time::timeout(wait, answered).await, Ok(None))
}

/// What a receiver reads: a UDP socket, or a stand-in in tests. The
/// datagram is appended to `buffer`'s spare capacity, so that a buffer
/// needs no zeroing.
trait Datagrams {
    fn recv_buf(&self, buffer: &mut Vec<u8>)
        -> impl Future<Output = std::io::Result<usize>> + Send;
}

impl Datagrams for UdpSocket {
    fn recv_buf(
        &self,
        buffer: &mut Vec<u8>,
    ) -> impl Future<Output = std::io::Result<usize>> + Send {
        UdpSocket::recv_buf(self, buffer)
    }
}

/// Hands every datagram read from `socket` to `on_packet` until it says
/// the query is done (then `None`), a read is refused (an ICMP error:
/// nothing listens at the server), or reads have failed `RECV_ERRORS`
/// times in a row (then the error).
async fn read_datagrams<S: Datagrams>(
    socket: &S,
    mut on_packet: impl FnMut(&[u8]) -> bool,
) -> Option<std::io::Error> {
    // Allocated, not zeroed: a query's socket usually reads one datagram.
    let mut buffer = Vec::with_capacity(RECV_BUFFER);
    let mut errors = 0;
    loop {
        buffer.clear();
        match socket.recv_buf(&mut buffer).await {
            Ok(len) => {
                errors = 0;
                if on_packet(&buffer[..len]) {
                    return None;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Some(e),
            // Other errors are paced, so a socket that keeps failing
            // costs no CPU.
            Err(e) => {
                errors += 1;
                if errors >= RECV_ERRORS {
                    return Some(e);
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

    /// A socket whose every read fails with `kind`, counting the reads.
    struct Broken(std::sync::atomic::AtomicUsize, std::io::ErrorKind);

    impl Datagrams for Broken {
        fn recv_buf(
            &self,
            _buffer: &mut Vec<u8>,
        ) -> impl Future<Output = std::io::Result<usize>> + Send {
            self.0.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Err(std::io::Error::from(self.1)))
        }
    }

    #[test]
    fn a_refused_read_ends_the_query_at_once() {
        let runtime = runtime();
        let broken = Broken(Default::default(), std::io::ErrorKind::ConnectionRefused);
        let error = runtime.block_on(read_datagrams(&broken, |_| false));
        assert_eq!(
            error.map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
        assert_eq!(broken.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_socket_that_keeps_failing_is_not_read_in_a_loop() {
        let runtime = runtime();
        let broken = Arc::new(Broken(Default::default(), std::io::ErrorKind::Other));
        let reader = Arc::clone(&broken);
        runtime.block_on(async move {
            let reading = read_datagrams(&*reader, |_| false);
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
        let broken = Broken(Default::default(), std::io::ErrorKind::Other);
        let started = tokio::time::Instant::now();
        let (error, paused) = runtime.block_on(async {
            let error = read_datagrams(&broken, |_| false).await;
            (error, started.elapsed())
        });
        assert_eq!(error.map(|e| e.kind()), Some(std::io::ErrorKind::Other));
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
