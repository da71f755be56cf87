//! Declarative configuration: `fleetgate config dump|diff|apply` against a
//! running manager.
//!
//! A fleet file (YAML, or JSON) holds the configuration document the manager
//! exports (settings, upstreams, routes), the certificates it serves, by
//! name and names covered (never keys: certificates are uploaded or ordered,
//! and a file only refers to them), and the redirect projects with their
//! published redirects and pages. `apply` sends the whole result to the
//! manager's `/api/v1/config/apply` with the revision it read: one store
//! transaction writes the configuration (one revision, none when it did not
//! change) and the projects (their changed rules published), all or nothing,
//! and is refused (409) if the configuration changed since it was read.
//!
//! Redirect projects: the file holds each project's *published* rules. A dump
//! notes on standard error the projects holding unpublished drafts (they are
//! not in the file); an apply that must change the rules of such a project is
//! refused until the drafts are published or discarded. Without a
//! `redirect_projects` section the projects are left as they are; with one,
//! the projects it leaves out are deleted (with their tokens and agents).
//!
//! With a tag (`--select-tag T`, or `select_tag: T` in the file) a file owns
//! only the routes carrying T: those the file leaves out are deleted, routes
//! without T are left as they are. Upstreams, settings, certificates and
//! redirect projects carry no tags, so such a file holds routes only.
//!
//! Every problem of a file is reported with the file's name, the line and
//! column, and the field (`routes[2].upstream`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use fleetgate_core::diff::{diff, ChangeOp};
use fleetgate_core::gateway::{Route, Upstream};
use fleetgate_core::redirects::ProjectSpec;
use fleetgate_core::{ConfigDocument, Settings};
use fleetgate_deploy::{load_json, pointer_field, JsonPositions};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ApiFailure, Client, Remote};

/// The fleet file format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Larger files are refused before they are parsed.
pub const MAX_FILE_BYTES: usize = 16 << 20;

/// A fleet file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    /// Always 1 for this release.
    pub format_version: u32,
    /// The tag whose routes this file owns; absent for the whole configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<Settings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstreams: Option<Vec<Upstream>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<Route>>,
    /// Certificates the manager must hold, by reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificates: Option<Vec<CertificateRef>>,
    /// Every redirect project with its published rules; absent: the projects
    /// are left as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_projects: Option<Vec<ProjectSpec>>,
}

/// A certificate by name and the names it covers; its key stays on the manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateRef {
    pub name: String,
    /// The subject alternative names, as the manager lists them.
    #[serde(default)]
    pub sans: Vec<String>,
}

/// A fleet file read and checked for form, with where each value was written.
pub struct Loaded {
    pub name: String,
    pub file: FleetFile,
    positions: JsonPositions,
}

/// The output format of `dump`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct DumpArgs {
    #[command(flatten)]
    pub remote: Remote,
    /// Only the routes carrying this tag (upstreams, settings and
    /// certificates have no tags and are left out).
    #[arg(long = "select-tag", value_name = "TAG")]
    pub select_tag: Option<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
    pub output: Format,
}

/// The file a `diff` or an `apply` reads, and the part of it in force.
#[derive(clap::Args, Debug)]
pub struct FileArgs {
    #[command(flatten)]
    pub remote: Remote,
    /// The fleet file (YAML or JSON); `-` reads standard input.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Only the routes carrying this tag (as `select_tag` in the file).
    #[arg(long = "select-tag", value_name = "TAG")]
    pub select_tag: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    #[command(flatten)]
    pub file: FileArgs,
}

#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub file: FileArgs,
    /// Check the file with the manager and print what would change; write nothing.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
}

/// Reads a fleet file: YAML or JSON, every problem of form (syntax, unknown
/// fields, wrong types) named with its line and field.
pub fn parse(name: &str, text: &str) -> Result<Loaded, Vec<String>> {
    let (value, positions) = load_json(name, text, MAX_FILE_BYTES)
        .map_err(|problems| problems.iter().map(|p| p.to_string()).collect::<Vec<_>>())?;
    let loaded = |file| Loaded {
        name: name.to_string(),
        file,
        positions: positions.clone(),
    };
    match serde_path_to_error::deserialize::<_, FleetFile>(&value) {
        Ok(file) => {
            let l = loaded(file);
            if l.file.format_version != FORMAT_VERSION {
                return Err(vec![l.problem(
                    "/format_version",
                    format!(
                        "unsupported format version {}; this build reads {FORMAT_VERSION}",
                        l.file.format_version
                    ),
                )]);
            }
            Ok(l)
        }
        Err(e) => {
            let mut pointer = String::new();
            for segment in e.path().iter() {
                use serde_path_to_error::Segment;
                match segment {
                    Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
                    Segment::Map { key } => push_key(&mut pointer, key),
                    Segment::Enum { .. } | Segment::Unknown => {}
                }
            }
            let message = e.inner().to_string();
            // The unknown key itself, where it was written (the path names it
            // already, except where the error was found before the key was).
            if let Some(key) = message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next())
            {
                let mut with_key = String::new();
                push_key(&mut with_key, key);
                if !pointer.ends_with(&with_key) {
                    pointer.push_str(&with_key);
                }
            }
            let l = Loaded {
                name: name.to_string(),
                file: FleetFile {
                    format_version: FORMAT_VERSION,
                    select_tag: None,
                    settings: None,
                    upstreams: None,
                    routes: None,
                    certificates: None,
                    redirect_projects: None,
                },
                positions,
            };
            Err(vec![l.problem(&pointer, message)])
        }
    }
}

fn push_key(pointer: &mut String, key: &str) {
    pointer.push('/');
    pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
}

impl Loaded {
    /// `file:line:column: field: message`, at the value of `pointer` or, when
    /// it was not written (a missing field), at the nearest value holding it.
    fn problem(&self, pointer: &str, message: impl std::fmt::Display) -> String {
        let mut p = pointer;
        let at = loop {
            if let Some(at) = self.positions.get(p) {
                break Some(at);
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => break None,
            }
        };
        let field = pointer_field(pointer);
        let field = if field.is_empty() {
            String::new()
        } else {
            format!("{field}: ")
        };
        match at {
            Some(at) => format!("{}:{}:{}: {field}{message}", self.name, at.line, at.column),
            None => format!("{}: {field}{message}", self.name),
        }
    }
}

/// What the manager holds now.
pub struct Live {
    /// The revision in force when this was read.
    pub revision: i64,
    pub doc: ConfigDocument,
    pub certificates: Vec<CertificateRef>,
    /// Every redirect project with its published rules.
    pub projects: Vec<ProjectSpec>,
    /// Projects holding unpublished changes, with how many.
    pub drafts: Vec<(String, i64)>,
}

impl Live {
    pub async fn fetch(client: &Client) -> anyhow::Result<Live> {
        #[derive(Deserialize)]
        struct Declared {
            revision: i64,
            config: ConfigDocument,
            redirect_projects: Vec<ProjectSpec>,
            drafts: Vec<Drafts>,
        }
        #[derive(Deserialize)]
        struct Drafts {
            project: String,
            changes: i64,
        }
        let declared: Declared = client.get("/api/v1/config/declared").await?;
        let mut doc = declared.config;
        doc.normalize();
        #[derive(Deserialize)]
        struct List {
            items: Vec<CertificateRef2>,
        }
        #[derive(Deserialize)]
        struct CertificateRef2 {
            name: String,
            #[serde(default)]
            sans: Vec<String>,
        }
        let list: List = client.get("/api/v1/certificates").await?;
        let mut certificates: Vec<CertificateRef> = list
            .items
            .into_iter()
            .map(|c| CertificateRef {
                name: c.name,
                sans: c.sans,
            })
            .collect();
        certificates.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Live {
            revision: declared.revision,
            doc,
            certificates,
            projects: declared.redirect_projects,
            drafts: declared
                .drafts
                .into_iter()
                .map(|d| (d.project, d.changes))
                .collect(),
        })
    }

    /// Notes on standard error for the projects holding unpublished drafts.
    fn note_drafts(&self) {
        for (project, n) in &self.drafts {
            eprintln!(
                "note: redirect project {project} has {n} unpublished change{} (the file holds its published rules)",
                if *n == 1 { "" } else { "s" }
            );
        }
    }

    /// The fleet file of what is live, or of the routes carrying `tag`.
    pub fn to_file(&self, tag: Option<&str>) -> FleetFile {
        match tag {
            None => FleetFile {
                format_version: FORMAT_VERSION,
                select_tag: None,
                settings: Some(self.doc.settings.clone()),
                upstreams: Some(self.doc.upstreams.clone()),
                routes: Some(self.doc.routes.clone()),
                certificates: Some(self.certificates.clone()),
                redirect_projects: Some(self.projects.clone()),
            },
            Some(tag) => FleetFile {
                format_version: FORMAT_VERSION,
                select_tag: Some(tag.to_string()),
                settings: None,
                upstreams: None,
                routes: Some(
                    self.doc
                        .routes
                        .iter()
                        .filter(|r| r.tags.iter().any(|t| t == tag))
                        .cloned()
                        .collect(),
                ),
                certificates: None,
                redirect_projects: None,
            },
        }
    }
}

fn check_tag(tag: &str) -> anyhow::Result<()> {
    if tag.is_empty() || tag.len() > 64 {
        bail!("--select-tag takes a tag of 1 to 64 characters");
    }
    Ok(())
}

/// The tag in force: the flag's, the file's, or both when they agree.
fn effective_tag(l: &Loaded, flag: Option<&str>) -> Result<Option<String>, Vec<String>> {
    match (flag, l.file.select_tag.as_deref()) {
        (Some(f), Some(t)) if f != t => Err(vec![l.problem(
            "/select_tag",
            format!("the file owns the routes tagged {t:?} but --select-tag asks for {f:?}"),
        )]),
        (Some(f), _) => Ok(Some(f.to_string())),
        (None, t) => Ok(t.map(str::to_string)),
    }
}

/// The whole configuration the file asks for, checked against what is live
/// (references, ownership of routes by tag) and validated as the manager
/// validates it; every problem named with its place in the file.
pub fn desired(l: &Loaded, live: &Live, flag: Option<&str>) -> Result<ConfigDocument, Vec<String>> {
    let tag = effective_tag(l, flag)?;
    let mut problems = Vec::new();
    let file_routes = l.file.routes.clone().unwrap_or_default();
    let doc = match &tag {
        Some(tag) => {
            if tag.is_empty() || tag.len() > 64 {
                problems.push(l.problem("/select_tag", "a tag has 1 to 64 characters"));
            }
            for (section, present) in [
                ("settings", l.file.settings.is_some()),
                ("upstreams", l.file.upstreams.is_some()),
                ("certificates", l.file.certificates.is_some()),
                ("redirect_projects", l.file.redirect_projects.is_some()),
            ] {
                if present {
                    problems.push(l.problem(
                        &format!("/{section}"),
                        format!(
                            "{section} carry no tags: a file limited to the tag {tag:?} holds routes only"
                        ),
                    ));
                }
            }
            for (i, r) in file_routes.iter().enumerate() {
                if !r.tags.iter().any(|t| t == tag) {
                    problems.push(l.problem(
                        &format!("/routes/{i}/tags"),
                        format!(
                            "route {:?} does not carry the tag {tag:?} this file owns",
                            r.id
                        ),
                    ));
                }
                if let Some(other) = live.doc.routes.iter().find(|o| o.id == r.id) {
                    if !other.tags.iter().any(|t| t == tag) {
                        problems.push(l.problem(
                            &format!("/routes/{i}/id"),
                            format!(
                                "route {:?} exists on the manager without the tag {tag:?}: this file may not replace it",
                                r.id
                            ),
                        ));
                    }
                }
            }
            let mut doc = live.doc.clone();
            doc.routes = file_routes.clone();
            doc.routes.extend(
                live.doc
                    .routes
                    .iter()
                    .filter(|r| !r.tags.iter().any(|t| t == tag))
                    // (A file's route of the same id is refused above.)
                    .filter(|r| !file_routes.iter().any(|f| f.id == r.id))
                    .cloned(),
            );
            doc
        }
        None => {
            for (i, c) in l.file.certificates.iter().flatten().enumerate() {
                match live.certificates.iter().find(|x| x.name == c.name) {
                    None => problems.push(l.problem(
                        &format!("/certificates/{i}/name"),
                        format!(
                            "the manager holds no certificate named {:?} (certificates are uploaded or ordered, not applied: their keys never go in this file)",
                            c.name
                        ),
                    )),
                    Some(x) if sorted(&x.sans) != sorted(&c.sans) => problems.push(l.problem(
                        &format!("/certificates/{i}/sans"),
                        format!(
                            "certificate {:?} on the manager covers {:?}, not {:?}",
                            c.name, x.sans, c.sans
                        ),
                    )),
                    Some(_) => {}
                }
            }
            ConfigDocument {
                format_version: fleetgate_core::config::FORMAT_VERSION,
                settings: l.file.settings.clone().unwrap_or_default(),
                upstreams: l.file.upstreams.clone().unwrap_or_default(),
                routes: file_routes.clone(),
            }
        }
    };
    if let Err(e) = doc.validate() {
        for fe in &e.errors {
            problems.push(locate(
                l,
                &doc,
                file_routes.len(),
                tag.is_some(),
                &fe.field,
                &fe.message,
            ));
        }
    }
    if problems.is_empty() {
        // In the file's order: the manager's refusals then name the file's
        // indices (it puts the document in order itself).
        Ok(doc)
    } else {
        problems.dedup();
        Err(problems)
    }
}

/// The redirect projects the file asks for (`None`: left as they are),
/// checked as the manager checks them: rules valid, sources and paths unique
/// in a project, hosts in lower case and owned by one project.
pub fn desired_projects(
    l: &Loaded,
    doc: &ConfigDocument,
) -> Result<Option<Vec<ProjectSpec>>, Vec<String>> {
    let Some(projects) = &l.file.redirect_projects else {
        return Ok(None);
    };
    let mut problems = Vec::new();
    let limit = usize::try_from(doc.settings.redirects.page_size_limit_bytes).unwrap_or(usize::MAX);
    let mut names = BTreeMap::new();
    let mut hosts = BTreeMap::new();
    for (i, p) in projects.iter().enumerate() {
        let at = format!("/redirect_projects/{i}");
        for (field, v) in [("namespace", &p.namespace), ("name", &p.name)] {
            let ok = !v.is_empty()
                && v.len() <= 50
                && v.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                });
            if !ok {
                problems.push(l.problem(
                    &format!("{at}/{field}"),
                    "must be 1 to 50 characters of a-z, 0-9, _ and -",
                ));
            }
        }
        if let Some(first) = names.insert((p.namespace.clone(), p.name.clone()), i) {
            problems.push(l.problem(
                &format!("{at}/name"),
                format!(
                    "project {}/{} is declared twice (first at redirect_projects[{first}])",
                    p.namespace, p.name
                ),
            ));
        }
        for (j, h) in p.hosts.iter().enumerate() {
            if *h != h.trim().to_ascii_lowercase() {
                problems.push(l.problem(
                    &format!("{at}/hosts/{j}"),
                    "must be written in lower case, without spaces",
                ));
            }
            if let Some(other) = hosts.insert(h.clone(), i) {
                problems.push(l.problem(
                    &format!("{at}/hosts/{j}"),
                    if other == i {
                        format!("host {h} is listed twice")
                    } else {
                        format!("host {h} is also declared by redirect_projects[{other}]")
                    },
                ));
            }
        }
        let mut sources = BTreeMap::new();
        for (j, r) in p.redirects.iter().enumerate() {
            if let Err(e) = r.validate() {
                for fe in &e.errors {
                    problems
                        .push(l.problem(&format!("{at}/redirects/{j}/{}", fe.field), &fe.message));
                }
            }
            if let Some(first) = sources.insert(r.source.clone(), j) {
                problems.push(l.problem(
                    &format!("{at}/redirects/{j}/source"),
                    format!(
                        "duplicate source {:?} (first at redirects[{first}])",
                        r.source
                    ),
                ));
            }
        }
        let mut paths = BTreeMap::new();
        for (j, pg) in p.pages.iter().enumerate() {
            if let Err(e) = pg.validate(limit) {
                for fe in &e.errors {
                    problems.push(l.problem(&format!("{at}/pages/{j}/{}", fe.field), &fe.message));
                }
            }
            if let Some(first) = paths.insert(pg.path.clone(), j) {
                problems.push(l.problem(
                    &format!("{at}/pages/{j}/path"),
                    format!("duplicate path {:?} (first at pages[{first}])", pg.path),
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(Some(projects.clone()))
    } else {
        Err(problems)
    }
}

/// The changes from the live projects to the file's, one project at a time:
/// `+ redirect_project ns/name`, `- …`, `~ …` with its settings and its rules
/// (`+ redirect /old → /new (MOVED_PERMANENT)`, by source or path) that change.
pub fn describe_projects(live: &[ProjectSpec], desired: Option<&[ProjectSpec]>) -> Vec<String> {
    let Some(desired) = desired else {
        return Vec::new();
    };
    let key = |p: &ProjectSpec| format!("{}/{}", p.namespace, p.name);
    let summary = |p: &ProjectSpec| {
        let n = |k: usize, what: &str| format!("{k} {what}{}", if k == 1 { "" } else { "s" });
        format!(
            "{} ({}, {})",
            if p.hosts.is_empty() {
                "no hosts".to_string()
            } else {
                p.hosts.join(",")
            },
            n(p.redirects.len(), "redirect"),
            n(p.pages.len(), "page")
        )
    };
    let live_by: BTreeMap<String, &ProjectSpec> = live.iter().map(|p| (key(p), p)).collect();
    let desired_by: BTreeMap<String, &ProjectSpec> = desired.iter().map(|p| (key(p), p)).collect();
    let mut out = Vec::new();
    for (name, before) in &live_by {
        let Some(after) = desired_by.get(name) else {
            out.push(format!("- redirect_project {name}: {}", summary(before)));
            continue;
        };
        let mut lines = Vec::new();
        for (field, a, b) in [
            (
                "description",
                to_value(&before.description),
                to_value(&after.description),
            ),
            ("hosts", to_value(&before.hosts), to_value(&after.hosts)),
        ] {
            if a != b {
                lines.push(format!("    ~ {field}: {} → {}", compact(&a), compact(&b)));
            }
        }
        let redirect = |r: &fleetgate_core::redirects::Redirect| {
            (
                r.source.clone(),
                to_value(r),
                format!("{} ({})", r.target, r.status.as_str()),
            )
        };
        let page = |p: &fleetgate_core::redirects::Page| {
            (
                p.path.clone(),
                to_value(p),
                format!("{} bytes of {}", p.content.len(), p.content_type.as_str()),
            )
        };
        rules(
            &mut lines,
            "redirect",
            before.redirects.iter().map(redirect).collect(),
            after.redirects.iter().map(redirect).collect(),
        );
        rules(
            &mut lines,
            "page",
            before.pages.iter().map(page).collect(),
            after.pages.iter().map(page).collect(),
        );
        if !lines.is_empty() {
            out.push(format!("~ redirect_project {name}"));
            out.extend(lines);
        }
    }
    for (name, after) in &desired_by {
        if !live_by.contains_key(name) {
            out.push(format!("+ redirect_project {name}: {}", summary(after)));
        }
    }
    out
}

/// The rules of one kind that change, by key: `(key, value, summary)` each.
fn rules(
    out: &mut Vec<String>,
    kind: &str,
    live: Vec<(String, Value, String)>,
    desired: Vec<(String, Value, String)>,
) {
    let live: BTreeMap<String, (Value, String)> =
        live.into_iter().map(|(k, v, s)| (k, (v, s))).collect();
    let desired: BTreeMap<String, (Value, String)> =
        desired.into_iter().map(|(k, v, s)| (k, (v, s))).collect();
    for (k, (before, summary)) in &live {
        match desired.get(k) {
            None => out.push(format!("    - {kind} {k} → {summary}")),
            Some((after, _)) => {
                for c in diff(before, after) {
                    let show = |v: &Option<Value>| v.as_ref().map(compact).unwrap_or_default();
                    out.push(format!(
                        "    ~ {kind} {k}: {}: {} → {}",
                        pointer_field(&c.path),
                        show(&c.before),
                        show(&c.after)
                    ));
                }
            }
        }
    }
    for (k, (_, summary)) in &desired {
        if !live.contains_key(k) {
            out.push(format!("    + {kind} {k} → {summary}"));
        }
    }
}

fn sorted(v: &[String]) -> Vec<&String> {
    let mut v: Vec<&String> = v.iter().collect();
    v.sort();
    v
}

/// A problem the validation (or the manager) named by field path, placed in
/// the file: `routes[i]` below the file's routes and, for a whole file,
/// `upstreams[i]` and `settings` are the file's own; others name the live
/// route they are about.
fn locate(
    l: &Loaded,
    doc: &ConfigDocument,
    file_routes: usize,
    tagged: bool,
    field: &str,
    message: &str,
) -> String {
    let pointer = field_pointer(field);
    let mut parts = pointer.split('/').skip(1);
    let in_file = match (
        parts.next(),
        parts.next().and_then(|i| i.parse::<usize>().ok()),
    ) {
        (Some("routes"), Some(i)) => i < file_routes,
        (Some("routes"), None) => true,
        _ => !tagged,
    };
    if in_file {
        return l.problem(&pointer, message);
    }
    let what = match (pointer.split('/').nth(1), pointer.split('/').nth(2)) {
        (Some("routes"), Some(i)) => i
            .parse::<usize>()
            .ok()
            .and_then(|i| doc.routes.get(i))
            .map(|r| format!("the manager's route {:?} (not in this file)", r.id)),
        _ => None,
    }
    .unwrap_or_else(|| "the manager's configuration".to_string());
    format!("{}: {what}: {field}: {message}", l.name)
}

/// A validation field path (`routes[0].targets[1].url`) as a JSON Pointer.
fn field_pointer(field: &str) -> String {
    let mut out = String::new();
    for part in field.split('.').filter(|p| !p.is_empty()) {
        let (name, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            push_key(&mut out, name);
        }
        for index in rest.split(['[', ']']).filter(|s| !s.is_empty()) {
            out.push('/');
            out.push_str(index);
        }
    }
    out
}

/// The changes from `live` to `desired`, one resource at a time:
/// `+ route a`, `- upstream b`, `~ route c` with the fields that change.
pub fn describe(live: &ConfigDocument, desired: &ConfigDocument) -> Vec<String> {
    let mut out = Vec::new();
    let settings = diff(&to_value(&live.settings), &to_value(&desired.settings));
    if !settings.is_empty() {
        out.push("~ settings".to_string());
        out.extend(settings.iter().map(change_line));
    }
    let ups = |d: &ConfigDocument| -> BTreeMap<String, (Value, String)> {
        d.upstreams
            .iter()
            .map(|u| {
                let targets: Vec<&str> = u.targets.iter().map(|t| t.url.as_str()).collect();
                (u.name.clone(), (to_value(u), targets.join(", ")))
            })
            .collect()
    };
    let routes = |d: &ConfigDocument| -> BTreeMap<String, (Value, String)> {
        d.routes
            .iter()
            .map(|r| {
                let hosts = if r.hosts.is_empty() {
                    String::new()
                } else {
                    format!("{} ", r.hosts.join(","))
                };
                let to = if r.upstream.is_empty() {
                    "ai"
                } else {
                    &r.upstream
                };
                (
                    r.id.clone(),
                    (to_value(r), format!("{hosts}{} → {to}", r.path)),
                )
            })
            .collect()
    };
    resources(&mut out, "upstream", &ups(live), &ups(desired));
    resources(&mut out, "route", &routes(live), &routes(desired));
    out
}

/// Resources by name, each with its value and a one-line summary.
fn resources(
    out: &mut Vec<String>,
    kind: &str,
    live: &BTreeMap<String, (Value, String)>,
    desired: &BTreeMap<String, (Value, String)>,
) {
    for (name, (before, summary)) in live {
        match desired.get(name) {
            None => out.push(format!("- {kind} {name}: {summary}")),
            Some((after, _)) => {
                let changes = diff(before, after);
                if !changes.is_empty() {
                    out.push(format!("~ {kind} {name}"));
                    out.extend(changes.iter().map(change_line));
                }
            }
        }
    }
    for (name, (_, summary)) in desired {
        if !live.contains_key(name) {
            out.push(format!("+ {kind} {name}: {summary}"));
        }
    }
}

fn change_line(c: &fleetgate_core::diff::Change) -> String {
    let show = |v: &Option<Value>| v.as_ref().map(compact).unwrap_or_default();
    let path = pointer_field(&c.path);
    match c.op {
        ChangeOp::Add => format!("    + {path}: {}", show(&c.after)),
        ChangeOp::Remove => format!("    - {path}: {}", show(&c.before)),
        ChangeOp::Replace => format!("    ~ {path}: {} → {}", show(&c.before), show(&c.after)),
    }
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn read_file(path: &PathBuf) -> anyhow::Result<(String, String)> {
    use std::io::Read;
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .take(MAX_FILE_BYTES as u64 + 1)
            .read_to_string(&mut text)
            .context("cannot read the fleet file from standard input")?;
        return Ok(("<stdin>".to_string(), text));
    }
    let name = path.display().to_string();
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read {name}"))?
        .len();
    if len > MAX_FILE_BYTES as u64 {
        bail!("{name}: the file is {len} bytes; at most {MAX_FILE_BYTES} (16 MiB) are read");
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {name}"))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow!(
            "{name}: the file is not UTF-8 text (byte {} is not)",
            e.utf8_error().valid_up_to()
        )
    })?;
    Ok((name, text))
}

/// What a file asks for: the configuration and the redirect projects (`None`:
/// left as they are).
pub struct Desired {
    pub doc: ConfigDocument,
    pub projects: Option<Vec<ProjectSpec>>,
}

/// Loads the file and what is live, and works out what the file asks for; the
/// problems of the file printed, if any.
async fn prepare(
    a: &FileArgs,
) -> anyhow::Result<Result<(Client, Loaded, Live, Desired), ExitCode>> {
    let flag = a.select_tag.as_deref();
    if let Some(t) = flag {
        check_tag(t)?;
    }
    let client = a.remote.client()?;
    let (name, text) = read_file(&a.file)?;
    let loaded = match parse(&name, &text) {
        Ok(l) => l,
        Err(problems) => return Ok(Err(report(&problems))),
    };
    let live = Live::fetch(&client).await?;
    let doc = match desired(&loaded, &live, flag) {
        Ok(doc) => doc,
        Err(problems) => return Ok(Err(report(&problems))),
    };
    match desired_projects(&loaded, &doc) {
        Ok(projects) => Ok(Ok((client, loaded, live, Desired { doc, projects }))),
        Err(problems) => Ok(Err(report(&problems))),
    }
}

/// Everything that changes from what is live to what the file asks for.
fn describe_all(live: &Live, d: &Desired) -> Vec<String> {
    let mut lines = describe(&live.doc, &d.doc);
    lines.extend(describe_projects(&live.projects, d.projects.as_deref()));
    lines
}

fn report(problems: &[String]) -> ExitCode {
    for p in problems {
        eprintln!("error: {p}");
    }
    eprintln!(
        "error: the file was refused ({} problem{}); nothing was changed",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    ExitCode::FAILURE
}

/// `config dump`.
pub async fn dump(a: DumpArgs) -> anyhow::Result<ExitCode> {
    if let Some(t) = &a.select_tag {
        check_tag(t)?;
    }
    let client = a.remote.client()?;
    let live = Live::fetch(&client).await?;
    if a.select_tag.is_none() {
        live.note_drafts();
    }
    let file = live.to_file(a.select_tag.as_deref());
    let text = match a.output {
        Format::Yaml => super::yaml_out::to_yaml(&file)?,
        Format::Json => serde_json::to_string_pretty(&file)? + "\n",
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// `config diff`: exit 0 when the file matches what is live, 2 when not.
pub async fn diff_cmd(a: DiffArgs) -> anyhow::Result<ExitCode> {
    let (_client, _loaded, live, d) = match prepare(&a.file).await? {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    if d.projects.is_some() {
        live.note_drafts();
    }
    let lines = describe_all(&live, &d);
    if lines.is_empty() {
        println!("no differences");
        return Ok(ExitCode::SUCCESS);
    }
    for l in &lines {
        println!("{l}");
    }
    Ok(ExitCode::from(2))
}

/// `config apply`: one import, hence one revision (none when nothing changed).
pub async fn apply(a: ApplyArgs) -> anyhow::Result<ExitCode> {
    let (client, loaded, live, desired) = match prepare(&a.file).await? {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    let doc = &desired.doc;
    let path = if a.dry_run {
        "/api/v1/config/apply?dry_run=true"
    } else {
        "/api/v1/config/apply"
    };
    #[derive(Deserialize)]
    struct ApplyResult {
        revision: Option<i64>,
        projects: Vec<ProjectResult>,
    }
    #[derive(Deserialize)]
    struct ProjectResult {
        project: String,
        action: String,
        published_version: Option<i64>,
    }
    // The revision read goes with the file: a tagged file's document keeps the
    // manager's other routes as they were read, and if anything changed since
    // (another team's apply) the manager refuses (409) rather than undo it.
    #[derive(Serialize)]
    struct ApplyInput<'a> {
        expected_revision: i64,
        config: &'a ConfigDocument,
        #[serde(skip_serializing_if = "Option::is_none")]
        redirect_projects: Option<&'a Vec<ProjectSpec>>,
    }
    let input = ApplyInput {
        expected_revision: live.revision,
        config: doc,
        redirect_projects: desired.projects.as_ref(),
    };
    let body = bytes::Bytes::from(serde_json::to_vec(&input)?);
    let progress = super::progress::Progress::stderr();
    let working = if a.dry_run {
        "the manager is checking the configuration"
    } else {
        "the manager is applying the configuration"
    };
    let uploaded = client
        .upload(
            Method::POST,
            path,
            "application/json",
            body,
            &progress,
            working,
        )
        .await;
    let result: ApplyResult = match uploaded {
        Ok(r) => r,
        Err(e) => {
            // The manager's own refusal, placed in the file where it can be.
            if let Some(f) = e.downcast_ref::<ApiFailure>() {
                if !f.details.is_empty() && f.status.is_client_error() {
                    let file_routes = loaded.file.routes.as_ref().map_or(0, Vec::len);
                    let tagged = effective_tag(&loaded, a.file.select_tag.as_deref())
                        .ok()
                        .flatten()
                        .is_some();
                    let problems: Vec<String> = f
                        .details
                        .iter()
                        .map(|(field, m)| locate(&loaded, doc, file_routes, tagged, field, m))
                        .collect();
                    eprintln!("error: {}", f.message);
                    return Ok(report(&problems));
                }
            }
            return Err(e);
        }
    };
    let lines = describe_all(&live, &desired);
    for l in &lines {
        println!("{l}");
    }
    if a.dry_run {
        println!(
            "dry run: {} resource{} would change; nothing was written",
            count(&lines),
            if count(&lines) == 1 { "" } else { "s" }
        );
    } else {
        for p in &result.projects {
            match p.published_version {
                Some(v) => println!(
                    "applied: redirect project {} ({}), published version {v}",
                    p.project, p.action
                ),
                None => println!("applied: redirect project {} ({})", p.project, p.action),
            }
        }
        match result.revision {
            Some(n) => println!("applied: revision {n}"),
            None if result.projects.is_empty() => println!("no changes: no revision made"),
            None => println!("the configuration is unchanged: no revision made"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Resources changed in a description (their heading lines).
fn count(lines: &[String]) -> usize {
    lines.iter().filter(|l| !l.starts_with(' ')).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn field_paths_become_pointers() {
        assert_eq!(
            field_pointer("routes[0].targets[1].url"),
            "/routes/0/targets/1/url"
        );
        assert_eq!(field_pointer("settings.api"), "/settings/api");
        assert_eq!(field_pointer("format_version"), "/format_version");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any text is a fleet file or refused with problems that name the
        /// file; never a panic.
        #[test]
        fn any_text_is_read_or_refused_naming_the_file(
            text in prop_oneof![
                ".{0,200}",
                prop::collection::vec(
                    prop::sample::select(vec![
                        "format_version: 1\n", "routes:\n", "  - id: a\n", "    path: /a\n",
                        "    upstream: u\n", "    tags: [t]\n", "upstreams:\n", "  - name: u\n",
                        "    targets: []\n", "settings: {}\n", "select_tag: t\n", "x: 1\n",
                        "certificates:\n", "  - name: c\n", "    sans: [a]\n", "  ", "- ", ":",
                        "redirect_projects:\n", "  - namespace: n\n", "    redirects:\n",
                        "      - type: BASIC\n", "        source: /a\n", "        target: /b\n",
                    ]),
                    0..20,
                )
                .prop_map(|parts| parts.concat()),
            ]
        ) {
            match parse("f.yaml", &text) {
                Ok(l) => prop_assert_eq!(l.file.format_version, FORMAT_VERSION),
                Err(problems) => {
                    prop_assert!(!problems.is_empty());
                    for p in &problems {
                        prop_assert!(p.starts_with("f.yaml"), "{}", p);
                    }
                }
            }
        }
    }
}
