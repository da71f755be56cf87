//! ACME (RFC 8555) certificates issued and renewed by the manager, with the
//! HTTP-01 challenge answered by the gateway.
//!
//! - The ACME account is one per directory URL, created on first use; its
//!   credentials (account key and URL) are stored sealed with the installation's
//!   secret key (`acme_accounts`), never in clear and never logged.
//! - An order's HTTP-01 key authorizations go into the data-plane input
//!   ([`fleetgate_protocol::AcmeChallenges`]) before the CA is told to validate;
//!   the manager waits until its in-process gateway reports answering them (edges
//!   receive the same set with their configuration). The gateway answers
//!   `/.well-known/acme-challenge/<token>` for any host before routing.
//! - The issued chain and its new key are stored like an uploaded certificate
//!   (key sealed, `source = acme`, the ordered names kept for renewals).
//! - Renewals: [`spawn_renewals`] checks at start and then every
//!   `check_interval`; a certificate is due `renew_before` (30 days) before it
//!   expires. A success raises `certificate.renewed`; a failure records the
//!   CA's problem on the certificate and raises `certificate.renewal_failed`
//!   (warning) while the old certificate keeps serving.
//!
//! Settings are process configuration (`[acme]`), not part of the revisions: the
//! CA bundle is a file of this machine, and switching CAs is an operator's
//! decision at start, like the database URL.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetgate_core::events::{NewEvent, Severity};
use fleetgate_core::time::{now_ms, rfc3339};
use fleetgate_core::tls::inspect;
use fleetgate_store::{AcmeAccountRecord, Actor, CertificateRecord, StoreError, SOURCE_ACME};
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

/// How long the manager waits for its gateway to answer a new challenge before
/// telling the CA to validate anyway (the CA then reports what it saw).
const ANSWER_WAIT: Duration = Duration::from_secs(5);

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
    /// Pending HTTP-01 answers of every order in progress, by token.
    challenges: Mutex<BTreeMap<String, String>>,
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
            challenges: Mutex::new(BTreeMap::new()),
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

    /// Publishes the pending answers; returns the version of the set out.
    fn publish_answers(&self, state: &AppState) -> u64 {
        let answers = self
            .challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        state.feed.publish_challenges(answers)
    }

    /// Waits until the gateway of this process answers challenge set `version`
    /// (the CA may validate at once). Without a gateway here (the `manager`
    /// role), there is nothing to wait for: edges get the set with their input.
    async fn wait_answered(&self, state: &AppState, version: u64) {
        let Some(dp) = state.data_plane.get() else {
            return;
        };
        let deadline = Instant::now() + ANSWER_WAIT;
        while Instant::now() < deadline {
            if dp.status.latest().applied.challenges >= version {
                return;
            }
            dp.status.fresh(Duration::from_millis(200)).await;
        }
        tracing::warn!(
            version,
            "the gateway did not report answering the ACME challenges in time"
        );
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
        {
            let mut map = self.challenges.lock().unwrap_or_else(|p| p.into_inner());
            for t in &tokens {
                map.remove(t);
            }
        }
        self.publish_answers(state);
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
            let answer = challenge.key_authorization().as_str().to_string();
            self.challenges
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(token.clone(), answer);
            tokens.push(token);
            let version = self.publish_answers(state);
            self.wait_answered(state, version).await;
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
            let mut map = state
                .acme
                .deployments
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match outcome {
                Ok(()) => {
                    map.remove(&deployment);
                }
                Err(message) => {
                    if let Some(entry) = map.get_mut(&deployment) {
                        entry.error = Some(message.clone());
                    }
                    drop(map);
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
