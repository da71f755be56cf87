//! Tunnels over the API: create (the secrets are generated here and never shown),
//! list, read with each leg's state and what the nodes report live, update
//! (If-Match), delete. A caller limited to some nodes sees only the tunnels all of
//! whose nodes it may see, and changes none it may not.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use fleetgate_core::time::now_ms;
use fleetgate_core::user::Role;
use fleetgate_store::{LegState, NodeRecord, PageRequest, StoreError, TunnelRecord};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::nodes::{allowed, check_name};
use super::rfc3339;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::extract::{json_with_etag, IfMatch, JsonBody, ListEnvelope, Pagination};
use crate::nodes::replicas::LiveView;
use crate::tunnels::{self, port_of, TunnelSecrets};
use crate::AppState;

#[derive(Serialize, ToSchema)]
pub struct LegView {
    pub node_id: Option<String>,
    /// `pending`, `pushed` or `failed`.
    pub push_status: String,
    pub push_error: Option<String>,
    /// What the node reports of the tunnel now (its `state`), when connected.
    pub live_state: Option<String>,
    /// Why the node says the tunnel is not up, or its latest traffic problem.
    pub live_error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TunnelView {
    pub id: String,
    pub name: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// `relay` or `direct`.
    pub mode: String,
    pub ingress_node_id: String,
    pub ingress_listen_port: i64,
    pub egress_node_id: String,
    pub egress_forward_addr: String,
    pub egress_peer_addr: Option<String>,
    pub relay_addr: Option<String>,
    pub relay_node_id: Option<String>,
    pub enabled: bool,
    pub associated_flow_ids: Vec<String>,
    /// `disabled`, `active` (every leg pushed), `error` (a leg failed) or `pending`.
    pub status: &'static str,
    /// The entry edge (listens), the exit edge (forwards), the relay.
    pub ingress: LegView,
    pub egress: LegView,
    pub relay: Option<LegView>,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

fn status(t: &TunnelRecord) -> &'static str {
    let all = [Some(&t.ingress), Some(&t.egress), t.relay.as_ref()];
    let legs: Vec<&LegState> = all.into_iter().flatten().collect();
    if !t.enabled {
        "disabled"
    } else if legs.iter().all(|l| l.status == "pushed") {
        "active"
    } else if legs.iter().any(|l| l.status == "failed") {
        "error"
    } else {
        "pending"
    }
}

/// What a node's latest stats say of tunnel `id`: its state and last error.
fn live_state(
    live: &HashMap<String, LiveView>,
    node: &str,
    id: &str,
) -> Option<(String, Option<String>)> {
    let tunnels = live.get(node)?.stats.as_ref()?.get("tunnels")?.as_array()?;
    // Edges name the tunnel `id`; relays `tunnel_id`.
    let t = tunnels
        .iter()
        .find(|t| t["id"] == id || t["tunnel_id"] == id)?;
    let state = t.get("state").and_then(Value::as_str)?.to_string();
    let error = t
        .get("last_error")
        .and_then(Value::as_str)
        .map(str::to_string);
    Some((state, error))
}

fn leg(l: &LegState, node: Option<&str>, live: &HashMap<String, LiveView>, id: &str) -> LegView {
    let live = node.and_then(|n| live_state(live, n, id));
    LegView {
        node_id: node.map(str::to_string),
        push_status: l.status.clone(),
        push_error: l.error.clone(),
        live_state: live.as_ref().map(|(s, _)| s.clone()),
        live_error: live.and_then(|(_, e)| e),
    }
}

fn view(t: &TunnelRecord, live: &HashMap<String, LiveView>) -> TunnelView {
    TunnelView {
        id: t.id.clone(),
        name: t.name.clone(),
        protocol: t.protocol.clone(),
        mode: t.mode.clone(),
        ingress_node_id: t.ingress_node_id.clone(),
        ingress_listen_port: t.ingress_listen_port,
        egress_node_id: t.egress_node_id.clone(),
        egress_forward_addr: t.egress_forward_addr.clone(),
        egress_peer_addr: t.egress_peer_addr.clone(),
        relay_addr: t.relay_addr.clone(),
        relay_node_id: t.relay_node_id.clone(),
        enabled: t.enabled,
        associated_flow_ids: serde_json::from_value(t.associated_flow_ids.clone())
            .unwrap_or_default(),
        status: status(t),
        ingress: leg(&t.ingress, Some(&t.ingress_node_id), live, &t.id),
        egress: leg(&t.egress, Some(&t.egress_node_id), live, &t.id),
        relay: t
            .relay
            .as_ref()
            .map(|r| leg(r, t.relay_node_id.as_deref(), live, &t.id)),
        version: t.version,
        created_at: rfc3339(t.created_at),
        updated_at: rfc3339(t.updated_at),
    }
}

/// The live views of the nodes of `tunnels` (here, or asked of their replicas).
async fn live_of(state: &AppState, tunnels: &[TunnelRecord]) -> HashMap<String, LiveView> {
    let mut ids: Vec<String> = tunnels.iter().flat_map(|t| t.node_ids().cloned()).collect();
    ids.sort();
    ids.dedup();
    let online = state.online(&ids, true).await;
    online.into_iter().map(|(id, o)| (id, o.live)).collect()
}

fn may_see(auth: &AuthContext, t: &TunnelRecord) -> bool {
    allowed(auth).is_none_or(|ids| t.node_ids().all(|n| ids.contains(n)))
}

async fn visible(state: &AppState, auth: &AuthContext, id: &str) -> ApiResult<TunnelRecord> {
    let t = state
        .store
        .get_tunnel(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("tunnel {id}")))?;
    if !may_see(auth, &t) {
        return Err(ApiError::forbidden(format!(
            "you are not allowed to access tunnel {id}"
        )));
    }
    Ok(t)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTunnel {
    /// 1 to 128 characters.
    pub name: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// `relay` or `direct`.
    pub mode: String,
    /// The edge where traffic enters the tunnel (it listens).
    pub ingress_node_id: String,
    pub ingress_listen_port: u16,
    /// The edge where traffic leaves the tunnel.
    pub egress_node_id: String,
    /// `host:port` the exit edge forwards to.
    pub egress_forward_addr: String,
    /// Direct mode: `host:port` where the entry edge reaches the exit edge over QUIC.
    #[serde(default)]
    pub egress_peer_addr: Option<String>,
    /// Relay mode: `host:port` of the relay's QUIC listener.
    #[serde(default)]
    pub relay_addr: Option<String>,
    /// Relay mode: the relay node.
    #[serde(default)]
    pub relay_node_id: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub associated_flow_ids: Vec<String>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTunnel {
    pub name: Option<String>,
    pub enabled: Option<bool>,
    pub ingress_listen_port: Option<u16>,
    pub egress_forward_addr: Option<String>,
    pub egress_peer_addr: Option<String>,
    pub relay_addr: Option<String>,
    pub associated_flow_ids: Option<Vec<String>>,
}

/// A `host:port` with a port from 1 to 65535 and a host without spaces.
fn check_addr(field: &str, v: &str) -> ApiResult<String> {
    let ok = v
        .rsplit_once(':')
        .is_some_and(|(host, _)| !host.is_empty() && !host.contains(char::is_whitespace))
        && port_of(v).is_some()
        && v.len() <= 256;
    if !ok {
        return Err(ApiError::bad_request(
            field,
            format!("{v:?} is not host:port with a port from 1 to 65535"),
        ));
    }
    Ok(v.to_string())
}

async fn node_of_kind(
    state: &AppState,
    auth: &AuthContext,
    field: &str,
    id: &str,
    kind: &str,
) -> ApiResult<NodeRecord> {
    if allowed(auth).is_some_and(|ids| !ids.iter().any(|i| i == id)) {
        return Err(ApiError::forbidden(format!(
            "you are not allowed to access node {id}"
        )));
    }
    let n = state
        .store
        .get_node(id)
        .await?
        .ok_or_else(|| ApiError::bad_request(field, format!("node {id} does not exist")))?;
    if n.device_type != kind {
        return Err(ApiError::bad_request(
            field,
            format!("node {id} is a {}, not a {kind}", n.device_type),
        ));
    }
    Ok(n)
}

/// Checks a tunnel as it would be saved: nodes, addresses, mode fields. That no
/// other tunnel listens on the same port of the same node is the store's to say,
/// in the write itself ([`listen_clash`]).
async fn check(state: &AppState, auth: &AuthContext, t: &TunnelRecord) -> ApiResult<()> {
    if !matches!(t.protocol.as_str(), "tcp" | "udp") {
        return Err(ApiError::bad_request("protocol", "must be tcp or udp"));
    }
    node_of_kind(state, auth, "ingress_node_id", &t.ingress_node_id, "edge").await?;
    node_of_kind(state, auth, "egress_node_id", &t.egress_node_id, "edge").await?;
    if t.ingress_node_id == t.egress_node_id {
        return Err(ApiError::bad_request(
            "egress_node_id",
            "must be another edge than ingress_node_id",
        ));
    }
    if !(1..=65535).contains(&t.ingress_listen_port) {
        return Err(ApiError::bad_request(
            "ingress_listen_port",
            "must be from 1 to 65535",
        ));
    }
    check_addr("egress_forward_addr", &t.egress_forward_addr)?;
    match t.mode.as_str() {
        "relay" => {
            let (Some(addr), Some(relay)) = (&t.relay_addr, &t.relay_node_id) else {
                return Err(ApiError::bad_request(
                    "relay_node_id",
                    "relay mode needs relay_node_id and relay_addr",
                ));
            };
            check_addr("relay_addr", addr)?;
            node_of_kind(state, auth, "relay_node_id", relay, "relay").await?;
            if t.egress_peer_addr.is_some() {
                return Err(ApiError::bad_request(
                    "egress_peer_addr",
                    "is for direct mode only",
                ));
            }
        }
        "direct" => {
            let Some(peer) = &t.egress_peer_addr else {
                return Err(ApiError::bad_request(
                    "egress_peer_addr",
                    "direct mode needs egress_peer_addr",
                ));
            };
            check_addr("egress_peer_addr", peer)?;
            if t.relay_addr.is_some() || t.relay_node_id.is_some() {
                return Err(ApiError::bad_request(
                    "relay_node_id",
                    "relay_node_id and relay_addr are for relay mode only",
                ));
            }
        }
        _ => return Err(ApiError::bad_request("mode", "must be relay or direct")),
    }
    Ok(())
}

/// A tunnel write's conflict is a port another tunnel listens on (409 `LISTEN_CLASH`).
fn listen_clash(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "LISTEN_CLASH", m),
        other => other.into(),
    }
}

#[utoipa::path(get, path = "/api/v1/tunnels", operation_id = "list_tunnels", tag = "tunnels",
    params(crate::extract::PageParams),
    responses((status = 200, description = "Tunnels the caller may see, with each leg's state", body = ListEnvelope<TunnelView>)))]
pub async fn list(
    State(state): State<AppState>,
    auth: AuthContext,
    Pagination(page): Pagination,
) -> ApiResult<Json<ListEnvelope<TunnelView>>> {
    let (items, total) = if allowed(&auth).is_some() {
        // Few tunnels: the limited caller's are picked from all of them.
        let all = state
            .store
            .list_tunnels(PageRequest {
                limit: i64::MAX / 2,
                offset: 0,
            })
            .await?;
        let mine: Vec<TunnelRecord> = all
            .items
            .into_iter()
            .filter(|t| may_see(&auth, t))
            .collect();
        let total = mine.len() as i64;
        let start = usize::try_from(page.offset).unwrap_or(usize::MAX);
        let take = usize::try_from(page.limit).unwrap_or(0);
        (
            mine.into_iter().skip(start).take(take).collect::<Vec<_>>(),
            total,
        )
    } else {
        let p = state.store.list_tunnels(page).await?;
        (p.items, p.total)
    };
    let live = live_of(&state, &items).await;
    Ok(Json(ListEnvelope::new(
        items.iter().map(|t| view(t, &live)).collect(),
        total,
        page,
    )))
}

#[utoipa::path(post, path = "/api/v1/tunnels", operation_id = "create_tunnel", tag = "tunnels", request_body = CreateTunnel,
    responses((status = 201, description = "Created; its configuration goes to the nodes now (legs pending until they answer)", body = TunnelView),
              (status = 409, description = "A node already listens on that port for another tunnel")))]
pub async fn create(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<CreateTunnel>,
) -> ApiResult<(StatusCode, Json<TunnelView>)> {
    auth.require(Role::Operator)?;
    let now = now_ms();
    let relay = body.mode == "relay";
    let secrets = TunnelSecrets::generate(body.mode == "direct");
    let t = TunnelRecord {
        id: uuid::Uuid::new_v4().to_string(),
        name: check_name(&body.name)?,
        protocol: body.protocol,
        mode: body.mode,
        ingress_node_id: body.ingress_node_id,
        ingress_listen_port: i64::from(body.ingress_listen_port),
        egress_node_id: body.egress_node_id,
        egress_forward_addr: body.egress_forward_addr,
        egress_peer_addr: body.egress_peer_addr,
        relay_addr: body.relay_addr,
        relay_node_id: body.relay_node_id,
        enabled: body.enabled,
        associated_flow_ids: json!(body.associated_flow_ids),
        secrets_sealed: secrets.seal(&state),
        ingress: LegState::pending(),
        egress: LegState::pending(),
        relay: relay.then(LegState::pending),
        version: 1,
        created_at: now,
        updated_at: now,
    };
    check(&state, &auth, &t).await?;
    state
        .store
        .create_tunnel(&auth.actor, &t)
        .await
        .map_err(listen_clash)?;
    state.tunnel_nodes.add(&t);
    let s = state.clone();
    let pushed = t.clone();
    tokio::spawn(async move { tunnels::push(&s, &pushed, |_, _| true).await });
    Ok((StatusCode::CREATED, Json(view(&t, &HashMap::new()))))
}

#[utoipa::path(get, path = "/api/v1/tunnels/{id}", operation_id = "get_tunnel", tag = "tunnels",
    params(("id" = String, Path, description = "Tunnel id")),
    responses((status = 200, description = "The tunnel, each leg's push state and what its nodes report live", body = TunnelView)))]
pub async fn get(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let t = visible(&state, &auth, &id).await?;
    let live = live_of(&state, std::slice::from_ref(&t)).await;
    Ok(json_with_etag(StatusCode::OK, t.version, view(&t, &live)))
}

#[utoipa::path(put, path = "/api/v1/tunnels/{id}", operation_id = "update_tunnel", tag = "tunnels",
    params(("id" = String, Path, description = "Tunnel id")), request_body = UpdateTunnel,
    responses((status = 200, description = "Updated; the nodes get the new configuration (or lose it when disabled)", body = TunnelView)))]
pub async fn update(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    IfMatch(expected): IfMatch,
    JsonBody(body): JsonBody<UpdateTunnel>,
) -> ApiResult<Response> {
    auth.require(Role::Operator)?;
    let before = visible(&state, &auth, &id).await?;
    let mut t = before.clone();
    if let Some(n) = &body.name {
        t.name = check_name(n)?;
    }
    if let Some(e) = body.enabled {
        t.enabled = e;
    }
    if let Some(p) = body.ingress_listen_port {
        t.ingress_listen_port = i64::from(p);
    }
    if let Some(a) = body.egress_forward_addr {
        t.egress_forward_addr = a;
    }
    if let Some(a) = body.egress_peer_addr {
        t.egress_peer_addr = Some(a);
    }
    if let Some(a) = body.relay_addr {
        t.relay_addr = Some(a);
    }
    if let Some(f) = body.associated_flow_ids {
        t.associated_flow_ids = json!(f);
    }
    check(&state, &auth, &t).await?;
    // What the nodes hold changes (unless only the flows UI list did): every leg
    // is pending again.
    let nodes_change = {
        let mut a = before.clone();
        a.associated_flow_ids = t.associated_flow_ids.clone();
        a != t
    };
    if nodes_change {
        t.ingress = LegState::pending();
        t.egress = LegState::pending();
        t.relay = t.relay.as_ref().map(|_| LegState::pending());
    }
    t.updated_at = now_ms();
    let saved = state
        .store
        .update_tunnel(&auth.actor, &t, expected)
        .await
        .map_err(listen_clash)?;
    if nodes_change {
        let s = state.clone();
        let pushed = saved.clone();
        tokio::spawn(async move {
            if pushed.enabled {
                tunnels::push(&s, &pushed, |_, _| true).await;
            } else {
                tunnels::withdraw(&s, &pushed).await;
            }
        });
    }
    Ok(json_with_etag(
        StatusCode::OK,
        saved.version,
        view(&saved, &HashMap::new()),
    ))
}

#[utoipa::path(delete, path = "/api/v1/tunnels/{id}", operation_id = "delete_tunnel", tag = "tunnels",
    params(("id" = String, Path, description = "Tunnel id")),
    responses((status = 204, description = "Deleted; the edges are told to remove it and the relay to revoke it")))]
pub async fn delete(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require(Role::Operator)?;
    visible(&state, &auth, &id).await?;
    let gone = state.store.delete_tunnel(&auth.actor, &id).await?;
    let s = state.clone();
    tokio::spawn(async move { tunnels::withdraw(&s, &gone).await });
    Ok(StatusCode::NO_CONTENT)
}
