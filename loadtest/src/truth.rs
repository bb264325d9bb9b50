//! Reads the store's own history of the prefix back once at the end of a
//! run: the ground truth the watchers are judged against.
//!
//! ```text
//!   fresh connection to the truth endpoint (the store, not the gateway)
//!     ──> Watch(prefix, start = first revision) ──> events until `to_rev`
//!     ──> Truth { revisions, content digests } + seq -> revision
//! ```
//!
//! The truth endpoint is the store behind the target (etcd itself for a
//! grpc-proxy, the Lookout store for a Lookout gateway), so a front end that
//! drops an event cannot also hide it from the truth.

use std::collections::HashMap;
use std::time::Duration;

use lookout_proto::mvccpb::event::EventType;
use lookout_proto::pb;
use lookout_proto::pb::watch_request::RequestUnion;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::checker::{Truth, event_tag};
use crate::conn;
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
    let work = async {
        let ch = conn::connect(endpoint).await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(pb::WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(pb::WatchCreateRequest {
                key: target.key.clone(),
                range_end: target.range_end.clone(),
                start_revision: from_rev,
                ..Default::default()
            })),
        })
        .map_err(|_| LoadError::InvalidArgument("watch request channel closed".into()))?;
        let mut stream = conn::watch(&ch)
            .watch(UnboundedReceiverStream::new(rx))
            .await
            .map_err(|s| LoadError::rpc("history watch", s))?
            .into_inner();
        let mut last = from_rev - 1;
        while last < to_rev {
            let Some(resp) = stream
                .message()
                .await
                .map_err(|s| LoadError::rpc("history watch stream", s))?
            else {
                return Err(LoadError::InvalidArgument(
                    "the store closed the history watch".into(),
                ));
            };
            if resp.canceled {
                return Err(LoadError::InvalidArgument(format!(
                    "history watch cancelled (compact_revision {}, {})",
                    resp.compact_revision, resp.cancel_reason
                )));
            }
            for ev in resp.events {
                let Some(kv) = ev.kv else { continue };
                let is_delete = ev.r#type == EventType::Delete as i32;
                if let Some(stamp) = payload::decode(&kv.value) {
                    seq_rev.insert(stamp.seq, kv.mod_revision);
                }
                events.push((kv.mod_revision, event_tag(is_delete, &kv.key, &kv.value)));
                last = last.max(kv.mod_revision);
            }
        }
        drop(tx);
        Ok::<_, LoadError>(())
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| LoadError::Timeout {
            what: format!("reading the store history {from_rev}..={to_rev} from {endpoint}"),
            secs: timeout.as_secs_f64(),
        })??;
    let n = events.len();
    Ok(History {
        truth: Truth::from_events(events),
        seq_rev,
        source: format!("store history at {endpoint} ({n} events)"),
    })
}
