//! A scripted HTTPS server for MTA-STS policy fetches (RFC 8461 §3.3).
//!
//! [`HttpsServer`] listens on 127.0.0.1 (or a chosen address) with a caller-supplied
//! rustls configuration and answers each HTTP/1.1 request from a route table keyed by
//! host (the `Host` header, or SNI when the header is missing) and path: status,
//! headers, body, an optional delay before the response and optionally no
//! `Content-Length`. Unrouted requests get 404. It
//! counts requests per host and can be stopped and restarted on the same port, so a test
//! can take a policy server down and bring it back.
//!
//! What it does NOT do: HTTP/2, keep-alive (one request per connection, then close),
//! request bodies, chunked encoding. It is a test double for the server side only.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use rustls::ServerConfig;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
};
use tokio_rustls::TlsAcceptor;

/// Largest request head accepted.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// One scripted HTTP response.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// Status code, e.g. 200.
    pub status: u16,
    /// Headers in order (a `Content-Length` is added unless [`HttpResponse::without_length`]).
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
    /// Wait this long after reading the request before answering.
    pub delay: Option<Duration>,
    /// Omit `Content-Length`: the body ends when the connection closes.
    pub omit_length: bool,
}

impl HttpResponse {
    /// A response with `status`, no headers and an empty body.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: None,
            omit_length: false,
        }
    }

    /// `200` with `Content-Type: text/plain` and `body`: a well-served MTA-STS policy.
    pub fn policy(body: &str) -> Self {
        Self::status(200)
            .header("Content-Type", "text/plain")
            .body(body.as_bytes())
    }

    /// A redirect (`301`, `302`, ...) to `location`.
    pub fn redirect(status: u16, location: &str) -> Self {
        Self::status(status).header("Location", location)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: &[u8]) -> Self {
        self.body = body.to_vec();
        self
    }

    /// Answers only after `delay` (a slow server).
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Sends no `Content-Length`; the body is delimited by closing the connection.
    pub fn without_length(mut self) -> Self {
        self.omit_length = true;
        self
    }

    fn encode_head(&self) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !self.omit_length {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        head.push_str("Connection: close\r\n\r\n");
        head.into_bytes()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenRequest {
    /// Host the request was routed by (lowercase, no port).
    pub host: String,
    /// SNI the client sent, if any.
    pub sni: Option<String>,
    /// Method, e.g. `GET`.
    pub method: String,
    /// Request target, e.g. `/.well-known/mta-sts.txt`.
    pub path: String,
}

#[derive(Default)]
struct Routes {
    responses: HashMap<(String, String), HttpResponse>,
    seen: Vec<SeenRequest>,
}

/// A running (or stopped) scripted HTTPS server.
pub struct HttpsServer {
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    routes: Arc<Mutex<Routes>>,
    task: Option<JoinHandle<()>>,
}

impl HttpsServer {
    /// Starts serving on 127.0.0.1 and an ephemeral port with `tls`.
    pub async fn start(tls: Arc<ServerConfig>) -> io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), tls).await
    }

    /// Starts serving on `addr` (port 0: an ephemeral one) with `tls`; e.g. a second
    /// policy host with another certificate on another loopback address and the same
    /// port (`policy.mta_sts_port` is one port for every domain).
    pub async fn start_on(addr: SocketAddr, tls: Arc<ServerConfig>) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let mut server = Self {
            addr: listener.local_addr()?,
            acceptor: TlsAcceptor::from(tls),
            routes: Arc::default(),
            task: None,
        };
        server.serve(listener);
        Ok(server)
    }

    /// The listening address (also while stopped: [`HttpsServer::restart`] reuses it).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening port, for `policy.mta_sts_port`.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Answers requests for `host` (case-insensitive) and `path` with `response`.
    pub fn route(&self, host: &str, path: &str, response: HttpResponse) {
        self.lock()
            .responses
            .insert((host.to_ascii_lowercase(), path.to_owned()), response);
    }

    /// Shorthand: serves `policy` at `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`.
    pub fn serve_policy(&self, domain: &str, response: HttpResponse) {
        let host = format!("mta-sts.{}", domain.trim_end_matches('.'));
        self.route(&host, "/.well-known/mta-sts.txt", response);
    }

    /// How many requests arrived for `host` (complete request heads, routed or not).
    pub fn requests(&self, host: &str) -> usize {
        let host = host.to_ascii_lowercase();
        self.lock().seen.iter().filter(|r| r.host == host).count()
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.lock().seen.clone()
    }

    /// Closes the listener and every open connection; connects are then refused.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// True while serving.
    pub fn is_running(&self) -> bool {
        self.task.is_some()
    }

    /// Serves again on the same address after [`HttpsServer::stop`] (no-op while running).
    pub async fn restart(&mut self) -> io::Result<()> {
        if self.task.is_some() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn serve(&mut self, listener: TcpListener) {
        let acceptor = self.acceptor.clone();
        let routes = self.routes.clone();
        self.task = Some(tokio::spawn(async move {
            // Connections live in this set: aborting the accept task drops them all.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            connections.spawn(handle(stream, acceptor.clone(), routes.clone()));
                        }
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        }));
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn handle(stream: TcpStream, acceptor: TlsAcceptor, routes: Arc<Mutex<Routes>>) {
    let Ok(mut tls) = acceptor.accept(stream).await else {
        return;
    };
    let sni = tls.get_ref().1.server_name().map(str::to_ascii_lowercase);
    let Some(head) = read_head(&mut tls).await else {
        return;
    };
    let Some((method, path, host)) = parse_head(&head) else {
        let _ = tls
            .write_all(&HttpResponse::status(400).encode_head())
            .await;
        return;
    };
    let host = host.or_else(|| sni.clone()).unwrap_or_default();
    let response = {
        let mut routes = routes.lock().unwrap_or_else(PoisonError::into_inner);
        routes.seen.push(SeenRequest {
            host: host.clone(),
            sni,
            method: method.clone(),
            path: path.clone(),
        });
        routes
            .responses
            .get(&(host, path))
            .cloned()
            .unwrap_or_else(|| HttpResponse::status(404))
    };
    if let Some(delay) = response.delay {
        tokio::time::sleep(delay).await;
    }
    let mut bytes = response.encode_head();
    if method != "HEAD" {
        bytes.extend_from_slice(&response.body);
    }
    if tls.write_all(&bytes).await.is_ok() {
        let _ = tls.shutdown().await;
    }
}

/// Reads up to the blank line ending the request head.
async fn read_head<S: AsyncReadExt + Unpin>(stream: &mut S) -> Option<String> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buffer).await.ok()?;
        if n == 0 || head.len() > MAX_REQUEST_HEAD {
            return None;
        }
        head.extend_from_slice(buffer.get(..n)?);
    }
    String::from_utf8(head).ok()
}

/// Method, path and Host (lowercase, port removed) of a request head.
fn parse_head(head: &str) -> Option<(String, String, Option<String>)> {
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let path = request_line.next()?.to_owned();
    let host = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("host"))
        .map(|(_, value)| {
            let value = value.trim().to_ascii_lowercase();
            match value.rsplit_once(':') {
                Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host.to_owned(),
                _ => value,
            }
        });
    Some((method, path, host))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::certs::{TestCa, Validity};
    use rustls::{pki_types::ServerName, ClientConfig, RootCertStore};
    use tokio_rustls::TlsConnector;

    fn client(ca: &TestCa) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der()).unwrap();
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }

    async fn get(
        connector: &TlsConnector,
        addr: SocketAddr,
        host: &str,
        path: &str,
    ) -> io::Result<String> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(host.to_owned()).unwrap();
        let mut tls = connector.connect(name, tcp).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{}\r\n\r\n",
            addr.port()
        );
        tls.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        // The server closes after the response; a missing close_notify is not our concern.
        let _ = tls.read_to_end(&mut response).await;
        Ok(String::from_utf8_lossy(&response).into_owned())
    }

    async fn server() -> (TestCa, HttpsServer) {
        let ca = TestCa::new("HTTPS test CA");
        let cert = ca.issue(
            &["mta-sts.example.test", "mta-sts.other.test"],
            Validity::current(),
        );
        let server = HttpsServer::start(cert.server_config()).await.unwrap();
        (ca, server)
    }

    #[tokio::test]
    async fn serves_scripted_responses_by_host_and_counts_them() {
        let (ca, server) = server().await;
        let connector = client(&ca);
        server.serve_policy(
            "example.test",
            HttpResponse::policy("version: STSv1\r\nmode: enforce\r\n"),
        );
        server.route(
            "mta-sts.other.test",
            "/.well-known/mta-sts.txt",
            HttpResponse::redirect(301, "https://elsewhere.test/"),
        );
        let ok = get(
            &connector,
            server.addr(),
            "mta-sts.example.test",
            "/.well-known/mta-sts.txt",
        )
        .await
        .unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Type: text/plain\r\n"));
        assert!(ok.contains("Content-Length: 31\r\n"));
        assert!(ok.ends_with("mode: enforce\r\n"));
        let redirect = get(
            &connector,
            server.addr(),
            "mta-sts.other.test",
            "/.well-known/mta-sts.txt",
        )
        .await
        .unwrap();
        assert!(redirect.starts_with("HTTP/1.1 301 "));
        assert!(redirect.contains("Location: https://elsewhere.test/\r\n"));
        let missing = get(&connector, server.addr(), "mta-sts.other.test", "/nothing")
            .await
            .unwrap();
        assert!(missing.starts_with("HTTP/1.1 404 "));
        assert_eq!(server.requests("MTA-STS.example.test"), 1);
        assert_eq!(server.requests("mta-sts.other.test"), 2);
        assert_eq!(
            server.seen()[0].sni.as_deref(),
            Some("mta-sts.example.test")
        );
    }

    #[tokio::test]
    async fn stop_refuses_connections_and_restart_serves_again_on_the_same_port() {
        let (ca, mut server) = server().await;
        let connector = client(&ca);
        server.serve_policy("example.test", HttpResponse::policy("version: STSv1\r\n"));
        let port = server.port();
        server.stop();
        assert!(!server.is_running());
        assert!(TcpStream::connect(server.addr()).await.is_err());
        server.restart().await.unwrap();
        assert_eq!(server.port(), port);
        let ok = get(
            &connector,
            server.addr(),
            "mta-sts.example.test",
            "/.well-known/mta-sts.txt",
        )
        .await
        .unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 "));
    }

    #[tokio::test]
    async fn oversized_unlengthed_and_slow_bodies() {
        let (ca, server) = server().await;
        let connector = client(&ca);
        let big = vec![b'x'; 100 * 1024];
        server.serve_policy(
            "example.test",
            HttpResponse::policy("").body(&big).without_length(),
        );
        let response = get(
            &connector,
            server.addr(),
            "mta-sts.example.test",
            "/.well-known/mta-sts.txt",
        )
        .await
        .unwrap();
        assert!(!response.contains("Content-Length"));
        assert!(response.len() > 100 * 1024);

        server.serve_policy(
            "example.test",
            HttpResponse::policy("version: STSv1\r\n").delayed(Duration::from_secs(30)),
        );
        let slow = tokio::time::timeout(
            Duration::from_millis(300),
            get(
                &connector,
                server.addr(),
                "mta-sts.example.test",
                "/.well-known/mta-sts.txt",
            ),
        )
        .await;
        assert!(slow.is_err(), "a delayed response must not arrive early");
    }
}
