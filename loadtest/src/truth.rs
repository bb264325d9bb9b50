//! The ground truth of a run: the store's own history of the prefix, read
//! back once at the end through the shared checker's history reader, tagged
//! the way the watchers tag what they receive.
//!
//! ```text
//!   truth endpoint (the store, not the front end under test)
//!     ──> lookout_testkit::checker::history::read_events(prefix, first..=last)
//!     ──> Truth { revisions, content digests } + writer seq -> revision
//! ```
//!
//! The truth endpoint is the store behind the target (etcd itself for a
//! grpc-proxy, the Lookout store for a Lookout gateway), so a front end that
//! drops an event cannot also hide it from the truth.

use std::collections::HashMap;
use std::time::Duration;

use lookout_proto::mvccpb::event::EventType;
use lookout_testkit::checker::Truth;
use lookout_testkit::checker::history::{self, HistoryQuery};

use crate::error::{LoadError, Result};
use crate::payload;
use crate::watch::WatchTarget;

/// The truth plus what the writer needs to resolve unknown puts.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub truth: Truth,
    /// Writer sequence number -> revision, for every put in the history.
    pub seq_rev: HashMap<u64, i64>,
    /// Where the truth came from, for the report.
    pub source: String,
}

/// Reads every event in `[from_rev, to_rev]` under `target` from `endpoint`.
///
/// # Errors
/// Connection or stream failures, a compacted history, or `timeout`.
pub async fn read_history(
    endpoint: &str,
    target: &WatchTarget,
    from_rev: i64,
    to_rev: i64,
    timeout: Duration,
) -> Result<History> {
    let mut events = Vec::new();
    let mut seq_rev = HashMap::new();
    if to_rev < from_rev {
        return Ok(History {
            truth: Truth::from_events(events),
            seq_rev,
            source: format!("store history at {endpoint} (empty)"),
        });
    }
    let q = HistoryQuery {
        key: target.key.clone(),
        range_end: target.range_end.clone(),
        from_rev,
        through: to_rev,
        prev_kv: false,
    };
    // The first of comma-separated endpoints, as every connection here.
    let first = endpoint.split(',').next().unwrap_or(endpoint);
    history::read_events(first, &q, timeout, |ev| {
        let Some(kv) = ev.kv else { return };
        let is_delete = ev.r#type == EventType::Delete as i32;
        if let Some(stamp) = payload::decode(&kv.value) {
            seq_rev.insert(stamp.seq, kv.mod_revision);
        }
        events.push((
            kv.mod_revision,
            payload::event_tag(is_delete, &kv.key, &kv.value),
        ));
    })
    .await
    .map_err(LoadError::History)?;
    let n = events.len();
    Ok(History {
        truth: Truth::from_events(events),
        seq_rev,
        source: format!("store history at {endpoint} ({n} events)"),
    })
}
