//! How an edge trusts its manager's node listener: the system's roots, a CA (or
//! the manager's own self-signed certificate) from a PEM file, a pinned SHA-256
//! fingerprint of the manager's certificate, or — only when asked for by name —
//! no check at all.

use std::path::PathBuf;
use std::sync::Arc;

use fleetgate_tunnel::quic::PinnedCertificate;
use rustls::pki_types::CertificateDer;
use rustls::ClientConfig;

/// Which certificates of the manager an edge accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Certificates chaining to the system's roots, for the URL's host.
    System,
    /// Certificates chaining to the PEM certificates in this file (the manager's
    /// `node-tls.crt` itself will do), for the URL's host.
    CaFile(PathBuf),
    /// Exactly the certificate with this SHA-256 fingerprint (hex, `:` allowed),
    /// whatever names it holds.
    Fingerprint(String),
    /// Any certificate: the connection is encrypted but the manager unproven.
    Insecure,
}

/// Normalizes a fingerprint as `GET /api/v1/settings/tls` shows it: 64 lower-case
/// hex digits. `None` when it is not one.
pub fn normalize_fingerprint(s: &str) -> Option<String> {
    let hex: String = s
        .trim()
        .trim_start_matches("sha256:")
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(hex)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client configuration for `trust`.
pub fn client_config(trust: &Trust) -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match trust {
        Trust::System => {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err("no system root certificates found; set edge.ca_cert or edge.manager_fingerprint".into());
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::CaFile(path) => {
            use rustls::pki_types::pem::PemObject;
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read edge.ca_cert {}: {e}", path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| format!("edge.ca_cert {}: {e}", path.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("edge.ca_cert {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "edge.ca_cert {} holds no PEM certificate",
                    path.display()
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Fingerprint(fp) => {
            let pin = normalize_fingerprint(fp).ok_or(
                "edge.manager_fingerprint must be the SHA-256 of the manager's certificate: 64 hex digits",
            )?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCertificate::pinned(
                    pin, provider,
                )))
                .with_no_client_auth()
        }
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertificate::any(provider)))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_normalized() {
        let hex = "AB".repeat(32);
        assert_eq!(normalize_fingerprint(&hex), Some("ab".repeat(32)));
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(normalize_fingerprint(&colons), Some("ab".repeat(32)));
        assert_eq!(normalize_fingerprint("abc"), None);
        assert_eq!(normalize_fingerprint(&"zz".repeat(32)), None);
    }
}
