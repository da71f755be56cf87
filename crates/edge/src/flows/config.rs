//! The flow configuration model of the node protocol (`FlowConfig`, `InputConfig`,
//! `OutputConfig`), as the manager sends it in `create_flow`, `update_flow`,
//! `add_output` and `update_config`, and as this edge reports and stores it.
//!
//! Parsing is strict about what this edge would otherwise get wrong: an input or
//! output type it cannot run is refused by name (with the supported types), as
//! are FEC and redundancy settings it does not implement; fields it does not know
//! are ignored, as everywhere in the protocol.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Input types this edge runs.
pub const INPUT_TYPES: &[&str] = &["udp", "rtp", "tcp"];
/// Output types this edge runs.
pub const OUTPUT_TYPES: &[&str] = &["udp", "rtp", "tcp"];
/// Types of the protocol this edge does not run (SRT, RTMP, RTSP, WebRTC, WHEP, HLS).
const UNSUPPORTED_TYPES: &[&str] = &["srt", "rtmp", "rtsp", "webrtc", "whep", "hls", "rist"];
/// Flow and output ids and names are kept up to this many bytes.
const MAX_ID_BYTES: usize = 128;
const MAX_NAME_BYTES: usize = 256;
/// Outputs of one flow.
pub const MAX_OUTPUTS: usize = 64;
/// Entries of `allowed_sources` / `allowed_payload_types`.
const MAX_FILTER_ENTRIES: usize = 256;
/// The DSCP value outputs mark their packets with unless told otherwise (EF).
pub const DEFAULT_DSCP: u8 = 46;

/// Why a flow, input or output configuration is refused; the text says what and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

fn default_true() -> bool {
    true
}

fn default_dscp() -> u8 {
    DEFAULT_DSCP
}

/// One flow: an input fanned out to outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowConfig {
    pub id: String,
    pub name: String,
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_true")]
    pub media_analysis: bool,
    pub input: InputConfig,
    #[serde(default)]
    pub outputs: Vec<OutputConfig>,
}

/// Where a flow's packets come from, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", try_from = "Value")]
pub enum InputConfig {
    Udp(UdpInput),
    Rtp(RtpInput),
    Tcp(TcpInput),
}

/// A UDP input: unicast, or multicast when `bind_addr` is a group address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UdpInput {
    pub bind_addr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_addr: Option<String>,
}

/// RTP over UDP: a UDP input that also reads RTP headers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RtpInput {
    pub bind_addr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_addr: Option<String>,
    /// Source IPs (or `ip:port`) accepted; empty or absent accepts any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_sources: Option<Vec<String>>,
    /// RTP payload types accepted; empty or absent accepts any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_payload_types: Option<Vec<u8>>,
    /// Packets beyond this rate (per one-second window) are dropped and
    /// counted as filtered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bitrate_mbps: Option<f64>,
}

/// A TCP input (a Fleetgate extension): accepts connections on `listen_addr`, or
/// connects to `connect_addr`; the bytes read are forwarded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TcpInput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_addr: Option<String>,
}

/// Where a flow sends its packets, tagged by `type`; every output has an id and a name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", try_from = "Value")]
pub enum OutputConfig {
    Udp(DatagramOutput),
    Rtp(DatagramOutput),
    Tcp(TcpOutput),
}

/// A UDP or RTP output: each packet is sent as one datagram to `dest_addr`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatagramOutput {
    pub id: String,
    pub name: String,
    pub dest_addr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_addr: Option<String>,
    #[serde(default = "default_dscp")]
    pub dscp: u8,
}

/// A TCP output: connects to `dest_addr` (reconnecting with backoff) and writes
/// the packets as a byte stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TcpOutput {
    pub id: String,
    pub name: String,
    pub dest_addr: String,
    #[serde(default = "default_dscp")]
    pub dscp: u8,
}

/// The `type` of a tagged object, checked against what this edge runs.
fn tagged_type<'a>(v: &'a Value, what: &str, supported: &[&str]) -> Result<&'a str, ConfigError> {
    let Some(obj) = v.as_object() else {
        return Err(err(format!("{what} must be an object with a \"type\"")));
    };
    let kind = obj
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| err(format!("{what}.type must be a string")))?;
    if supported.contains(&kind) {
        return Ok(kind);
    }
    let list = supported.join(", ");
    if UNSUPPORTED_TYPES.contains(&kind) {
        Err(err(format!(
            "{what} type \"{kind}\" is not supported on this edge (supported: {list})"
        )))
    } else {
        Err(err(format!(
            "unknown {what} type {:?} (supported: {list})",
            fleetgate_protocol::node::truncate(kind.to_string(), 64)
        )))
    }
}

/// Refuses a setting this edge would otherwise silently not honour.
fn refuse_present(v: &Value, what: &str, keys: &[&str]) -> Result<(), ConfigError> {
    for k in keys {
        if v.get(k).is_some_and(|x| !x.is_null()) {
            return Err(err(format!("{what}.{k} is not supported on this edge")));
        }
    }
    Ok(())
}

fn from_value<T: serde::de::DeserializeOwned>(v: Value, what: &str) -> Result<T, ConfigError> {
    serde_json::from_value(v).map_err(|e| err(format!("{what}: {e}")))
}

impl TryFrom<Value> for InputConfig {
    type Error = ConfigError;

    fn try_from(v: Value) -> Result<Self, ConfigError> {
        let what = "input";
        match tagged_type(&v, what, INPUT_TYPES)? {
            "udp" => Ok(InputConfig::Udp(from_value(v, what)?)),
            "rtp" => {
                refuse_present(&v, what, &["fec_decode", "redundancy", "tr07_mode"])?;
                Ok(InputConfig::Rtp(from_value(v, what)?))
            }
            _ => Ok(InputConfig::Tcp(from_value(v, what)?)),
        }
    }
}

impl TryFrom<Value> for OutputConfig {
    type Error = ConfigError;

    fn try_from(v: Value) -> Result<Self, ConfigError> {
        let what = "output";
        match tagged_type(&v, what, OUTPUT_TYPES)? {
            "udp" => Ok(OutputConfig::Udp(from_value(v, what)?)),
            "rtp" => {
                refuse_present(&v, what, &["fec_encode", "redundancy"])?;
                Ok(OutputConfig::Rtp(from_value(v, what)?))
            }
            _ => Ok(OutputConfig::Tcp(from_value(v, what)?)),
        }
    }
}

/// Parses `ip:port`.
pub fn socket_addr(s: &str, field: &str) -> Result<SocketAddr, ConfigError> {
    s.parse()
        .map_err(|_| err(format!("{field} {s:?} must be an IP:port address")))
}

fn ip_addr(s: &str, field: &str) -> Result<IpAddr, ConfigError> {
    s.parse()
        .map_err(|_| err(format!("{field} {s:?} must be an IP address")))
}

fn check_id(id: &str, field: &str) -> Result<(), ConfigError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(err(format!(
            "{field} must be 1 to {MAX_ID_BYTES} bytes long"
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(err(format!("{field} must not hold control characters")));
    }
    Ok(())
}

fn check_name(name: &str, field: &str) -> Result<(), ConfigError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(err(format!(
            "{field} must be at most {MAX_NAME_BYTES} bytes"
        )));
    }
    Ok(())
}

fn check_dscp(dscp: u8, field: &str) -> Result<(), ConfigError> {
    if dscp > 63 {
        return Err(err(format!("{field} must be 0 to 63, got {dscp}")));
    }
    Ok(())
}

impl FlowConfig {
    /// Parses a flow sent by the manager and checks it.
    pub fn parse(v: &Value) -> Result<Self, ConfigError> {
        if !v.is_object() {
            return Err(err("flow must be an object"));
        }
        let flow: FlowConfig = serde_json::from_value(v.clone()).map_err(|e| {
            let text = e.to_string();
            // A refusal from an input or output parser already names its place.
            if text.starts_with("input")
                || text.starts_with("output")
                || text.starts_with("unknown")
            {
                err(text)
            } else {
                err(format!("flow: {text}"))
            }
        })?;
        flow.validate()?;
        Ok(flow)
    }

    /// Checks ids, addresses and limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_id(&self.id, "flow.id")?;
        check_name(&self.name, "flow.name")?;
        self.input.validate()?;
        if self.outputs.len() > MAX_OUTPUTS {
            return Err(err(format!(
                "flow {} has {} outputs; at most {MAX_OUTPUTS}",
                self.id,
                self.outputs.len()
            )));
        }
        for (i, o) in self.outputs.iter().enumerate() {
            o.validate()?;
            if self.outputs[..i].iter().any(|p| p.id() == o.id()) {
                return Err(err(format!(
                    "duplicate output id {:?} in flow {}",
                    o.id(),
                    self.id
                )));
            }
        }
        Ok(())
    }

    pub fn output(&self, id: &str) -> Option<&OutputConfig> {
        self.outputs.iter().find(|o| o.id() == id)
    }
}

impl InputConfig {
    pub fn type_name(&self) -> &'static str {
        match self {
            InputConfig::Udp(_) => "udp",
            InputConfig::Rtp(_) => "rtp",
            InputConfig::Tcp(_) => "tcp",
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        match self {
            InputConfig::Udp(u) => {
                socket_addr(&u.bind_addr, "input.bind_addr")?;
                if let Some(i) = &u.interface_addr {
                    ip_addr(i, "input.interface_addr")?;
                }
            }
            InputConfig::Rtp(r) => {
                socket_addr(&r.bind_addr, "input.bind_addr")?;
                if let Some(i) = &r.interface_addr {
                    ip_addr(i, "input.interface_addr")?;
                }
                let sources = r.allowed_sources.as_deref().unwrap_or_default();
                if sources.len() > MAX_FILTER_ENTRIES {
                    return Err(err(format!(
                        "input.allowed_sources has more than {MAX_FILTER_ENTRIES} entries"
                    )));
                }
                for s in sources {
                    SourceFilter::parse_one(s)?;
                }
                if let Some(m) = r.max_bitrate_mbps {
                    if !(m.is_finite() && m > 0.0 && m <= 100_000.0) {
                        return Err(err(format!(
                            "input.max_bitrate_mbps must be above 0 and at most 100000, got {m}"
                        )));
                    }
                }
                let types = r.allowed_payload_types.as_deref().unwrap_or_default();
                if let Some(pt) = types.iter().find(|pt| **pt > 127) {
                    return Err(err(format!(
                        "input.allowed_payload_types: {pt} is not an RTP payload type (0 to 127)"
                    )));
                }
            }
            InputConfig::Tcp(t) => match (&t.listen_addr, &t.connect_addr) {
                (Some(l), None) => {
                    socket_addr(l, "input.listen_addr")?;
                }
                (None, Some(c)) => {
                    socket_addr(c, "input.connect_addr")?;
                }
                _ => {
                    return Err(err(
                        "a tcp input needs exactly one of listen_addr and connect_addr",
                    ))
                }
            },
        }
        Ok(())
    }

    /// The local address the input listens on, if it does.
    pub fn local_addr(&self) -> Option<&str> {
        match self {
            InputConfig::Udp(u) => Some(&u.bind_addr),
            InputConfig::Rtp(r) => Some(&r.bind_addr),
            InputConfig::Tcp(t) => t.listen_addr.as_deref(),
        }
    }
}

impl OutputConfig {
    /// Parses an output sent by the manager (`add_output`) and checks it.
    pub fn parse(v: &Value) -> Result<Self, ConfigError> {
        let o = OutputConfig::try_from(v.clone())?;
        o.validate()?;
        Ok(o)
    }

    pub fn id(&self) -> &str {
        match self {
            OutputConfig::Udp(d) | OutputConfig::Rtp(d) => &d.id,
            OutputConfig::Tcp(t) => &t.id,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            OutputConfig::Udp(d) | OutputConfig::Rtp(d) => &d.name,
            OutputConfig::Tcp(t) => &t.name,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            OutputConfig::Udp(_) => "udp",
            OutputConfig::Rtp(_) => "rtp",
            OutputConfig::Tcp(_) => "tcp",
        }
    }

    pub fn dest_addr(&self) -> &str {
        match self {
            OutputConfig::Udp(d) | OutputConfig::Rtp(d) => &d.dest_addr,
            OutputConfig::Tcp(t) => &t.dest_addr,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        check_id(self.id(), "output.id")?;
        check_name(self.name(), "output.name")?;
        socket_addr(self.dest_addr(), "output.dest_addr")?;
        match self {
            OutputConfig::Udp(d) | OutputConfig::Rtp(d) => {
                if let Some(b) = &d.bind_addr {
                    socket_addr(b, "output.bind_addr")?;
                }
                if let Some(i) = &d.interface_addr {
                    ip_addr(i, "output.interface_addr")?;
                }
                check_dscp(d.dscp, "output.dscp")
            }
            OutputConfig::Tcp(t) => check_dscp(t.dscp, "output.dscp"),
        }
    }
}

/// Which senders an RTP input accepts: by IP, or by exact `ip:port`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceFilter {
    ips: Vec<IpAddr>,
    addrs: Vec<SocketAddr>,
}

/// One entry of `allowed_sources`.
enum Source {
    Ip(IpAddr),
    Addr(SocketAddr),
}

impl SourceFilter {
    fn parse_one(s: &str) -> Result<Source, ConfigError> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Source::Ip(ip));
        }
        s.parse::<SocketAddr>().map(Source::Addr).map_err(|_| {
            err(format!(
                "input.allowed_sources entry {s:?} must be an IP address or IP:port"
            ))
        })
    }

    /// The filter of a validated list (`None` or empty accepts every sender).
    pub fn new(list: Option<&[String]>) -> Self {
        let mut f = SourceFilter::default();
        for s in list.unwrap_or_default() {
            match Self::parse_one(s) {
                Ok(Source::Ip(ip)) => f.ips.push(ip),
                Ok(Source::Addr(addr)) => f.addrs.push(addr),
                Err(_) => {}
            }
        }
        f
    }

    pub fn allows(&self, from: SocketAddr) -> bool {
        (self.ips.is_empty() && self.addrs.is_empty())
            || self.ips.contains(&from.ip())
            || self.addrs.contains(&from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn udp_flow() -> Value {
        json!({"id": "f1", "name": "One", "input": {"type": "udp", "bind_addr": "0.0.0.0:5000"},
               "outputs": [{"type": "udp", "id": "o1", "name": "A", "dest_addr": "127.0.0.1:6000"}]})
    }

    #[test]
    fn a_flow_parses_with_defaults_and_round_trips() {
        let f = FlowConfig::parse(&udp_flow()).expect("flow");
        assert!(f.enabled && f.media_analysis);
        let OutputConfig::Udp(o) = &f.outputs[0] else {
            panic!("udp output")
        };
        assert_eq!(o.dscp, DEFAULT_DSCP);
        let back = serde_json::to_value(&f).expect("json");
        assert_eq!(back["input"]["type"], "udp");
        assert_eq!(back["outputs"][0]["type"], "udp");
        assert_eq!(FlowConfig::parse(&back).expect("again"), f);
    }

    #[test]
    fn unsupported_types_are_refused_by_name() {
        let mut v = udp_flow();
        v["input"] = json!({"type": "srt", "mode": "listener", "local_addr": "0.0.0.0:9000"});
        let e = FlowConfig::parse(&v).expect_err("srt");
        assert!(
            e.0.contains("\"srt\" is not supported on this edge") && e.0.contains("udp, rtp, tcp"),
            "{e}"
        );
        let mut v = udp_flow();
        v["outputs"][0] = json!({"type": "hls", "id": "h", "name": "h", "ingest_url": "http://x"});
        let e = FlowConfig::parse(&v).expect_err("hls");
        assert!(e.0.contains("output type \"hls\" is not supported"), "{e}");
        let mut v = udp_flow();
        v["input"]["type"] = json!("carrier-pigeon");
        assert!(FlowConfig::parse(&v)
            .expect_err("unknown")
            .0
            .contains("unknown input type"));
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (
                json!({"input": {"type": "udp", "bind_addr": "nope"}}),
                "input.bind_addr",
            ),
            (
                json!({"input": {"type": "tcp"}}),
                "exactly one of listen_addr",
            ),
            (
                json!({"input": {"type": "rtp", "bind_addr": "0.0.0.0:1", "allowed_sources": ["x"]}}),
                "allowed_sources",
            ),
            (
                json!({"input": {"type": "rtp", "bind_addr": "0.0.0.0:1", "allowed_payload_types": [200]}}),
                "allowed_payload_types",
            ),
            (
                json!({"input": {"type": "rtp", "bind_addr": "0.0.0.0:1", "fec_decode": {"columns": 5, "rows": 5}}}),
                "fec_decode",
            ),
            (json!({"id": ""}), "flow.id"),
            (
                json!({"outputs": [{"type": "udp", "id": "o", "name": "o", "dest_addr": "1.2.3.4:5", "dscp": 64}]}),
                "output.dscp",
            ),
            (
                json!({"outputs": [{"type": "udp", "id": "o", "name": "o", "dest_addr": "1.2.3.4:5"}, {"type": "tcp", "id": "o", "name": "p", "dest_addr": "1.2.3.4:6"}]}),
                "duplicate output id",
            ),
            (
                json!({"outputs": [{"type": "udp", "name": "o", "dest_addr": "1.2.3.4:5"}]}),
                "missing field `id`",
            ),
        ];
        for (patch, want) in cases {
            let mut v = udp_flow();
            for (k, x) in patch.as_object().expect("object") {
                v[k] = x.clone();
            }
            let e = FlowConfig::parse(&v).expect_err(want);
            assert!(e.0.contains(want), "{want}: {e}");
        }
        assert!(FlowConfig::parse(&json!([1])).is_err());
    }

    #[test]
    fn source_filters() {
        let f = SourceFilter::new(Some(&["10.0.0.1".into(), "10.0.0.2:5004".into()]));
        assert!(f.allows("10.0.0.1:9".parse().expect("addr")));
        assert!(f.allows("10.0.0.2:5004".parse().expect("addr")));
        assert!(!f.allows("10.0.0.2:5005".parse().expect("addr")));
        assert!(SourceFilter::new(None).allows("1.1.1.1:1".parse().expect("addr")));
    }
}
