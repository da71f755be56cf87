//! ACME (RFC 8555) certificates issued and renewed by the manager, with the
//! HTTP-01 challenge answered by the gateway.
//!
//! - The ACME account is one per directory URL, created on first use; its
//!   credentials (account key and URL) are stored sealed with the installation's
//!   secret key (`acme_accounts`), never in clear and never logged.
//! - An order's HTTP-01 key authorizations are stored (`acme_challenges`, one
//!   row per token with an expiry) before the CA is told to validate, so that
//!   every manager sharing the store answers them, whichever placed the order:
//!   each one publishes the live rows into its data-plane input
//!   ([`fleetgate_protocol::AcmeChallenges`]) from its store follower
//!   ([`AppState::follow_store`], woken over NATS `fleetgate.config.<cluster>` or
//!   by polling), and edges receive the set with their configuration. The
//!   gateway answers `/.well-known/acme-challenge/<token>` for any host before
//!   routing.
//! - Before telling the CA to validate, the ordering manager waits (up to
//!   [`ANSWER_WAIT`] each) until its in-process gateway reports answering the new
//!   set, and until the other live replicas do: with NATS it asks each of them
//!   (they publish from the store at once and answer when their gateway applied
//!   it); without NATS it waits two of their polling periods.
//! - The rows go when the order finishes, however it ends. A row whose manager
//!   stopped mid-order expires [`CHALLENGE_SLACK`] after the order's own timeout:
//!   an expired row is never published (the followers wake at the soonest expiry
//!   to withdraw it) and is pruned.
//! - The issued chain and its new key are stored like an uploaded certificate
//!   (key sealed, `source = acme`, the ordered names kept for renewals).
//! - Renewals: [`spawn_renewals`] checks at start and then every
//!   `check_interval`; a certificate is due `renew_before` (30 days) before it
//!   expires. A success raises `certificate.renewed`; a failure records the
//!   CA's problem on the certificate and raises `certificate.renewal_failed`
//!   (warning) while the old certificate keeps serving.
//! - A deleted deployment's certificate (`deploy-<name>`, issued through ACME)
//!   is deleted with it ([`Acme::remove_deployment_certificate`]) unless a route
//!   or another deployment still names one of its domains (a route host equal to
//!   the name, or a wildcard host covering it; a route without hosts does not
//!   count). A kept certificate raises `certificate.kept` naming who uses it and
//!   is renewed like any ACME certificate until deleted by hand. An uploaded
//!   certificate of that name is the operator's and is never deleted this way.
//!
//! Settings are process configuration (`[acme]`), not part of the revisions: the
//! CA bundle is a file of this machine, and switching CAs is an operator's
//! decision at start, like the database URL.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetgate_core::events::{NewEvent, Severity};
use fleetgate_core::time::{now_ms, rfc3339};
use fleetgate_core::tls::inspect;
use fleetgate_store::{
    AcmeAccountRecord, AcmeChallengeRecord, Actor, CertificateRecord, StoreError, SOURCE_ACME,
};
use http_body_util::BodyExt;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, Problem, RetryPolicy,
};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;
use utoipa::ToSchema;

use crate::AppState;

/// Let's Encrypt's production directory: the default CA.
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Most names one certificate is ordered for (Let's Encrypt's limit).
pub const MAX_DOMAINS: usize = 100;

/// How long the manager waits for its gateway (and, apart, for the other live
/// replicas) to answer a new challenge before telling the CA to validate anyway
/// (the CA then reports what it saw).
pub const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// A stored challenge answer lives this long beyond the order's own timeout
/// (`order_timeout`), for the validations asked before the order is polled.
pub const CHALLENGE_SLACK: Duration = Duration::from_secs(120);

/// ACME settings (process configuration `[acme]`).
#[derive(Debug, Clone)]
pub struct AcmeOptions {
    /// The CA's directory URL.
    pub directory_url: String,
    /// PEM bundle of extra roots to trust for the directory's TLS (a test CA
    /// such as pebble's); the system roots are trusted as well.
    pub ca_cert: Option<PathBuf>,
    /// Contact for the account (`mailto:`), when none is given with a request.
    pub email: Option<String>,
    /// A certificate is renewed this long before it expires.
    pub renew_before: Duration,
    /// How often the renewal task looks for due certificates.
    pub check_interval: Duration,
    /// How long one order may take, validations and issuance included.
    pub order_timeout: Duration,
}

impl Default for AcmeOptions {
    fn default() -> Self {
        Self {
            directory_url: LETS_ENCRYPT_PRODUCTION.into(),
            ca_cert: None,
            email: None,
            renew_before: Duration::from_secs(30 * 86_400),
            check_interval: Duration::from_secs(86_400),
            order_timeout: Duration::from_secs(90),
        }
    }
}

/// Why an ACME request did not give a certificate.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The CA refused, or the order failed; `problem` is the CA's problem
    /// document (RFC 7807) when there is one.
    #[error("{message}")]
    Failed {
        message: String,
        problem: Option<Value>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AcmeError {
    fn failed(message: impl Into<String>) -> Self {
        Self::Failed {
            message: message.into(),
            problem: None,
        }
    }

    /// An error of the ACME client, with the CA's problem document when it sent one.
    fn client(context: &str, e: instant_acme::Error) -> Self {
        match e {
            instant_acme::Error::Api(p) => Self::Failed {
                message: format!("{context}: {}", problem_text(&p)),
                problem: Some(problem_json(&p)),
            },
            instant_acme::Error::Timeout(_) => {
                Self::failed(format!("{context}: the CA did not finish in time"))
            }
            other => Self::failed(format!("{context}: {other}")),
        }
    }
}

fn problem_text(p: &Problem) -> String {
    let mut out = p.detail.clone().unwrap_or_else(|| "no detail given".into());
    if let Some(t) = &p.r#type {
        out.push_str(&format!(" ({t})"));
    }
    for s in &p.subproblems {
        if let Some(d) = &s.detail {
            out.push_str(&format!("; {d}"));
        }
    }
    out
}

fn problem_json(p: &Problem) -> Value {
    json!({
        "type": p.r#type,
        "detail": p.detail,
        "status": p.status,
        "subproblems": p.subproblems.iter().map(|s| json!({
            "type": s.r#type,
            "detail": s.detail,
            "identifier": s.identifier.as_ref().and_then(|i| serde_json::to_value(i).ok()),
        })).collect::<Vec<_>>(),
    })
}

/// Checks and normalizes the names of an order: lower case, no trailing dot,
/// each a fully qualified DNS name (HTTP-01 proves neither wildcards nor IP
/// addresses), no duplicates, 1 to [`MAX_DOMAINS`].
pub fn normalize_domains(domains: &[String]) -> Result<Vec<String>, String> {
    if domains.is_empty() {
        return Err("must name at least one domain".into());
    }
    if domains.len() > MAX_DOMAINS {
        return Err(format!("at most {MAX_DOMAINS} domains per certificate"));
    }
    let mut out: Vec<String> = Vec::with_capacity(domains.len());
    for d in domains {
        let name = d.trim().trim_end_matches('.').to_ascii_lowercase();
        if name.starts_with("*.") {
            return Err(format!(
                "{d:?} is a wildcard; HTTP-01 cannot validate wildcard names"
            ));
        }
        if name.parse::<std::net::IpAddr>().is_ok() {
            return Err(format!(
                "{d:?} is an IP address; only DNS names are ordered"
            ));
        }
        if !fleetgate_core::gateway::valid_host(&name) || !name.contains('.') {
            return Err(format!(
                "{d:?} is not a fully qualified domain name (labels of letters, digits and -)"
            ));
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

/// What an issuance needs.
pub struct IssueRequest {
    /// The certificate's name in the store.
    pub name: String,
    /// Normalized names ([`normalize_domains`]).
    pub domains: Vec<String>,
    /// Contact for the account, if it is to be created or changed.
    pub email: Option<String>,
    /// As for uploads: `Some(0)` creates, `Some(v)` replaces version `v`.
    pub expected_version: Option<i64>,
}

/// The outcome of one renewal.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RenewOutcome {
    pub name: String,
    /// `renewed` or `failed`.
    pub outcome: String,
    /// The new expiry, when renewed (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The ACME client of this manager.
pub struct Acme {
    pub options: AcmeOptions,
    http: reqwest::Client,
    /// The account, once loaded or created.
    account: tokio::sync::Mutex<Option<Account>>,
    /// One publication of the stored challenge answers at a time, so that a set
    /// read earlier is never published over one read later.
    publishing: tokio::sync::Mutex<()>,
    /// When expired challenge rows are next to be pruned (Unix ms): at the
    /// first publication, then at the soonest expiry seen.
    prune_at: AtomicI64,
    /// One renewal pass (background or API) at a time.
    renewing: tokio::sync::Mutex<()>,
    /// Certificates requested for deployments (`ssl.enabled`), by deployment
    /// name: in progress or failed. Failed ones are tried again by each
    /// renewal pass; issued ones leave the map (the certificate says the rest).
    deployments: Mutex<HashMap<String, DeploymentSsl>>,
}

/// A deployment's certificate request as last seen.
#[derive(Debug, Clone)]
struct DeploymentSsl {
    domains: Vec<String>,
    email: Option<String>,
    /// The error of the last attempt; `None` while it runs.
    error: Option<String>,
}

/// A deployment's certificate name: the route of a deployment is
/// `deploy-<name>`, its certificate is named the same.
pub fn deployment_certificate(deployment: &str) -> String {
    format!("deploy-{deployment}")
}

/// Whether `pattern` (a SAN, maybe `*.example.com`) covers `host`.
fn san_covers(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest == parent),
        None => pattern == host,
    }
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme")
            .field("directory_url", &self.options.directory_url)
            .finish_non_exhaustive()
    }
}

/// instant-acme's transport over the manager's reqwest (rustls with ring), so
/// that no second TLS stack is built in.
struct ReqwestTransport(reqwest::Client);

impl HttpClient for ReqwestTransport {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let client = self.0.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = match body.collect().await {
                Ok(c) => c.to_bytes(),
                Err(never) => match never {},
            };
            let resp = client
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            let mut out = http::Response::new(http_body_util::Full::new(bytes));
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            Ok(BytesResponse::from(out))
        })
    }
}

impl Acme {
    /// Builds the client; fails when the CA bundle cannot be read or parsed.
    pub fn new(options: AcmeOptions) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::limited(3));
        if let Some(path) = &options.ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("acme.ca_cert {}: {e}", path.display()))?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                anyhow::anyhow!("acme.ca_cert {}: not a PEM bundle: {e}", path.display())
            })?;
            if roots.is_empty() {
                anyhow::bail!("acme.ca_cert {}: no certificate in it", path.display());
            }
            for root in roots {
                builder = builder.add_root_certificate(root);
            }
        }
        let http = builder
            .build()
            .map_err(|e| anyhow::anyhow!("ACME HTTP client: {e}"))?;
        Ok(Self {
            options,
            http,
            account: tokio::sync::Mutex::new(None),
            publishing: tokio::sync::Mutex::new(()),
            prune_at: AtomicI64::new(0),
            renewing: tokio::sync::Mutex::new(()),
            deployments: Mutex::new(HashMap::new()),
        })
    }

    /// When a certificate expiring at `not_after_ms` becomes due for renewal.
    pub fn renew_after(&self, not_after_ms: i64) -> i64 {
        let before = i64::try_from(self.options.renew_before.as_millis()).unwrap_or(i64::MAX);
        not_after_ms.saturating_sub(before)
    }

    fn builder(&self) -> instant_acme::AccountBuilder {
        Account::builder_with_http(Box::new(ReqwestTransport(self.http.clone())))
    }

    /// The account at the configured directory: cached, else restored from the
    /// store, else created (and stored sealed). A given `email` different from
    /// the account's becomes its contact.
    async fn account(
        &self,
        state: &AppState,
        actor: &Actor,
        email: Option<&str>,
    ) -> Result<Account, AcmeError> {
        let mut cached = self.account.lock().await;
        let dir = self.options.directory_url.clone();
        let stored = state.store.get_acme_account(&dir).await?;
        let account = match (cached.as_ref(), &stored) {
            (Some(a), Some(_)) => a.clone(),
            (_, Some(rec)) => {
                let clear = state.secrets.open(&rec.credentials_encrypted).map_err(|e| {
                    AcmeError::failed(format!(
                        "the stored ACME account of {dir} does not decrypt ({e}); was the secret key changed?"
                    ))
                })?;
                let creds: AccountCredentials = serde_json::from_slice(&clear).map_err(|e| {
                    AcmeError::failed(format!(
                        "the stored ACME account of {dir} does not parse: {e}"
                    ))
                })?;
                self.builder()
                    .from_credentials(creds)
                    .await
                    .map_err(|e| AcmeError::client("restoring the ACME account", e))?
            }
            (_, None) => {
                let contact = email
                    .or(self.options.email.as_deref())
                    .map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, creds) = self
                    .builder()
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        dir.clone(),
                        None,
                    )
                    .await
                    .map_err(|e| AcmeError::client("creating the ACME account", e))?;
                let sealed = serde_json::to_vec(&creds)
                    .map(|clear| state.secrets.seal(&clear))
                    .map_err(|e| AcmeError::failed(format!("ACME account credentials: {e}")))?;
                state
                    .store
                    .put_acme_account(
                        actor,
                        &AcmeAccountRecord {
                            directory_url: dir.clone(),
                            email: email.or(self.options.email.as_deref()).map(String::from),
                            credentials_encrypted: sealed,
                            created_at: 0,
                            updated_at: 0,
                        },
                    )
                    .await?;
                tracing::info!(directory = %dir, "created the ACME account");
                *cached = Some(account.clone());
                return Ok(account);
            }
        };
        if let (Some(want), Some(rec)) = (email, &stored) {
            if rec.email.as_deref() != Some(want) {
                let contact = format!("mailto:{want}");
                account
                    .update_contacts(&[contact.as_str()])
                    .await
                    .map_err(|e| AcmeError::client("changing the ACME account's contact", e))?;
                state
                    .store
                    .put_acme_account(
                        actor,
                        &AcmeAccountRecord {
                            email: Some(want.to_string()),
                            ..rec.clone()
                        },
                    )
                    .await?;
            }
        }
        *cached = Some(account.clone());
        Ok(account)
    }

    /// How long a stored challenge answer lives.
    fn challenge_ttl(&self) -> Duration {
        self.options.order_timeout + CHALLENGE_SLACK
    }

    /// Publishes the live challenge answers of every order in progress (placed
    /// here or by another manager on the store) into this process's data-plane
    /// input. Returns the version of the set out and the soonest expiry among
    /// them (the follower wakes then to withdraw it). Expired rows are pruned
    /// once one is due.
    pub async fn publish_challenges(
        &self,
        state: &AppState,
    ) -> Result<(u64, Option<i64>), StoreError> {
        let _one = self.publishing.lock().await;
        let now = now_ms();
        if self.prune_at.load(Ordering::Relaxed) <= now {
            self.prune_at.store(i64::MAX, Ordering::Relaxed);
            match state.store.prune_acme_challenges(now).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "pruned expired ACME challenge answers"),
                Err(e) => {
                    self.prune_at.store(now, Ordering::Relaxed);
                    tracing::warn!(error = %e, "could not prune expired ACME challenge answers");
                }
            }
        }
        let rows = state.store.live_acme_challenges(now).await?;
        let soonest = rows.iter().map(|r| r.expires_at).min();
        if let Some(at) = soonest {
            self.prune_at.fetch_min(at, Ordering::Relaxed);
        }
        let answers: BTreeMap<String, String> = rows
            .into_iter()
            .map(|r| (r.token, r.key_authorization))
            .collect();
        Ok((state.feed.publish_challenges(answers), soonest))
    }

    /// Waits (up to `wait`) until the gateway of this process answers challenge
    /// set `version`; `true` when it does. Without a gateway here (the `manager`
    /// role), there is nothing to wait for: edges get the set with their input.
    async fn gateway_answers(state: &AppState, version: u64, wait: Duration) -> bool {
        let Some(dp) = state.data_plane.get() else {
            return true;
        };
        let deadline = Instant::now() + wait;
        loop {
            if dp.status.latest().applied.challenges >= version {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            dp.status.fresh(Duration::from_millis(200)).await;
        }
    }

    /// On another replica's request: publishes the stored answers now and waits
    /// (up to `wait`) until this process's gateway answers every one of
    /// `tokens`; whether it does.
    pub async fn answer_here(&self, state: &AppState, tokens: &[String], wait: Duration) -> bool {
        let version = match self.publish_challenges(state).await {
            Ok((version, _)) => version,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the ACME challenge answers another replica asked about");
                return false;
            }
        };
        let current = state.feed.current();
        if !tokens
            .iter()
            .all(|t| current.challenges.answers.contains_key(t))
        {
            return false;
        }
        Self::gateway_answers(state, version, wait).await
    }

    /// Waits until the gateway of this process answers challenge set `version`
    /// and the other live replicas answer `token` (see the module notes); the CA
    /// may validate at once.
    async fn wait_answered(&self, state: &AppState, version: u64, token: &str) {
        if !Self::gateway_answers(state, version, ANSWER_WAIT).await {
            tracing::warn!(
                version,
                "the gateway did not report answering the ACME challenges in time"
            );
        }
        let alive_since = now_ms() - crate::nodes::replicas::ALIVE_MS;
        let others: Vec<String> = match state.store.live_replicas(alive_since).await {
            Ok(all) => all.into_iter().filter(|r| *r != state.instance).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "could not list the other manager replicas; not waiting for them");
                Vec::new()
            }
        };
        if others.is_empty() {
            return;
        }
        if state.peers.client().is_some() {
            let silent = state
                .challenge_answered_by_replicas(&others, token, ANSWER_WAIT)
                .await;
            if !silent.is_empty() {
                tracing::warn!(
                    replicas = ?silent,
                    "other manager replicas did not confirm answering the ACME challenge in time"
                );
            }
        } else {
            // Their followers poll the store: two periods cover one full pass.
            tokio::time::sleep(crate::revisions::POLL_WITHOUT_NATS * 2).await;
        }
    }

    /// Orders a certificate for `req.domains`, answers its HTTP-01 challenges,
    /// and stores the chain with its new key (sealed) under `req.name`.
    pub async fn issue(
        &self,
        state: &AppState,
        actor: &Actor,
        req: IssueRequest,
    ) -> Result<CertificateRecord, AcmeError> {
        let account = self.account(state, actor, req.email.as_deref()).await?;
        let identifiers: Vec<Identifier> = req
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| AcmeError::client("creating the ACME order", e))?;
        let mut tokens = Vec::new();
        let result = self
            .complete_order(state, &mut order, &mut tokens, &req.domains)
            .await;
        // The answers are withdrawn whatever happened: they serve this order only.
        if !tokens.is_empty() {
            if let Err(e) = state.store.delete_acme_challenges(&tokens).await {
                tracing::warn!(error = %e, "could not remove the answers of a finished ACME order; they expire");
            }
            if let Err(e) = self.publish_challenges(state).await {
                tracing::warn!(error = %e, "could not publish the ACME challenge answers");
            }
            state.refresh_data_plane();
        }
        let (chain, key_pem) = result?;
        inspect(&chain)
            .map_err(|e| AcmeError::failed(format!("the CA's certificate does not parse: {e}")))?;
        fleetgate_shared::tls::certified_key(&chain, &key_pem).map_err(|e| {
            AcmeError::failed(format!("the CA's certificate does not match its key: {e}"))
        })?;
        let rec = CertificateRecord {
            name: req.name,
            cert_pem: chain,
            key_encrypted: state.secrets.seal(key_pem.as_bytes()),
            source: SOURCE_ACME.into(),
            acme_domains: req.domains,
            ..CertificateRecord::default()
        };
        let stored = state
            .store
            .put_certificate(actor, &rec, req.expected_version)
            .await?;
        state.publish_certificates().await?;
        state.refresh_data_plane();
        Ok(stored)
    }

    /// Answers every pending authorization, waits for the order, finalizes it
    /// with a new P-256 key; returns the chain and the key, PEM.
    async fn complete_order(
        &self,
        state: &AppState,
        order: &mut instant_acme::Order,
        tokens: &mut Vec<String>,
        domains: &[String],
    ) -> Result<(String, String), AcmeError> {
        let mut authorizations = order.authorizations();
        while let Some(next) = authorizations.next().await {
            let mut authz =
                next.map_err(|e| AcmeError::client("reading an ACME authorization", e))?;
            let identifier = authz.identifier().to_string();
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(AcmeError::failed(format!(
                        "the authorization for {identifier} is {other:?}, not pending"
                    )))
                }
            }
            let mut challenge = authz.challenge(ChallengeType::Http01).ok_or_else(|| {
                AcmeError::failed(format!(
                    "the CA offers no http-01 challenge for {identifier}"
                ))
            })?;
            let token = challenge.token.clone();
            let now = now_ms();
            let ttl = i64::try_from(self.challenge_ttl().as_millis()).unwrap_or(i64::MAX);
            state
                .store
                .put_acme_challenge(&AcmeChallengeRecord {
                    token: token.clone(),
                    key_authorization: challenge.key_authorization().as_str().to_string(),
                    identifier: identifier.clone(),
                    expires_at: now.saturating_add(ttl),
                    created_at: now,
                })
                .await?;
            tokens.push(token.clone());
            let (version, _) = self.publish_challenges(state).await?;
            // The other managers' followers look at the store now.
            state.peers.announce(0);
            self.wait_answered(state, version, &token).await;
            challenge
                .set_ready()
                .await
                .map_err(|e| AcmeError::client("starting the http-01 validation", e))?;
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(self.options.order_timeout);
        let status = order
            .poll_ready(&retry)
            .await
            .map_err(|e| AcmeError::client("validating the order", e))?;
        if status != OrderStatus::Ready {
            return Err(self.invalid_order(order).await);
        }
        let key = rcgen::KeyPair::generate()
            .map_err(|e| AcmeError::failed(format!("generating the certificate key: {e}")))?;
        let mut params = rcgen::CertificateParams::new(domains.to_vec())
            .map_err(|e| AcmeError::failed(format!("certificate request: {e}")))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| AcmeError::failed(format!("certificate request: {e}")))?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| AcmeError::client("finalizing the order", e))?;
        let chain = order
            .poll_certificate(&retry)
            .await
            .map_err(|e| AcmeError::client("downloading the certificate", e))?;
        Ok((chain, key.serialize_pem()))
    }

    /// Why an order became invalid: the problems of its failed challenges.
    async fn invalid_order(&self, order: &mut instant_acme::Order) -> AcmeError {
        let mut problems = Vec::new();
        let mut texts = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut authz)) = authorizations.next().await {
            let identifier = authz.identifier().to_string();
            let Ok(st) = authz.refresh().await else {
                continue;
            };
            for c in &st.challenges {
                if let Some(p) = &c.error {
                    texts.push(format!("{identifier}: {}", problem_text(p)));
                    problems.push(problem_json(p));
                }
            }
        }
        let message = if texts.is_empty() {
            "the ACME order became invalid; the CA gave no reason".to_string()
        } else {
            format!("the ACME order became invalid: {}", texts.join("; "))
        };
        AcmeError::Failed {
            message,
            problem: match problems.len() {
                0 => None,
                1 => problems.pop(),
                _ => Some(Value::Array(problems)),
            },
        }
    }

    /// Renews `rec` now: a success replaces it (and raises `certificate.renewed`);
    /// a failure keeps it serving, records the error on it and raises
    /// `certificate.renewal_failed`.
    pub async fn renew_one(
        &self,
        state: &AppState,
        actor: &Actor,
        rec: &CertificateRecord,
    ) -> RenewOutcome {
        let result = self
            .issue(
                state,
                actor,
                IssueRequest {
                    name: rec.name.clone(),
                    domains: rec.acme_domains.clone(),
                    email: None,
                    expected_version: Some(rec.version),
                },
            )
            .await;
        match result {
            Ok(stored) => {
                let not_after = inspect(&stored.cert_pem).ok().map(|i| rfc3339(i.not_after));
                state.emit(
                    NewEvent::new(
                        "certificate.renewed",
                        Severity::Info,
                        format!("certificate {} renewed through ACME", rec.name),
                    )
                    .details(json!({
                        "certificate": rec.name,
                        "domains": rec.acme_domains,
                        "not_after": not_after,
                    })),
                );
                RenewOutcome {
                    name: rec.name.clone(),
                    outcome: "renewed".into(),
                    not_after,
                    error: None,
                }
            }
            Err(AcmeError::Store(StoreError::VersionMismatch { current: 0 })) => {
                // Deleted while being renewed (with its deployment, say): there
                // is nothing left to renew, nor to warn about.
                tracing::info!(certificate = %rec.name, "certificate deleted while being renewed; the new one is dropped");
                RenewOutcome {
                    name: rec.name.clone(),
                    outcome: "failed".into(),
                    not_after: None,
                    error: Some("the certificate was deleted while being renewed".into()),
                }
            }
            Err(e) => {
                let message = e.to_string();
                let problem = match &e {
                    AcmeError::Failed { problem, .. } => problem.clone(),
                    AcmeError::Store(_) => None,
                };
                if let Err(se) = state
                    .store
                    .set_certificate_renewal_error(actor, &rec.name, Some(&message))
                    .await
                {
                    tracing::warn!(certificate = %rec.name, error = %se, "could not record the renewal error");
                }
                state.emit(
                    NewEvent::new(
                        "certificate.renewal_failed",
                        Severity::Warning,
                        format!(
                            "certificate {} was not renewed; the current one keeps serving: {message}",
                            rec.name
                        ),
                    )
                    .details(json!({
                        "certificate": rec.name,
                        "domains": rec.acme_domains,
                        "error": message,
                        "problem": problem,
                    })),
                );
                RenewOutcome {
                    name: rec.name.clone(),
                    outcome: "failed".into(),
                    not_after: None,
                    error: Some(message),
                }
            }
        }
    }

    /// Renews every ACME certificate that is due (or only `name`, due or not).
    pub async fn renew(
        &self,
        state: &AppState,
        actor: &Actor,
        name: Option<&str>,
    ) -> Result<Vec<RenewOutcome>, StoreError> {
        let _one_pass = self.renewing.lock().await;
        let now = now_ms();
        let mut out = Vec::new();
        for rec in state.store.list_certificates().await? {
            if rec.source != SOURCE_ACME || rec.acme_domains.is_empty() {
                continue;
            }
            let due = match name {
                Some(n) => rec.name == n,
                None => match inspect(&rec.cert_pem) {
                    Ok(info) => now >= self.renew_after(info.not_after),
                    // A stored chain that no longer parses is replaced.
                    Err(_) => true,
                },
            };
            if due {
                out.push(self.renew_one(state, actor, &rec).await);
            }
        }
        Ok(out)
    }
}

impl Acme {
    /// `ssl_status` of a deployment whose `ssl.enabled` is `enabled`:
    /// `disabled`, `pending` (being requested), `failed` (with the error),
    /// `issued` (its certificate is served) or `none` (no certificate and no
    /// request on record, e.g. after a restart; the next renewal pass or an
    /// update asks again).
    pub fn deployment_status(
        &self,
        state: &AppState,
        deployment: &str,
        enabled: bool,
    ) -> (&'static str, Option<String>) {
        if !enabled {
            return ("disabled", None);
        }
        let entry = self
            .deployments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(deployment)
            .cloned();
        match entry {
            Some(DeploymentSsl { error: None, .. }) => ("pending", None),
            Some(DeploymentSsl { error: Some(e), .. }) => ("failed", Some(e)),
            None => {
                let name = deployment_certificate(deployment);
                let served = state
                    .feed
                    .current()
                    .certificates
                    .bundles
                    .iter()
                    .any(|b| b.name == name);
                if served {
                    ("issued", None)
                } else {
                    ("none", None)
                }
            }
        }
    }

    /// Forgets a deleted deployment's request.
    pub fn forget_deployment(&self, deployment: &str) {
        self.deployments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(deployment);
    }

    /// Requests the certificate of a deployment with `ssl.enabled` in the
    /// background: the deployment never waits for, nor fails with, the CA. A
    /// failure is kept for its `ssl_status` and raises
    /// `certificate.request_failed` (warning). Skipped when an uploaded
    /// certificate already covers every domain, or when the ACME certificate
    /// already has exactly these names.
    pub fn request_for_deployment(
        &self,
        state: &AppState,
        actor: &Actor,
        deployment: &str,
        domains: &[String],
        email: Option<String>,
    ) {
        if domains.is_empty() {
            return;
        }
        self.deployments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                deployment.to_string(),
                DeploymentSsl {
                    domains: domains.to_vec(),
                    email: email.clone(),
                    error: None,
                },
            );
        let (state, actor, deployment, domains) = (
            state.clone(),
            actor.clone(),
            deployment.to_string(),
            domains.to_vec(),
        );
        tokio::spawn(async move {
            let outcome =
                deployment_certificate_now(&state, &actor, &deployment, &domains, email).await;
            // Whether the request was still on record (not forgotten meanwhile).
            let on_record = {
                let mut map = state
                    .acme
                    .deployments
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                match &outcome {
                    Ok(()) => map.remove(&deployment).is_some(),
                    Err(message) => match map.get_mut(&deployment) {
                        Some(entry) => {
                            entry.error = Some(message.clone());
                            true
                        }
                        None => false,
                    },
                }
            };
            match outcome {
                Ok(()) => {
                    // Deleted while its certificate was being issued: the
                    // certificate goes as if it had been there at the delete.
                    if !on_record
                        && matches!(
                            state.deployments.load(&deployment).await,
                            Err(crate::deployments::DeployError::NotFound(_))
                        )
                    {
                        if let Err(e) = state
                            .acme
                            .remove_deployment_certificate(&state, &actor, &deployment)
                            .await
                        {
                            tracing::warn!(deployment = %deployment, error = %e, "could not remove the certificate of a deleted deployment");
                        }
                    }
                }
                Err(message) => {
                    state.emit(
                        NewEvent::new(
                            "certificate.request_failed",
                            Severity::Warning,
                            format!(
                                "no certificate for deployment {deployment}; it is served without one: {message}"
                            ),
                        )
                        .details(json!({
                            "deployment": deployment,
                            "certificate": deployment_certificate(&deployment),
                            "domains": domains,
                            "error": message,
                        })),
                    );
                }
            }
        });
    }

    /// After deployment `deployment` was deleted: deletes its certificate
    /// (`deploy-<name>`) when Fleetgate issued it through ACME and no route or
    /// other deployment names any of its domains; otherwise keeps it (raising
    /// `certificate.kept` with who uses it). Audited as `certificate.delete` by
    /// `actor`; the gateways stop serving it and renewals stop with it.
    pub async fn remove_deployment_certificate(
        &self,
        state: &AppState,
        actor: &Actor,
        deployment: &str,
    ) -> Result<DeploymentCertificate, StoreError> {
        let name = deployment_certificate(deployment);
        let Some(rec) = state.store.get_certificate(&name).await? else {
            return Ok(DeploymentCertificate::None);
        };
        if rec.source != SOURCE_ACME {
            return Ok(DeploymentCertificate::NotIssued);
        }
        let users = names_in_use(state, deployment, &rec.acme_domains).await?;
        if !users.is_empty() {
            state.emit(
                NewEvent::new(
                    "certificate.kept",
                    Severity::Info,
                    format!(
                        "certificate {name} of deleted deployment {deployment} is kept and renewed: {} still use its names",
                        users.join(", ")
                    ),
                )
                .details(json!({
                    "certificate": name,
                    "deployment": deployment,
                    "domains": rec.acme_domains,
                    "used_by": users,
                })),
            );
            return Ok(DeploymentCertificate::Kept(users));
        }
        match state.store.delete_certificate(actor, &name).await {
            Ok(()) => {}
            Err(StoreError::NotFound(_)) => return Ok(DeploymentCertificate::None),
            Err(e) => return Err(e),
        }
        state.publish_certificates().await?;
        state.refresh_data_plane();
        tracing::info!(certificate = %name, deployment, "deleted the certificate of a deleted deployment");
        Ok(DeploymentCertificate::Deleted)
    }

    /// Asks again for the deployments whose request failed.
    fn retry_deployments(&self, state: &AppState) {
        let failed: Vec<(String, DeploymentSsl)> = self
            .deployments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, d)| d.error.is_some())
            .map(|(n, d)| (n.clone(), d.clone()))
            .collect();
        for (name, d) in failed {
            self.request_for_deployment(state, &Actor::system(), &name, &d.domains, d.email);
        }
    }
}

/// What became of a deleted deployment's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeploymentCertificate {
    /// There was none.
    None,
    /// One of that name was uploaded: the operator's, left alone.
    NotIssued,
    /// Deleted.
    Deleted,
    /// Kept: these routes and deployments still name its domains.
    Kept(Vec<String>),
}

/// The routes (of the newest revision) and deployments, other than
/// `deployment` and its route, that name any of `names`: a host equal to the
/// name or a wildcard covering it. A route without hosts answers any host but
/// names none, so it does not count.
async fn names_in_use(
    state: &AppState,
    deployment: &str,
    names: &[String],
) -> Result<Vec<String>, StoreError> {
    let uses = |hosts: &[String]| {
        hosts.iter().any(|h| {
            let h = h.trim_end_matches('.');
            names.iter().any(|n| san_covers(h, n))
        })
    };
    let own_route = deployment_certificate(deployment);
    let deployments = state.deployments.names().await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "could not list the deployments");
        Vec::new()
    });
    let mut users = BTreeSet::new();
    let latest = state.store.latest_revision().await?;
    if let Some(doc) = state.document_at(latest).await? {
        for r in doc
            .routes
            .iter()
            .filter(|r| r.id != own_route && uses(&r.hosts))
        {
            // A deployment's route is named after the deployment.
            match r.id.strip_prefix("deploy-") {
                Some(d) if deployments.iter().any(|n| n == d) => {
                    users.insert(format!("deployment {d}"))
                }
                _ => users.insert(format!("route {}", r.id)),
            };
        }
    }
    for other in deployments.iter().filter(|n| *n != deployment) {
        if let Ok(l) = state.deployments.load(other).await {
            if uses(&l.meta.domains) {
                users.insert(format!("deployment {other}"));
            }
        }
    }
    Ok(users.into_iter().collect())
}

/// One deployment's certificate, now; the error as text.
async fn deployment_certificate_now(
    state: &AppState,
    actor: &Actor,
    deployment: &str,
    domains: &[String],
    email: Option<String>,
) -> Result<(), String> {
    let domains = normalize_domains(domains)?;
    let certificates = state
        .store
        .list_certificates()
        .await
        .map_err(|e| e.to_string())?;
    let name = deployment_certificate(deployment);
    let mut expected = 0;
    for c in &certificates {
        let Ok(info) = inspect(&c.cert_pem) else {
            continue;
        };
        let covers = domains
            .iter()
            .all(|d| info.sans.iter().any(|san| san_covers(san, d)));
        if c.name == name {
            if c.source != SOURCE_ACME {
                // An uploaded certificate of that name is the operator's choice.
                return Ok(());
            }
            if c.acme_domains == domains && now_ms() < state.acme.renew_after(info.not_after) {
                return Ok(());
            }
            expected = c.version;
        } else if c.source != SOURCE_ACME && covers && info.not_after > now_ms() {
            return Ok(());
        }
    }
    state
        .acme
        .issue(
            state,
            actor,
            IssueRequest {
                name,
                domains,
                email,
                expected_version: Some(expected),
            },
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Renews due ACME certificates at start and then every `check_interval`,
/// until `shutdown`; each pass also asks again for deployments whose
/// certificate request failed.
pub fn spawn_renewals(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let every = state.acme.options.check_interval;
    tokio::spawn(async move {
        loop {
            match state.acme.renew(&state, &Actor::system(), None).await {
                Ok(done) if !done.is_empty() => {
                    tracing::info!(renewals = done.len(), "ACME renewal pass done");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "ACME renewal pass could not list certificates")
                }
            }
            state.acme.retry_deployments(&state);
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_normalized_and_refused_with_the_reason() {
        let ok = normalize_domains(&[
            "WWW.Example.COM.".into(),
            "www.example.com".into(),
            "api.example.com".into(),
        ])
        .expect("valid");
        assert_eq!(ok, ["www.example.com", "api.example.com"]);
        for (bad, why) in [
            ("*.example.com", "wildcard"),
            ("127.0.0.1", "IP address"),
            ("localhost", "fully qualified"),
            ("bad_name.example.com", "fully qualified"),
            ("-x.example.com", "fully qualified"),
            ("", "fully qualified"),
        ] {
            let e = normalize_domains(&[bad.into()]).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(normalize_domains(&[]).is_err());
        let many: Vec<String> = (0..=MAX_DOMAINS)
            .map(|i| format!("h{i}.example.com"))
            .collect();
        assert!(normalize_domains(&many)
            .expect_err("too many")
            .contains("at most"));
    }

    #[test]
    fn wildcard_sans_cover_one_label() {
        assert!(san_covers("*.example.com", "a.example.com"));
        assert!(!san_covers("*.example.com", "a.b.example.com"));
        assert!(!san_covers("*.example.com", "example.com"));
        assert!(san_covers("App.Example.com", "app.example.com"));
    }

    #[test]
    fn renewal_is_due_the_configured_time_before_expiry() {
        let acme = Acme::new(AcmeOptions::default()).expect("client");
        let day = 86_400_000;
        assert_eq!(acme.renew_after(90 * day), 60 * day);
        assert_eq!(acme.renew_after(i64::MIN), i64::MIN);
    }

    #[test]
    fn an_unreadable_ca_bundle_is_named() {
        let e = Acme::new(AcmeOptions {
            ca_cert: Some("/nonexistent/ca.pem".into()),
            ..AcmeOptions::default()
        })
        .expect_err("missing file");
        assert!(
            e.to_string().contains("acme.ca_cert /nonexistent/ca.pem"),
            "{e}"
        );
    }
}
