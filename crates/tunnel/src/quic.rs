//! QUIC endpoints of the tunnel protocol: servers with a certificate (self-signed
//! unless one is given) and clients that, like Bilbycast edges, do not verify the
//! relay's or peer's certificate — the tunnel's own tokens and end-to-end key are
//! what authenticate. Every connection uses a 15 s keep-alive and 2 MiB datagram
//! buffers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::TunnelError;

/// ALPN of edge → relay connections.
pub const ALPN_RELAY: &[u8] = b"bilbycast-relay";
/// ALPN of edge → edge (direct mode) connections.
pub const ALPN_DIRECT: &[u8] = b"bilbycast-direct";
/// QUIC keep-alive interval.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Datagram send and receive buffer size.
pub const DATAGRAM_BUFFER: usize = 2 * 1024 * 1024;
/// Largest UDP payload MTU discovery probes for: the UDP maximum, so paths with
/// jumbo frames (and loopback) carry large packets — on loopback this more than
/// doubles tunnel throughput — while elsewhere discovery settles on what the path
/// carries (1200 bytes at least) after a few lost probes.
pub const MTU_UPPER_BOUND: u16 = 65_527;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Transport settings shared by every tunnel connection.
pub fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
        60_000,
    ))));
    t.datagram_receive_buffer_size(Some(DATAGRAM_BUFFER));
    t.datagram_send_buffer_size(DATAGRAM_BUFFER);
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MTU_UPPER_BOUND);
    t.mtu_discovery_config(Some(mtu));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(4096));
    t.stream_receive_window(quinn::VarInt::from_u32(8 * 1024 * 1024));
    t.receive_window(quinn::VarInt::from_u32(32 * 1024 * 1024));
    t.send_window(32 * 1024 * 1024);
    Arc::new(t)
}

/// A certificate and key for a QUIC server.
pub struct ServerIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ServerIdentity {
    /// A fresh self-signed certificate for `name`.
    pub fn self_signed(name: &str) -> Result<Self, TunnelError> {
        let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()])
            .map_err(|e| TunnelError::Config(format!("cannot make a certificate: {e}")))?;
        let key = PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der());
        Ok(ServerIdentity {
            chain: vec![certified.cert.der().clone()],
            key: key.into(),
        })
    }

    /// A certificate chain and key in PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TunnelError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TunnelError::Config(format!("tls_cert_pem: {e}")))?;
        if chain.is_empty() {
            return Err(TunnelError::Config(
                "tls_cert_pem holds no certificate".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TunnelError::Config(format!("tls_key_pem: {e}")))?;
        Ok(ServerIdentity { chain, key })
    }
}

/// A server endpoint on `addr` answering `alpn`.
pub fn server(
    addr: SocketAddr,
    alpn: &[u8],
    identity: ServerIdentity,
) -> Result<quinn::Endpoint, TunnelError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = QuicServerConfig::try_from(tls)
        .map_err(|e| TunnelError::Config(format!("QUIC server TLS: {e}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport());
    Ok(quinn::Endpoint::server(config, addr)?)
}

/// A client endpoint for `alpn` that accepts any server certificate.
pub fn client(alpn: &[u8], remote: SocketAddr) -> Result<quinn::Endpoint, TunnelError> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCertificate::any(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = QuicClientConfig::try_from(tls)
        .map_err(|e| TunnelError::Config(format!("QUIC client TLS: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport());
    let local: SocketAddr = if remote.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let mut endpoint = quinn::Endpoint::client(local)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// A client's check of a server certificate when no chain of trust is used: the
/// certificate with a pinned SHA-256 fingerprint, or (without a pin) any. Either
/// way the handshake signatures are verified, so the server holds the
/// certificate's key.
#[derive(Debug)]
pub struct PinnedCertificate {
    /// 64 lower-case hex digits.
    pin: Option<String>,
    provider: Arc<CryptoProvider>,
}

impl PinnedCertificate {
    /// Accepts only the certificate whose SHA-256 (64 lower-case hex digits) is `pin`.
    pub fn pinned(pin: String, provider: Arc<CryptoProvider>) -> Self {
        Self {
            pin: Some(pin),
            provider,
        }
    }

    /// Accepts any certificate: tunnels authenticate with their own tokens and
    /// end-to-end key, not with the relay's certificate.
    pub fn any(provider: Arc<CryptoProvider>) -> Self {
        Self {
            pin: None,
            provider,
        }
    }
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(pin) = &self.pin else {
            return Ok(ServerCertVerified::assertion());
        };
        let got = hex::encode(Sha256::digest(end_entity.as_ref()));
        if got == *pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate has fingerprint {got}, not the pinned one"
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Resolves `host:port` to the first socket address.
pub async fn resolve(addr: &str) -> Result<SocketAddr, TunnelError> {
    tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| TunnelError::Config(format!("{addr} resolves to no address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connects to `server` with `verifier` and answers whether the handshake held.
    async fn handshake(server: &quinn::Endpoint, verifier: PinnedCertificate) -> bool {
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN_DIRECT.to_vec()];
        let crypto = QuicClientConfig::try_from(tls).expect("quic tls");
        let mut client = quinn::Endpoint::client((std::net::Ipv4Addr::LOCALHOST, 0).into())
            .expect("client endpoint");
        client.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let addr = server.local_addr().expect("addr");
        let accept = {
            let server = server.clone();
            tokio::spawn(async move {
                if let Some(incoming) = server.accept().await {
                    let _ = incoming.await;
                }
            })
        };
        let ok = client
            .connect(addr, "relay.test")
            .expect("connect")
            .await
            .is_ok();
        accept.abort();
        ok
    }

    #[tokio::test]
    async fn a_pinned_certificate_is_the_only_one_accepted() {
        let identity = ServerIdentity::self_signed("relay.test").expect("identity");
        let fingerprint = hex::encode(Sha256::digest(identity.chain[0].as_ref()));
        let server = server(
            (std::net::Ipv4Addr::LOCALHOST, 0).into(),
            ALPN_DIRECT,
            identity,
        )
        .expect("server");
        assert!(handshake(&server, PinnedCertificate::pinned(fingerprint, provider())).await);
        assert!(
            !handshake(
                &server,
                PinnedCertificate::pinned("00".repeat(32), provider())
            )
            .await
        );
        assert!(handshake(&server, PinnedCertificate::any(provider())).await);
    }
}
