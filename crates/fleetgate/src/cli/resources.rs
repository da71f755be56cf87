//! `fleetgate routes|upstreams|revisions|events …` against a running manager:
//! tables by default, the API's JSON with `-o json`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use reqwest::Method;
use serde_json::{Map, Value};

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
    /// Create a route (a new revision), from flags or a whole object (-f).
    Create(RouteCreate),
    /// Change a route (a new revision): the flags given replace those fields;
    /// -f replaces the whole route.
    Update(RouteUpdate),
    /// Delete a route (a new revision).
    Delete(Named),
}

#[derive(clap::Subcommand, Debug)]
pub enum UpstreamsCommand {
    /// Every upstream.
    List(Common),
    /// One upstream.
    Get(Named),
    /// Create an upstream (a new revision), from flags or a whole object (-f).
    Create(UpstreamCreate),
    /// Delete an upstream no route uses (a new revision).
    Delete(Named),
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

/// The fields of a route that flags set; each one given replaces the
/// object's (from -f, or the manager's for `update`).
#[derive(clap::Args, Debug)]
pub struct RouteFields {
    /// A JSON or YAML file holding the whole route; the flags given change it.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The path matched (`/api`).
    #[arg(long)]
    pub path: Option<String>,
    /// A host name matched (`api.example.com`, `*.example.com`); repeatable.
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Methods allowed (`GET,POST`); none allows all.
    #[arg(long = "methods", value_name = "METHODS", value_delimiter = ',')]
    pub methods: Vec<String>,
    /// The upstream's name, or a URL for a one-target upstream.
    #[arg(long)]
    pub upstream: Option<String>,
    /// Remove the matched prefix before forwarding (`--strip-path=false` to stop).
    #[arg(long = "strip-path", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub strip_path: Option<bool>,
    /// How the path matches.
    #[arg(long = "match", value_enum)]
    pub match_type: Option<MatchType>,
    /// Among equally specific matches, higher wins.
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// A tag; repeatable.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// What the route is for.
    #[arg(long)]
    pub description: Option<String>,
    /// Whether the route serves (`--enabled=false` to switch it off).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub enabled: Option<bool>,
    /// Answer plain-HTTP requests with a redirect to HTTPS.
    #[arg(long = "https-redirect", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub https_redirect: Option<bool>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum MatchType {
    Prefix,
    Exact,
    Regex,
}

#[derive(clap::Args, Debug)]
pub struct RouteCreate {
    #[command(flatten)]
    pub common: Common,
    /// The route's id (1 to 64 of `A-Za-z0-9_.-`); generated when absent.
    #[arg(long)]
    pub id: Option<String>,
    #[command(flatten)]
    pub fields: RouteFields,
}

#[derive(clap::Args, Debug)]
pub struct RouteUpdate {
    #[command(flatten)]
    pub common: Common,
    /// The route's id.
    pub id: String,
    #[command(flatten)]
    pub fields: RouteFields,
}

#[derive(clap::Args, Debug)]
pub struct UpstreamCreate {
    #[command(flatten)]
    pub common: Common,
    /// A JSON or YAML file holding the whole upstream; the flags given change it.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The upstream's name (1 to 64 of `A-Za-z0-9_.-`).
    #[arg(long)]
    pub name: Option<String>,
    /// A target's URL (`http://10.0.0.5:8080`); repeatable.
    #[arg(long = "target", value_name = "URL")]
    pub targets: Vec<String>,
    /// round_robin, least_connections, weighted or consistent_hash.
    #[arg(long = "balancing", value_name = "HOW")]
    pub load_balancing: Option<String>,
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
pub(crate) fn segment(s: &str) -> String {
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

/// Largest object file read by `create`/`update -f`.
const MAX_OBJECT_FILE: usize = 1 << 20;

/// A JSON or YAML file holding one object; problems named with line and field.
fn read_object(path: &PathBuf) -> anyhow::Result<Map<String, Value>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {name}"))?;
    let (value, _) =
        fleetgate_deploy::load_json(&name, &text, MAX_OBJECT_FILE).map_err(|problems| {
            anyhow!(
                "{}",
                problems
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })?;
    match value {
        Value::Object(o) => Ok(o),
        _ => bail!("{name}: the file must hold one object (a mapping of fields)"),
    }
}

impl RouteFields {
    /// Sets the fields given on `obj`.
    fn apply(&self, obj: &mut Map<String, Value>) {
        let mut set = |k: &str, v: Value| {
            obj.insert(k.to_string(), v);
        };
        let strings = |v: &[String]| Value::from(v.to_vec());
        if let Some(p) = &self.path {
            set("path", p.clone().into());
        }
        if !self.hosts.is_empty() {
            set("hosts", strings(&self.hosts));
        }
        if !self.methods.is_empty() {
            let m: Vec<String> = self
                .methods
                .iter()
                .map(|m| m.trim().to_ascii_uppercase())
                .collect();
            set("methods", strings(&m));
        }
        if let Some(u) = &self.upstream {
            set("upstream", u.clone().into());
        }
        if let Some(b) = self.strip_path {
            set("strip_path", b.into());
        }
        if let Some(m) = self.match_type {
            let m = match m {
                MatchType::Prefix => "prefix",
                MatchType::Exact => "exact",
                MatchType::Regex => "regex",
            };
            set("match", m.into());
        }
        if let Some(p) = self.priority {
            set("priority", p.into());
        }
        if !self.tags.is_empty() {
            set("tags", strings(&self.tags));
        }
        if let Some(d) = &self.description {
            set("description", d.clone().into());
        }
        if let Some(b) = self.enabled {
            set("enabled", b.into());
        }
        if let Some(b) = self.https_redirect {
            set("https_redirect", b.into());
        }
    }

    fn any_flag(&self) -> bool {
        let mut probe = Map::new();
        self.apply(&mut probe);
        !probe.is_empty()
    }
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

pub(crate) fn print_json(v: &Value) -> anyhow::Result<()> {
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
        RoutesCommand::Create(c) => {
            let mut obj = match &c.fields.file {
                Some(f) => read_object(f)?,
                None => Map::new(),
            };
            if let Some(id) = &c.id {
                obj.insert("id".into(), id.clone().into());
            }
            c.fields.apply(&mut obj);
            if c.fields.file.is_none() && !obj.contains_key("path") {
                bail!("a route needs --path (or -f FILE with the whole route)");
            }
            let client = c.common.remote.client()?;
            let r: Value = client
                .call(Method::POST, "/api/v1/routes", Some(&Value::Object(obj)))
                .await?;
            match c.common.output {
                Output::Json => print_json(&r)?,
                Output::Table => {
                    println!("created route {}", text(&r["id"]));
                    print_table(ROUTE_HEADER, &[route_row(&r)]);
                }
            }
        }
        RoutesCommand::Update(u) => {
            if u.fields.file.is_none() && !u.fields.any_flag() {
                bail!("nothing to change: give the fields to set (--path, --host, …) or -f FILE");
            }
            let client = u.common.remote.client()?;
            let path = format!("/api/v1/routes/{}", segment(&u.id));
            // From the file, the whole route; from flags, the manager's route
            // with those fields changed, written only if nobody changed it
            // in between (If-Match).
            let (mut obj, etag) = match &u.fields.file {
                Some(f) => (read_object(f)?, None),
                None => {
                    let (current, etag) = client.get_versioned(&path).await?;
                    match current {
                        Value::Object(o) => (o, etag),
                        _ => bail!("GET {path}: the manager's answer is not a route"),
                    }
                }
            };
            u.fields.apply(&mut obj);
            let r = client
                .put_if_match(&path, &Value::Object(obj), etag.as_deref())
                .await?;
            match u.common.output {
                Output::Json => print_json(&r)?,
                Output::Table => {
                    println!("updated route {}", text(&r["id"]));
                    print_table(ROUTE_HEADER, &[route_row(&r)]);
                }
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
        UpstreamsCommand::Create(c) => {
            let mut obj = match &c.file {
                Some(f) => read_object(f)?,
                None => Map::new(),
            };
            if let Some(n) = &c.name {
                obj.insert("name".into(), n.clone().into());
            }
            if !c.targets.is_empty() {
                let targets: Vec<Value> = c
                    .targets
                    .iter()
                    .map(|t| serde_json::json!({ "url": t }))
                    .collect();
                obj.insert("targets".into(), targets.into());
            }
            if let Some(b) = &c.load_balancing {
                obj.insert("load_balancing".into(), b.clone().into());
            }
            if c.file.is_none() && (c.name.is_none() || c.targets.is_empty()) {
                bail!("an upstream needs --name and at least one --target URL (or -f FILE with the whole upstream)");
            }
            let client = c.common.remote.client()?;
            let u: Value = client
                .call(Method::POST, "/api/v1/upstreams", Some(&Value::Object(obj)))
                .await?;
            match c.common.output {
                Output::Json => print_json(&u)?,
                Output::Table => {
                    println!("created upstream {}", text(&u["name"]));
                    print_table(UPSTREAM_HEADER, &[upstream_row(&u)]);
                }
            }
        }
        UpstreamsCommand::Delete(n) => {
            let client = n.common.remote.client()?;
            client
                .call_empty(
                    Method::DELETE,
                    &format!("/api/v1/upstreams/{}", segment(&n.name)),
                )
                .await?;
            match n.common.output {
                Output::Json => print_json(&serde_json::json!({"deleted": n.name}))?,
                Output::Table => println!("deleted upstream {}", n.name),
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
