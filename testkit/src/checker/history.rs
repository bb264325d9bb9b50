//! Reading the store's own history back: the ground truth every watcher is
//! judged against, for the tests ([`StoreHistory`], whole events) and for
//! the load generator (any caller of [`read_events`], its own tags).
//!
//! ```text
//!   fresh connection to the store (never the front end under test)
//!     ──> [Range at base]  state of the keyspace at the base revision
//!     ──> Watch(key..range_end, from, prev_kv?) ──> every event until `through`
//! ```
//!
//! Reading from the store behind the front end means a front end that
//! drops an event cannot also hide it from the truth.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use lookout_proto::mvccpb::{Event, KeyValue, event::EventType};
use lookout_proto::pb::{
    RangeRequest, WatchCreateRequest, WatchRequest, kv_client::KvClient, watch_client::WatchClient,
    watch_request,
};
use tonic::transport::{Channel, Endpoint};

use super::spec::{WatchSpec, in_range, rev_of};
use crate::error::TestkitError;

/// Which events to read back.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub key: Bytes,
    /// etcd's range end ("\0" with key "\0": every key).
    pub range_end: Bytes,
    /// First revision read.
    pub from_rev: i64,
    /// Reading stops once an event at or above this revision arrived.
    pub through: i64,
    pub prev_kv: bool,
}

/// A plaintext connection to `endpoint` ("host:port" or "http://host:port")
/// with windows large enough for long histories.
///
/// # Errors
/// [`TestkitError::Endpoint`] or [`TestkitError::Connect`].
pub async fn connect(endpoint: &str) -> Result<Channel, TestkitError> {
    let e = endpoint.trim();
    let uri = if e.starts_with("http://") {
        e.to_string()
    } else {
        format!("http://{e}")
    };
    Endpoint::from_shared(uri)
        .map_err(|source| TestkitError::Endpoint {
            endpoint: e.into(),
            source,
        })?
        .connect_timeout(Duration::from_secs(5))
        .initial_stream_window_size(Some(1 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .connect()
        .await
        .map_err(|source| TestkitError::Connect {
            endpoint: e.into(),
            source,
        })
}

/// Streams every event of `q` from `ch` into `on_event`, in the store's
/// order, until one at or above `q.through` arrived.
///
/// # Errors
/// The watch failed, was cancelled (compacted history), or ended early.
pub async fn stream_events(
    ch: &Channel,
    q: &HistoryQuery,
    mut on_event: impl FnMut(Event),
) -> Result<(), TestkitError> {
    if q.through < q.from_rev {
        return Ok(());
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    // Queued before the call: some servers answer nothing until the first
    // message arrives.
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: q.key.clone(),
                range_end: q.range_end.clone(),
                start_revision: q.from_rev,
                prev_kv: q.prev_kv,
                ..Default::default()
            },
        )),
    };
    let _ = tx.send(create);
    let mut stream = WatchClient::new(ch.clone())
        .max_decoding_message_size(usize::MAX)
        .watch(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .map_err(|status| TestkitError::Rpc {
            what: "history watch",
            status,
        })?
        .into_inner();
    let mut last = q.from_rev - 1;
    while last < q.through {
        let resp = stream
            .message()
            .await
            .map_err(|status| TestkitError::Rpc {
                what: "history watch stream",
                status,
            })?
            .ok_or(TestkitError::Closed { through: q.through })?;
        if resp.canceled || resp.compact_revision != 0 {
            return Err(TestkitError::Compacted {
                from: q.from_rev,
                compact_revision: resp.compact_revision,
                reason: resp.cancel_reason,
            });
        }
        for ev in resp.events {
            last = last.max(rev_of(&ev));
            on_event(ev);
        }
    }
    drop(tx);
    Ok(())
}

/// [`connect`] to `endpoint` and [`stream_events`], all within `timeout`.
///
/// # Errors
/// As those two, or [`TestkitError::Timeout`].
pub async fn read_events(
    endpoint: &str,
    q: &HistoryQuery,
    timeout: Duration,
    on_event: impl FnMut(Event),
) -> Result<(), TestkitError> {
    let work = async {
        let ch = connect(endpoint).await?;
        stream_events(&ch, q, on_event).await
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| TestkitError::Timeout {
            what: format!(
                "reading the store history {}..={} from {endpoint}",
                q.from_rev, q.through
            ),
            secs: timeout.as_secs_f64(),
        })?
}

/// Every event the store committed after `base_rev`, with `prev_kv`, and the
/// state at `base_rev`.
#[derive(Debug, Clone, Default)]
pub struct StoreHistory {
    base_rev: i64,
    base: BTreeMap<Bytes, KeyValue>,
    events: Vec<Event>,
}

impl StoreHistory {
    /// A history starting from `base` (the whole keyspace at `base_rev`).
    pub fn new(base_rev: i64, base: Vec<KeyValue>) -> Self {
        Self {
            base_rev,
            base: base.into_iter().map(|kv| (kv.key.clone(), kv)).collect(),
            events: Vec::new(),
        }
    }

    /// Appends the store's next event (ascending revisions, with prev_kv).
    pub fn push(&mut self, ev: Event) {
        assert!(rev_of(&ev) > self.base_rev, "event below the base revision");
        if let Some(last) = self.events.last() {
            assert!(rev_of(&ev) >= rev_of(last), "history out of order");
        }
        self.events.push(ev);
    }

    pub fn base_revision(&self) -> i64 {
        self.base_rev
    }

    /// Newest revision recorded.
    pub fn last_revision(&self) -> i64 {
        self.events.last().map_or(self.base_rev, rev_of)
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Reads the history straight from an etcd v3 endpoint: all keys at
    /// `base_rev` and every event after it up to `through` (which must exist
    /// and not be compacted), within `timeout`.
    ///
    /// # Panics
    /// When the store cannot be read in time (this is for tests).
    pub async fn fetch(endpoint: &str, base_rev: i64, through: i64, timeout: Duration) -> Self {
        tokio::time::timeout(timeout, Self::fetch_inner(endpoint, base_rev, through))
            .await
            .unwrap_or_else(|_| panic!("fetching store history {base_rev}..={through} timed out"))
            .unwrap_or_else(|e| panic!("fetching store history {base_rev}..={through}: {e}"))
    }

    async fn fetch_inner(
        endpoint: &str,
        base_rev: i64,
        through: i64,
    ) -> Result<Self, TestkitError> {
        let ch = connect(endpoint).await?;
        let base = if base_rev > 0 {
            KvClient::new(ch.clone())
                .max_decoding_message_size(usize::MAX)
                .range(RangeRequest {
                    key: Bytes::from_static(&[0]),
                    range_end: Bytes::from_static(&[0]),
                    revision: base_rev,
                    ..Default::default()
                })
                .await
                .map_err(|status| TestkitError::Rpc {
                    what: "range at the base revision",
                    status,
                })?
                .into_inner()
                .kvs
        } else {
            Vec::new()
        };
        let mut h = Self::new(base_rev, base);
        let q = HistoryQuery {
            key: Bytes::from_static(&[0]),
            range_end: Bytes::from_static(&[0]),
            from_rev: base_rev + 1,
            through,
            prev_kv: true,
        };
        stream_events(&ch, &q, |ev| h.push(ev)).await?;
        Ok(h)
    }

    /// The keyspace at `rev` (restricted to `[key, range_end)`).
    pub fn state_at(&self, rev: i64, key: &[u8], range_end: &[u8]) -> BTreeMap<Bytes, KeyValue> {
        assert!(
            rev >= self.base_rev,
            "revision {rev} below the history base {}",
            self.base_rev
        );
        let mut state = self.base.clone();
        for ev in self.events.iter().take_while(|e| rev_of(e) <= rev) {
            apply(&mut state, ev);
        }
        state.retain(|k, _| in_range(key, range_end, k));
        state
    }

    /// The events a watcher with `spec` must get from `start` up to `through`.
    pub(super) fn expected(&self, spec: &WatchSpec, start: i64, through: i64) -> Vec<&Event> {
        assert!(
            start > self.base_rev,
            "watcher starts at {start}, history only from {}",
            self.base_rev + 1
        );
        self.events
            .iter()
            .filter(|e| rev_of(e) >= start && rev_of(e) <= through && spec.wants(e))
            .collect()
    }
}

/// Applies one event to a keyspace.
pub(super) fn apply(state: &mut BTreeMap<Bytes, KeyValue>, ev: &Event) {
    let Some(kv) = &ev.kv else { return };
    if ev.r#type == EventType::Delete as i32 {
        state.remove(&kv.key);
    } else {
        state.insert(kv.key.clone(), kv.clone());
    }
}
