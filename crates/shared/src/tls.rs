//! TLS keys for serving: a certificate chain and its private key loaded into
//! what rustls serves with. The gateway loads the bundles it serves; the manager
//! loads an uploaded bundle to refuse one whose key does not fit. The chain is
//! read with `fleetgate_core::tls::pem_certificates`, which rustls-free code
//! (certificate facts, expiry) shares.

use fleetgate_core::tls::pem_certificates;

/// Loads a bundle for serving: the chain and its private key, checked to match.
pub fn certified_key(
    cert_pem: &str,
    key_pem: &str,
) -> Result<std::sync::Arc<rustls::sign::CertifiedKey>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = pem_certificates(cert_pem)?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("the private key is not PEM (PKCS#8, PKCS#1 or SEC1): {e}"))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    let ck = rustls::sign::CertifiedKey::new(chain, signer);
    ck.keys_match()
        .map_err(|_| "the private key does not belong to the certificate".to_string())?;
    Ok(std::sync::Arc::new(ck))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_bundle() {
        assert!(certified_key("hello", "key").is_err());
        let err = certified_key(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "not a key",
        )
        .expect_err("no key");
        assert!(err.contains("private key"), "{err}");
    }
}
