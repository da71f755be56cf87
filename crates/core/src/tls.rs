//! TLS certificates: parsing PEM chains into what operators want to know
//! (subject, SANs, issuer, validity, fingerprint) and the expiry status rule
//! (valid, expiring within 30 days, expired).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Days before `not_after` from which a certificate counts as expiring.
pub const EXPIRING_DAYS: i64 = 30;

/// The facts of a certificate chain's leaf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CertificateInfo {
    pub subject: String,
    pub issuer: String,
    /// DNS names (and IP addresses) the certificate covers.
    pub sans: Vec<String>,
    /// Unix milliseconds.
    pub not_before: i64,
    /// Unix milliseconds.
    pub not_after: i64,
    /// SHA-256 of the leaf's DER, hex.
    pub fingerprint_sha256: String,
    pub self_signed: bool,
    /// Certificates in the chain, leaf first.
    pub chain_length: usize,
}

/// A certificate and its key, in clear, for the data plane only (never stored or logged).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsBundle {
    pub name: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for TlsBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsBundle")
            .field("name", &self.name)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// `valid`, `expiring` (within 30 days) or `expired` at `now_ms`.
pub fn status(not_after_ms: i64, now_ms: i64) -> &'static str {
    if not_after_ms <= now_ms {
        "expired"
    } else if not_after_ms - now_ms <= EXPIRING_DAYS * 86_400_000 {
        "expiring"
    } else {
        "valid"
    }
}

/// The DER blocks of every `CERTIFICATE` in a PEM text, in order.
pub fn pem_certificates(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for item in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let item = item.map_err(|e| format!("not valid PEM: {e}"))?;
        if item.label == "CERTIFICATE" {
            out.push(item.contents);
        }
    }
    if out.is_empty() {
        return Err("contains no -----BEGIN CERTIFICATE----- block".into());
    }
    Ok(out)
}

/// Parses a PEM chain and describes its leaf.
pub fn inspect(pem: &str) -> Result<CertificateInfo, String> {
    let ders = pem_certificates(pem)?;
    for (i, der) in ders.iter().enumerate() {
        x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("certificate {} of the chain does not parse: {e}", i + 1))?;
    }
    let (_, leaf) = x509_parser::parse_x509_certificate(&ders[0])
        .map_err(|e| format!("certificate does not parse: {e}"))?;
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = leaf.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    sans.push(d.to_ascii_lowercase())
                }
                x509_parser::extensions::GeneralName::IPAddress(ip) => {
                    let addr = match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip)
                            .ok()
                            .map(|b| std::net::IpAddr::from(b).to_string()),
                        16 => <[u8; 16]>::try_from(*ip)
                            .ok()
                            .map(|b| std::net::IpAddr::from(b).to_string()),
                        _ => None,
                    };
                    sans.extend(addr);
                }
                _ => {}
            }
        }
    }
    Ok(CertificateInfo {
        subject: leaf.subject().to_string(),
        issuer: leaf.issuer().to_string(),
        sans,
        not_before: leaf.validity().not_before.timestamp() * 1000,
        not_after: leaf.validity().not_after.timestamp() * 1000,
        fingerprint_sha256: hex::encode(Sha256::digest(&ders[0])),
        self_signed: leaf.subject() == leaf.issuer(),
        chain_length: ders.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn status_boundaries() {
        let day = 86_400_000;
        assert_eq!(status(100 * day, 0), "valid");
        assert_eq!(status(31 * day, 0), "valid");
        assert_eq!(status(30 * day, 0), "expiring");
        assert_eq!(status(1, 0), "expiring");
        assert_eq!(status(0, 0), "expired");
    }

    #[test]
    fn rejects_non_certificates() {
        assert!(inspect("hello").is_err());
        assert!(
            inspect("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
                .is_err()
        );
        assert!(inspect("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
    }

    proptest! {
        #[test]
        fn parsing_garbage_never_panics(s in "\\PC{0,300}") {
            let _ = inspect(&s);
            let body = format!("-----BEGIN CERTIFICATE-----\n{s}\n-----END CERTIFICATE-----\n");
            let _ = inspect(&body);
        }
    }
}
