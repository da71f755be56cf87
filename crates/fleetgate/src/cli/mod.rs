//! The command line against a running manager: `fleetgate config dump|diff|apply`
//! ([`declarative`]) and the resource commands, over the manager's HTTP API.
//!
//! Where to reach the manager and the API key come from flags, the environment
//! (`FLEETGATE_MANAGER`, `FLEETGATE_TOKEN`) or the CLI's own TOML file
//! (`--cli-config`, `FLEETGATE_CLI_CONFIG`, else `$XDG_CONFIG_HOME/fleetgate/cli.toml`
//! or `~/.config/fleetgate/cli.toml`), which must not be readable by group or
//! others. The key is sent as a bearer token and never printed.

pub mod declarative;
pub mod progress;
pub mod resources;
pub mod transfer;
pub mod yaml_out;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// How to reach the manager: shared by every command that talks to one.
#[derive(clap::Args, Debug, Clone)]
pub struct Remote {
    /// The manager's API address, e.g. http://127.0.0.1:8080 (also
    /// FLEETGATE_MANAGER, or `manager` in the CLI config file).
    #[arg(long = "manager", value_name = "URL", env = "FLEETGATE_MANAGER")]
    pub manager: Option<String>,
    /// API key (prefer FLEETGATE_TOKEN or the CLI config file: flags show in
    /// process lists).
    #[arg(
        long = "token",
        value_name = "TOKEN",
        env = "FLEETGATE_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// The CLI's TOML file (`manager = "…"`, `token = "…"`), mode 0600; default
    /// $XDG_CONFIG_HOME/fleetgate/cli.toml or ~/.config/fleetgate/cli.toml.
    #[arg(long = "cli-config", value_name = "FILE", env = "FLEETGATE_CLI_CONFIG")]
    pub cli_config: Option<PathBuf>,
}

/// The CLI's own configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CliFile {
    manager: Option<String>,
    token: Option<String>,
}

/// A client of one manager, with its key.
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// An error answered by the API, as its body says it.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    /// `field: message` for each field the API named.
    pub details: Vec<(String, String)>,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the manager answered {}: {}",
            self.status.as_u16(),
            self.message
        )?;
        if !self.code.is_empty() {
            write!(f, " ({})", self.code)?;
        }
        for (field, message) in &self.details {
            write!(f, "\n  {field}: {message}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiFailure {}

impl Remote {
    /// Resolves the manager's address and the key: flags and environment
    /// first, then the CLI config file.
    pub fn client(&self) -> anyhow::Result<Client> {
        let file = self.read_file()?;
        let base = self
            .manager
            .clone()
            .or(file.manager)
            .ok_or_else(|| {
                anyhow!("no manager given: pass --manager URL, set FLEETGATE_MANAGER or put `manager = \"URL\"` in the CLI config file")
            })?;
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--manager must be an http:// or https:// URL, got {base:?}");
        }
        let token = self.token.clone().or(file.token).ok_or_else(|| {
            anyhow!("no API key given: set FLEETGATE_TOKEN, pass --token or put `token = \"…\"` in the CLI config file (mode 0600)")
        })?;
        if token.trim().is_empty() || token.contains(['\r', '\n']) {
            bail!("the API key is empty or spans several lines");
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("fleetgate-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Client {
            base,
            token: token.trim().to_string(),
            http,
        })
    }

    /// The CLI config file: the one named (which must exist), else the default
    /// one when it exists.
    fn read_file(&self) -> anyhow::Result<CliFile> {
        let path = match &self.cli_config {
            Some(p) => p.clone(),
            None => match default_cli_config() {
                Some(p) if p.exists() => p,
                _ => return Ok(CliFile::default()),
            },
        };
        read_cli_file(&path)
    }
}

fn default_cli_config() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("fleetgate").join("cli.toml"))
}

fn read_cli_file(path: &Path) -> anyhow::Result<CliFile> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the CLI config file {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "the CLI config file {} holds an API key but is readable by others (mode {mode:04o}); \
                 it is not used: run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the CLI config file {}", path.display()))?;
    // The parser's message quotes the offending line, which may be the key.
    toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|s| format!(" at line {}", text[..s.start].lines().count().max(1)))
            .unwrap_or_default();
        anyhow!(
            "the CLI config file {} is not valid{at}: it takes `manager = \"URL\"` and `token = \"…\"`",
            path.display()
        )
    })
}

impl Client {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request with the key; an error answer becomes an [`ApiFailure`].
    async fn send(
        &self,
        method: Method,
        path: &str,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let req = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.token);
        let resp = build(req)
            .send()
            .await
            .with_context(|| format!("cannot reach the manager at {}", self.base))?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.unwrap_or_default();
            return Err(failure(status, &bytes).into());
        }
        Ok(resp)
    }

    /// Sends a request (with a JSON body, if any) and reads a JSON answer.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<T> {
        let resp = self
            .send(method.clone(), path, |r| match body {
                Some(b) => r.json(b),
                None => r,
            })
            .await?;
        read_json(resp, &method, path).await
    }

    /// Sends `data` as the body, in chunks counted on `progress` as they
    /// leave, and reads a JSON answer; the manager's work after the upload is
    /// shown as a step named `working`.
    pub async fn upload<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        data: bytes::Bytes,
        progress: &progress::Progress,
        working: &str,
    ) -> anyhow::Result<T> {
        const CHUNK: usize = 64 * 1024;
        let total = data.len() as u64;
        progress.start_bytes("uploading", "uploaded", Some(total));
        let counted = progress.clone();
        let working = working.to_string();
        let len = data.len();
        if len == 0 {
            progress.finish_bytes();
            progress.step(working.clone());
        }
        let chunks = (0..len.div_ceil(CHUNK)).map(move |i| {
            let end = ((i + 1) * CHUNK).min(len);
            let chunk = data.slice(i * CHUNK..end);
            counted.advance(chunk.len() as u64);
            if end == len {
                // The body's last bytes (the client stops reading the body
                // at its length): the rest is the manager's.
                counted.finish_bytes();
                counted.step(working.clone());
            }
            Ok::<_, std::io::Error>(chunk)
        });
        let stream = futures::stream::iter(chunks);
        let resp = self
            .send(method.clone(), path, |r| {
                r.header(reqwest::header::CONTENT_TYPE, content_type)
                    .header(reqwest::header::CONTENT_LENGTH, total)
                    .body(reqwest::Body::wrap_stream(stream))
            })
            .await;
        progress.clear();
        read_json(resp?, &method, path).await
    }

    /// A GET of a JSON object with its version (the `ETag`), to send back as
    /// `If-Match` with a change.
    pub async fn get_versioned(&self, path: &str) -> anyhow::Result<(Value, Option<String>)> {
        let resp = self.send(Method::GET, path, |r| r).await?;
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok((read_json(resp, &Method::GET, path).await?, etag))
    }

    /// A PUT of a JSON body, refused by the manager if the object is no longer
    /// at version `etag`.
    pub async fn put_if_match(
        &self,
        path: &str,
        body: &Value,
        etag: Option<&str>,
    ) -> anyhow::Result<Value> {
        let resp = self
            .send(Method::PUT, path, |r| {
                let r = r.json(body);
                match etag {
                    Some(e) => r.header(reqwest::header::IF_MATCH, e),
                    None => r,
                }
            })
            .await?;
        read_json(resp, &Method::PUT, path).await
    }

    /// Sends a request whose answer has no body to read (a 204).
    pub async fn call_empty(&self, method: Method, path: &str) -> anyhow::Result<()> {
        self.send(method, path, |r| r).await.map(drop)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(Method::GET, path, None).await
    }

    /// A GET whose answer is read as it comes (a download).
    pub async fn get_raw(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        self.send(Method::GET, path, |r| r).await
    }

    /// A GET whose answer is streamed (the event stream).
    pub async fn stream(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        self.send(Method::GET, path, |r| {
            r.header("accept", "text/event-stream")
        })
        .await
    }
}

async fn read_json<T: DeserializeOwned>(
    resp: reqwest::Response,
    method: &Method,
    path: &str,
) -> anyhow::Result<T> {
    let bytes = resp
        .bytes()
        .await
        .with_context(|| format!("{method} {path}: the answer was cut short"))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{method} {path}: the manager's answer is not the JSON expected"))
}

fn failure(status: StatusCode, body: &[u8]) -> ApiFailure {
    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        error: String,
        #[serde(default)]
        code: String,
        #[serde(default)]
        details: Value,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(b) => {
            let details = b.details["errors"]
                .as_array()
                .map(|errors| {
                    errors
                        .iter()
                        .map(|e| {
                            let text = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                            // A row of an import names its line too.
                            let field = match e["line"].as_u64() {
                                Some(line) => format!("line {line}: {}", text("field")),
                                None => text("field"),
                            };
                            (field, text("message"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            ApiFailure {
                status,
                code: b.code,
                message: if b.error.is_empty() {
                    status.canonical_reason().unwrap_or("error").to_string()
                } else {
                    b.error
                },
                details,
            }
        }
        Err(_) => ApiFailure {
            status,
            code: String::new(),
            message: String::from_utf8_lossy(&body[..body.len().min(300)])
                .trim()
                .to_string(),
            details: Vec::new(),
        },
    }
}
