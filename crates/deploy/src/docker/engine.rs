//! The connection to a Docker engine over its unix socket: connected lazily
//! (the engine may come up after Fleetgate), the API version negotiated down to
//! the engine's (Debian's engine speaks an older API than bollard's default),
//! every call bounded in time, and the engine's errors sorted into what a
//! caller can act on. Shared by the Docker driver and the manager's container,
//! image, volume and network endpoints.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bollard::{Docker, API_DEFAULT_VERSION};

use crate::spec::DriverError;

/// Where Docker listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Connecting and negotiating the API version must be done within this: an
/// engine that cannot be reached is reported within a second, never waited on.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(900);

/// The limit of a quick call (inspect, list, create, start, remove).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a reachability answer is reused (the `auto` driver choice asks on
/// every listing).
const PROBE_TTL: Duration = Duration::from_secs(3);

/// Why an engine call failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine cannot be reached: no socket, connection refused, or no
    /// answer in time while connecting.
    #[error("the Docker engine is unavailable: {0}")]
    Unavailable(String),
    /// The engine was reached but the call took longer than its limit.
    #[error("{what} took longer than {} s", .limit.as_secs())]
    Timeout { what: String, limit: Duration },
    /// 404 from the engine: no such container, image, volume or network.
    #[error("{0}")]
    NotFound(String),
    /// 409 from the engine: in use, or a name taken.
    #[error("{0}")]
    Conflict(String),
    /// 400 from the engine: the request is refused as invalid.
    #[error("{0}")]
    Invalid(String),
    /// Any other failure the engine reported (a pull that cannot reach its
    /// registry, say).
    #[error("{0}")]
    Failed(String),
}

impl From<EngineError> for DriverError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Unavailable(why) => DriverError::Unavailable(why),
            other => DriverError::Failed(other.to_string()),
        }
    }
}

/// A lazily connected engine. Cheap to share; the client inside is cloned per
/// call.
pub struct Engine {
    socket: PathBuf,
    client: Mutex<Option<Docker>>,
    probe: Mutex<Option<(Instant, bool)>>,
}

impl Engine {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            client: Mutex::new(None),
            probe: Mutex::new(None),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn cached(&self) -> Option<Docker> {
        self.client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Forgets the client, so that the next call connects and negotiates again
    /// (the engine may have been restarted, or replaced by another version).
    fn forget(&self) {
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// A client that has negotiated the API version with the engine.
    pub async fn client(&self) -> Result<Docker, EngineError> {
        if let Some(docker) = self.cached() {
            return Ok(docker);
        }
        let socket = self.socket.to_string_lossy().into_owned();
        // The client's own timeout covers one request; ours bound each call
        // (some, like a stop or an import, legitimately take minutes).
        let docker = Docker::connect_with_unix(&socket, 3600, API_DEFAULT_VERSION)
            .map_err(|e| self.sort(e, "connecting"))?;
        let docker = match tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version()).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return Err(self.unreachable(e)),
            Err(_) => {
                return Err(EngineError::Unavailable(format!(
                    "no answer from {} within {} ms",
                    self.socket.display(),
                    CONNECT_TIMEOUT.as_millis()
                )))
            }
        };
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = Some(docker.clone());
        Ok(docker)
    }

    /// Whether the engine answers (remembered for a few seconds).
    pub async fn reachable(&self) -> bool {
        if let Some((at, ok)) = *self.probe.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < PROBE_TTL {
                return ok;
            }
        }
        let ok = match self.client().await {
            Ok(docker) => self
                .call("ping", CONNECT_TIMEOUT, docker.ping())
                .await
                .is_ok(),
            Err(_) => false,
        };
        *self.probe.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), ok));
        ok
    }

    /// Runs one engine call within `limit`, its error sorted. `what` names the
    /// call in errors ("stopping container fleetgate-app-web").
    pub async fn call<T>(
        &self,
        what: &str,
        limit: Duration,
        call: impl Future<Output = Result<T, bollard::errors::Error>>,
    ) -> Result<T, EngineError> {
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.sort(e, what)),
            Err(_) => Err(EngineError::Timeout {
                what: what.to_string(),
                limit,
            }),
        }
    }

    /// An error while connecting: always "unavailable", with the reason.
    fn unreachable(&self, e: bollard::errors::Error) -> EngineError {
        match self.sort(e, "connecting") {
            EngineError::Unavailable(why) => EngineError::Unavailable(why),
            other => EngineError::Unavailable(format!(
                "{} does not answer as a Docker engine: {other}",
                self.socket.display()
            )),
        }
    }

    /// Sorts a bollard error; a connection failure also forgets the client.
    pub fn sort(&self, e: bollard::errors::Error, what: &str) -> EngineError {
        use bollard::errors::Error as E;
        let sorted = match e {
            E::SocketNotFoundError(path) => EngineError::Unavailable(format!(
                "no socket at {path} (is dockerd running? the path is the docker.socket setting)"
            )),
            E::DockerResponseServerError {
                status_code,
                message,
            } => match status_code {
                404 => EngineError::NotFound(message),
                409 => EngineError::Conflict(message),
                400 => EngineError::Invalid(message),
                _ => EngineError::Failed(format!(
                    "{what}: the engine answered {status_code}: {message}"
                )),
            },
            E::RequestTimeoutError => EngineError::Timeout {
                what: what.to_string(),
                limit: Duration::from_secs(3600),
            },
            E::DockerStreamError { error } => EngineError::Failed(format!("{what}: {error}")),
            e @ (E::IOError { .. }
            | E::HyperLegacyError { .. }
            | E::HyperResponseError { .. }
            | E::HttpClientError { .. }) => EngineError::Unavailable(format!(
                "cannot talk to {}: {}",
                self.socket.display(),
                chain(&e)
            )),
            other => EngineError::Failed(format!("{what}: {}", chain(&other))),
        };
        if matches!(sorted, EngineError::Unavailable(_)) {
            self.forget();
            *self.probe.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), false));
        }
        sorted
    }
}

/// An error and its sources, so that "connection refused" is not hidden under
/// "client error (Connect)".
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_socket_is_unavailable_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::new(dir.path().join("docker.sock"));
        let started = Instant::now();
        let err = engine.client().await.expect_err("no engine");
        assert!(started.elapsed() < Duration::from_secs(1));
        match err {
            EngineError::Unavailable(why) => assert!(why.contains("no socket at"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(!engine.reachable().await);
    }

    #[tokio::test]
    async fn a_socket_nobody_listens_on_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("docker.sock");
        // Bound, then closed: the file stays, connections are refused.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        let engine = Engine::new(&path);
        let started = Instant::now();
        let err = engine.client().await.expect_err("no engine");
        assert!(started.elapsed() < Duration::from_secs(1));
        match err {
            EngineError::Unavailable(why) => {
                assert!(why.to_lowercase().contains("refused"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_socket_that_never_answers_times_out_within_a_second() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("docker.sock");
        // Accepts connections (the backlog) and never answers.
        let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let engine = Engine::new(&path);
        let started = Instant::now();
        let err = engine.client().await.expect_err("no engine");
        assert!(started.elapsed() < Duration::from_secs(1));
        match err {
            EngineError::Unavailable(why) => assert!(why.contains("no answer"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
