//! The keep-alive hub's state: the one upstream stream's sender and who
//! waits for which lease. [`crate::shared::Shared`] holds it; the stream
//! logic that needs the rest of the shared state lives in the parent.

use std::collections::HashMap;

use lookout_proto::pb::{LeaseKeepAliveRequest, LeaseKeepAliveResponse};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

pub(super) type Waiter = oneshot::Sender<Result<LeaseKeepAliveResponse, Status>>;

/// The gateway's one upstream keep-alive stream and the requests in flight.
#[derive(Debug, Default)]
pub(crate) struct KeepAliveHub {
    /// A blocking mutex: held to look up or register a lease's waiters and to
    /// take the sender, never across an await.
    pub(super) state: parking_lot::Mutex<HubState>,
}

#[derive(Debug, Default)]
pub(super) struct HubState {
    /// Requests to the open upstream stream; `None` until first use and
    /// after the stream broke.
    pub(super) tx: Option<mpsc::Sender<LeaseKeepAliveRequest>>,
    /// Which stream `tx` feeds, so a dead stream's pump cannot clear a
    /// newer one.
    pub(super) generation: u64,
    /// Lease id -> clients waiting for the answer to the request in flight.
    pub(super) waiting: HashMap<i64, Vec<Waiter>>,
}

impl KeepAliveHub {
    /// Fails every waiter and forgets stream `generation` (if current).
    pub(super) fn fail(&self, generation: u64, status: Status) {
        let waiters: Vec<Waiter> = {
            let mut st = self.state.lock();
            if st.generation != generation {
                return;
            }
            st.tx = None;
            st.waiting.drain().flat_map(|(_, w)| w).collect()
        };
        for w in waiters {
            let _ = w.send(Err(status.clone()));
        }
    }

    pub(super) fn answer(&self, resp: LeaseKeepAliveResponse) {
        let waiters = {
            let mut st = self.state.lock();
            st.waiting.remove(&resp.id).unwrap_or_default()
        };
        for w in waiters {
            let _ = w.send(Ok(resp));
        }
    }
}
