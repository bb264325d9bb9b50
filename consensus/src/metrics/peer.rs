//! Traffic with the other members (`etcd_network_peer_*`,
//! `etcd_network_active_peers`, `etcd_network_disconnected_peers_total`),
//! labelled by member ID as etcd labels it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use super::{Histogram, RTT_SECONDS, header, sample};

/// Traffic with one other member.
#[derive(Debug)]
pub struct PeerStats {
    pub sent_bytes: AtomicU64,
    pub received_bytes: AtomicU64,
    /// Messages to the peer that got no answer (unreachable, timeout).
    pub sent_failures: AtomicU64,
    /// Messages from the peer that could not be read.
    pub received_failures: AtomicU64,
    /// Round trips of heartbeats (appends without entries: no disk work
    /// on the follower, so this is the network and raft's own handling).
    pub rtt: Histogram,
    /// Whether the last message to the peer was answered.
    pub active: AtomicBool,
    /// Times `active` went from answered to unanswered.
    pub disconnects: AtomicU64,
    /// Whether this member ever talked to the peer (only then does it
    /// appear with `To` labels, as in etcd).
    pub talked_to: AtomicBool,
}

impl Default for PeerStats {
    fn default() -> Self {
        Self {
            sent_bytes: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            sent_failures: AtomicU64::new(0),
            received_failures: AtomicU64::new(0),
            rtt: Histogram::new(RTT_SECONDS),
            active: AtomicBool::new(false),
            disconnects: AtomicU64::new(0),
            talked_to: AtomicBool::new(false),
        }
    }
}

impl PeerStats {
    /// Bytes exchanged on the serving side: a request of `received` bytes
    /// from the peer, answered with `sent` bytes.
    pub fn served(&self, received: usize, sent: usize) {
        self.talked_to.store(true, Relaxed);
        self.received_bytes.fetch_add(received as u64, Relaxed);
        self.sent_bytes.fetch_add(sent as u64, Relaxed);
    }

    /// A message of `sent` bytes was answered with `received` bytes.
    pub fn answered(&self, sent: usize, received: usize) {
        self.talked_to.store(true, Relaxed);
        self.sent_bytes.fetch_add(sent as u64, Relaxed);
        self.received_bytes.fetch_add(received as u64, Relaxed);
        self.active.store(true, Relaxed);
    }

    /// A message of `sent` bytes got no answer.
    pub fn failed(&self, sent: usize) {
        self.talked_to.store(true, Relaxed);
        self.sent_bytes.fetch_add(sent as u64, Relaxed);
        self.sent_failures.fetch_add(1, Relaxed);
        if self.active.swap(false, Relaxed) {
            self.disconnects.fetch_add(1, Relaxed);
        }
    }
}

/// Per-peer traffic; member 0 stands for a sender this member cannot
/// name (a forwarded client request), as etcd's `From="0"`.
#[derive(Debug, Default)]
pub struct PeerMetrics {
    // parking_lot Mutex: one lookup per peer connection or per inbound
    // message, never held across an await.
    peers: parking_lot::Mutex<BTreeMap<u64, Arc<PeerStats>>>,
    /// Leader heartbeats (appends without entries) a follower did not
    /// answer (`etcd_server_heartbeat_send_failures_total`).
    pub heartbeat_failures: AtomicU64,
}

impl PeerMetrics {
    /// The stats of member `id` (created on first use).
    pub fn peer(&self, id: u64) -> Arc<PeerStats> {
        self.peers.lock().entry(id).or_default().clone()
    }

    /// `bytes` received from member `from` (0: unknown sender).
    pub fn received(&self, from: u64, bytes: usize) {
        self.peer(from)
            .received_bytes
            .fetch_add(bytes as u64, Relaxed);
    }

    fn all(&self) -> Vec<(u64, Arc<PeerStats>)> {
        self.peers
            .lock()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    pub(super) fn render(&self, out: &mut String, local: u64) {
        let peers = self.all();
        let id = |i: u64| format!("{i:x}");
        let to: Vec<_> = peers
            .iter()
            .filter(|(i, p)| *i != 0 && p.talked_to.load(Relaxed))
            .collect();
        header(
            out,
            "etcd_network_active_peers",
            "gauge",
            "The current number of active peer connections.",
        );
        for (i, p) in &to {
            let labels = format!("Local=\"{}\",Remote=\"{}\"", id(local), id(*i));
            sample(
                out,
                "etcd_network_active_peers",
                &labels,
                f64::from(u8::from(p.active.load(Relaxed))),
            );
        }
        header(
            out,
            "etcd_network_disconnected_peers_total",
            "counter",
            "The total number of disconnected peers.",
        );
        for (i, p) in &to {
            let labels = format!("Local=\"{}\",Remote=\"{}\"", id(local), id(*i));
            let n = p.disconnects.load(Relaxed) as f64;
            sample(out, "etcd_network_disconnected_peers_total", &labels, n);
        }
        header(
            out,
            "etcd_network_peer_sent_bytes_total",
            "counter",
            "The total number of bytes sent to peers.",
        );
        for (i, p) in &to {
            let n = p.sent_bytes.load(Relaxed) as f64;
            sample(
                out,
                "etcd_network_peer_sent_bytes_total",
                &format!("To=\"{}\"", id(*i)),
                n,
            );
        }
        header(
            out,
            "etcd_network_peer_received_bytes_total",
            "counter",
            "The total number of bytes received from peers.",
        );
        for (i, p) in &peers {
            let n = p.received_bytes.load(Relaxed);
            if n > 0 || (*i != 0 && p.talked_to.load(Relaxed)) {
                let l = format!("From=\"{}\"", id(*i));
                sample(out, "etcd_network_peer_received_bytes_total", &l, n as f64);
            }
        }
        header(
            out,
            "etcd_network_peer_sent_failures_total",
            "counter",
            "The total number of send failures from peers.",
        );
        for (i, p) in &to {
            let l = format!("To=\"{}\"", id(*i));
            let n = p.sent_failures.load(Relaxed) as f64;
            sample(out, "etcd_network_peer_sent_failures_total", &l, n);
        }
        header(
            out,
            "etcd_network_peer_received_failures_total",
            "counter",
            "The total number of receive failures from peers.",
        );
        for (i, p) in peers.iter().filter(|(i, _)| *i != 0) {
            let n = p.received_failures.load(Relaxed);
            if n > 0 || p.talked_to.load(Relaxed) {
                let l = format!("From=\"{}\"", id(*i));
                sample(
                    out,
                    "etcd_network_peer_received_failures_total",
                    &l,
                    n as f64,
                );
            }
        }
        header(
            out,
            "etcd_network_peer_round_trip_time_seconds",
            "histogram",
            "Round-Trip-Time histogram between peers",
        );
        for (i, p) in &to {
            let l = format!("To=\"{}\"", id(*i));
            p.rtt
                .render(out, "etcd_network_peer_round_trip_time_seconds", &l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_appear_once_talked_to() {
        let p = PeerMetrics::default();
        p.received(0, 10);
        p.peer(0xab).answered(100, 20);
        p.peer(0xcd).failed(50);
        let mut o = String::new();
        p.render(&mut o, 1);
        assert!(
            o.contains("etcd_network_peer_sent_bytes_total{To=\"ab\"} 100\n"),
            "{o}"
        );
        assert!(o.contains("etcd_network_peer_received_bytes_total{From=\"0\"} 10\n"));
        assert!(o.contains("etcd_network_peer_sent_failures_total{To=\"cd\"} 1\n"));
        assert!(o.contains("etcd_network_active_peers{Local=\"1\",Remote=\"ab\"} 1\n"));
        assert!(o.contains("etcd_network_active_peers{Local=\"1\",Remote=\"cd\"} 0\n"));
        assert!(!o.contains("To=\"0\""));
    }
}
