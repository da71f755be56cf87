//! TCP through a tunnel: each local connection becomes one QUIC stream opened by
//! the entry (header `{tunnel_id, stream_type:"tcp"}`), whose bytes travel as
//! `u32 BE length || sealed unit` chunks in both directions. A failure on either
//! side resets the other: the QUIC stream is reset and the TCP connection is closed
//! with RST, so no side mistakes a cut transfer for a finished one.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::stats::ActiveConnection;
use super::{Plan, TunnelShared};
use crate::crypto::{TunnelCipher, SEAL_OVERHEAD};
use crate::wire::{self, StreamHeader};
use crate::TunnelError;

/// Largest plaintext read from a local socket into one chunk.
const CHUNK: usize = 64 * 1024;
/// How long a new local connection waits for the tunnel to become ready.
const READY_WAIT: Duration = Duration::from_secs(5);

/// Accepts local connections at the entry and carries each through the tunnel.
pub(super) async fn entry(listener: TcpListener, plan: Plan, shared: Arc<TunnelShared>) {
    // Dropping the set when the tunnel stops aborts the connections in flight.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    connections.spawn(entry_connection(socket, plan.clone(), shared.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "tunnel listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn entry_connection(socket: TcpStream, plan: Plan, shared: Arc<TunnelShared>) {
    let _active = ActiveConnection::new(&shared.counters);
    let _ = socket.set_nodelay(true);
    let Some(connection) = ready_link(&shared).await else {
        tracing::debug!(tunnel_id = %plan.tunnel_id, "tunnel not ready; local connection refused");
        shared.error();
        abort_tcp(socket);
        return;
    };
    let opened = async {
        let (mut send, recv) = connection.open_bi().await?;
        wire::write_json(&mut send, &StreamHeader::tcp(plan.tunnel_id)).await?;
        Ok::<_, TunnelError>((send, recv))
    };
    match opened.await {
        Ok((send, recv)) => carry(socket, send, recv, &plan.cipher, &shared).await,
        Err(e) => {
            tracing::debug!(error = %e, "cannot open a tunnel stream");
            shared.error();
            abort_tcp(socket);
        }
    }
}

/// The link once the tunnel is ready, waiting a little for it.
async fn ready_link(shared: &TunnelShared) -> Option<quinn::Connection> {
    let mut link = shared.link.subscribe();
    let ready = tokio::time::timeout(READY_WAIT, link.wait_for(|l| l.is_some())).await;
    match ready {
        Ok(Ok(conn)) => conn.clone(),
        _ => None,
    }
}

/// Serves a stream the entry opened: connects to the exit's target and carries it.
pub(super) async fn exit_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    target: String,
    plan: Plan,
    shared: Arc<TunnelShared>,
) {
    let header = wire::read_stream_header(&mut recv).await;
    match header {
        Ok(h) if h.tunnel_id == plan.tunnel_id => {}
        other => {
            tracing::debug!(?other, "tunnel stream with a bad header");
            shared.error();
            reset(&mut send, &mut recv);
            return;
        }
    }
    let _active = ActiveConnection::new(&shared.counters);
    match TcpStream::connect(&target).await {
        Ok(socket) => {
            let _ = socket.set_nodelay(true);
            carry(socket, send, recv, &plan.cipher, &shared).await;
        }
        Err(e) => {
            tracing::info!(target, error = %e, "tunnel target refused");
            shared.problem("target_refused", || {
                format!("the target {target} refused a connection: {e}")
            });
            reset(&mut send, &mut recv);
        }
    }
}

/// Pumps a local socket and a tunnel stream into each other until both finish;
/// on any failure both are torn down.
async fn carry(
    socket: TcpStream,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    cipher: &TunnelCipher,
    shared: &TunnelShared,
) {
    let (mut local_read, mut local_write) = socket.into_split();
    let outcome = {
        let out = seal_pump(&mut local_read, &mut send, cipher, shared);
        let back = open_pump(&mut recv, &mut local_write, cipher, shared);
        tokio::try_join!(out, back)
    };
    if let Err(e) = outcome {
        tracing::debug!(error = %e, "tunnel TCP stream failed");
        shared.error();
        reset(&mut send, &mut recv);
        if let Ok(socket) = local_read.reunite(local_write) {
            abort_tcp(socket);
        }
    }
}

/// Local bytes → sealed chunks, then a finished stream at local EOF.
async fn seal_pump<R: AsyncRead + Unpin>(
    local: &mut R,
    send: &mut quinn::SendStream,
    cipher: &TunnelCipher,
    shared: &TunnelShared,
) -> Result<(), TunnelError> {
    let mut plain = vec![0u8; CHUNK];
    let mut chunk = Vec::with_capacity(4 + CHUNK + SEAL_OVERHEAD);
    loop {
        let n = local.read(&mut plain).await?;
        if n == 0 {
            let _ = send.finish();
            return Ok(());
        }
        chunk.clear();
        chunk.extend_from_slice(&[0; 4]);
        cipher.seal_into(&plain[..n], &mut chunk)?;
        let len = wire::frame_len(chunk.len() - 4)?;
        chunk[..4].copy_from_slice(&len);
        send.write_all(&chunk).await?;
        TunnelShared::add(&shared.counters.bytes_sent, n as u64);
        TunnelShared::add(&shared.counters.packets_sent, 1);
    }
}

/// Sealed chunks → local bytes, then a half-closed socket at the stream's end.
async fn open_pump<W: AsyncWrite + Unpin>(
    recv: &mut quinn::RecvStream,
    local: &mut W,
    cipher: &TunnelCipher,
    shared: &TunnelShared,
) -> Result<(), TunnelError> {
    let mut unit = Vec::with_capacity(CHUNK + SEAL_OVERHEAD);
    while read_chunk(recv, &mut unit).await? {
        let plain = cipher.open_in_place(&mut unit)?;
        local.write_all(plain).await?;
        TunnelShared::add(&shared.counters.bytes_received, plain.len() as u64);
        TunnelShared::add(&shared.counters.packets_received, 1);
    }
    local.shutdown().await?;
    Ok(())
}

/// Reads the next chunk's sealed unit into `unit`; false at the stream's end.
async fn read_chunk(recv: &mut quinn::RecvStream, unit: &mut Vec<u8>) -> Result<bool, TunnelError> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(false),
        Err(quinn::ReadExactError::FinishedEarly(_)) => {
            return Err(TunnelError::Protocol(
                "stream ended inside a chunk length".into(),
            ))
        }
        Err(quinn::ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > wire::MAX_FRAME {
        return Err(TunnelError::FrameTooLarge(len));
    }
    unit.resize(len, 0);
    recv.read_exact(unit).await.map_err(|e| match e {
        quinn::ReadExactError::ReadError(e) => TunnelError::from(e),
        quinn::ReadExactError::FinishedEarly(_) => {
            TunnelError::Protocol("stream ended inside a chunk".into())
        }
    })?;
    Ok(true)
}

fn reset(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream) {
    let code = quinn::VarInt::from_u32(1);
    let _ = send.reset(code);
    let _ = recv.stop(code);
}

/// Closes a local connection with RST, so its peer sees a failure, not an end.
fn abort_tcp(socket: TcpStream) {
    let _ = socket.set_zero_linger();
    drop(socket);
}
