//! The sockets of the DNS test world: one UDP socket and one TCP listener on the same port.
//!
//! Thin I/O around [`super::answer`]: decode, log, apply faults, answer, encode. UDP answers
//! larger than the client's payload size are truncated (TC) so the client retries over TCP.
//!
//! What it does NOT do: rate limiting, EDNS options beyond DO and payload size.

use std::{net::SocketAddr, sync::Arc, sync::PoisonError};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::LowerName,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    task::JoinHandle,
};

use super::{DnsWorldError, Fault, Shared};

/// RFC 1035 §4.2.1: "Messages carried by UDP are restricted to 512 bytes".
const CLASSIC_UDP_LIMIT: usize = 512;
/// How many times to look for a port free for both UDP and TCP.
const BIND_ATTEMPTS: usize = 20;

/// Binds UDP and TCP on one ephemeral loopback port and spawns both serving loops.
pub(crate) async fn spawn(
    shared: Arc<Shared>,
) -> Result<(SocketAddr, Vec<JoinHandle<()>>), DnsWorldError> {
    let mut last_error = None;
    for _ in 0..BIND_ATTEMPTS {
        let udp = UdpSocket::bind("127.0.0.1:0").await?;
        let addr = udp.local_addr()?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => {
                let udp_task = tokio::spawn(serve_udp(udp, shared.clone()));
                let tcp_task = tokio::spawn(serve_tcp(tcp, shared));
                return Ok((addr, vec![udp_task, tcp_task]));
            }
            Err(error) => last_error = Some(error),
        }
    }
    Err(DnsWorldError::Io(last_error.unwrap_or_else(|| {
        std::io::Error::other("no port free for both UDP and TCP")
    })))
}

async fn serve_udp(socket: UdpSocket, shared: Arc<Shared>) {
    let mut buffer = vec![0u8; 65_535];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        let Some(request) = buffer.get(..len) else {
            continue;
        };
        if let Some(reply) = respond(&shared, request, Transport::Udp) {
            // A lost UDP answer is what UDP does; the client retries.
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_tcp_connection(stream, shared.clone()));
    }
}

async fn serve_tcp_connection(mut stream: TcpStream, shared: Arc<Shared>) {
    loop {
        // RFC 1035 §4.2.2: "The message is prefixed with a two byte length field which
        // gives the message length, excluding the two byte length field."
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut request = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut request).await.is_err() {
            return;
        }
        let Some(reply) = respond(&shared, &request, Transport::Tcp) else {
            continue;
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            return;
        };
        if stream.write_u16(reply_len).await.is_err() || stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// Encoded reply to one request, or `None` to stay silent.
fn respond(shared: &Shared, request: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let request = Message::from_vec(request).ok()?;
    if let Some(query) = request.queries.first() {
        shared
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((query.name().clone(), query.query_type()));
        let name = LowerName::new(query.name());
        match shared.fault_for(&name, query.query_type()) {
            Some(Fault::Drop) => return None,
            Some(Fault::ServFail) => return error_reply(&request, ResponseCode::ServFail),
            Some(Fault::Refused) => return error_reply(&request, ResponseCode::Refused),
            None => {}
        }
    }
    let response = if shared.strip_dnssec {
        let mut plain = request.clone();
        if let Some(edns) = plain.edns.as_mut() {
            edns.set_dnssec_ok(false);
        }
        shared.zones.answer(&plain)?
    } else {
        shared.zones.answer(&request)?
    };
    let bytes = response.to_vec().ok()?;
    let limit = match &request.edns {
        Some(edns) => usize::from(edns.max_payload()).max(CLASSIC_UDP_LIMIT),
        None => CLASSIC_UDP_LIMIT,
    };
    if transport == Transport::Udp && bytes.len() > limit {
        // RFC 2181 §9: "the TC bit should be set [...] when the entire answer does not fit".
        return response.truncate().to_vec().ok();
    }
    Some(bytes)
}

fn error_reply(request: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut response = Message::error_msg(request.metadata.id, request.metadata.op_code, code);
    response.add_queries(request.queries.iter().cloned());
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.to_vec().ok()
}
