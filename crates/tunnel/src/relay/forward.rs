//! The relay's data path: a TCP stream from one end is answered by a new stream to
//! the other end carrying the same header, and bytes are copied both ways as they
//! come; datagrams are routed on their 16-byte tunnel id and passed on whole.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::state::{Route, Shared};
use crate::wire::{self, split_datagram};
use crate::TunnelError;

/// How long an edge may take to send a data stream's header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest chunk taken from a stream at a time.
const COPY_CHUNK: usize = 256 * 1024;

/// Forwards one data stream opened by `conn_id`; resets both sides on any failure
/// or when the tunnel is closed.
pub(super) async fn stream(
    shared: Arc<Shared>,
    conn_id: u64,
    mut send_a: quinn::SendStream,
    mut recv_a: quinn::RecvStream,
) {
    let header =
        match tokio::time::timeout(HEADER_TIMEOUT, wire::read_stream_header(&mut recv_a)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => return refuse(send_a, recv_a, &e.to_string()),
            Err(_) => return refuse(send_a, recv_a, "no stream header in time"),
        };
    let Some(route) = shared.route(header.tunnel_id, conn_id) else {
        return refuse(send_a, recv_a, "tunnel not ready");
    };
    let Route {
        peer,
        mut closed,
        bytes_forwarded,
    } = route;
    let (mut send_b, mut recv_b) = match open_to_peer(&peer, &header).await {
        Ok(s) => s,
        Err(e) => return refuse(send_a, recv_a, &e.to_string()),
    };
    let counters = &shared.counters;
    counters.tcp_streams_total.fetch_add(1, Ordering::Relaxed);
    counters.tcp_streams_active.fetch_add(1, Ordering::Relaxed);
    let outcome = {
        let forth = copy(&shared, &bytes_forwarded, &mut recv_a, &mut send_b);
        let back = copy(&shared, &bytes_forwarded, &mut recv_b, &mut send_a);
        tokio::select! {
            r = async { tokio::try_join!(forth, back) } => r.map(|_| ()),
            _ = closed.wait_for(|c| *c) => Err(TunnelError::Refused("tunnel closed".into())),
        }
    };
    counters.tcp_streams_active.fetch_sub(1, Ordering::Relaxed);
    if let Err(e) = outcome {
        tracing::debug!(tunnel_id = %header.tunnel_id, error = %e, "relay stream cut");
        let code = quinn::VarInt::from_u32(1);
        let _ = send_a.reset(code);
        let _ = send_b.reset(code);
        let _ = recv_a.stop(code);
        let _ = recv_b.stop(code);
    }
}

async fn open_to_peer(
    peer: &quinn::Connection,
    header: &wire::StreamHeader,
) -> Result<(quinn::SendStream, quinn::RecvStream), TunnelError> {
    let (mut send, recv) = peer.open_bi().await?;
    wire::write_json(&mut send, header).await?;
    Ok((send, recv))
}

fn refuse(mut send: quinn::SendStream, mut recv: quinn::RecvStream, why: &str) {
    tracing::debug!(why, "relay refused a data stream");
    let _ = send.reset(quinn::VarInt::from_u32(1));
    let _ = recv.stop(quinn::VarInt::from_u32(1));
}

/// Copies until the source finishes, then finishes the sink.
async fn copy(
    shared: &Shared,
    per_tunnel: &AtomicU64,
    from: &mut quinn::RecvStream,
    to: &mut quinn::SendStream,
) -> Result<(), TunnelError> {
    // Chunks move from one stream to the other without being copied.
    while let Some(chunk) = from.read_chunk(COPY_CHUNK, true).await? {
        let n = chunk.bytes.len();
        count_in(shared, n);
        if let Some(observe) = &shared.observer {
            observe(&chunk.bytes);
        }
        to.write_chunk(chunk.bytes).await?;
        count_out(shared, per_tunnel, n);
    }
    // Finishing an already reset stream is not an error worth reporting.
    let _ = to.finish();
    Ok(())
}

fn count_in(shared: &Shared, n: usize) {
    shared
        .counters
        .bytes_ingress
        .fetch_add(n as u64, Ordering::Relaxed);
}

fn count_out(shared: &Shared, per_tunnel: &AtomicU64, n: usize) {
    let c = &shared.counters;
    c.bytes_egress.fetch_add(n as u64, Ordering::Relaxed);
    c.bytes_forwarded.fetch_add(n as u64, Ordering::Relaxed);
    per_tunnel.fetch_add(n as u64, Ordering::Relaxed);
}

/// Routes the datagrams arriving on `conn_id` until the connection ends.
pub(super) async fn datagrams(
    shared: &Shared,
    conn_id: u64,
    connection: &quinn::Connection,
) -> Result<(), TunnelError> {
    loop {
        let datagram = connection.read_datagram().await?;
        count_in(shared, datagram.len());
        shared
            .counters
            .udp_datagrams
            .fetch_add(1, Ordering::Relaxed);
        let route = split_datagram(&datagram).and_then(|(id, _)| shared.route(id, conn_id));
        let Some(route) = route else {
            shared.counters.udp_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if let Some(observe) = &shared.observer {
            observe(&datagram);
        }
        let len = datagram.len();
        match route.peer.send_datagram(datagram) {
            Ok(()) => count_out(shared, &route.bytes_forwarded, len),
            Err(e) => {
                tracing::debug!(error = %e, "relay dropped a datagram");
                shared.counters.udp_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
