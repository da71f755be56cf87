//! Webhook delivery: stored events fan out into queued deliveries (one per matching
//! webhook), and a worker in each manager claims due deliveries and POSTs them, signed:
//!
//! - body `{"id","type","created_at","data"}` (`id` is the event id, `data` the event);
//! - `X-Webhook-Signature: sha256=<hex HMAC-SHA256 of the raw body with the secret>`,
//!   `X-Webhook-Event: <type>`, `X-Webhook-Delivery: <delivery id>`, plus the
//!   webhook's own headers;
//! - 10 s timeout; a 2xx answer is success; otherwise retried with exponential backoff
//!   and jitter up to `webhooks.max_attempts`; each attempt is logged;
//! - a webhook that fails `webhooks.disable_after_failures` times in a row is disabled,
//!   with a `webhook.disabled` event; a delivery that gives up raises
//!   `webhook.delivery_failed`. Events of the `webhook` category are not themselves
//!   delivered, so a failing endpoint cannot feed itself.
//!
//! Destinations that resolve to loopback, private, link-local or other non-public
//! addresses are refused unless `webhooks.allow_private_targets` is on
//! ([`crate::destination`]); deliveries connect only to addresses that were checked.
//!
//! Several managers on one PostgreSQL store deliver each event once: its deliveries
//! are queued by the manager that stored it (events other managers receive over NATS
//! are only streamed), and every worker claims due deliveries with
//! `FOR UPDATE SKIP LOCKED` and a 30 s lease before sending; an attempt is cut off
//! after 20 s, so a lease does not run out while its delivery is being sent.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetgate_core::events::{type_matches, NewEvent, Severity};
use fleetgate_core::redact::redact_url;
use fleetgate_core::time::now_ms;
use fleetgate_store::{AttemptOutcome, DeliveryRecord, EventRecord, Store, StoreError};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::{watch, Notify};

use crate::AppState;

/// Time allowed to one delivery attempt.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a claimed delivery is reserved for the manager that claimed it.
const LEASE_MS: i64 = 30_000;
/// Time allowed to one attempt as a whole (address check, DNS, request): well within
/// the lease, so no other manager claims a delivery while it is being sent.
const ATTEMPT_BUDGET: Duration = Duration::from_secs(20);
/// Deliveries claimed per round.
const CLAIM: i64 = 32;

/// `sha256=<hex>` of the body, keyed by the secret.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The body sent for an event.
pub fn payload(e: &EventRecord) -> String {
    serde_json::json!({
        "id": e.id,
        "type": e.event.event_type,
        "created_at": fleetgate_core::time::rfc3339(e.event.created_at),
        "data": crate::api::events::event_view(e),
    })
    .to_string()
}

/// Queues one delivery per stored event and enabled webhook whose patterns match and
/// that existed when the event was raised.
pub async fn fan_out(
    store: &dyn Store,
    events: &[EventRecord],
    wake: &Notify,
) -> Result<(), StoreError> {
    let events: Vec<&EventRecord> = events
        .iter()
        .filter(|e| e.event.category != "webhook")
        .collect();
    if events.is_empty() {
        return Ok(());
    }
    let hooks = store.list_webhooks().await?;
    let now = now_ms();
    let mut queued = Vec::new();
    for e in events {
        // A webhook gets the events raised after it was made, not those still on
        // their way to the store when it was.
        for h in hooks
            .iter()
            .filter(|h| h.enabled && h.created_at <= e.event.created_at)
        {
            if h.events
                .iter()
                .any(|p| type_matches(p, &e.event.event_type))
            {
                queued.push(DeliveryRecord {
                    id: uuid::Uuid::new_v4().to_string(),
                    webhook_id: h.id.clone(),
                    event_id: Some(e.id),
                    event_type: e.event.event_type.clone(),
                    payload: payload(e),
                    status: "pending".into(),
                    attempts: 0,
                    next_attempt_at: now,
                    last_status_code: None,
                    last_error: None,
                    last_latency_ms: None,
                    created_at: now,
                    updated_at: now,
                });
            }
        }
    }
    if !queued.is_empty() {
        store.enqueue_deliveries(&queued).await?;
        wake.notify_one();
    }
    Ok(())
}

/// Checks a webhook URL against the destination policy (see [`crate::destination`]):
/// its scheme, and every address its host resolves to. Used when a webhook is
/// created or changed, to refuse a bad destination with a clear error.
pub async fn check_destination(url: &str, allow_private: bool) -> Result<(), String> {
    let (host, port) = http_host_port(url)?;
    crate::destination::resolve_checked(&host, port, allow_private, TIMEOUT)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The scheme check, and the policy for a host written as an IP address. Names are
/// not looked up here: the delivery client's resolver ([`crate::destination::PolicyResolver`])
/// checks the addresses it connects to, so a name is resolved once per attempt.
pub(crate) fn check_before_send(url: &str, allow_private: bool) -> Result<(), String> {
    let (host, _) = http_host_port(url)?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) if !allow_private => match crate::destination::restriction(ip) {
            Some(why) => Err(format!(
                "destination {bare} is not a public address ({why}); the setting webhooks.allow_private_targets allows it"
            )),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// The host and port of an `http://` or `https://` URL.
fn http_host_port(url: &str) -> Result<(String, u16), String> {
    let parsed: http::Uri = url.parse().map_err(|e| format!("invalid URL: {e}"))?;
    let https = match parsed.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err("the URL must be http:// or https://".into()),
    };
    let host = parsed
        .host()
        .filter(|h| !h.is_empty())
        .ok_or("the URL has no host")?;
    Ok((
        host.to_string(),
        parsed.port_u16().unwrap_or(if https { 443 } else { 80 }),
    ))
}

/// The result of sending one delivery once.
pub struct Sent {
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    pub error: Option<String>,
}

impl Sent {
    pub fn success(&self) -> bool {
        self.error.is_none() && self.status_code.is_some_and(|c| (200..300).contains(&c))
    }
}

/// POSTs a delivery to its webhook.
pub async fn send(
    state: &AppState,
    hook: &fleetgate_store::WebhookRecord,
    delivery_id: &str,
    event_type: &str,
    body: &str,
) -> Sent {
    let started = Instant::now();
    let allow = state.settings().webhooks.allow_private_targets;
    if let Err(e) = check_before_send(&hook.url, allow) {
        return Sent {
            status_code: None,
            latency_ms: 0,
            error: Some(e),
        };
    }
    let secret = match state.secrets.open(&hook.secret_encrypted) {
        Ok(s) => s,
        Err(e) => {
            return Sent {
                status_code: None,
                latency_ms: 0,
                error: Some(format!("secret unreadable: {e}")),
            }
        }
    };
    let mut req = state
        .http
        .post(&hook.url)
        .timeout(TIMEOUT)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("fleetgate-webhooks/", env!("CARGO_PKG_VERSION")),
        )
        .header("x-webhook-signature", signature(&secret, body.as_bytes()))
        .header("x-webhook-event", event_type)
        .header("x-webhook-delivery", delivery_id);
    for (k, sealed) in &hook.headers {
        match state.secrets.open(sealed) {
            Ok(v) => req = req.header(k.as_str(), v),
            Err(e) => {
                return Sent {
                    status_code: None,
                    latency_ms: 0,
                    error: Some(format!("header {k} unreadable: {e}")),
                }
            }
        }
    }
    let res = req.body(body.to_string()).send().await;
    let latency_ms = started.elapsed().as_millis() as i64;
    match res {
        Ok(r) => {
            let code = i64::from(r.status().as_u16());
            let error = (!r.status().is_success()).then(|| format!("answered {}", r.status()));
            Sent {
                status_code: Some(code),
                latency_ms,
                error,
            }
        }
        Err(e) => {
            let error = if e.is_timeout() {
                format!("timed out after {} s", TIMEOUT.as_secs())
            } else {
                // The causes say why (a refused or unresolvable destination, a
                // refused connection); reqwest's own message names only the URL.
                let mut text = format!("request failed: {e}");
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    text.push_str(&format!(": {c}"));
                    cause = c.source();
                }
                text
            };
            Sent {
                status_code: None,
                latency_ms,
                error: Some(error),
            }
        }
    }
}

/// Backoff before attempt `n + 1` (after `n` attempts): base × 2^(n-1), ±50% jitter.
fn backoff_ms(base: u64, attempts: i64) -> i64 {
    let exp = base.saturating_mul(1u64 << (attempts.clamp(1, 16) - 1) as u32);
    let jitter = 0.5 + rand::random::<f64>();
    (exp as f64 * jitter) as i64
}

async fn attempt(state: &AppState, d: DeliveryRecord) {
    let Ok(Some(hook)) = state.store.get_webhook(&d.webhook_id).await else {
        return;
    };
    let settings = state.settings().webhooks;
    let sent = if hook.enabled {
        tokio::time::timeout(
            ATTEMPT_BUDGET,
            send(state, &hook, &d.id, &d.event_type, &d.payload),
        )
        .await
        .unwrap_or_else(|_| Sent {
            status_code: None,
            latency_ms: ATTEMPT_BUDGET.as_millis() as i64,
            error: Some(format!(
                "no answer within {} s (address check included)",
                ATTEMPT_BUDGET.as_secs()
            )),
        })
    } else {
        Sent {
            status_code: None,
            latency_ms: 0,
            error: Some("webhook is disabled".into()),
        }
    };
    let now = now_ms();
    let attempts = d.attempts + 1;
    let success = sent.success();
    let retry_at = (!success && hook.enabled && attempts < i64::from(settings.max_attempts))
        .then(|| now + backoff_ms(settings.retry_base_ms, attempts));
    let outcome = AttemptOutcome {
        at: now,
        status_code: sent.status_code,
        latency_ms: sent.latency_ms,
        error: sent.error.clone(),
        success,
        retry_at,
    };
    let failures = match state.store.record_attempt(&d.id, &outcome).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, delivery = %d.id, "could not record a webhook attempt");
            return;
        }
    };
    if !success && retry_at.is_none() {
        state.emit(
            NewEvent::new(
                "webhook.delivery_failed",
                Severity::Warning,
                format!("delivery {} of {} to {} failed after {attempts} attempts: {}", d.id, d.event_type, redact_url(&hook.url), sent.error.as_deref().unwrap_or("")),
            )
            .details(serde_json::json!({"webhook_id": hook.id, "delivery_id": d.id, "attempts": attempts, "status_code": sent.status_code})),
        );
    }
    if !success && hook.enabled && failures >= i64::from(settings.disable_after_failures) {
        let reason = format!("{failures} failed attempts in a row");
        if state.store.disable_webhook(&hook.id, &reason).await.is_ok() {
            state.emit(
                NewEvent::new(
                    "webhook.disabled",
                    Severity::Critical,
                    format!(
                        "webhook {} to {} disabled: {reason}",
                        hook.id,
                        redact_url(&hook.url)
                    ),
                )
                .details(serde_json::json!({"webhook_id": hook.id, "failures": failures})),
            );
        }
    }
}

/// Claims and sends due deliveries until `shutdown`; woken early by `wake`.
pub fn spawn_worker(state: AppState, wake: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
    tokio::spawn(async move {
        loop {
            match state
                .store
                .claim_deliveries(now_ms(), LEASE_MS, CLAIM)
                .await
            {
                Ok(batch) => {
                    let n = batch.len();
                    let tasks: Vec<_> = batch
                        .into_iter()
                        .map(|d| {
                            let s = state.clone();
                            tokio::spawn(async move { attempt(&s, d).await })
                        })
                        .collect();
                    for t in tasks {
                        let _ = t.await;
                    }
                    if n as i64 == CLAIM {
                        continue;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not claim webhook deliveries"),
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = shutdown.changed() => return,
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
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_grows_with_jitter() {
        for attempts in 1..=3 {
            let b = backoff_ms(1000, attempts);
            let base = 1000 * (1 << (attempts - 1));
            assert!(b >= base / 2 && b <= base * 3 / 2, "{attempts}: {b}");
        }
    }

    #[tokio::test]
    async fn destinations_are_checked() {
        assert!(check_destination("http://127.0.0.1:9/x", false)
            .await
            .is_err());
        assert!(check_destination("http://127.0.0.1:9/x", true)
            .await
            .is_ok());
        assert!(check_destination("ftp://example.com/", true).await.is_err());
        assert!(check_destination("http://[::1]/", false).await.is_err());
        assert!(check_destination("http://[::127.0.0.1]/", false)
            .await
            .is_err());
        assert!(check_before_send("http://[::ffff:169.254.169.254]/", false).is_err());
        assert!(check_before_send("http://[::ffff:169.254.169.254]/", true).is_ok());
        assert!(check_before_send("http://198.18.0.1/", false).is_err());
        assert!(check_before_send("gopher://1.1.1.1/", true).is_err());
        // Names are left to the delivery client's resolver.
        assert!(check_before_send("http://localhost/", false).is_ok());
    }
}
