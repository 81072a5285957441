//! The TCP connection's life, against real loopback servers: one that
//! accepts and never answers, and one that answers and then waits.

use super::tests::runtime;
use super::*;
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
    for _ in 0..3 {
        let reply = lookup(&exchange, settings.clone());
        let result = reply
            .recv_timeout(Duration::from_secs(10))
            .expect("a reply");
        assert_eq!(result, Err(Error::NoData));
    }
    let last_answer = Instant::now();
    let (answered, at) = closes
        .recv_timeout(TCP_IDLE + Duration::from_secs(3))
        .expect("the idle connection is closed by the client");
    assert_eq!(answered, 3, "the three lookups shared one connection");
    assert!(at.duration_since(last_answer) >= TCP_IDLE / 2);
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
