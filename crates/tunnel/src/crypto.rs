//! The tunnel's end-to-end cipher and its two authentication tokens (sheet 7.4, 7.5).
//!
//! A sealed unit is `nonce(12) || ciphertext || tag(16)` under ChaCha20-Poly1305 with
//! a fresh random nonce per unit and empty AAD; the key is the hex-decoded
//! `tunnel_encryption_key`, used as is in both directions. Relays only ever see
//! sealed units.

use base64::Engine;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::TunnelError;

/// Bytes of nonce in front of every sealed unit.
pub const NONCE_LEN: usize = 12;
/// Bytes of authentication tag at the end of every sealed unit.
pub const TAG_LEN: usize = 16;
/// What sealing adds to a plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// A tunnel's ChaCha20-Poly1305 key.
pub struct TunnelCipher {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for TunnelCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TunnelCipher(..)")
    }
}

impl TunnelCipher {
    /// The cipher for a `tunnel_encryption_key`: 64 hex chars, 32 bytes.
    pub fn from_hex(key_hex: &str) -> Result<Self, TunnelError> {
        let bytes = hex::decode(key_hex.trim())
            .map_err(|_| TunnelError::Config("tunnel_encryption_key is not hex".into()))?;
        if bytes.len() != 32 {
            return Err(TunnelError::Config(format!(
                "tunnel_encryption_key must be 32 bytes (64 hex chars), got {}",
                bytes.len()
            )));
        }
        let unbound = UnboundKey::new(&aead::CHACHA20_POLY1305, &bytes)
            .map_err(|_| TunnelError::Config("tunnel_encryption_key rejected".into()))?;
        Ok(TunnelCipher {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
    }

    /// Appends the sealed unit of `plain` to `out`.
    pub fn seal_into(&self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), TunnelError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| TunnelError::Crypto)?;
        let start = out.len();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let body = &mut out[start + NONCE_LEN..];
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), body)
            .map_err(|_| TunnelError::Crypto)?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// The sealed unit of `plain`.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, TunnelError> {
        let mut out = Vec::with_capacity(plain.len() + SEAL_OVERHEAD);
        self.seal_into(plain, &mut out)?;
        Ok(out)
    }

    /// Opens a sealed unit in place; returns the plaintext part of `unit`.
    pub fn open_in_place<'a>(&self, unit: &'a mut [u8]) -> Result<&'a [u8], TunnelError> {
        if unit.len() < SEAL_OVERHEAD {
            return Err(TunnelError::Crypto);
        }
        let (nonce, body) = unit.split_at_mut(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| TunnelError::Crypto)?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), body)
            .map_err(|_| TunnelError::Crypto)?;
        Ok(plain)
    }

    /// The plaintext of a sealed unit.
    pub fn open(&self, unit: &[u8]) -> Result<Vec<u8>, TunnelError> {
        let mut copy = unit.to_vec();
        let len = self.open_in_place(&mut copy)?.len();
        copy.drain(..NONCE_LEN);
        copy.truncate(len);
        Ok(copy)
    }
}

/// The relay bind token of one tunnel end: lowercase hex of HMAC-SHA256 keyed by the
/// bind secret's text (not hex-decoded) over `"{tunnel_id}:{direction}"`.
pub fn bind_token(bind_secret: &str, tunnel_id: &str, direction: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, bind_secret.as_bytes());
    let tag = hmac::sign(&key, format!("{tunnel_id}:{direction}").as_bytes());
    hex::encode(tag.as_ref())
}

/// The direct-mode peer token: standard base64 of
/// `"{tunnel_id}:" + hex(HMAC-SHA256(key = psk text, msg = tunnel_id))`.
pub fn peer_token(psk: &str, tunnel_id: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, psk.as_bytes());
    let tag = hmac::sign(&key, tunnel_id.as_bytes());
    let inner = format!("{tunnel_id}:{}", hex::encode(tag.as_ref()));
    base64::engine::general_purpose::STANDARD.encode(inner)
}

/// Whether `presented` is the peer token of `tunnel_id` under `psk`, compared in
/// constant time.
pub fn verify_peer_token(psk: &str, tunnel_id: &str, presented: &str) -> bool {
    tokens_equal(&peer_token(psk, tunnel_id), presented)
}

/// Constant-time equality of two tokens (the time depends only on the lengths).
pub fn tokens_equal(expected: &str, presented: &str) -> bool {
    let (a, b) = (expected.as_bytes(), presented.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn bind_token_matches_an_independent_hmac() {
        // HMAC-SHA256(key="key", "The quick brown fox jumps over the lazy dog"), RFC-style
        // vector, to pin the HMAC construction and the hex rendering.
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"key");
        let tag = hmac::sign(&key, b"The quick brown fox jumps over the lazy dog");
        assert_eq!(
            hex::encode(tag.as_ref()),
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
        let t = bind_token("key", "The quick brown fox jumps over the lazy dog", "x");
        assert_eq!(t.len(), 64);
        assert!(t
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(
            bind_token(KEY, "t", "ingress"),
            bind_token(KEY, "t", "egress")
        );
    }

    #[test]
    fn bind_token_uses_the_secret_text_not_its_bytes() {
        let text_keyed = hmac::Key::new(hmac::HMAC_SHA256, KEY.as_bytes());
        let expected = hex::encode(hmac::sign(&text_keyed, b"abc:ingress").as_ref());
        assert_eq!(bind_token(KEY, "abc", "ingress"), expected);
    }

    #[test]
    fn peer_token_is_base64_of_id_colon_hex_hmac() {
        let token = peer_token(KEY, "abc");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&token)
            .expect("base64");
        let raw = String::from_utf8(raw).expect("utf8");
        let key = hmac::Key::new(hmac::HMAC_SHA256, KEY.as_bytes());
        let mac = hex::encode(hmac::sign(&key, b"abc").as_ref());
        assert_eq!(raw, format!("abc:{mac}"));
        assert!(verify_peer_token(KEY, "abc", &token));
        assert!(!verify_peer_token(KEY, "abd", &token));
    }

    #[test]
    fn sealed_unit_layout_and_tamper_detection() {
        let c = TunnelCipher::from_hex(KEY).expect("key");
        let unit = c.seal(b"hello").expect("seal");
        assert_eq!(unit.len(), 5 + SEAL_OVERHEAD);
        // Recompute with the nonce taken from the unit: nonce || ct || tag, empty AAD.
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&unit[..NONCE_LEN]);
        let key = LessSafeKey::new(
            UnboundKey::new(&aead::CHACHA20_POLY1305, &hex::decode(KEY).expect("hex"))
                .expect("key"),
        );
        let mut body = b"hello".to_vec();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut body)
            .expect("seal");
        assert_eq!(&unit[NONCE_LEN..], &body[..]);
        let mut bad = unit.clone();
        bad[NONCE_LEN] ^= 1;
        assert!(c.open(&bad).is_err());
        assert!(c.open(&unit[..10]).is_err());
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(TunnelCipher::from_hex("zz").is_err());
        assert!(TunnelCipher::from_hex("00ff").is_err());
    }

    proptest! {
        #[test]
        fn seal_open_roundtrip(plain in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let c = TunnelCipher::from_hex(KEY).expect("key");
            let unit = c.seal(&plain).expect("seal");
            prop_assert_eq!(c.open(&unit).expect("open"), plain);
        }

        #[test]
        fn open_never_panics_on_garbage(unit in proptest::collection::vec(any::<u8>(), 0..256)) {
            let c = TunnelCipher::from_hex(KEY).expect("key");
            prop_assert!(c.open(&unit).is_err());
        }

        #[test]
        fn tokens_equal_is_equality(a in "[0-9a-f]{0,8}", b in "[0-9a-f]{0,8}") {
            prop_assert_eq!(tokens_equal(&a, &b), a == b);
        }
    }
}
