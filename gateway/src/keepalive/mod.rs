//! Lease keep-alive coalescing: every client keep-alive stream on this
//! gateway shares one upstream `LeaseKeepAlive` stream, and concurrent
//! keep-alives of the same lease become one upstream request whose answer
//! every asker receives.
//!
//! ```text
//!   client stream A ─ keep lease 7 ─┐
//!   client stream B ─ keep lease 7 ─┼─> hub: lease 7 in flight? join : send ─┐
//!   client stream C ─ keep lease 9 ─┘                                        v
//!                      one upstream LeaseKeepAlive stream (opened on first use)
//!   A, B <── response {ID 7, TTL} ──── hub <── responses by ID ──────────────┘
//! ```
//!
//! etcd answers a keep-alive with the lease's full TTL (0 for an unknown
//! lease) and echoes its ID, so one answer is the right answer for every
//! client that asked while it was in flight. A broken upstream stream fails
//! the waiting requests with the store's status (their client streams end,
//! clientv3 reopens them) and the next request opens a new stream.

pub(crate) mod hub;

use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use lookout_proto::pb::{LeaseKeepAliveRequest, LeaseKeepAliveResponse};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use hub::HubState;
pub(crate) use hub::KeepAliveHub;

use crate::shared::Shared;

/// How long a keep-alive waits for the store's answer before its client
/// stream ends with Unavailable (the client reopens it).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

impl KeepAliveHub {
    /// Keeps lease `id` alive once for this caller; the answer may be
    /// shared with other callers of the same lease.
    ///
    /// # Errors
    /// The store's status when the upstream stream broke, Unavailable when
    /// no answer came within the bound.
    pub(crate) async fn keep_alive(
        shared: &Arc<Shared>,
        id: i64,
    ) -> Result<LeaseKeepAliveResponse, Status> {
        let hub = &shared.keepalive;
        let m = &shared.metrics;
        m.keepalive_requests.fetch_add(1, Relaxed);
        let (tx, rx) = oneshot::channel();
        let send = {
            let mut st = hub.state.lock();
            let first = match st.waiting.entry(id) {
                Entry::Vacant(v) => {
                    v.insert(vec![tx]);
                    true
                }
                Entry::Occupied(mut o) => {
                    o.get_mut().push(tx);
                    false
                }
            };
            if first {
                Some(hub.sender(&mut st, shared))
            } else {
                m.keepalive_coalesced.fetch_add(1, Relaxed);
                None
            }
        };
        if let Some((up, generation)) = send {
            m.keepalive_upstream_requests.fetch_add(1, Relaxed);
            if up.send(LeaseKeepAliveRequest { id }).await.is_err() {
                hub.fail(generation, crate::error::keepalive_stream_closed());
            }
        }
        match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(crate::error::keepalive_stream_closed()),
            Err(_) => {
                // Leave the entry: the answer may still come and serve
                // others; this caller's closed sender is skipped then.
                Err(crate::error::keepalive_unanswered())
            }
        }
    }

    /// The upstream stream's sender, opening the stream if there is none.
    fn sender(
        &self,
        st: &mut HubState,
        shared: &Arc<Shared>,
    ) -> (mpsc::Sender<LeaseKeepAliveRequest>, u64) {
        if let Some(tx) = &st.tx {
            return (tx.clone(), st.generation);
        }
        st.generation += 1;
        let (tx, rx) = mpsc::channel(1024);
        st.tx = Some(tx.clone());
        let generation = st.generation;
        tokio::spawn(pump(shared.clone(), rx, generation));
        (tx, generation)
    }
}

/// Opens the upstream stream (its first request is already queued, as etcd
/// answers the headers with the first response) and hands every answer to
/// the clients waiting for that lease, until the stream ends.
async fn pump(shared: Arc<Shared>, rx: mpsc::Receiver<LeaseKeepAliveRequest>, generation: u64) {
    let hub = &shared.keepalive;
    let opened = tokio::select! {
        s = shared.cache.upstream().lease_keep_alive(rx) => s,
        _ = shared.stopping() => {
            hub.fail(generation, crate::error::GatewayError::ShuttingDown.into());
            return;
        }
    };
    let mut stream = match opened {
        Ok(s) => s,
        Err(st) => {
            hub.fail(generation, st);
            return;
        }
    };
    let m = &shared.metrics;
    m.keepalive_upstream_streams.fetch_add(1, Relaxed);
    m.keepalive_upstream_opened.fetch_add(1, Relaxed);
    let end = loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = shared.stopping() => break crate::error::GatewayError::ShuttingDown.into(),
        };
        match msg {
            Ok(Some(resp)) => hub.answer(resp),
            Ok(None) => {
                break crate::error::keepalive_ended_by_store();
            }
            Err(st) => break st,
        }
    };
    m.keepalive_upstream_streams.fetch_sub(1, Relaxed);
    hub.fail(generation, end);
}
