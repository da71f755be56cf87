//! `/ws/dashboard`: the dashboard's live feed over one WebSocket, JSON text frames
//! `{"type": ..., "data": ...}`:
//! - `hello` once: who is connected and the unacknowledged event counts;
//! - `metrics` every second: the live traffic snapshot (as `/api/v1/metrics`);
//! - `event` for each event as it is stored (as in `/api/v1/events`);
//! - Bilbycast's `dashboard_update` (a bare object, without `data`): the connected
//!   nodes with their latest stats and health, every 5 s and when nodes connect or
//!   disconnect (see [`crate::node_feed`]); a caller limited to some nodes sees
//!   only those.
//!
//! The client may send `{"type":"ping"}` and gets `{"type":"pong"}`. A client that
//! falls more than the live buffer behind on events, or does not take a frame
//! within [`SEND_TIMEOUT`], is disconnected rather than buffered for.
//!
//! Browsers send the session cookie with the upgrade request; since any page could
//! open a WebSocket to us with that cookie, an upgrade whose `Origin` is not this
//! host is refused.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use super::events::event_view;
use crate::auth::{AuthContext, Credential};
use crate::error::ApiError;
use crate::AppState;

/// A frame the client has not taken within this time ends the connection.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Close code for a client that fell behind (RFC 6455 "try again later").
const CLOSE_LAGGING: u16 = 1013;

/// Whether the upgrade comes from a page of this host (or from a non-browser client,
/// which sends no Origin).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    origin_host.eq_ignore_ascii_case(host)
}

pub async fn dashboard(
    State(state): State<AppState>,
    auth: AuthContext,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    if matches!(auth.credential, Credential::Session { .. }) && !same_origin(&headers) {
        return Err(ApiError::forbidden(
            "the dashboard feed only accepts pages of this host (Origin does not match Host)",
        ));
    }
    Ok(ws
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| feed(state, auth, socket)))
}

fn frame(kind: &str, data: Value) -> Message {
    Message::Text(json!({"type": kind, "data": data}).to_string().into())
}

async fn send(socket: &mut WebSocket, msg: Message) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, socket.send(msg)).await,
        Ok(Ok(()))
    )
}

async fn feed(state: AppState, auth: AuthContext, mut socket: WebSocket) {
    let mut events = state.events.subscribe();
    let mut metrics = state.traffic.subscribe();
    let (mut fleet, current) = state.node_feed.subscribe();
    let allowed = super::nodes::allowed(&auth).map(Vec::as_slice);
    let counts = state
        .store
        .count_unacked(&super::events::limited(Default::default(), &auth))
        .await
        .ok();
    let hello = json!({
        "user": auth.actor.name,
        "role": auth.role.to_string(),
        "unacknowledged": counts,
    });
    if !send(&mut socket, frame("hello", hello)).await {
        return;
    }
    if let Some(update) = current {
        if !send(&mut socket, Message::Text(update.text_for(allowed))).await {
            return;
        }
    }
    loop {
        tokio::select! {
            changed = fleet.changed() => {
                if changed.is_err() {
                    return;
                }
                let update = fleet.borrow_and_update().clone();
                if let Some(update) = update {
                    if !send(&mut socket, Message::Text(update.text_for(allowed))).await {
                        return;
                    }
                }
            }
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
                let snap = metrics.borrow_and_update().clone();
                let data = serde_json::to_value(&*snap).unwrap_or(Value::Null);
                if !send(&mut socket, frame("metrics", data)).await {
                    return;
                }
            }
            e = events.recv() => match e {
                // Events of nodes the caller may not see are not sent.
                Ok(r) if r.event.node_id.as_ref().is_some_and(|n| {
                    allowed.is_some_and(|ids| !ids.contains(n))
                }) => {}
                Ok(r) => {
                    let data = serde_json::to_value(event_view(&r)).unwrap_or(Value::Null);
                    if !send(&mut socket, frame("event", data)).await {
                        return;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::info!(missed, "dropping a slow dashboard feed");
                    let _ = send(&mut socket, Message::Close(Some(CloseFrame {
                        code: CLOSE_LAGGING,
                        reason: "fell behind the live events; reconnect".into(),
                    }))).await;
                    return;
                }
                Err(RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let kind = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_string));
                    let reply = match kind.as_deref() {
                        Some("ping") => frame("pong", Value::Null),
                        _ => frame("error", json!({
                            "message": "unknown message; send {\"type\":\"ping\"}"
                        })),
                    };
                    if !send(&mut socket, reply).await {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                // Pings are answered by the WebSocket layer; binary frames are ignored.
                Some(Ok(_)) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    #[test]
    fn origin_must_be_this_host() {
        assert!(same_origin(&headers(&[("host", "fg.example:8443")])));
        assert!(same_origin(&headers(&[
            ("host", "fg.example:8443"),
            ("origin", "https://FG.example:8443")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "fg.example:8443"),
            ("origin", "https://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "fg.example"),
            ("origin", "null")
        ])));
        assert!(!same_origin(&headers(&[("origin", "https://fg.example")])));
    }
}
