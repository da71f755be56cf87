//! Fleetgate's HTTP gateway. It serves from the latest configuration snapshot it
//! was handed on a watch channel — the built-in gateway of `fleetgate serve` gets
//! it in-process, an edge node will get the same snapshots over `/ws/node` — and
//! never touches the store or waits on the manager.
//!
//! Routing arrives with the gateway issue; until then every request is answered
//! with a JSON 404 naming what was asked for.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fleetgate_core::ConfigSnapshot;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The gateway's view of the configuration: always the latest snapshot.
#[derive(Clone)]
pub struct Gateway {
    snapshots: watch::Receiver<Arc<ConfigSnapshot>>,
}

impl Gateway {
    pub fn new(snapshots: watch::Receiver<Arc<ConfigSnapshot>>) -> Self {
        Self { snapshots }
    }

    /// The revision currently served.
    pub fn revision(&self) -> u64 {
        self.snapshots.borrow().revision
    }

    /// Answers one request from the current snapshot.
    pub fn handle<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let revision = self.revision();
        let body = format!(
            "{{\"error\":\"no route matches {} {}\",\"code\":\"ROUTE_NOT_FOUND\",\"details\":{{\"revision\":{revision}}}}}",
            json_escape(req.method().as_str()),
            json_escape(req.uri().path()),
        );
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = StatusCode::NOT_FOUND;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(id) = req.headers().get("x-request-id") {
            resp.headers_mut().insert("x-request-id", id.clone());
        }
        resp
    }

    /// Accepts connections until `shutdown` resolves, then lets open connections
    /// finish their in-flight requests for up to `drain`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        drain: Duration,
    ) -> std::io::Result<()> {
        let mut conns = JoinSet::new();
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "gateway accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    conns.spawn(self.clone().connection(stream, peer, stop_rx.clone()));
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        let _ = stop_tx.send(true);
        let drained =
            tokio::time::timeout(drain, async { while conns.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                remaining = conns.len(),
                "gateway drain timed out; closing connections"
            );
            conns.abort_all();
        }
        Ok(())
    }

    async fn connection(
        self,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        mut stop: watch::Receiver<bool>,
    ) {
        let gw = self.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let resp = gw.handle(&req);
            async move { Ok::<_, Infallible>(resp) }
        });
        let builder = auto::Builder::new(TokioExecutor::new());
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        tokio::pin!(conn);
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, error = %e, "gateway connection ended with an error");
                }
            }
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_404_json_with_the_revision() {
        let (tx, rx) = watch::channel(Arc::new(ConfigSnapshot::default()));
        let gw = Gateway::new(rx);
        let req = Request::get("/a\"b")
            .header("x-request-id", "r1")
            .body(())
            .expect("request");
        let resp = gw.handle(&req);
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()["x-request-id"], "r1");
        tx.send_replace(Arc::new(ConfigSnapshot {
            revision: 7,
            ..Default::default()
        }));
        assert_eq!(gw.revision(), 7);
    }
}
