//! TLS termination: certificates chosen by SNI (exact names, then the longest
//! `*.suffix`, then a default), ALPN for HTTP/2 and HTTP/1.1. The certificate set
//! is swapped atomically when the manager publishes a new one.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use fleetgate_core::tls::{inspect, TlsBundle};
use fleetgate_shared::tls::certified_key;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Default)]
struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `".example.com"` → key for `*.example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    fallback: Option<Arc<CertifiedKey>>,
}

/// Picks the certificate for a TLS handshake by its server name.
#[derive(Default)]
pub struct SniResolver {
    set: ArcSwap<CertSet>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}

impl SniResolver {
    /// Replaces the certificates served. Bundles that do not load are skipped and logged.
    pub fn update(&self, bundles: &[TlsBundle]) {
        let mut set = CertSet::default();
        for b in bundles {
            let key = match certified_key(&b.cert_pem, &b.key_pem) {
                Ok(k) => k,
                Err(e) => {
                    tracing::error!(certificate = %b.name, error = %e, "certificate not served");
                    continue;
                }
            };
            let sans = inspect(&b.cert_pem).map(|i| i.sans).unwrap_or_default();
            for san in sans {
                match san.strip_prefix('*') {
                    Some(suffix) => {
                        set.wildcard
                            .entry(suffix.to_string())
                            .or_insert_with(|| key.clone());
                    }
                    None => {
                        set.exact.entry(san).or_insert_with(|| key.clone());
                    }
                }
            }
            if set.fallback.is_none() {
                set.fallback = Some(key);
            }
        }
        tracing::info!(target: "fleetgate::events", event = "config.applied", certificates = bundles.len(), "TLS certificates applied");
        self.set.store(Arc::new(set));
    }

    pub fn is_empty(&self) -> bool {
        self.set.load().fallback.is_none()
    }

    fn find(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let set = self.set.load();
        if let Some(name) = name {
            let name = name.to_ascii_lowercase();
            if let Some(k) = set.exact.get(&name) {
                return Some(k.clone());
            }
            for (i, _) in name.match_indices('.').filter(|(i, _)| *i > 0) {
                if let Some(k) = set.wildcard.get(&name[i..]) {
                    return Some(k.clone());
                }
            }
        }
        set.fallback.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.find(hello.server_name())
    }
}

/// A server configuration serving `resolver`'s certificates with ALPN h2 and http/1.1.
pub fn server_config(resolver: Arc<SniResolver>) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
