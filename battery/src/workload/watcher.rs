//! A watcher that survives anything: on a broken stream it resumes on the
//! next server from its last event + 1; cancelled with a compaction, it
//! relists (a linearizable read, checked like any other) and watches from
//! the list's revision + 1. Every response is recorded with its arrival
//! time, as one segment per stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use lookout_proto::pb::{
    WatchCreateRequest, WatchProgressRequest, WatchRequest, watch_client::WatchClient,
    watch_create_request, watch_request,
};
use lookout_testkit::kv_history::{Ev, SourceLog};
use lookout_testkit::kv_linearizability::{Op, Outcome, Request};
use lookout_testkit::watch_check::{
    Segment, SegmentEnd, WatchFilter, WatchResponse, WatcherHistory,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{OP_TIMEOUT, Stop, backoff, pause_or_stop};
use crate::client::{Clock, Pool, exec};

/// Longest wait for a stream to open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// A stream silent this long (no event, no progress despite asking every
/// second) is given up and resumed elsewhere.
const SILENCE: Duration = Duration::from_secs(8);

/// What one watcher did.
#[derive(Debug, Clone)]
pub struct WatcherOut {
    pub history: WatcherHistory,
    /// Its relists after compaction, for the linearizability checker.
    pub relists: Vec<Op>,
}

/// Who a watcher is and what it watches.
#[derive(Debug, Clone)]
pub struct WatcherSpec {
    /// Client id for its relists in the op history.
    pub client: usize,
    pub name: String,
    pub filter: WatchFilter,
    pub start_rev: i64,
}

/// Watches until stopped. `progress` follows the newest revision it knows
/// it has everything up to.
pub async fn run(
    spec: WatcherSpec,
    mut pool: Pool,
    clock: Clock,
    mut stop: Stop,
    progress: Arc<AtomicI64>,
) -> WatcherOut {
    let WatcherSpec {
        client,
        name,
        filter,
        start_rev,
    } = spec;
    let mut out = WatcherOut {
        history: WatcherHistory {
            name,
            filter: filter.clone(),
            segments: Vec::new(),
        },
        relists: Vec::new(),
    };
    let mut next = start_rev;
    let mut failures = 0u32;
    while !*stop.borrow() {
        let mut seg = Segment::new(&pool.ep().name, next, clock.now());
        stream(&filter, &mut seg, &pool, &clock, &mut stop, &progress).await;
        if let Some(l) = seg
            .responses
            .iter()
            .rev()
            .find_map(|r| r.events.last().map(Ev::rev))
        {
            next = l + 1;
        }
        let end = seg.end.clone();
        if seg.created.is_some() {
            failures = 0;
        } else {
            failures += 1;
        }
        out.history.segments.push(seg);
        match end {
            SegmentEnd::Open => break,
            SegmentEnd::Compacted { .. } => {
                // Relist (bounded by stop), then watch from the list.
                loop {
                    if *stop.borrow() {
                        return out;
                    }
                    let req = Request::Range {
                        key: filter.key.clone(),
                        range_end: filter.range_end.clone(),
                        revision: 0,
                        serializable: false,
                    };
                    let session = pool.session();
                    let call = clock.now();
                    let res = exec(&mut pool.kv(), &req, OP_TIMEOUT).await;
                    let ret = clock.now();
                    let ok = match &res {
                        Outcome::Ok(r) => Some(r.rev()),
                        _ => None,
                    };
                    out.relists.push(Op {
                        client,
                        session,
                        call,
                        ret,
                        req,
                        out: res,
                    });
                    if let Some(r) = ok {
                        next = r + 1;
                        progress.fetch_max(r, Ordering::SeqCst);
                        break;
                    }
                    pool.rotate();
                    if pause_or_stop(&mut stop, Duration::from_millis(50)).await {
                        return out;
                    }
                }
            }
            _ => {
                pool.rotate();
                if pause_or_stop(&mut stop, backoff(failures)).await {
                    break;
                }
            }
        }
    }
    out
}

/// One stream: open it, record every response until it ends or `stop`.
async fn stream(
    filter: &WatchFilter,
    seg: &mut Segment,
    pool: &Pool,
    clock: &Clock,
    stop: &mut Stop,
    progress: &Arc<AtomicI64>,
) {
    let broken = |reason: String| SegmentEnd::Broken {
        at: clock.now(),
        reason,
    };
    let (tx, rx) = mpsc::channel::<WatchRequest>(8);
    let mut filters = Vec::new();
    if filter.no_put {
        filters.push(watch_create_request::FilterType::Noput as i32);
    }
    if filter.no_delete {
        filters.push(watch_create_request::FilterType::Nodelete as i32);
    }
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: filter.key.clone(),
                range_end: filter.range_end.clone(),
                start_revision: seg.start_rev,
                progress_notify: true,
                filters,
                prev_kv: filter.prev_kv,
                ..Default::default()
            },
        )),
    };
    let _ = tx.send(create).await;
    let mut client = WatchClient::new(pool.channel()).max_decoding_message_size(64 << 20);
    let opened = tokio::time::timeout(OPEN_TIMEOUT, client.watch(ReceiverStream::new(rx))).await;
    let mut st = match opened {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(s)) => {
            seg.end = broken(format!("open: {:?} {}", s.code(), s.message()));
            return;
        }
        Err(_) => {
            seg.end = broken("open: no answer".into());
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = clock.now();
    loop {
        tokio::select! {
            m = st.message() => {
                let now = clock.now();
                last_heard = now;
                let r = match m {
                    Ok(Some(r)) => r,
                    Ok(None) => { seg.end = broken("stream ended".into()); return; }
                    Err(s) => { seg.end = broken(format!("{:?} {}", s.code(), s.message())); return; }
                };
                let rev = r.header.map_or(0, |h| h.revision);
                if r.created && seg.created.is_none() {
                    seg.created = Some((now, rev));
                }
                if r.compact_revision != 0 {
                    seg.end = SegmentEnd::Compacted { at: now, compact_revision: r.compact_revision };
                    return;
                }
                if r.canceled {
                    seg.end = SegmentEnd::Canceled { at: now, reason: r.cancel_reason.clone() };
                    return;
                }
                if r.created {
                    continue;
                }
                let events: Vec<Ev> = r.events.iter().map(Ev::from).collect();
                let known = events.last().map_or(rev, Ev::rev);
                progress.fetch_max(known, Ordering::SeqCst);
                seg.responses.push(WatchResponse { at: now, header_rev: rev, events, fragment: r.fragment });
            }
            _ = tick.tick() => {
                if clock.now().saturating_sub(last_heard) > SILENCE.as_nanos() as u64 {
                    seg.end = broken(format!("silent for {SILENCE:?}"));
                    return;
                }
                let _ = tx.try_send(WatchRequest {
                    request_union: Some(watch_request::RequestUnion::ProgressRequest(WatchProgressRequest {})),
                });
            }
            _ = stop.changed() => {
                seg.end = SegmentEnd::Open;
                return;
            }
        }
    }
}

/// A store watch's events as a source of the history (oracles).
pub fn to_source(name: &str, w: &WatcherHistory) -> SourceLog {
    SourceLog {
        name: name.to_string(),
        start_rev: w.segments.first().map_or(1, |s| s.start_rev),
        events: w
            .segments
            .iter()
            .flat_map(|s| s.responses.iter().flat_map(|r| r.events.iter().cloned()))
            .collect(),
    }
}
