//! Keep-alive connections to one upstream target, reused across requests.
//!
//! Each connection is a `hyper::client::conn::http1` sender whose connection task
//! runs on the runtime of the worker that opened it. A sender goes back to the
//! pool when its response body has been read to the end; a response abandoned
//! half-way closes its connection instead, since the stream position is unknown.
//! A request the pool could not even start on a reused connection (it had just
//! closed) comes back whole from `try_send_request` and is sent on another one,
//! whatever its method.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use crate::upstream::UpstreamBody;

type Sender = http1::SendRequest<UpstreamBody>;

/// Why a request could not be exchanged with the target.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened: nothing was sent.
    Connect(String),
    /// The exchange failed after the request was (at least partly) sent.
    Failed(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(m) => write!(f, "connect: {m}"),
            SendError::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// How to speak TLS to an `https://` target.
#[derive(Clone)]
pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: rustls::pki_types::ServerName<'static>,
}

pub struct Pool {
    host: String,
    port: u16,
    tls: Option<UpstreamTls>,
    idle: Mutex<Vec<(Sender, Instant)>>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

impl Pool {
    pub fn new(
        authority: &http::uri::Authority,
        tls: Option<UpstreamTls>,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Arc<Self> {
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Arc::new(Self {
            port: authority
                .port_u16()
                .unwrap_or(if tls.is_some() { 443 } else { 80 }),
            host,
            tls,
            idle: Mutex::new(Vec::new()),
            max_idle: 1024,
            idle_timeout,
            connect_timeout,
        })
    }

    fn checkout(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((sender, since)) = idle.pop() {
            if !sender.is_closed() && since.elapsed() < self.idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    fn put(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push((sender, Instant::now()));
        }
    }

    async fn connect(&self) -> Result<Sender, SendError> {
        let stream = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| {
            SendError::Connect(format!(
                "connecting to {}:{} timed out",
                self.host, self.port
            ))
        })?
        .map_err(|e| SendError::Connect(format!("{}:{}: {e}", self.host, self.port)))?;
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return self.handshake(stream).await;
        };
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        let stream = tokio::time::timeout(
            self.connect_timeout,
            connector.connect(tls.server_name.clone(), stream),
        )
        .await
        .map_err(|_| {
            SendError::Connect(format!(
                "TLS handshake with {}:{} timed out",
                self.host, self.port
            ))
        })?
        .map_err(|e| {
            SendError::Connect(format!(
                "TLS handshake with {}:{}: {e}",
                self.host, self.port
            ))
        })?;
        self.handshake(stream).await
    }

    async fn handshake<I>(&self, io: I) -> Result<Sender, SendError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| {
                SendError::Connect(format!(
                    "HTTP handshake with {}:{}: {e}",
                    self.host, self.port
                ))
            })?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    /// Sends `req` on a pooled connection (or a new one) and returns the response
    /// with a body that gives the connection back when read to the end.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        loop {
            let (mut sender, reused) = match self.checkout() {
                Some(s) => (s, true),
                None => (self.connect().await?, false),
            };
            if sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err(SendError::Connect(format!(
                    "{}:{} closed the connection",
                    self.host, self.port
                )));
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let upgraded = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
                    let (parts, body) = resp.into_parts();
                    let ret = (!upgraded).then(|| (sender, self.clone()));
                    return Ok(Response::from_parts(parts, PooledBody { inner: body, ret }));
                }
                Err(mut e) => match e.take_message() {
                    // Never sent: a reused connection closed under us; try another.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(SendError::Failed(e.into_error())),
                },
            }
        }
    }
}

/// An upstream response body that returns its connection to the pool at its end.
pub struct PooledBody {
    inner: Incoming,
    ret: Option<(Sender, Arc<Pool>)>,
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            if let Some((sender, pool)) = this.ret.take() {
                pool.put(sender);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body never polled to its end may still be complete (empty bodies,
        // HEAD); otherwise the connection is not reusable and is dropped.
        if let Some((sender, pool)) = self.ret.take() {
            if self.inner.is_end_stream() {
                pool.put(sender);
            }
        }
    }
}

/// Accepts any server certificate: for upstreams configured with `tls.verify = false`.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS client settings of one upstream: the system's roots plus `ca_pem`, or no
/// verification at all when `verify` is off.
pub fn client_config(
    tls: &fleetgate_core::gateway::UpstreamTls,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = if tls.verify {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(pem) = &tls.ca_pem {
            for der in fleetgate_core::tls::pem_certificates(pem)? {
                roots
                    .add(rustls::pki_types::CertificateDer::from(der))
                    .map_err(|e| format!("tls.ca_pem: {e}"))?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
