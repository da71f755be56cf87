//! Short-lived signed tokens traded for an API key (`POST /api/v1/auth/login`
//! with `{"api_key"}`), as FlatRun clients use them: a JWT (HS256) naming the key
//! it stands for and when it expires. The signing key is derived from the
//! manager's secret key, so every manager sharing it accepts the token; the key
//! the token stands for is looked up on every use, so revoking the key (or
//! disabling its owner) ends its tokens at once.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// How long a token lives.
pub const TOKEN_TTL_SECS: i64 = 3600;
/// The issuer written in (and required of) every token.
const ISSUER: &str = "fleetgate";
/// Longest token accepted, before any decoding.
const MAX_TOKEN_BYTES: usize = 2048;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The API key's id.
    pub sub: String,
    pub iss: String,
    /// Unix seconds.
    pub iat: i64,
    pub exp: i64,
}

/// Signs and checks tokens with one key.
#[derive(Clone)]
pub struct TokenSigner {
    key: [u8; 32],
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(<key>)")
    }
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a Fleetgate token")]
    Malformed,
    #[error("the token's signature does not match")]
    BadSignature,
    #[error("the token has expired; log in again")]
    Expired,
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts every key length"),
    }
}

impl TokenSigner {
    /// A signer whose key is derived from the manager's secret key (never the
    /// secret key itself, which also seals stored secrets).
    pub fn new(secret_key: &[u8; 32]) -> Self {
        let mut m = mac(secret_key);
        m.update(b"fleetgate api token signing key v1");
        let mut key = [0u8; 32];
        key.copy_from_slice(&m.finalize().into_bytes());
        TokenSigner { key }
    }

    /// A token for API key `key_id`, issued at `now` (Unix seconds).
    pub fn issue(&self, key_id: &str, now: i64) -> (String, Claims) {
        let claims = Claims {
            sub: key_id.to_string(),
            iss: ISSUER.into(),
            iat: now,
            exp: now + TOKEN_TTL_SECS,
        };
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = serde_json::to_vec(&claims).unwrap_or_default();
        let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(body));
        let mut m = mac(&self.key);
        m.update(signed.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
        (format!("{signed}.{sig}"), claims)
    }

    /// The claims of a token this signer issued, if it has not expired at `now`.
    pub fn check(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let (signed, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (header, body) = signed.split_once('.').ok_or(TokenError::Malformed)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed)?;
        let mut m = mac(&self.key);
        m.update(signed.as_bytes());
        // Constant-time comparison.
        m.verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
        let header: serde_json::Value = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or(TokenError::Malformed)?;
        if header["alg"] != "HS256" {
            return Err(TokenError::Malformed);
        }
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(body)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.iss != ISSUER {
            return Err(TokenError::Malformed);
        }
        if now >= claims.exp {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// Whether a bearer credential has the shape of a token (three base64url parts)
/// rather than of an API key.
pub fn looks_like_token(credential: &str) -> bool {
    credential.starts_with("eyJ") && credential.matches('.').count() == 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tokens_round_trip_and_expire() {
        let s = TokenSigner::new(&[7u8; 32]);
        let (t, c) = s.issue("key-1", 1_000);
        assert!(looks_like_token(&t));
        assert_eq!(s.check(&t, 1_001), Ok(c.clone()));
        assert_eq!(c.exp, 1_000 + TOKEN_TTL_SECS);
        assert_eq!(s.check(&t, c.exp), Err(TokenError::Expired));
        // Another manager key does not accept it.
        let other = TokenSigner::new(&[8u8; 32]);
        assert_eq!(other.check(&t, 1_001), Err(TokenError::BadSignature));
    }

    #[test]
    fn tampering_is_refused() {
        let s = TokenSigner::new(&[7u8; 32]);
        let (t, _) = s.issue("key-1", 1_000);
        let (signed, sig) = t.rsplit_once('.').expect("parts");
        let (header, _) = signed.split_once('.').expect("parts");
        let forged_body = URL_SAFE_NO_PAD
            .encode(br#"{"sub":"key-admin","iss":"fleetgate","iat":1000,"exp":999999}"#);
        let forged = format!("{header}.{forged_body}.{sig}");
        assert_eq!(s.check(&forged, 1_001), Err(TokenError::BadSignature));
        let none_alg = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            forged_body
        );
        assert_ne!(s.check(&none_alg, 1_001).map(|_| ()), Ok(()));
        assert_eq!(s.check("abc", 0), Err(TokenError::Malformed));
        assert_eq!(s.check(&"a".repeat(5000), 0), Err(TokenError::Malformed));
    }

    proptest! {
        #[test]
        fn check_never_panics_and_refuses_garbage(t in "[A-Za-z0-9._-]{0,300}") {
            let s = TokenSigner::new(&[1u8; 32]);
            prop_assert!(s.check(&t, 0).is_err());
        }
    }
}
