//! Encryption of secrets at rest (private keys, AI provider keys): ChaCha20-
//! Poly1305 with the installation's 32-byte secret key and a random nonce per
//! value. Stored form: `v1:` + base64(nonce ‖ ciphertext ‖ tag).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;

/// Seals and opens secrets with one key. Cheap to clone.
#[derive(Clone)]
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(<key>)")
    }
}

impl SecretBox {
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(key)),
        }
    }

    /// Reads a key given as 64 hex characters or base64 of 32 bytes.
    pub fn parse_key(text: &str) -> Result<[u8; 32], String> {
        let t = text.trim();
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t).map_err(|e| e.to_string())?
        } else {
            STANDARD.decode(t).map_err(|_| {
                "the secret key must be 64 hex characters or base64 of 32 bytes".to_string()
            })?
        };
        bytes
            .try_into()
            .map_err(|_| "the secret key must be exactly 32 bytes".to_string())
    }

    pub fn seal(&self, plaintext: &[u8]) -> String {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        // Encryption with a valid key and nonce cannot fail for in-memory buffers.
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext)
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        format!("v1:{}", STANDARD.encode(out))
    }

    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, String> {
        let b64 = sealed.strip_prefix("v1:").ok_or("unknown secret format")?;
        let raw = STANDARD.decode(b64).map_err(|_| "secret is not base64")?;
        if raw.len() < 12 + 16 {
            return Err("secret is truncated".into());
        }
        let (nonce, ct) = raw.split_at(12);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| "secret does not decrypt with this installation's key (was FLEETGATE_SECRET_KEY changed?)".into())
    }
}

/// The key from the environment — `FLEETGATE_SECRET_KEY`, or its other name
/// `FLEETGATE_MASTER_KEY` (the master key that seals AI provider keys is this
/// same key) — or else from `<data_dir>/secret.key` (see [`load_or_create_key`]).
/// Both variables may be set only to the same key.
pub fn load_or_create_key_from_env(
    secret_key: Option<&str>,
    master_key: Option<&str>,
    data_dir: &std::path::Path,
) -> Result<[u8; 32], String> {
    fn given(v: Option<&str>) -> Option<&str> {
        v.filter(|v| !v.trim().is_empty())
    }
    match (given(secret_key), given(master_key)) {
        (Some(s), Some(m)) => {
            let a = SecretBox::parse_key(s).map_err(|e| format!("FLEETGATE_SECRET_KEY: {e}"))?;
            let b = SecretBox::parse_key(m).map_err(|e| format!("FLEETGATE_MASTER_KEY: {e}"))?;
            if a != b {
                return Err(
                    "FLEETGATE_SECRET_KEY and FLEETGATE_MASTER_KEY are both set, to different keys; they name the same key: set one"
                        .into(),
                );
            }
            Ok(a)
        }
        (None, Some(m)) => {
            SecretBox::parse_key(m).map_err(|e| format!("FLEETGATE_MASTER_KEY: {e}"))
        }
        (s, None) => load_or_create_key(s, data_dir),
    }
}

/// The key from `FLEETGATE_SECRET_KEY`, or from `<data_dir>/secret.key`, created
/// (mode 0600) with a random key when absent.
pub fn load_or_create_key(
    env_value: Option<&str>,
    data_dir: &std::path::Path,
) -> Result<[u8; 32], String> {
    if let Some(v) = env_value.filter(|v| !v.trim().is_empty()) {
        return SecretBox::parse_key(v).map_err(|e| format!("FLEETGATE_SECRET_KEY: {e}"));
    }
    let path = data_dir.join("secret.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => SecretBox::parse_key(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)
                .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
            let mut key = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut key);
            write_private(&path, hex::encode(key).as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens() {
        let b = SecretBox::new(&[7u8; 32]);
        let sealed = b.seal(b"private key");
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains("private"));
        assert_eq!(b.open(&sealed).expect("opens"), b"private key");
        assert_ne!(b.seal(b"x"), b.seal(b"x"), "a fresh nonce each time");
        assert!(
            SecretBox::new(&[8u8; 32]).open(&sealed).is_err(),
            "another key cannot open it"
        );
        // Change one character in the middle, where every bit of it is payload.
        let mid = sealed.len() / 2;
        let swap = if sealed.as_bytes()[mid] == b'A' {
            "B"
        } else {
            "A"
        };
        let tampered = format!("{}{swap}{}", &sealed[..mid], &sealed[mid + 1..]);
        assert_ne!(tampered, sealed);
        assert!(b.open(&tampered).is_err());
        assert!(b.open("v1:AAAA").is_err());
        assert!(b.open("plain").is_err());
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("fg-secret-{}", uuid::Uuid::new_v4()));
        let k1 = load_or_create_key(None, &dir).expect("created");
        let k2 = load_or_create_key(None, &dir).expect("read back");
        assert_eq!(k1, k2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("secret.key"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let hexkey = "11".repeat(32);
        assert_eq!(
            load_or_create_key(Some(&hexkey), &dir).expect("env"),
            [0x11; 32]
        );
        assert!(load_or_create_key(Some("short"), &dir).is_err());
        // FLEETGATE_MASTER_KEY is the same key under another name.
        let other = "22".repeat(32);
        assert_eq!(
            load_or_create_key_from_env(None, Some(&hexkey), &dir).expect("master"),
            [0x11; 32]
        );
        assert_eq!(
            load_or_create_key_from_env(Some(&hexkey), Some(&hexkey), &dir).expect("both"),
            [0x11; 32]
        );
        let clash =
            load_or_create_key_from_env(Some(&hexkey), Some(&other), &dir).expect_err("two keys");
        assert!(clash.contains("FLEETGATE_MASTER_KEY"), "{clash}");
        assert!(load_or_create_key_from_env(None, Some("short"), &dir)
            .expect_err("bad")
            .starts_with("FLEETGATE_MASTER_KEY"));
        assert_eq!(
            load_or_create_key_from_env(None, Some(" "), &dir).expect("file"),
            k1
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
