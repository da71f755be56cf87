//! TLS certificates. They are not part of the configuration revisions because they
//! carry secrets: the private key arrives encrypted by the caller and is stored as is.
//! A certificate issued through ACME also keeps the names it is renewed for and the
//! outcome of its last renewal; the ACME accounts (one per directory) live here too,
//! their credentials encrypted by the caller like the keys.
//!
//! The HTTP-01 answers of orders in progress are kept here as well, so that every
//! manager sharing the database can answer the CA, whichever placed the order.
//! They are transient protocol state rather than changes an operator makes (the
//! order's outcome is audited with the certificate it stores), so writing them
//! leaves no audit entry.

use async_trait::async_trait;
use fleetgate_core::time::now_ms;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::{check_version, SqlStore};
use crate::{Actor, AuditEvent, Result, StoreError};

/// Where a certificate came from: `upload` (PEM given through the API) or `acme`.
pub const SOURCE_UPLOAD: &str = "upload";
pub const SOURCE_ACME: &str = "acme";

/// A TLS certificate with its private key encrypted by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    pub name: String,
    /// The certificate chain, PEM.
    pub cert_pem: String,
    /// The private key, encrypted; the store never sees it in clear.
    pub key_encrypted: String,
    /// [`SOURCE_UPLOAD`] or [`SOURCE_ACME`].
    pub source: String,
    /// For ACME certificates, the names ordered (and renewed); empty for uploads.
    pub acme_domains: Vec<String>,
    /// Why the last renewal failed; cleared by the next successful one.
    pub renewal_error: Option<String>,
    /// When the last renewal failed, Unix milliseconds.
    pub renewal_error_at: Option<i64>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Default for CertificateRecord {
    fn default() -> Self {
        Self {
            name: String::new(),
            cert_pem: String::new(),
            key_encrypted: String::new(),
            source: SOURCE_UPLOAD.into(),
            acme_domains: Vec::new(),
            renewal_error: None,
            renewal_error_at: None,
            version: 0,
            created_at: 0,
            updated_at: 0,
        }
    }
}

/// An ACME account at one directory, its credentials (account key and URL)
/// encrypted by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeAccountRecord {
    pub directory_url: String,
    pub email: Option<String>,
    /// The serialized account credentials, encrypted; never seen in clear here.
    pub credentials_encrypted: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The answer to one pending ACME HTTP-01 challenge: served on
/// `/.well-known/acme-challenge/<token>` by every gateway until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeChallengeRecord {
    pub token: String,
    pub key_authorization: String,
    /// The name the challenge proves (for whoever reads the table).
    pub identifier: String,
    /// Unix ms after which the row is neither listed as live nor served.
    pub expires_at: i64,
    pub created_at: i64,
}

/// TLS certificates.
#[async_trait]
pub trait CertificateStore: Send + Sync {
    /// Creates or replaces a certificate; `expected_version` as for resources.
    async fn put_certificate(
        &self,
        actor: &Actor,
        cert: &CertificateRecord,
        expected_version: Option<i64>,
    ) -> Result<CertificateRecord>;
    async fn get_certificate(&self, name: &str) -> Result<Option<CertificateRecord>>;
    async fn list_certificates(&self) -> Result<Vec<CertificateRecord>>;
    async fn delete_certificate(&self, actor: &Actor, name: &str) -> Result<()>;
    /// Records the outcome of a renewal that changed nothing else: `Some(error)`
    /// after a failure, `None` to clear it. The certificate, its key and its
    /// version stay as they are (a failed renewal keeps the old one serving).
    async fn set_certificate_renewal_error(
        &self,
        actor: &Actor,
        name: &str,
        error: Option<&str>,
    ) -> Result<()>;
    async fn get_acme_account(&self, directory_url: &str) -> Result<Option<AcmeAccountRecord>>;
    /// Creates or replaces the account of `directory_url` (audited without its
    /// credentials).
    async fn put_acme_account(&self, actor: &Actor, account: &AcmeAccountRecord) -> Result<()>;
    /// Creates or replaces the answer of challenge `c.token` (not audited: see
    /// the module notes).
    async fn put_acme_challenge(&self, c: &AcmeChallengeRecord) -> Result<()>;
    /// Removes the answers of `tokens` (those of a finished order); returns how
    /// many there were.
    async fn delete_acme_challenges(&self, tokens: &[String]) -> Result<u64>;
    /// The answers still live at `now` (`expires_at > now`), by token.
    async fn live_acme_challenges(&self, now: i64) -> Result<Vec<AcmeChallengeRecord>>;
    /// Removes the answers expired at `now`; returns how many.
    async fn prune_acme_challenges(&self, now: i64) -> Result<u64>;
}

const CERT_COLUMNS: &str = "name, cert_pem, key_encrypted, source, acme_domains, renewal_error, \
     renewal_error_at, version, created_at, updated_at";

fn cert_from_row(r: &AnyRow) -> Result<CertificateRecord> {
    let domains: String = r.try_get("acme_domains")?;
    Ok(CertificateRecord {
        name: r.try_get("name")?,
        cert_pem: r.try_get("cert_pem")?,
        key_encrypted: r.try_get("key_encrypted")?,
        source: r.try_get("source")?,
        acme_domains: serde_json::from_str(&domains).map_err(|e| {
            StoreError::Corrupt(format!("certificates.acme_domains is not a JSON list: {e}"))
        })?,
        renewal_error: r.try_get("renewal_error")?,
        renewal_error_at: r.try_get("renewal_error_at")?,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

#[async_trait]
impl CertificateStore for SqlStore {
    async fn put_certificate(
        &self,
        actor: &Actor,
        c: &CertificateRecord,
        expected_version: Option<i64>,
    ) -> Result<CertificateRecord> {
        let mut tx = self.begin_audited().await?;
        // Lock the row (or, for SQLite, take the write lock) before reading it.
        sqlx::query("UPDATE certificates SET version = version WHERE name = $1")
            .bind(c.name.clone())
            .execute(&mut *tx)
            .await?;
        let before = sqlx::query(&format!(
            "SELECT {CERT_COLUMNS} FROM certificates WHERE name = $1"
        ))
        .bind(c.name.clone())
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| cert_from_row(&r))
        .transpose()?;
        check_version(expected_version, before.as_ref().map_or(0, |b| b.version))?;
        let now = now_ms();
        let stored = CertificateRecord {
            version: before.as_ref().map_or(1, |b| b.version + 1),
            created_at: before.as_ref().map_or(now, |b| b.created_at),
            updated_at: now,
            ..c.clone()
        };
        sqlx::query("DELETE FROM certificates WHERE name = $1")
            .bind(c.name.clone())
            .execute(&mut *tx)
            .await?;
        let domains = serde_json::to_string(&stored.acme_domains)
            .map_err(|e| StoreError::Invalid(format!("acme_domains: {e}")))?;
        sqlx::query(
            "INSERT INTO certificates (name, cert_pem, key_encrypted, source, acme_domains, \
             renewal_error, renewal_error_at, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(stored.name.clone())
        .bind(stored.cert_pem.clone())
        .bind(stored.key_encrypted.clone())
        .bind(stored.source.clone())
        .bind(domains)
        .bind(stored.renewal_error.clone())
        .bind(stored.renewal_error_at)
        .bind(stored.version)
        .bind(stored.created_at)
        .bind(stored.updated_at)
        .execute(&mut *tx)
        .await?;
        let view = |r: &CertificateRecord| {
            serde_json::json!({
                "name": r.name,
                "cert_pem": r.cert_pem,
                "source": r.source,
                "acme_domains": r.acme_domains,
                "version": r.version,
            })
        };
        let mut ev = AuditEvent::new(
            if before.is_some() {
                "certificate.update"
            } else {
                "certificate.create"
            },
            "certificate",
            Some(&c.name),
        )
        .after(view(&stored));
        if let Some(b) = &before {
            ev = ev.before(view(b));
        }
        tx.commit(actor, &ev).await?;
        Ok(stored)
    }

    async fn get_certificate(&self, name: &str) -> Result<Option<CertificateRecord>> {
        sqlx::query(&format!(
            "SELECT {CERT_COLUMNS} FROM certificates WHERE name = $1"
        ))
        .bind(name.to_string())
        .fetch_optional(&self.pool)
        .await?
        .map(|r| cert_from_row(&r))
        .transpose()
    }

    async fn list_certificates(&self) -> Result<Vec<CertificateRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {CERT_COLUMNS} FROM certificates ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(cert_from_row).collect()
    }

    async fn delete_certificate(&self, actor: &Actor, name: &str) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        let n = sqlx::query("DELETE FROM certificates WHERE name = $1")
            .bind(name.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("certificate {name}")));
        }
        tx.commit(
            actor,
            &AuditEvent::new("certificate.delete", "certificate", Some(name)),
        )
        .await?;
        Ok(())
    }

    async fn set_certificate_renewal_error(
        &self,
        actor: &Actor,
        name: &str,
        error: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        let at = error.map(|_| now_ms());
        let n = sqlx::query(
            "UPDATE certificates SET renewal_error = $1, renewal_error_at = $2 WHERE name = $3",
        )
        .bind(error.map(str::to_string))
        .bind(at)
        .bind(name.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("certificate {name}")));
        }
        let action = if error.is_some() {
            "certificate.renewal_failed"
        } else {
            "certificate.renewal_error_cleared"
        };
        tx.commit(
            actor,
            &AuditEvent::new(action, "certificate", Some(name))
                .after(serde_json::json!({ "renewal_error": error })),
        )
        .await
    }

    async fn get_acme_account(&self, directory_url: &str) -> Result<Option<AcmeAccountRecord>> {
        sqlx::query(
            "SELECT directory_url, email, credentials_encrypted, created_at, updated_at \
             FROM acme_accounts WHERE directory_url = $1",
        )
        .bind(directory_url.to_string())
        .fetch_optional(&self.pool)
        .await?
        .map(|r| {
            Ok(AcmeAccountRecord {
                directory_url: r.try_get("directory_url")?,
                email: r.try_get("email")?,
                credentials_encrypted: r.try_get("credentials_encrypted")?,
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
            })
        })
        .transpose()
    }

    async fn put_acme_account(&self, actor: &Actor, a: &AcmeAccountRecord) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        let existed = sqlx::query("DELETE FROM acme_accounts WHERE directory_url = $1")
            .bind(a.directory_url.clone())
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO acme_accounts (directory_url, email, credentials_encrypted, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(a.directory_url.clone())
        .bind(a.email.clone())
        .bind(a.credentials_encrypted.clone())
        .bind(if a.created_at > 0 { a.created_at } else { now })
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit(
            actor,
            &AuditEvent::new(
                if existed {
                    "acme_account.update"
                } else {
                    "acme_account.create"
                },
                "acme_account",
                Some(&a.directory_url),
            )
            .after(serde_json::json!({ "directory_url": a.directory_url, "email": a.email })),
        )
        .await
    }

    async fn put_acme_challenge(&self, c: &AcmeChallengeRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO acme_challenges (token, key_authorization, identifier, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (token) DO UPDATE SET \
             key_authorization = excluded.key_authorization, identifier = excluded.identifier, \
             expires_at = excluded.expires_at, created_at = excluded.created_at",
        )
        .bind(c.token.clone())
        .bind(c.key_authorization.clone())
        .bind(c.identifier.clone())
        .bind(c.expires_at)
        .bind(if c.created_at > 0 { c.created_at } else { now_ms() })
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_acme_challenges(&self, tokens: &[String]) -> Result<u64> {
        if tokens.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_write().await?;
        let mut n = 0;
        for t in tokens {
            n += sqlx::query("DELETE FROM acme_challenges WHERE token = $1")
                .bind(t.clone())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }

    async fn live_acme_challenges(&self, now: i64) -> Result<Vec<AcmeChallengeRecord>> {
        let rows = sqlx::query(
            "SELECT token, key_authorization, identifier, expires_at, created_at \
             FROM acme_challenges WHERE expires_at > $1 ORDER BY token",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AcmeChallengeRecord {
                    token: r.try_get("token")?,
                    key_authorization: r.try_get("key_authorization")?,
                    identifier: r.try_get("identifier")?,
                    expires_at: r.try_get("expires_at")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn prune_acme_challenges(&self, now: i64) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM acme_challenges WHERE expires_at <= $1")
                .bind(now)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}
