//! `fleetgate routes|upstreams|revisions|events …` against a running manager:
//! tables by default, the API's JSON with `-o json`.

use std::process::ExitCode;

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::Value;

use super::{Client, Remote};

/// The output of a listing or a lookup.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct Common {
    #[command(flatten)]
    pub remote: Remote,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(clap::Subcommand, Debug)]
pub enum RoutesCommand {
    /// Every route.
    List(Common),
    /// One route.
    Get(Named),
    /// Delete a route (a new revision).
    Delete(Named),
}

#[derive(clap::Subcommand, Debug)]
pub enum UpstreamsCommand {
    /// Every upstream.
    List(Common),
    /// One upstream.
    Get(Named),
}

#[derive(clap::Subcommand, Debug)]
pub enum RevisionsCommand {
    /// Revisions, newest first.
    List(Common),
    /// What changed from one revision to another.
    Diff(RevisionDiff),
    /// Put a revision's configuration back in force, as a new revision.
    Rollback(Rollback),
}

#[derive(clap::Subcommand, Debug)]
pub enum EventsCommand {
    /// Follow the event stream, one event a line.
    Tail(Tail),
}

#[derive(clap::Args, Debug)]
pub struct Named {
    #[command(flatten)]
    pub common: Common,
    /// The route's id or the upstream's name.
    pub name: String,
}

#[derive(clap::Args, Debug)]
pub struct RevisionDiff {
    #[command(flatten)]
    pub common: Common,
    /// The revision.
    pub revision: i64,
    /// The revision to compare with (default: the one before; 0 is the empty
    /// configuration).
    #[arg(long)]
    pub against: Option<i64>,
}

#[derive(clap::Args, Debug)]
pub struct Rollback {
    #[command(flatten)]
    pub common: Common,
    /// The revision whose configuration is put back.
    pub revision: i64,
}

#[derive(clap::Args, Debug)]
pub struct Tail {
    #[command(flatten)]
    pub common: Common,
    /// Only this severity: critical, warning or info.
    #[arg(long)]
    pub severity: Option<String>,
    /// Only this type, e.g. config.changed.
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Start after this event id (0: every stored event); default: from now.
    #[arg(long)]
    pub after: Option<i64>,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
}

/// A path segment, percent-encoded.
fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Every item of a paginated listing.
async fn list_all(client: &Client, path: &str) -> anyhow::Result<Vec<Value>> {
    let mut items = Vec::new();
    loop {
        let page: Value = client
            .get(&format!("{path}?limit=500&offset={}", items.len()))
            .await?;
        let got = page["items"].as_array().cloned().unwrap_or_default();
        let total = page["total"].as_u64().unwrap_or(0) as usize;
        let empty = got.is_empty();
        items.extend(got);
        if empty || items.len() >= total {
            return Ok(items);
        }
    }
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Columns padded to their widest cell.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        Value::Array(a) if a.is_empty() => "-".to_string(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn route_row(r: &Value) -> Vec<String> {
    vec![
        text(&r["id"]),
        text(&r["path"]),
        text(&r["hosts"]),
        if r["upstream"].as_str().is_some_and(|u| !u.is_empty()) {
            text(&r["upstream"])
        } else if r["ai"].is_object() {
            "(ai)".to_string()
        } else {
            "-".to_string()
        },
        text(&r["methods"]),
        text(&r["enabled"]),
        text(&r["tags"]),
    ]
}
const ROUTE_HEADER: &[&str] = &[
    "ID", "PATH", "HOSTS", "UPSTREAM", "METHODS", "ENABLED", "TAGS",
];

fn upstream_row(u: &Value) -> Vec<String> {
    let targets = u["targets"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| text(&t["url"]))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    vec![text(&u["name"]), text(&u["load_balancing"]), targets]
}
const UPSTREAM_HEADER: &[&str] = &["NAME", "BALANCING", "TARGETS"];

pub async fn routes(cmd: RoutesCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RoutesCommand::List(c) => {
            let client = c.remote.client()?;
            let items = list_all(&client, "/api/v1/routes").await?;
            match c.output {
                Output::Json => print_json(&Value::Array(items))?,
                Output::Table => print_table(
                    ROUTE_HEADER,
                    &items.iter().map(route_row).collect::<Vec<_>>(),
                ),
            }
        }
        RoutesCommand::Get(n) => {
            let client = n.common.remote.client()?;
            let r: Value = client
                .get(&format!("/api/v1/routes/{}", segment(&n.name)))
                .await?;
            match n.common.output {
                Output::Json => print_json(&r)?,
                Output::Table => print_table(ROUTE_HEADER, &[route_row(&r)]),
            }
        }
        RoutesCommand::Delete(n) => {
            let client = n.common.remote.client()?;
            client
                .call_empty(
                    Method::DELETE,
                    &format!("/api/v1/routes/{}", segment(&n.name)),
                )
                .await?;
            match n.common.output {
                Output::Json => print_json(&serde_json::json!({"deleted": n.name}))?,
                Output::Table => println!("deleted route {}", n.name),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn upstreams(cmd: UpstreamsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        UpstreamsCommand::List(c) => {
            let client = c.remote.client()?;
            let items = list_all(&client, "/api/v1/upstreams").await?;
            match c.output {
                Output::Json => print_json(&Value::Array(items))?,
                Output::Table => print_table(
                    UPSTREAM_HEADER,
                    &items.iter().map(upstream_row).collect::<Vec<_>>(),
                ),
            }
        }
        UpstreamsCommand::Get(n) => {
            let client = n.common.remote.client()?;
            let u: Value = client
                .get(&format!("/api/v1/upstreams/{}", segment(&n.name)))
                .await?;
            match n.common.output {
                Output::Json => print_json(&u)?,
                Output::Table => print_table(UPSTREAM_HEADER, &[upstream_row(&u)]),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn change_rows(changes: &Value) -> Vec<String> {
    changes
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let show = |k: &str| {
                if c[k].is_null() && c.get(k).is_none() {
                    String::new()
                } else {
                    serde_json::to_string(&c[k]).unwrap_or_default()
                }
            };
            let path = fleetgate_deploy::pointer_field(c["path"].as_str().unwrap_or(""));
            match c["op"].as_str() {
                Some("add") => format!("+ {path}: {}", show("after")),
                Some("remove") => format!("- {path}: {}", show("before")),
                _ => format!("~ {path}: {} → {}", show("before"), show("after")),
            }
        })
        .collect()
}

pub async fn revisions(cmd: RevisionsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RevisionsCommand::List(c) => {
            let client = c.remote.client()?;
            let items = list_all(&client, "/api/v1/revisions").await?;
            match c.output {
                Output::Json => print_json(&Value::Array(items))?,
                Output::Table => print_table(
                    &["REVISION", "CREATED", "AUTHOR", "MESSAGE"],
                    &items
                        .iter()
                        .map(|r| {
                            vec![
                                text(&r["number"]),
                                text(&r["created_at"]),
                                text(&r["author"]),
                                text(&r["message"]),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
        }
        RevisionsCommand::Diff(d) => {
            if d.revision < 1 {
                bail!("a revision number is 1 or more");
            }
            let client = d.common.remote.client()?;
            let mut path = format!("/api/v1/revisions/{}/diff", d.revision);
            if let Some(a) = d.against {
                path.push_str(&format!("?against={a}"));
            }
            let r: Value = client.get(&path).await?;
            match d.common.output {
                Output::Json => print_json(&r)?,
                Output::Table => {
                    println!("revision {} against {}", text(&r["to"]), text(&r["from"]));
                    for l in change_rows(&r["changes"]) {
                        println!("  {l}");
                    }
                }
            }
        }
        RevisionsCommand::Rollback(rb) => {
            if rb.revision < 1 {
                bail!("a revision number is 1 or more");
            }
            let client = rb.common.remote.client()?;
            let r: Value = client
                .call(
                    Method::POST,
                    &format!("/api/v1/revisions/{}/rollback", rb.revision),
                    None,
                )
                .await?;
            match rb.common.output {
                Output::Json => print_json(&r)?,
                Output::Table => {
                    for l in change_rows(&r["changes"]) {
                        println!("{l}");
                    }
                    match r["revision"].as_i64() {
                        Some(n) => {
                            println!("rolled back to revision {}: revision {n}", rb.revision)
                        }
                        None => println!(
                            "revision {} is already in force: no revision made",
                            rb.revision
                        ),
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One server-sent event, as far as read.
#[derive(Default)]
struct SseFrame {
    data: Vec<String>,
}

pub async fn events(cmd: EventsCommand) -> anyhow::Result<ExitCode> {
    let EventsCommand::Tail(t) = cmd;
    let client = t.common.remote.client()?;
    let mut query = Vec::new();
    if let Some(s) = &t.severity {
        query.push(format!("severity={}", segment(s)));
    }
    if let Some(s) = &t.event_type {
        query.push(format!("type={}", segment(s)));
    }
    if let Some(a) = t.after {
        query.push(format!("last_event_id={a}"));
    }
    let path = if query.is_empty() {
        "/api/v1/stream/events".to_string()
    } else {
        format!("/api/v1/stream/events?{}", query.join("&"))
    };
    let mut resp = client.stream(&path).await?;
    let mut buf: Vec<u8> = Vec::new();
    let mut frame = SseFrame::default();
    let mut seen = 0u64;
    if t.count == Some(0) {
        return Ok(ExitCode::SUCCESS);
    }
    while let Some(chunk) = resp.chunk().await.context("the event stream was cut")? {
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if frame.data.is_empty() {
                    continue;
                }
                let data = std::mem::take(&mut frame.data).join("\n");
                let Ok(e) = serde_json::from_str::<Value>(&data) else {
                    continue;
                };
                match t.common.output {
                    Output::Json => println!("{}", serde_json::to_string(&e)?),
                    Output::Table => println!(
                        "{}  {:<8}  {:<28}  {}",
                        text(&e["created_at"]),
                        text(&e["severity"]),
                        text(&e["type"]),
                        text(&e["message"])
                    ),
                }
                seen += 1;
                if t.count.is_some_and(|c| seen >= c) {
                    return Ok(ExitCode::SUCCESS);
                }
            } else if let Some(d) = line.strip_prefix("data:") {
                frame
                    .data
                    .push(d.strip_prefix(' ').unwrap_or(d).to_string());
            }
            // `id:`, `event:` and comments (heartbeats) need nothing here:
            // the data holds the id and the type.
        }
        if buf.len() > 1 << 20 {
            bail!("the event stream sent a line longer than 1 MiB");
        }
    }
    bail!("the manager closed the event stream")
}
