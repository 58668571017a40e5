//! SMTP to one server: lettre's connection (the protocol) under our own small pool. The
//! dispatcher sends to relays with it; `postledger bench send --target` submits with it.
//!
//! Why not lettre's `AsyncSmtpTransport` and its pool: its sockets keep Nagle's algorithm
//! on, and a transaction ends with two small writes (the body, then `.`). The second one
//! waits for the relay's delayed ACK, about 40 ms on Linux, so every message took at least
//! that long and 32 connections delivered about 720 messages/s to a sink that takes
//! thousands. Here the socket is ours (`TCP_NODELAY`), and lettre speaks SMTP over it.
//!
//! The pool needs no limit of its own: the relay's connection permits (held by the caller
//! around each transaction) bound how many connections exist. A connection idle for more
//! than [`CHECK_AFTER`] is checked with `NOOP` before it is reused (relays close idle
//! connections), and one idle for more than [`MAX_IDLE`] is closed instead.
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use domain::mail_settings::TlsMode;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters,
};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// An idle connection older than this is checked with NOOP before it carries a message.
const CHECK_AFTER: Duration = Duration::from_secs(2);
/// An idle connection older than this is closed rather than reused.
const MAX_IDLE: Duration = Duration::from_secs(60);

/// How a send went wrong.
#[derive(Debug)]
pub enum SendError {
    /// The relay answered with an error, or the connection broke mid-transaction.
    Smtp(lettre::transport::smtp::Error),
    /// No connection could be set up (refused, unresolvable, TLS, EHLO, AUTH).
    Connect(String),
    /// The connection set-up or the transaction took longer than the timeout.
    TimedOut(&'static str),
}

/// Where and how to connect, and the connections not in use.
pub struct RelayPool {
    host: String,
    port: u16,
    tls: TlsMode,
    credentials: Option<Credentials>,
    hello: ClientId,
    timeout: Duration,
    /// Extra trust anchors (DER), beside the webpki roots.
    extra_roots: Vec<Vec<u8>>,
    /// For implicit TLS, built on first use.
    implicit_tls: OnceLock<Result<Arc<ClientConfig>, String>>,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
}

impl RelayPool {
    /// `host` as a relay stores it (an IPv6 literal may be bracketed, `[::1]`). A relay's
    /// certificate must chain to the webpki roots or to one of `extra_roots` (DER).
    pub fn new(
        host: &str,
        port: u16,
        tls: TlsMode,
        credentials: Option<Credentials>,
        hello: ClientId,
        timeout: Duration,
        extra_roots: Vec<Vec<u8>>,
    ) -> RelayPool {
        RelayPool {
            // The resolver and the TLS server name want an IPv6 literal bare.
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            tls,
            credentials,
            hello,
            timeout,
            extra_roots,
            implicit_tls: OnceLock::new(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// lettre's TLS parameters (for STARTTLS), with the extra roots.
    fn starttls_params(&self) -> Result<TlsParameters, String> {
        let mut b = TlsParameters::builder(self.host.clone());
        for der in &self.extra_roots {
            let cert = Certificate::from_der(der.clone()).map_err(|e| e.to_string())?;
            b = b.add_root_certificate(cert);
        }
        b.build_rustls().map_err(|e| e.to_string())
    }

    /// The rustls configuration for implicit TLS: the webpki roots and the extra ones.
    fn implicit_tls_config(&self) -> Result<Arc<ClientConfig>, String> {
        self.implicit_tls
            .get_or_init(|| {
                let mut roots = RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                for der in &self.extra_roots {
                    roots
                        .add(CertificateDer::from(der.clone()))
                        .map_err(|e| format!("an extra relay root is not usable: {e}"))?;
                }
                let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
                ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                    .map_err(|e| e.to_string())
            })
            .clone()
    }

    /// One transaction: MAIL, RCPT for each envelope recipient, DATA. Connection set-up
    /// and the transaction each get the timeout.
    pub async fn send(&self, envelope: &Envelope, bytes: &[u8]) -> Result<Response, SendError> {
        let mut conn = match self.checkout().await {
            Some(c) => c,
            None => tokio::time::timeout(self.timeout, self.connect())
                .await
                .map_err(|_| SendError::TimedOut("connecting to the relay"))??,
        };
        // On timeout the connection is dropped mid-transaction, which is all one can do.
        let res = tokio::time::timeout(self.timeout, conn.send(envelope, bytes))
            .await
            .map_err(|_| SendError::TimedOut("the SMTP transaction"))?;
        match res {
            Ok(r) => {
                self.checkin(conn);
                Ok(r)
            }
            // lettre has already sent QUIT and marked the connection broken.
            Err(e) => Err(SendError::Smtp(e)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(AsyncSmtpConnection, Instant)>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection that still answers, if any.
    async fn checkout(&self) -> Option<AsyncSmtpConnection> {
        loop {
            let (mut conn, since) = self.lock().pop()?;
            let idle = since.elapsed();
            if idle > MAX_IDLE || conn.has_broken() {
                continue;
            }
            if idle <= CHECK_AFTER {
                return Some(conn);
            }
            let alive = tokio::time::timeout(self.timeout, conn.test_connected()).await;
            if matches!(alive, Ok(true)) {
                return Some(conn);
            }
        }
    }

    /// Puts a connection back, and closes those that have sat idle too long: the pool is a
    /// stack (the most recent on top), so under light load the bottom ones are never
    /// popped, and nothing else would close them.
    fn checkin(&self, conn: AsyncSmtpConnection) {
        let mut idle = self.lock();
        idle.retain(|(_, since)| since.elapsed() <= MAX_IDLE);
        if !conn.has_broken() {
            idle.push((conn, Instant::now()));
        }
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        let connect_err = |what: &str, e: &dyn fmt::Display| {
            SendError::Connect(format!("{what} {}:{}: {e}", self.host, self.port))
        };
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| connect_err("cannot connect to", &e))?;
        tcp.set_nodelay(true)
            .map_err(|e| connect_err("cannot set TCP_NODELAY towards", &e))?;
        let starttls_params = || {
            self.starttls_params()
                .map_err(|e| connect_err("TLS could not be set up for", &e))
        };
        let stream: Box<dyn AsyncTokioStream> = match self.tls {
            TlsMode::Tls => {
                // lettre only puts TLS on a stream it is given after the greeting
                // (STARTTLS); for implicit TLS the handshake comes first, so it is done
                // here, with the same roots and provider as STARTTLS.
                let peer = tcp
                    .peer_addr()
                    .map_err(|e| connect_err("no peer address for", &e))?;
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| connect_err("not a TLS server name:", &e))?;
                let config = self
                    .implicit_tls_config()
                    .map_err(|e| connect_err("TLS could not be set up for", &e))?;
                let tls = TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| connect_err("TLS handshake failed with", &e))?;
                Box::new(Tunnel { inner: tls, peer })
            }
            TlsMode::None | TlsMode::Starttls => Box::new(tcp),
        };
        let mut conn = AsyncSmtpConnection::connect_with_transport(stream, &self.hello)
            .await
            .map_err(|e| connect_err("no SMTP greeting or EHLO answer from", &e))?;
        if self.tls == TlsMode::Starttls {
            conn.starttls(starttls_params()?, &self.hello)
                .await
                .map_err(|e| connect_err("STARTTLS failed with", &e))?;
        }
        if let Some(credentials) = &self.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await
                .map_err(SendError::Smtp)?;
        }
        Ok(conn)
    }
}

/// The certificates of a PEM file (a relay CA bundle), as DER for [`RelayPool::new`].
/// An error, or no certificate at all, is refused rather than left for every send to fail.
pub fn roots_from_pem(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem)
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("it holds no certificate".into());
    }
    Ok(certs)
}

/// An implicit-TLS stream, seen by lettre as a plain one.
struct Tunnel {
    inner: TlsStream<TcpStream>,
    peer: SocketAddr,
}

impl fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnel").field("peer", &self.peer).finish()
    }
}

impl AsyncTokioStream for Tunnel {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer)
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
