//! The CLI's long work against a running manager: `fleetgate redirects
//! import` (a CSV or JSON file of rules uploaded as drafts) and `fleetgate
//! backup` (a backup of the store made on the manager and downloaded), with
//! their progress on standard error ([`super::progress`]).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::Value;

use super::progress::{bytes, Progress};
use super::resources::{print_json, segment, Common, Output};

/// Largest rules file sent (the manager's own limit).
const MAX_IMPORT_BYTES: u64 = 128 * 1024 * 1024;

#[derive(clap::Subcommand, Debug)]
pub enum RedirectsCommand {
    /// Upload a CSV (`type,source,target,status`) or JSON file of redirects
    /// into a project's drafts: all rows or none; publish them afterwards.
    Import(Import),
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum ImportMode {
    /// Add and update rules by source.
    Merge,
    /// Also delete the project's rules the file leaves out.
    Replace,
}

#[derive(clap::Args, Debug)]
pub struct Import {
    #[command(flatten)]
    pub common: Common,
    #[arg(long)]
    pub namespace: String,
    #[arg(long)]
    pub project: String,
    /// The rules: CSV, or JSON when the name ends in .json.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    #[arg(long, value_enum, default_value = "merge")]
    pub mode: ImportMode,
    /// Check every row and count them; write nothing.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
}

#[derive(clap::Args, Debug)]
pub struct Backup {
    #[command(flatten)]
    pub common: Common,
    /// The backup's name on the manager (default: `fleetgate-<UTC time>`).
    #[arg(long)]
    pub name: Option<String>,
    /// Where to write the downloaded backup (default: its file name on the
    /// manager, in the current directory); never overwritten.
    #[arg(long = "out", value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Make the backup on the manager only; download nothing.
    #[arg(long = "no-download")]
    pub no_download: bool,
}

pub async fn redirects(cmd: RedirectsCommand) -> anyhow::Result<ExitCode> {
    let RedirectsCommand::Import(i) = cmd;
    let client = i.common.remote.client()?;
    let name = i.file.display().to_string();
    let len = std::fs::metadata(&i.file)
        .with_context(|| format!("cannot read {name}"))?
        .len();
    if len > MAX_IMPORT_BYTES {
        bail!(
            "{name}: the file is {}; the manager takes at most {}",
            bytes(len),
            bytes(MAX_IMPORT_BYTES)
        );
    }
    let data = tokio::fs::read(&i.file)
        .await
        .with_context(|| format!("cannot read {name}"))?;
    let json = i
        .file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let content_type = if json { "application/json" } else { "text/csv" };
    let mode = match i.mode {
        ImportMode::Merge => "merge",
        ImportMode::Replace => "replace",
    };
    let path = format!(
        "/api/v1/namespaces/{}/projects/{}/redirects/import?mode={mode}{}",
        segment(&i.namespace),
        segment(&i.project),
        if i.dry_run { "&dry_run=true" } else { "" }
    );
    let progress = Progress::stderr();
    let working = if i.dry_run {
        "the manager is checking the rows"
    } else {
        "the manager is importing the rows"
    };
    let r: Value = client
        .upload(
            Method::POST,
            &path,
            content_type,
            data.into(),
            &progress,
            working,
        )
        .await?;
    match i.common.output {
        Output::Json => print_json(&r)?,
        Output::Table => {
            let n = |k: &str| r[k].as_u64().unwrap_or(0);
            if i.dry_run {
                println!("dry run: {} rows are valid; nothing was written", n("rows"));
            } else {
                println!(
                    "imported {} rows into the drafts of {}/{}: {} created, {} updated, {} unchanged, {} deleted",
                    n("rows"),
                    i.namespace,
                    i.project,
                    n("created"),
                    n("updated"),
                    n("unchanged"),
                    n("deleted")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn backup(b: Backup) -> anyhow::Result<ExitCode> {
    let client = b.common.remote.client()?;
    // With --out, the file is made first: an existing one stops the command
    // before the manager writes a backup.
    let mut target = match &b.out {
        Some(p) if !b.no_download => Some((p.clone(), create_private(p)?)),
        _ => None,
    };
    let progress = Progress::stderr();
    progress.step("the manager is writing the backup");
    let body = b.name.as_ref().map(|n| serde_json::json!({ "name": n }));
    let made = client
        .call::<Value>(Method::POST, "/api/v1/settings/backup", body.as_ref())
        .await;
    progress.clear();
    let made = match made {
        Ok(m) => m,
        Err(e) => {
            if let Some((p, f)) = target.take() {
                drop(f);
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
    };
    let name = made["name"].as_str().unwrap_or_default().to_string();
    let file = made["file"].as_str().unwrap_or_default().to_string();
    let size = made["size_bytes"].as_u64();
    eprintln!(
        "backup {name} written on the manager ({})",
        size.map(bytes).unwrap_or_default()
    );
    if b.no_download {
        match b.common.output {
            Output::Json => print_json(&made)?,
            Output::Table => println!("backup {name}: {file} on the manager"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (out, mut f) = match target {
        Some(t) => t,
        // The manager's file name is checked by it (letters, digits, `_-.`),
        // but only its last component is ever used here.
        None => match std::path::Path::new(&file).file_name() {
            Some(f) if !file.is_empty() => {
                let p = PathBuf::from(f);
                let created = create_private(&p)?;
                (p, created)
            }
            _ => bail!("the manager named no backup file"),
        },
    };
    let shown = out.display().to_string();
    let result = download(&client, &name, &mut f, &progress).await;
    if result.is_err() {
        drop(f);
        let _ = std::fs::remove_file(&out);
    }
    let written = result.with_context(|| format!("the download of backup {name} failed"))?;
    match b.common.output {
        Output::Json => {
            let mut v = made;
            v["downloaded_to"] = shown.into();
            print_json(&v)?;
        }
        Output::Table => println!("backup {name} saved to {shown} ({})", bytes(written)),
    }
    Ok(ExitCode::SUCCESS)
}

/// A new file only the user may read: a backup holds password hashes and
/// sealed secrets. An existing file is never overwritten.
fn create_private(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).with_context(|| {
        format!(
            "cannot create {} (an existing file is never overwritten)",
            path.display()
        )
    })
}

async fn download(
    client: &super::Client,
    name: &str,
    f: &mut std::fs::File,
    progress: &Progress,
) -> anyhow::Result<u64> {
    let mut resp = client
        .get_raw(&format!("/api/v1/settings/backups/{}", segment(name)))
        .await?;
    let total = resp.content_length();
    progress.start_bytes("downloading", "downloaded", total);
    let mut written = 0u64;
    while let Some(chunk) = resp.chunk().await.context("the answer was cut short")? {
        f.write_all(&chunk)
            .context("cannot write the backup file")?;
        written += chunk.len() as u64;
        progress.advance(chunk.len() as u64);
    }
    if total.is_some_and(|t| t != written) {
        bail!("the manager sent {written} bytes of {}", total.unwrap_or(0));
    }
    f.sync_all().context("cannot write the backup file")?;
    progress.finish_bytes();
    Ok(written)
}
