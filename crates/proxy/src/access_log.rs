//! The access log: one JSON object per proxied request on standard output, with
//! the fields the operator chose (all of them by default).

use std::io::Write;

/// Every field the access log can carry, in the order lines print them.
pub const FIELDS: &[&str] = &[
    "time",
    "request_id",
    "client",
    "method",
    "host",
    "path",
    "query",
    "status",
    "route",
    "upstream",
    "duration_ms",
    "user_agent",
];

/// The fields one request contributes; borrowed, nothing is copied unless logged.
pub struct Entry<'a> {
    pub request_id: &'a str,
    pub client: std::net::IpAddr,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub status: u16,
    pub route: &'a str,
    pub upstream: &'a str,
    pub duration_ms: f64,
    pub user_agent: Option<&'a str>,
}

/// A configured access log: which fields to print.
#[derive(Debug, Clone)]
pub struct AccessLog {
    fields: Vec<&'static str>,
}

impl AccessLog {
    /// `fields` empty means all; an unknown name is an error naming it.
    pub fn new(fields: &[String]) -> Result<Self, String> {
        if fields.is_empty() {
            return Ok(Self {
                fields: FIELDS.to_vec(),
            });
        }
        let mut out = Vec::new();
        for f in fields {
            match FIELDS.iter().find(|k| **k == f.as_str()) {
                Some(k) => out.push(*k),
                None => {
                    return Err(format!(
                        "unknown access log field {f:?}: known are {}",
                        FIELDS.join(", ")
                    ))
                }
            }
        }
        Ok(Self { fields: out })
    }

    /// The JSON line for one request.
    pub fn line(&self, e: &Entry<'_>) -> String {
        let mut m = serde_json::Map::new();
        for f in &self.fields {
            let v = match *f {
                "time" => serde_json::Value::String(fleetgate_core::time::rfc3339(
                    fleetgate_core::time::now_ms(),
                )),
                "request_id" => e.request_id.into(),
                "client" => e.client.to_string().into(),
                "method" => e.method.into(),
                "host" => e.host.into(),
                "path" => e.path.into(),
                "query" => e.query.map_or(serde_json::Value::Null, Into::into),
                "status" => e.status.into(),
                "route" => e.route.into(),
                "upstream" => e.upstream.into(),
                "duration_ms" => {
                    serde_json::Number::from_f64((e.duration_ms * 1000.0).round() / 1000.0)
                        .map_or(serde_json::Value::Null, Into::into)
                }
                "user_agent" => e.user_agent.map_or(serde_json::Value::Null, Into::into),
                _ => continue,
            };
            m.insert((*f).to_string(), v);
        }
        serde_json::Value::Object(m).to_string()
    }

    pub fn write(&self, e: &Entry<'_>) {
        let mut line = self.line(e);
        line.push('\n');
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            request_id: "r1",
            client: "10.0.0.1".parse().expect("ip"),
            method: "GET",
            host: "a.test",
            path: "/x",
            query: Some("q=\"1\""),
            status: 200,
            route: "r",
            upstream: "u",
            duration_ms: 1.23456,
            user_agent: None,
        }
    }

    #[test]
    fn prints_the_chosen_fields_as_json() {
        let all = AccessLog::new(&[]).expect("all");
        let v: serde_json::Value = serde_json::from_str(&all.line(&entry())).expect("json");
        assert_eq!(v.as_object().expect("object").len(), FIELDS.len());
        assert_eq!(v["query"], "q=\"1\"");
        assert_eq!(v["duration_ms"], 1.235);
        let some = AccessLog::new(&["status".into(), "path".into()]).expect("some");
        assert_eq!(some.line(&entry()), r#"{"path":"/x","status":200}"#);
        assert!(AccessLog::new(&["password".into()])
            .expect_err("unknown")
            .contains("password"));
    }
}
