//! The TCP transport: at most one connection per server, opened by the
//! first query that needs it and closed when idle, stalled or broken.
//!
//! A connection is a task that writes the queries queued for it, and a
//! reader task that hands every message it reads up to the exchange
//! (`Upstream::answer`). When a connection that had been open closes, the
//! exchange is told (`Upstream::tcp_closed`), so that it sends the queries
//! waiting on it again (at most `TCP_RESENDS` times each).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::{lock, Upstream};

/// How long opening a TCP connection to a server may take.
const TCP_CONNECT: Duration = Duration::from_secs(2);
/// Times a TCP query is sent again when its connection closes.
pub(super) const TCP_RESENDS: u8 = 2;
/// A TCP connection with no query unanswered for this long is closed.
/// Servers serve a bounded number of TCP connections at once (dnsmasq 20
/// by default), so a slot held by an idle client is one that another node
/// waits for: long enough to carry a burst of lookups, short enough that a
/// hundred nodes polling every second fit in twenty slots.
const TCP_IDLE: Duration = Duration::from_millis(100);

/// The open TCP connection of one server.
struct Connection {
    /// Its number, so that a connection that ends forgets itself only (not
    /// the one that replaced it).
    number: u64,
    /// Its query queue, framed; dropping it ends the connection.
    queries: mpsc::UnboundedSender<Vec<u8>>,
    link: Arc<TcpLink>,
}

/// What the sweeper needs to know of a TCP connection to tell a slow one
/// from a dead one: queries written and not answered, and when it last
/// read an answer.
struct TcpLink {
    unanswered: AtomicU64,
    /// Taken alone by the reader, and under the connections lock by
    /// `reset_stalled` (the lock order is written in `exchange`).
    last_read: Mutex<Option<Instant>>,
}

impl TcpLink {
    fn new() -> Self {
        TcpLink {
            unanswered: AtomicU64::new(0),
            last_read: Mutex::new(None),
        }
    }

    fn answered(&self) {
        let _ = self
            .unanswered
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        *lock(&self.last_read) = Some(Instant::now());
    }

    /// Whether queries wait and no answer came back since `since`.
    fn stalled(&self, since: Instant) -> bool {
        self.unanswered.load(Ordering::Acquire) > 0
            && lock(&self.last_read).is_none_or(|read| read < since)
    }
}

pub(super) struct Tcp {
    runtime: Handle,
    /// Per server: its open connection. Taken after the lookups lock (or
    /// alone), never with the UDP pools lock; `TcpLink::last_read` may be
    /// taken under it (see the lock order in `exchange`).
    connections: Mutex<HashMap<SocketAddr, Connection>>,
    /// The number of the next connection opened.
    next_number: AtomicU64,
}

impl Tcp {
    pub(super) fn new(runtime: Handle) -> Self {
        Tcp {
            runtime,
            connections: Mutex::new(HashMap::new()),
            next_number: AtomicU64::new(0),
        }
    }

    /// Sends a query on the server's TCP connection, opening one if needed.
    /// Never waits: the connection's task writes.
    pub(super) fn send<U: Upstream>(
        self: &Arc<Self>,
        upstream: &Arc<U>,
        server: SocketAddr,
        packet: &[u8],
    ) {
        let Ok(len) = u16::try_from(packet.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(packet.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(packet);
        let mut conns = lock(&self.connections);
        if let Some(conn) = conns.get(&server) {
            match conn.queries.send(framed) {
                Ok(()) => return,
                Err(returned) => framed = returned.0,
            }
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        let _ = sender.send(framed);
        let number = self.next_number.fetch_add(1, Ordering::Relaxed);
        let link = Arc::new(TcpLink::new());
        conns.insert(
            server,
            Connection {
                number,
                queries: sender,
                link: Arc::clone(&link),
            },
        );
        let tcp = Arc::clone(self);
        let upstream = Arc::clone(upstream);
        self.runtime.spawn(async move {
            tcp.connection(upstream, server, number, link, receiver)
                .await
        });
    }

    /// Closes the server's TCP connection if it has stalled: queries wait
    /// on it and no answer came back since `since`, when the timed-out
    /// attempt was sent (a server that accepted the connection but does not
    /// serve it, or a dead peer). The next query opens a new one. Called
    /// with the lookups locked, before the retries are sent.
    pub(super) fn reset_stalled(&self, server: SocketAddr, since: Instant) {
        let mut conns = lock(&self.connections);
        if conns
            .get(&server)
            .is_some_and(|conn| conn.link.stalled(since))
        {
            // Dropping the sender ends the connection's task.
            conns.remove(&server);
        }
    }

    /// Forgets connection `number` if nothing waits on it: no query
    /// queued, none unanswered. Under the lock, so no query can be queued
    /// after.
    fn retire_idle(
        &self,
        server: SocketAddr,
        number: u64,
        link: &TcpLink,
        queries: &mpsc::UnboundedReceiver<Vec<u8>>,
    ) -> bool {
        let mut conns = lock(&self.connections);
        let idle = queries.is_empty() && link.unanswered.load(Ordering::Acquire) == 0;
        if idle && conns.get(&server).is_some_and(|c| c.number == number) {
            conns.remove(&server);
        }
        idle
    }

    /// Owns one TCP connection: writes the queries sent to it, while a
    /// reader task hands answers up. The connection ends when the server
    /// closes it, on an error, when it has been idle for `TCP_IDLE`, or
    /// when the sweeper drops it as stalled.
    async fn connection<U: Upstream>(
        self: Arc<Self>,
        upstream: Arc<U>,
        server: SocketAddr,
        number: u64,
        link: Arc<TcpLink>,
        mut queries: mpsc::UnboundedReceiver<Vec<u8>>,
    ) {
        let connect = tokio::time::timeout(TCP_CONNECT, TcpStream::connect(server));
        let Ok(Ok(stream)) = connect.await else {
            // Its queries are retried when their attempts time out.
            return self.closed(&upstream, server, number, false);
        };
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = stream.into_split();
        let tcp = Arc::clone(&self);
        let read_upstream = Arc::clone(&upstream);
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
                let _ = catch_unwind(AssertUnwindSafe(|| {
                    read_upstream.answer(&message, server, true, None)
                }));
            }
            // Closing drops the senders, which ends the writer below.
            tcp.closed(&read_upstream, server, number, true);
        });
        loop {
            match tokio::time::timeout(TCP_IDLE, queries.recv()).await {
                Ok(Some(packet)) => {
                    link.unanswered.fetch_add(1, Ordering::AcqRel);
                    if writer.write_all(&packet).await.is_err() {
                        reading.abort();
                        self.closed(&upstream, server, number, true);
                        return;
                    }
                }
                // Replaced, or dropped as stalled.
                Ok(None) => break,
                Err(_) if self.retire_idle(server, number, &link, &queries) => break,
                Err(_) => {}
            }
        }
        // The reader stops here; the writer half closes when dropped.
        reading.abort();
    }

    /// Forgets connection `number` (unless a newer one replaced it). When
    /// it had been open, the exchange sends the queries waiting on the
    /// server over TCP again, since a server may close an idle connection
    /// just as a query is written.
    fn closed<U: Upstream>(
        &self,
        upstream: &Arc<U>,
        server: SocketAddr,
        number: u64,
        was_open: bool,
    ) {
        let current = {
            let mut conns = lock(&self.connections);
            let current = conns.get(&server).is_some_and(|c| c.number == number);
            if current {
                conns.remove(&server);
            }
            current
        };
        if current && was_open {
            upstream.tcp_closed(server);
        }
    }
}

/// The TCP connection's life, against real loopback servers: one that
/// accepts and never answers, and one that answers and then waits.
#[cfg(test)]
mod tests {
    use super::super::tests::runtime;
    use super::super::{Exchange, TOO_BIG};
    use super::*;
    use crate::config::{Nameservers, Protocol, Settings};
    use crate::error::Error;
    use crate::types::{Answer, Kind};
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream as StdTcpStream};
    use std::sync::mpsc as std_mpsc;
    use std::thread;

    fn tcp_settings(server: SocketAddr, timeout_ms: i64, attempts: i64) -> Settings {
        Settings::new(
            Nameservers::Explicit(vec![server]),
            timeout_ms,
            attempts,
            Protocol::Tcp,
        )
        .expect("settings")
    }

    fn lookup(
        exchange: &Arc<Exchange>,
        settings: Settings,
    ) -> std_mpsc::Receiver<Result<Answer, Error>> {
        let (sender, receiver) = std_mpsc::channel();
        exchange.start(
            settings,
            "app.test.".into(),
            Kind::A,
            Box::new(move |result| {
                let _ = sender.send(result);
            }),
        );
        receiver
    }

    /// Reads one framed query; `None` at the end of the stream.
    fn read_query(stream: &mut StdTcpStream) -> Option<Vec<u8>> {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).ok()?;
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut query).ok()?;
        Some(query)
    }

    /// Answers a query with its own bytes marked as a response: NOERROR and
    /// no records, which the client reports as `NoData`.
    fn answer(stream: &mut StdTcpStream, query: Vec<u8>) {
        answer_with_flags(stream, query, 0x80);
    }

    /// The same, with more header bits set in the third byte (0x02: TC).
    fn answer_with_flags(stream: &mut StdTcpStream, mut query: Vec<u8>, flags: u8) {
        query[2] |= flags;
        let len = u16::try_from(query.len()).expect("small").to_be_bytes();
        stream.write_all(&len).expect("write");
        stream.write_all(&query).expect("write");
    }

    #[test]
    fn a_tcp_connection_that_answers_nothing_is_replaced() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let server = listener.local_addr().expect("address");
        let (accepted, accepts) = std_mpsc::channel();
        thread::spawn(move || {
            // The first connection is accepted and never answered, as a server
            // out of TCP slots leaves one in its backlog.
            let (silent, _) = listener.accept().expect("accept");
            accepted.send(1).expect("report");
            let (mut serving, _) = listener.accept().expect("accept");
            accepted.send(2).expect("report");
            while let Some(query) = read_query(&mut serving) {
                answer(&mut serving, query);
            }
            drop(silent);
        });
        let runtime = runtime();
        let exchange = Exchange::new(runtime.handle().clone());
        let reply = lookup(&exchange, tcp_settings(server, 4_000, 2));
        let result = reply
            .recv_timeout(Duration::from_secs(10))
            .expect("a reply");
        assert_eq!(
            result,
            Err(Error::NoData),
            "the retry is answered on a new connection"
        );
        assert_eq!(accepts.try_iter().collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn an_idle_tcp_connection_is_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let server = listener.local_addr().expect("address");
        let (closed, closes) = std_mpsc::channel();
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut answered = 0;
            while let Some(query) = read_query(&mut stream) {
                answer(&mut stream, query);
                answered += 1;
            }
            // The client closed its end.
            closed.send((answered, Instant::now())).expect("report");
        });
        let runtime = runtime();
        let exchange = Exchange::new(runtime.handle().clone());
        let settings = tcp_settings(server, 2_000, 1);
        let mut last_sent = Instant::now();
        for _ in 0..3 {
            // Before the query: the idle time can only start once its
            // answer is in, so a late wake-up of this thread cannot make
            // the close look early (it did under two CPU hogs).
            last_sent = Instant::now();
            let reply = lookup(&exchange, settings.clone());
            let result = reply
                .recv_timeout(Duration::from_secs(10))
                .expect("a reply");
            assert_eq!(result, Err(Error::NoData));
        }
        let (answered, at) = closes
            .recv_timeout(TCP_IDLE + Duration::from_secs(3))
            .expect("the idle connection is closed by the client");
        assert_eq!(answered, 3, "the three lookups shared one connection");
        assert!(at.duration_since(last_sent) >= TCP_IDLE);
        // A lookup after that opens a new connection (the listener is gone).
        let reply = lookup(&exchange, tcp_settings(server, 300, 1));
        assert!(reply
            .recv_timeout(Duration::from_secs(10))
            .expect("a reply")
            .is_err());
    }

    #[test]
    fn an_answer_cut_short_over_tcp_is_an_error_not_an_empty_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let server = listener.local_addr().expect("address");
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            while let Some(query) = read_query(&mut stream) {
                answer_with_flags(&mut stream, query, 0x80 | 0x02);
            }
        });
        let runtime = runtime();
        let exchange = Exchange::new(runtime.handle().clone());
        let reply = lookup(&exchange, tcp_settings(server, 4_000, 1));
        let result = reply
            .recv_timeout(Duration::from_secs(10))
            .expect("a reply");
        assert_eq!(result, Err(Error::Other(TOO_BIG.into())));
    }
}
