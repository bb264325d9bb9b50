//! Many watches on one gRPC Watch stream, as etcd's clientv3 multiplexes
//! them, with resume-from-last-revision when the stream breaks.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;

use futures::FutureExt;
use std::time::{Duration, Instant};

use lookout_proto::pb;
use lookout_proto::pb::watch_request::RequestUnion;
use lookout_testkit::checker::{WatchCheck, WatchEnd};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use super::lite::{LiteCodec, LiteEvent, LiteResponse};
use super::{Group, Signals, Stall, StreamLimits, StreamOutcome, Switch, WatchTarget};
use crate::payload;
use crate::progress::Counters;

/// One stream's plan.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub channel: Channel,
    pub target: WatchTarget,
    pub watchers: usize,
    pub start_rev: i64,
    pub group: Group,
    pub stall: Option<Stall>,
    /// Kill this stream mid-run and resume its watchers elsewhere.
    pub switch: Option<Switch>,
}

/// Why a stream's receive loop stopped.
enum Exit {
    /// Stop signal, or every watcher reached the target.
    Finished,
    /// The stream failed; try to resume.
    Broken(String),
    /// Time to move to the switch endpoint (the stream is dropped: the
    /// server sees it reset, as when a client dies).
    Switch,
}

struct Stream {
    spec: StreamSpec,
    limits: StreamLimits,
    sig: Signals,
    out: StreamOutcome,
    /// watch id -> watcher index, for the current stream incarnation.
    ids: HashMap<i64, usize, BuildHasherDefault<IdHasher>>,
    /// Watchers whose create is sent but not yet acknowledged, in send order
    /// (servers answer creates on a stream in order).
    pending: VecDeque<usize>,
    /// Creates the server acknowledged in the current incarnation (a watch
    /// may be cancelled right after, e.g. for compaction: still created).
    acked_creates: usize,
    /// Open watchers that have not yet reached the target.
    remaining: usize,
    target: i64,
    started: Instant,
    reached: Vec<bool>,
}

/// Runs one stream task to the end and returns its watchers' records.
pub async fn run_stream(spec: StreamSpec, limits: StreamLimits, sig: Signals) -> StreamOutcome {
    let checks = (0..spec.watchers)
        .map(|_| WatchCheck::new(spec.start_rev))
        .collect();
    let n = spec.watchers;
    let mut s = Stream {
        out: StreamOutcome::new(spec.group, checks),
        spec,
        limits,
        sig,
        ids: HashMap::with_capacity_and_hasher(n, Default::default()),
        pending: VecDeque::with_capacity(n),
        acked_creates: 0,
        remaining: n,
        target: i64::MAX,
        started: Instant::now(),
        reached: vec![false; n],
    };
    s.run().await;
    s.out
}

impl Stream {
    async fn run(&mut self) {
        if self.spec.watchers == 0 {
            return;
        }
        let all: Vec<usize> = (0..self.spec.watchers).collect();
        // First incarnation: every watcher starts at the same revision, so
        // creates are pipelined.
        let mut conn = match self.open_and_create(&all, false).await {
            Ok(c) => c,
            Err(e) => {
                self.out.note_error(format!("setup: {e}"));
                for c in &mut self.out.checks {
                    c.set_end(WatchEnd::Lost {
                        reason: "watch not created".into(),
                    });
                }
                return;
            }
        };
        self.out.created = self.acked_creates;
        self.out.ready_at = Some(Instant::now());
        Counters::add(&self.sig.counters.watchers_ready, self.out.created as u64);
        loop {
            match self.receive(&mut conn).await {
                Exit::Finished => return,
                Exit::Switch => {
                    drop(conn);
                    let Some(sw) = self.spec.switch.take() else {
                        return;
                    };
                    match crate::conn::connect(&sw.endpoint).await {
                        Ok(ch) => self.spec.channel = ch,
                        Err(e) => self.out.note_error(format!("switch: {e}")),
                    }
                    match self.resume().await {
                        Some(c) => conn = c,
                        None => {
                            for c in &mut self.out.checks {
                                c.set_end(WatchEnd::Lost {
                                    reason: "could not resume after the switch".into(),
                                });
                            }
                            return;
                        }
                    }
                }
                Exit::Broken(e) => {
                    self.out.note_error(&e);
                    match self.resume().await {
                        Some(c) => conn = c,
                        None => {
                            for c in &mut self.out.checks {
                                c.set_end(WatchEnd::Lost { reason: e.clone() });
                            }
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Reopens the stream and re-creates every open watcher from its next
    /// revision, one at a time (their start revisions differ, so each
    /// created response must be matched to its own request).
    async fn resume(&mut self) -> Option<Conn> {
        let mut backoff = Duration::from_millis(100);
        for _ in 0..self.limits.max_resumes {
            if self.sig.stop.is_cancelled() {
                return None;
            }
            tokio::select! {
                _ = self.sig.stop.cancelled() => return None,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
            self.out.resumes += 1;
            Counters::add(&self.sig.counters.resumes, 1);
            let open: Vec<usize> = (0..self.out.checks.len())
                .filter(|i| self.out.checks[*i].is_open())
                .collect();
            if open.is_empty() {
                return None;
            }
            match self.open_and_create(&open, true).await {
                Ok(c) => return Some(c),
                Err(e) => self.out.note_error(format!("resume: {e}")),
            }
        }
        None
    }

    async fn open_and_create(
        &mut self,
        watchers: &[usize],
        one_by_one: bool,
    ) -> Result<Conn, String> {
        self.ids.clear();
        self.pending.clear();
        self.acked_creates = 0;
        let (tx, rx) = mpsc::unbounded_channel();
        let deadline = tokio::time::Instant::now() + self.limits.setup_timeout;
        let mut queue = watchers.iter().copied();
        // The first create is queued before the call: some servers send no
        // response headers until the first message arrives.
        if let Some(first) = queue.next() {
            self.send_create(&tx, first)?;
        }
        let call = open_watch(&self.spec.channel, UnboundedReceiverStream::new(rx));
        // The stop signal ends the wait too: a server that never answers
        // must not keep the task past the run.
        let opened = tokio::select! {
            biased;
            _ = self.sig.stop.cancelled() => return Err("stopped while opening the stream".into()),
            r = tokio::time::timeout_at(deadline, call) => r,
        };
        let stream = opened
            .map_err(|_| "opening the watch stream timed out".to_string())?
            .map_err(|s| format!("watch: {s}"))?
            .into_inner();
        let mut conn = Conn { tx, stream };
        if !one_by_one {
            for w in queue.by_ref() {
                self.send_create(&conn.tx, w)?;
            }
        }
        loop {
            if self.pending.is_empty() {
                match queue.next() {
                    Some(w) => self.send_create(&conn.tx, w)?,
                    None => return Ok(conn),
                }
            }
            let msg = tokio::select! {
                biased;
                _ = self.sig.stop.cancelled() => return Err("stopped during setup".into()),
                m = tokio::time::timeout_at(deadline, conn.stream.message()) => m,
            };
            match msg {
                Err(_) => {
                    return Err(format!(
                        "{} of {} watch creates unanswered after {:?}",
                        self.pending.len() + queue.len(),
                        watchers.len(),
                        self.limits.setup_timeout
                    ));
                }
                Ok(Ok(Some(resp))) => self.handle(resp),
                Ok(Ok(None)) => return Err("stream closed during setup".into()),
                Ok(Err(s)) => return Err(format!("stream error during setup: {s}")),
            }
        }
    }

    fn send_create(
        &mut self,
        tx: &mpsc::UnboundedSender<pb::WatchRequest>,
        w: usize,
    ) -> Result<(), String> {
        let req = pb::WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(pb::WatchCreateRequest {
                key: self.spec.target.key.clone(),
                range_end: self.spec.target.range_end.clone(),
                start_revision: self.out.checks[w].next_rev(),
                ..Default::default()
            })),
        };
        tx.send(req)
            .map_err(|_| "watch request stream closed".to_string())?;
        self.pending.push_back(w);
        Ok(())
    }

    /// The main receive loop, until finished or broken.
    async fn receive(&mut self, conn: &mut Conn) -> Exit {
        let mut stall_at = self.stall_start();
        let mut switch_at = self.switch_start();
        loop {
            if self.remaining == 0 {
                return self.finish();
            }
            tokio::select! {
                biased;
                _ = self.sig.stop.cancelled() => return Exit::Finished,
                t = super::next_value(&mut self.sig.target) => self.set_target(t),
                _ = super::next_value(&mut self.sig.writer_started),
                    if (stall_at.is_none() && self.spec.stall.is_some())
                        || (switch_at.is_none() && self.spec.switch.is_some()) => {
                    stall_at = self.stall_start();
                    switch_at = self.switch_start();
                }
                _ = sleep_until_opt(switch_at), if switch_at.is_some() => return Exit::Switch,
                _ = sleep_until_opt(stall_at), if stall_at.is_some() => {
                    // Stop reading: the server's send window to us fills up,
                    // as with a client that is stuck.
                    let stall = self.spec.stall.take().map(|s| s.for_).unwrap_or_default();
                    stall_at = None;
                    tokio::select! {
                        _ = self.sig.stop.cancelled() => return Exit::Finished,
                        _ = tokio::time::sleep(stall) => {}
                    }
                }
                m = conn.stream.message() => match m {
                    Ok(Some(resp)) => {
                        self.handle(resp);
                        // Take whatever else already arrived before going
                        // back to the select: re-arming its signal futures
                        // per message was a sixth of this process's CPU.
                        for _ in 0..READY_BATCH {
                            if self.remaining == 0 {
                                break;
                            }
                            match conn.stream.message().now_or_never() {
                                Some(Ok(Some(resp))) => self.handle(resp),
                                Some(Ok(None)) => {
                                    return Exit::Broken("server closed the watch stream".into());
                                }
                                Some(Err(s)) => return Exit::Broken(format!("watch stream: {s}")),
                                None => break,
                            }
                        }
                    }
                    Ok(None) => return Exit::Broken("server closed the watch stream".into()),
                    Err(s) => return Exit::Broken(format!("watch stream: {s}")),
                }
            }
        }
    }

    fn finish(&mut self) -> Exit {
        Counters::add(
            &self.sig.counters.watchers_done,
            self.out.checks.len() as u64,
        );
        Exit::Finished
    }

    fn switch_start(&self) -> Option<tokio::time::Instant> {
        let sw = self.spec.switch.as_ref()?;
        (*self.sig.writer_started.borrow()).map(|t| t + sw.after)
    }

    fn stall_start(&self) -> Option<tokio::time::Instant> {
        let stall = self.spec.stall?;
        (*self.sig.writer_started.borrow()).map(|t| t + stall.after)
    }

    fn set_target(&mut self, target: i64) {
        self.target = target;
        self.remaining = self
            .out
            .checks
            .iter()
            .filter(|c| c.is_open() && c.last_rev() < target)
            .count();
    }

    fn handle(&mut self, resp: LiteResponse) {
        if resp.created {
            match self.pending.pop_front() {
                Some(w) => {
                    self.ids.insert(resp.watch_id, w);
                    if !resp.canceled {
                        self.acked_creates += 1;
                    }
                }
                None => self.out.orphan_events += 1,
            }
        }
        let Some(&w) = self.ids.get(&resp.watch_id) else {
            if !resp.events.is_empty() {
                self.out.orphan_events += resp.events.len() as u64;
            }
            return;
        };
        if !resp.events.is_empty() {
            self.events(w, &resp.events);
        }
        if resp.canceled {
            let was_counted =
                self.out.checks[w].is_open() && self.out.checks[w].last_rev() < self.target;
            let end = if resp.compact_revision > 0 {
                WatchEnd::CompactCancelled {
                    compact_revision: resp.compact_revision,
                }
            } else {
                WatchEnd::Cancelled {
                    reason: resp.cancel_reason.clone(),
                }
            };
            self.out.checks[w].set_end(end);
            self.ids.remove(&resp.watch_id);
            if was_counted {
                self.remaining = self.remaining.saturating_sub(1);
            }
        }
    }

    fn events(&mut self, w: usize, events: &[LiteEvent]) {
        // One clock read per response: events in one response arrived together.
        let now = payload::now_unix_ns();
        let check = &mut self.out.checks[w];
        let before = check.last_rev();
        for ev in events {
            check.observe(ev.rev, ev.tag);
            if let Some(sent) = ev.sent_unix_ns
                && sent >= self.limits.live_from_unix_ns
            {
                self.out.latency.record_ns(now.saturating_sub(sent));
            }
        }
        let after = check.last_rev();
        Counters::add(&self.sig.counters.events, events.len() as u64);
        if before < self.target && after >= self.target && check.is_open() {
            self.remaining = self.remaining.saturating_sub(1);
        }
        if let Some(r) = self.limits.reach_rev
            && after >= r
            && !self.reached[w]
        {
            self.reached[w] = true;
            self.out
                .reach
                .record_ns(self.started.elapsed().as_nanos() as u64);
        }
    }
}

/// Responses taken without waiting after one that did (bounded, so the
/// stop and target signals are still looked at regularly).
const READY_BATCH: usize = 256;

/// One stream incarnation: the request sender (kept alive, or the server
/// sees the client half-close) and the response stream.
struct Conn {
    tx: mpsc::UnboundedSender<pb::WatchRequest>,
    stream: Streaming<LiteResponse>,
}

/// Opens a Watch stream whose responses go through [`LiteCodec`].
///
/// # Errors
/// The connection or the call failed.
pub async fn open_watch(
    channel: &Channel,
    requests: UnboundedReceiverStream<pb::WatchRequest>,
) -> Result<tonic::Response<Streaming<LiteResponse>>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone()).max_decoding_message_size(512 << 20);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connection not ready: {e}")))?;
    let path = http::uri::PathAndQuery::from_static("/etcdserverpb.Watch/Watch");
    grpc.streaming(tonic::Request::new(requests), path, LiteCodec)
        .await
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// One multiply per watch id (servers hand out small integers); the
/// default SipHash showed up in profiles of the receive path.
#[derive(Debug, Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_i64(&mut self, v: i64) {
        self.0 = (self.0 ^ v as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Splits `total` watchers over `streams` as evenly as possible.
pub fn spread(total: usize, streams: usize) -> Vec<usize> {
    let streams = streams.max(1);
    (0..streams)
        .map(|i| total / streams + usize::from(i < total % streams))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn spread_is_even_and_complete() {
        assert_eq!(spread(10, 3), vec![4, 3, 3]);
        assert_eq!(spread(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(spread(100, 1), vec![100]);
    }
}
