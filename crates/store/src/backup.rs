//! Backups: a consistent copy of the whole store in a new private file, a copy of the
//! database file on SQLite and a JSON export of every table on PostgreSQL.

use std::path::Path;

use fleetgate_core::time::now_ms;
use serde_json::Value;
use sqlx::Row;

use crate::sql::{Backend, SqlStore};
use crate::{Result, StoreError};

impl SqlStore {
    /// Writes a consistent copy of the whole store to `path` (a new file); see
    /// [`crate::Store::backup`].
    pub(crate) async fn backup_to(&self, path: &Path) -> Result<()> {
        if let Some(parent) = path.parent() {
            crate::files::private_dir(parent)?;
        }
        // The backup file is created here, empty and 0600, before anything is
        // written to it (VACUUM INTO accepts an empty file); creating it fails if
        // it exists, so two backups of one name cannot both write.
        match crate::files::create_private_file(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StoreError::Conflict(format!(
                    "backup {} already exists",
                    path.display()
                )));
            }
            Err(e) => return Err(e.into()),
        }
        let target = path
            .to_str()
            .ok_or_else(|| StoreError::Invalid("backup path is not UTF-8".into()))?
            .to_string();
        let written = self.write_backup(path, target).await;
        if written.is_err() {
            // No empty or partial file is left to pass for a backup.
            let _ = std::fs::remove_file(path);
        }
        written
    }

    /// Writes a backup into `path`, which exists, empty and private.
    async fn write_backup(&self, path: &Path, target: String) -> Result<()> {
        match self.backend {
            Backend::Sqlite => {
                // An online, transactionally consistent copy of the whole database file.
                sqlx::query("VACUUM INTO $1")
                    .bind(target)
                    .execute(&self.pool)
                    .await?;
            }
            Backend::Postgres => {
                // A logical export of every table from one consistent snapshot.
                let mut tx = self.begin_write().await?;
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .execute(&mut *tx)
                    .await?;
                // Every table of the store's schema, read from the catalog in the
                // same snapshot: a table added by a later migration is never left out.
                let names: Vec<String> = sqlx::query(
                    "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() \
                     ORDER BY tablename",
                )
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<std::result::Result<_, _>>()?;
                let mut tables = serde_json::Map::new();
                for table in names {
                    let quoted = table.replace('"', "\"\"");
                    let sql = format!("SELECT row_to_json(t)::text FROM \"{quoted}\" t");
                    let rows = sqlx::query(&sql).fetch_all(&mut *tx).await?;
                    let mut out = Vec::with_capacity(rows.len());
                    for r in rows {
                        let text: String = r.try_get(0)?;
                        out.push(
                            serde_json::from_str::<Value>(&text)
                                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        );
                    }
                    tables.insert(table, Value::Array(out));
                }
                tx.commit().await?;
                let doc = serde_json::json!({
                    "format": "fleetgate-backup/1",
                    "backend": "postgres",
                    "created_at": fleetgate_core::time::rfc3339(now_ms()),
                    "tables": tables,
                });
                let bytes = serde_json::to_vec_pretty(&doc)
                    .map_err(|e| StoreError::Invalid(e.to_string()))?;
                let tmp = path.with_extension("partial");
                let _ = std::fs::remove_file(&tmp);
                let mut f = crate::files::create_private_file(&tmp)?;
                std::io::Write::write_all(&mut f, &bytes)?;
                f.sync_all()?;
                tokio::fs::rename(&tmp, path).await?;
            }
        }
        Ok(())
    }
}
