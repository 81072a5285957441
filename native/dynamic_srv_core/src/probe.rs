//! Transport facts for `mix dynamic_srv.check`: how the answer to one query
//! comes from the first nameserver over UDP (its size, whether the server
//! cut it short, the records it holds) and, when cut short, how many
//! records the same query gets over TCP. The query bytes, the matching of
//! the reply and the reading of its records are the lookups' own
//! (`wire`); only the one-off sockets are the probe's.

use std::net::SocketAddr;

use hickory_resolver::proto::op::Message;
use hickory_resolver::system_conf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::config::{local_for, Nameservers, Settings};
use crate::error::Error;
use crate::types::{Answer, Kind};
use crate::wire::{encode, is_raw_answer, result_of};

/// The ID of probe queries (a fresh socket receives nothing else).
const ID: u16 = 0x4242;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The server asked: the first explicit nameserver, or resolv.conf's first.
    pub server: SocketAddr,
    /// Size of the UDP answer in bytes.
    pub udp_bytes: usize,
    /// The server set the TC flag: the answer did not fit.
    pub truncated: bool,
    /// Records of the asked type in the UDP answer.
    pub udp_records: usize,
    /// Records of the asked type over TCP, asked only when truncated.
    pub tcp_records: Option<usize>,
}

/// Asks `name` (as given, without the search list) once over UDP, and
/// over TCP when the UDP answer is truncated, within the settings'
/// deadline. Network errors come back as `Error::Other` naming the server
/// and the transport; no answer in time as `Error::Timeout`.
pub async fn probe(settings: &Settings, name: &str, kind: Kind) -> Result<Probe, Error> {
    let server = first_server(&settings.nameservers)?;
    let packet = encode(ID, name, kind)?;
    match tokio::time::timeout(settings.timeout, ask(server, &packet, kind)).await {
        Ok(result) => result,
        Err(_elapsed) => Err(Error::Timeout),
    }
}

fn first_server(nameservers: &Nameservers) -> Result<SocketAddr, Error> {
    match nameservers {
        Nameservers::Explicit(list) => list
            .first()
            .copied()
            .ok_or_else(|| Error::BadSettings("the nameserver list is empty".into())),
        Nameservers::System => {
            let (config, _) = system_conf::read_system_conf().map_err(|e| {
                Error::BadSettings(format!(
                    "cannot read the system resolver configuration: {e}"
                ))
            })?;
            config
                .name_servers()
                .first()
                .map(|server| {
                    let port = server.connections.first().map_or(53, |c| c.port);
                    SocketAddr::new(server.ip, port)
                })
                .ok_or_else(|| Error::BadSettings("resolv.conf lists no nameserver".into()))
        }
    }
}

async fn ask(server: SocketAddr, packet: &[u8], kind: Kind) -> Result<Probe, Error> {
    let udp = |e: std::io::Error| Error::Other(format!("UDP query to {server}: {e}"));
    let socket = UdpSocket::bind(local_for(server)).await.map_err(udp)?;
    socket.connect(server).await.map_err(udp)?;
    socket.send(packet).await.map_err(udp)?;
    let mut buffer = vec![0u8; 65_535];
    let reply = loop {
        let len = socket.recv(&mut buffer).await.map_err(udp)?;
        if is_raw_answer(packet, &buffer[..len]) {
            break &buffer[..len];
        }
    };
    // The TC flag is read from the header itself: a truncated reply may
    // hold too little to decode.
    let truncated = reply[2] & 0x02 != 0;
    let mut probe = Probe {
        server,
        udp_bytes: reply.len(),
        truncated,
        udp_records: records(reply, kind),
        tcp_records: None,
    };
    if truncated {
        probe.tcp_records = Some(ask_tcp(server, packet, kind).await?);
    }
    Ok(probe)
}

async fn ask_tcp(server: SocketAddr, packet: &[u8], kind: Kind) -> Result<usize, Error> {
    let tcp = |e: std::io::Error| Error::Other(format!("TCP query to {server}: {e}"));
    let mut stream = TcpStream::connect(server).await.map_err(tcp)?;
    let len = u16::try_from(packet.len()).map_err(|_| Error::Other("query too long".into()))?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(packet);
    stream.write_all(&framed).await.map_err(tcp)?;
    loop {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.map_err(tcp)?;
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut reply).await.map_err(tcp)?;
        if is_raw_answer(packet, &reply) {
            return Ok(records(&reply, kind));
        }
    }
}

/// Records of the asked type in a reply; none when it does not decode.
fn records(reply: &[u8], kind: Kind) -> usize {
    match Message::from_vec(reply).map(|m| result_of(&m, kind)) {
        Ok(Ok(Answer::Srv(records))) => records.len(),
        Ok(Ok(Answer::Ip(addresses))) => addresses.len(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;
    use std::time::Duration;

    /// How long a test waits at most.
    const TEST_WAIT: Duration = Duration::from_secs(5);

    fn settings(server: SocketAddr, timeout_ms: i64) -> Settings {
        Settings::new(
            Nameservers::Explicit(vec![server]),
            timeout_ms,
            1,
            Protocol::Udp,
        )
        .expect("settings")
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    }

    #[test]
    fn a_server_that_refuses_is_an_error_naming_it() {
        // A port where nothing listens: the ICMP error comes back at once.
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let server = closed.local_addr().expect("address");
        drop(closed);
        let result = runtime().block_on(async {
            tokio::time::timeout(
                TEST_WAIT,
                probe(&settings(server, 2_000), "app.test.", Kind::Srv),
            )
            .await
        });
        match result {
            Ok(Err(Error::Other(message))) => {
                assert!(message.contains(&server.to_string()), "{message}")
            }
            other => panic!("expected a network error, got {other:?}"),
        }
    }

    #[test]
    fn a_silent_server_is_a_timeout() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let server = silent.local_addr().expect("address");
        let result = runtime().block_on(probe(&settings(server, 100), "app.test.", Kind::Srv));
        assert_eq!(result, Err(Error::Timeout));
    }
}
