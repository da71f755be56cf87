//! TLS certificates. They are not part of the configuration revisions because they
//! carry secrets: the private key arrives encrypted by the caller and is stored as is.

use async_trait::async_trait;
use fleetgate_core::time::now_ms;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::{check_version, SqlStore};
use crate::{Actor, AuditEvent, Result, StoreError};

/// A TLS certificate with its private key encrypted by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    pub name: String,
    /// The certificate chain, PEM.
    pub cert_pem: String,
    /// The private key, encrypted; the store never sees it in clear.
    pub key_encrypted: String,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
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
}

const CERT_COLUMNS: &str = "name, cert_pem, key_encrypted, version, created_at, updated_at";

fn cert_from_row(r: &AnyRow) -> Result<CertificateRecord> {
    Ok(CertificateRecord {
        name: r.try_get("name")?,
        cert_pem: r.try_get("cert_pem")?,
        key_encrypted: r.try_get("key_encrypted")?,
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
        sqlx::query(
            "INSERT INTO certificates (name, cert_pem, key_encrypted, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(stored.name.clone())
        .bind(stored.cert_pem.clone())
        .bind(stored.key_encrypted.clone())
        .bind(stored.version)
        .bind(stored.created_at)
        .bind(stored.updated_at)
        .execute(&mut *tx)
        .await?;
        let view = |r: &CertificateRecord| serde_json::json!({ "name": r.name, "cert_pem": r.cert_pem, "version": r.version });
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
}
