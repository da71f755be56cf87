//! The node listener: TLS on its own address (`manager.node_listen`, default
//! `0.0.0.0:3443`) serving only `/ws/node`; the API and `/ws/dashboard` stay on the
//! API listener. A TLS handshake must finish within 10 s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::error::ApiError;
use crate::AppState;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn router(state: AppState) -> Router {
    Router::new()
        .route("/ws/node", get(super::session::upgrade))
        .fallback(|| async {
            ApiError::not_found("this is the node listener: only /ws/node; the API")
        })
        .with_state(state)
}

/// Serves `/ws/node` on `listener` with the hub's certificate until `shutdown`
/// becomes true; then every node session is closed.
pub async fn serve(listener: TcpListener, state: AppState, mut shutdown: watch::Receiver<bool>) {
    let Some(tls) = state.nodes.tls.get().cloned() else {
        tracing::error!("the node listener has no certificate; not serving");
        return;
    };
    let encoder = super::spawn_snapshot_encoder(state.clone(), shutdown.clone());
    let seen_writer = super::seen::spawn_writer(state.clone(), shutdown.clone());
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
    let app = router(state.clone());
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "node listener accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                conns.spawn(connection(acceptor.clone(), stream, peer, app.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            () = async { let _ = shutdown.wait_for(|down| *down).await; } => break,
        }
    }
    drop(listener);
    let _ = state.nodes.closing.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
    let _ = encoder.await;
    let _ = seen_writer.await;
    // What the closed sessions recorded last.
    state.nodes.seen.flush(&state).await;
}

async fn connection(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "node listener TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "node listener TLS handshake timed out");
            return;
        }
    };
    let service = TowerToHyperService::new(app.layer(Extension(ConnectInfo(peer))));
    let builder = auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(tls), service)
        .await
    {
        tracing::debug!(%peer, error = %e, "node listener connection ended with an error");
    }
}

/// Binds nothing: starts serving an already bound listener in a task.
pub fn spawn(
    listener: TcpListener,
    state: AppState,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(serve(listener, state, shutdown))
}

/// The hub's certificate, loaded or generated; installed once.
pub fn install_tls(state: &AppState, tls: super::tls::NodeTls) -> Arc<super::tls::NodeTls> {
    let tls = Arc::new(tls);
    let _ = state.nodes.tls.set(tls.clone());
    tls
}
