//! Request extractors that turn bad input into clear 4xx errors: JSON bodies
//! (415 without a JSON content type, 413 when too large, 400 naming the field),
//! pagination, `If-Match`, the client address and the request id.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use bytes::Bytes;
use fleetgate_store::PageRequest;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;

/// Largest page a listing returns; larger `limit`s are clamped to it.
pub const MAX_PAGE: i64 = 1000;
pub const DEFAULT_PAGE: i64 = 50;

/// A JSON object request body, parsed with the failing field named on error.
///
/// Every request body of the API is an object. serde would also fill a struct
/// from a JSON array (field by field, in order), so arrays are refused here.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|ct| {
                let mime = ct
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                "the request body must be JSON: send Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "PAYLOAD_TOO_LARGE",
                    "the request body is larger than the configured limit",
                )
            } else if crate::server::is_body_timeout(&rejection) {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "REQUEST_TIMEOUT",
                    format!("{rejection}: send the body without pauses longer than manager.body_read_timeout_ms"),
                )
            } else {
                ApiError::bad_request(
                    "body",
                    format!("could not read the request body: {rejection}"),
                )
            }
        })?;
        if first_token(&bytes) == Some(b'[') {
            return Err(ApiError::bad_request(
                "body",
                "must be a JSON object, not an array",
            ));
        }
        if has_escaped_nul(&bytes) {
            return Err(ApiError::bad_request(
                "body",
                "strings must not contain the NUL character (\\u0000)",
            ));
        }
        parse_json(&bytes).map(JsonBody)
    }
}

/// Whether a JSON text holds a `\u0000` escape (an odd run of backslashes before
/// `u0000`). No store keeps NUL in text (PostgreSQL refuses it outright), so such
/// input is refused up front with a clear message.
pub fn has_escaped_nul(bytes: &[u8]) -> bool {
    let mut i = 0;
    while let Some(pos) = bytes[i..]
        .windows(5)
        .position(|w| w.eq_ignore_ascii_case(b"u0000"))
    {
        let at = i + pos;
        let slashes = bytes[..at]
            .iter()
            .rev()
            .take_while(|b| **b == b'\\')
            .count();
        if slashes % 2 == 1 {
            return true;
        }
        i = at + 5;
    }
    false
}

/// The first byte of a JSON text that is not whitespace.
fn first_token(bytes: &[u8]) -> Option<u8> {
    bytes
        .iter()
        .copied()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// Parses JSON, naming the path of the first field that failed.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let field = if path == "." || path.is_empty() {
            "body".to_string()
        } else {
            path
        };
        let message = match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                format!("malformed JSON: {inner}")
            }
            _ => inner.to_string(),
        };
        ApiError::bad_request(&field, message)
    })
}

/// `?limit=&offset=` as a validated page request.
#[derive(Debug, Clone, Copy)]
pub struct Pagination(pub PageRequest);

/// Pagination query parameters.
#[derive(Debug, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page (default 50, at most 1000; larger values are clamped).
    #[param(minimum = 0)]
    pub limit: Option<i64>,
    /// Items to skip (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

/// Parses a query value as a non-negative integer, naming `name` on error.
fn non_negative(name: &str, v: &str) -> Result<i64, ApiError> {
    v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
        ApiError::bad_request(name, format!("must be a non-negative integer, got {v:?}"))
    })
}

/// Decoded `key=value` pairs of a query string.
pub fn form_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl<S: Send + Sync> FromRequestParts<S> for Pagination {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Unlike other parameters, an empty `limit=` or `offset=` is an error.
        let q = QueryParams::from_parts(parts);
        let int = |name: &str| {
            q.0.get(name)
                .map(|v| non_negative(name, v.trim()))
                .transpose()
        };
        let limit = int("limit")?.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE);
        let offset = int("offset")?.unwrap_or(0);
        Ok(Pagination(PageRequest { limit, offset }))
    }
}

/// The list envelope of every listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListEnvelope<T> {
    pub items: Vec<T>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

impl<T> ListEnvelope<T> {
    pub fn new(items: Vec<T>, total: i64, page: PageRequest) -> Self {
        Self {
            items,
            total,
            limit: page.limit,
            offset: page.offset,
        }
    }

    /// A list that is never paged: every item in one page.
    pub fn whole(items: Vec<T>) -> Self {
        let total = items.len() as i64;
        Self::new(
            items,
            total,
            PageRequest {
                limit: total.max(1),
                offset: 0,
            },
        )
    }
}

/// The version an `If-Match` header demands; `None` without the header or with `*`.
#[derive(Debug, Clone, Copy)]
pub struct IfMatch(pub Option<i64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(raw) = parts.headers.get(header::IF_MATCH) else {
            return Ok(IfMatch(None));
        };
        let text = raw.to_str().unwrap_or("").trim();
        if text == "*" {
            return Ok(IfMatch(None));
        }
        let tag = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
        tag.parse::<i64>().map(|v| IfMatch(Some(v))).map_err(|_| {
            ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "PRECONDITION_FAILED",
                format!("If-Match {text:?} is not an ETag this server issued"),
            )
            .with_details(json!({ "field": "If-Match" }))
        })
    }
}

/// The strong ETag of a version.
pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

/// A JSON response carrying the ETag of `version`.
pub fn json_with_etag<T: Serialize>(
    status: StatusCode,
    version: i64,
    body: T,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut resp = (status, axum::Json(body)).into_response();
    if let Ok(h) = header::HeaderValue::from_str(&etag(version)) {
        resp.headers_mut().insert(header::ETAG, h);
    }
    resp
}

/// The peer address of the connection, as text.
#[derive(Debug, Clone)]
pub struct ClientIp(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(parts)))
    }
}

pub fn client_ip(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The id of this request (from `X-Request-Id` or generated).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_pairs() {
        assert_eq!(
            form_pairs("a=1&b=x%20y+z&c&d=%zz&e=%4"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y z".into()),
                ("c".into(), "".into()),
                ("d".into(), "%zz".into()),
                ("e".into(), "%4".into()),
            ]
        );
    }

    #[test]
    fn names_the_failing_field() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            n: u32,
        }
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Outer {
            inner: Inner,
        }
        let err = parse_json::<Outer>(br#"{"inner":{"n":"x"}}"#).expect_err("bad type");
        assert_eq!(err.details["field"], "inner.n");
        let err = parse_json::<Outer>(b"{\"inner\":").expect_err("truncated");
        assert!(err.message.contains("malformed JSON"), "{}", err.message);
        let err = parse_json::<Outer>(b"\xff\xfe").expect_err("not utf-8");
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn refuses_arrays_where_an_object_is_expected() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Patch {
            #[serde(default)]
            a: Option<String>,
            #[serde(default)]
            b: Option<String>,
        }
        // serde alone would accept this as {"a": null, "b": null}.
        assert!(parse_json::<Patch>(b"[null, null]").is_ok());
        for body in [&b"[null, null]"[..], b" \n [\"x\"]"] {
            let req = Request::builder()
                .method("PUT")
                .header(header::CONTENT_TYPE, "application/json")
                .body(axum::body::Body::from(body.to_vec()))
                .expect("request");
            let err = match JsonBody::<Patch>::from_request(req, &()).await {
                Ok(_) => panic!("an array was accepted as an object"),
                Err(e) => e,
            };
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert_eq!(err.details["field"], "body");
        }
        let req = Request::builder()
            .method("PUT")
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(&b" {\"a\": \"x\"}"[..]))
            .expect("request");
        let ok = JsonBody::<Patch>::from_request(req, &()).await;
        assert!(matches!(ok, Ok(JsonBody(Patch { a: Some(_), .. }))));
    }
}

/// The decoded query parameters of a request; the last value of a repeated name wins.
#[derive(Debug, Clone, Default)]
pub struct QueryParams(pub std::collections::HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(QueryParams::from_parts(parts))
    }
}

impl QueryParams {
    pub fn from_parts(parts: &Parts) -> Self {
        QueryParams(
            parts
                .uri
                .query()
                .map(form_pairs)
                .unwrap_or_default()
                .into_iter()
                .collect(),
        )
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// A time given as RFC 3339 text or Unix milliseconds.
    pub fn time(&self, name: &str) -> Result<Option<i64>, ApiError> {
        let Some(v) = self.text(name) else {
            return Ok(None);
        };
        if let Ok(ms) = v.parse::<i64>() {
            return Ok(Some(ms));
        }
        fleetgate_core::time::parse_rfc3339(v)
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(
                    name,
                    format!("must be an RFC 3339 time or Unix milliseconds, got {v:?}"),
                )
            })
    }

    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.text(name) {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(v) => Err(ApiError::bad_request(
                name,
                format!("must be true or false, got {v:?}"),
            )),
        }
    }

    /// A required positive integer.
    pub fn int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        let Some(v) = self.text(name) else {
            return Ok(None);
        };
        non_negative(name, v).map(Some)
    }
}

/// An optional JSON body: an empty body is `None`, anything else must be JSON.
pub struct OptionalJson<T>(pub Option<T>);

impl<S, T> FromRequest<S> for OptionalJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let empty_by_header = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() == "0");
        let has_type = req.headers().contains_key(header::CONTENT_TYPE);
        if empty_by_header || (!has_type && !req.headers().contains_key(header::TRANSFER_ENCODING))
        {
            return Ok(OptionalJson(None));
        }
        JsonBody::<T>::from_request(req, state)
            .await
            .map(|JsonBody(v)| OptionalJson(Some(v)))
    }
}

#[cfg(test)]
mod properties {

    #[test]
    fn escaped_nul_is_found_and_escaped_backslashes_are_not() {
        assert!(has_escaped_nul(br#"{"a":"x\u0000"}"#));
        assert!(has_escaped_nul(br#"{"a":"\U0000"}"#));
        assert!(has_escaped_nul(br#"{"a":"\\\u0000"}"#));
        // `\\u0000` is a backslash followed by the text u0000.
        assert!(!has_escaped_nul(br#"{"a":"\\u0000"}"#));
        assert!(!has_escaped_nul(br#"{"u0000":"u00001"}"#));
        assert!(!has_escaped_nul(b""));
    }

    use super::*;
    use proptest::prelude::*;

    fn encode(s: &str) -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    proptest! {
        #[test]
        fn query_parsing_never_panics(q in ".{0,200}") {
            let _ = form_pairs(&q);
        }

        #[test]
        fn encoded_pairs_decode_to_themselves(k in "[a-z_]{1,8}", v in "\\PC{0,40}") {
            let q = format!("{}={}&other=1", encode(&k), encode(&v));
            let pairs = form_pairs(&q);
            prop_assert_eq!(&pairs[0], &(k, v));
        }
    }
}
