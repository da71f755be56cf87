//! Outputs and the fan-out that feeds them.
//!
//! Every output has its own task behind a bounded queue. The input offers each
//! packet to every queue without waiting: a full queue (a slow or unreachable
//! destination) drops the packet for that output alone and counts it, so no
//! output can hold up the input or the other outputs. Outputs can be added and
//! removed while the flow runs.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::config::{socket_addr, OutputConfig};
use super::socket::{self, BindError};
use super::stats::{OutputCounters, State};

/// Packets waiting for one output.
const QUEUE: usize = 1024;
/// Reconnect waits of a tcp output: doubling from the first to the last.
const TCP_BACKOFF_MIN: Duration = Duration::from_millis(250);
const TCP_BACKOFF_MAX: Duration = Duration::from_secs(5);
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The input's side of an output: its queue and counters.
#[derive(Debug)]
pub struct OutputPort {
    id: String,
    queue: mpsc::Sender<Bytes>,
    counters: Arc<OutputCounters>,
}

impl OutputPort {
    /// Queues `packet`, or drops it when the queue is full or the output gone.
    fn offer(&self, packet: Bytes) {
        if self.queue.try_send(packet).is_err() {
            self.counters.dropped(1);
        }
    }
}

/// The outputs a flow's input feeds, replaceable while it runs.
#[derive(Debug, Default)]
pub struct Fanout {
    ports: ArcSwap<Vec<Arc<OutputPort>>>,
}

impl Fanout {
    /// Offers `packet` to every output.
    pub fn send(&self, packet: Bytes) {
        for port in self.ports.load().iter() {
            port.offer(packet.clone());
        }
    }

    fn insert(&self, port: Arc<OutputPort>) {
        self.ports.rcu(|ports| {
            let mut next: Vec<_> = ports.iter().filter(|p| p.id != port.id).cloned().collect();
            next.push(port.clone());
            next
        });
    }

    fn remove(&self, id: &str) {
        self.ports.rcu(|ports| {
            ports
                .iter()
                .filter(|p| p.id != id)
                .cloned()
                .collect::<Vec<_>>()
        });
    }
}

/// A running output: its configuration, counters and task.
#[derive(Debug)]
pub struct RunningOutput {
    pub config: OutputConfig,
    pub counters: Arc<OutputCounters>,
    task: JoinHandle<()>,
}

impl RunningOutput {
    /// Starts `config` and connects it to `fanout`. UDP sockets are bound here,
    /// so a taken `bind_addr` is an error now rather than later.
    pub fn start(config: OutputConfig, fanout: &Fanout) -> Result<Self, BindError> {
        let counters = Arc::new(OutputCounters::default());
        let (tx, rx) = mpsc::channel(QUEUE);
        let dest = socket_addr(config.dest_addr(), "output.dest_addr").map_err(|e| BindError {
            code: "bind_failed",
            message: e.0,
        })?;
        let task = match &config {
            OutputConfig::Udp(d) | OutputConfig::Rtp(d) => {
                let bind = d.bind_addr.as_deref().and_then(|b| b.parse().ok());
                let interface = d
                    .interface_addr
                    .as_deref()
                    .and_then(|i| i.parse::<IpAddr>().ok());
                let sock = socket::udp_output(dest, bind, interface, d.dscp)?;
                counters.state.set(State::Running);
                tokio::spawn(run_datagram(sock, dest, rx, counters.clone()))
            }
            OutputConfig::Tcp(t) => {
                counters.state.set(State::Connecting);
                tokio::spawn(run_tcp(dest, t.dscp, rx, counters.clone()))
            }
        };
        fanout.insert(Arc::new(OutputPort {
            id: config.id().to_string(),
            queue: tx,
            counters: counters.clone(),
        }));
        Ok(RunningOutput {
            config,
            counters,
            task,
        })
    }

    /// Disconnects the output from `fanout` and waits until its task (and socket)
    /// is gone, so its address can be bound again at once.
    pub async fn stop(self, fanout: &Fanout) {
        fanout.remove(self.config.id());
        self.task.abort();
        let _ = self.task.await;
        self.counters.state.set(State::Stopped);
    }
}

async fn run_datagram(
    sock: tokio::net::UdpSocket,
    dest: SocketAddr,
    mut queue: mpsc::Receiver<Bytes>,
    counters: Arc<OutputCounters>,
) {
    while let Some(packet) = queue.recv().await {
        match sock.send_to(&packet, dest).await {
            Ok(n) => counters.sent(n),
            // An unreachable destination (ICMP) or a full send buffer: this packet is lost.
            Err(_) => counters.dropped(1),
        }
    }
}

async fn run_tcp(
    dest: SocketAddr,
    dscp: u8,
    mut queue: mpsc::Receiver<Bytes>,
    counters: Arc<OutputCounters>,
) {
    let mut backoff = TCP_BACKOFF_MIN;
    loop {
        counters.state.set(State::Connecting);
        let connected =
            tokio::time::timeout(TCP_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(dest)).await;
        let Ok(Ok(mut stream)) = connected else {
            // Packets queued while the destination is away are stale: drop them.
            if !wait_dropping(&mut queue, &counters, backoff).await {
                return;
            }
            backoff = (backoff * 2).min(TCP_BACKOFF_MAX);
            continue;
        };
        let _ = stream.set_nodelay(true);
        socket::mark(&socket2::SockRef::from(&stream), dest, dscp);
        counters.state.set(State::Connected);
        backoff = TCP_BACKOFF_MIN;
        loop {
            let Some(packet) = queue.recv().await else {
                return;
            };
            if stream.write_all(&packet).await.is_err() {
                counters.dropped(1);
                break;
            }
            counters.sent(packet.len());
        }
    }
}

/// Sleeps for `wait`, dropping (and counting) what arrives meanwhile; false
/// when the queue closed.
async fn wait_dropping(
    queue: &mut mpsc::Receiver<Bytes>,
    counters: &OutputCounters,
    wait: Duration,
) -> bool {
    let until = tokio::time::Instant::now() + wait;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(until) => return true,
            packet = queue.recv() => match packet {
                Some(_) => counters.dropped(1),
                None => return false,
            },
        }
    }
}
