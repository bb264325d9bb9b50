//! One client watch stream: many watchers, each either catching up from
//! redb history or live on the hub, all answered through one ordered
//! output channel.
//!
//! ```text
//!  client requests ─┐
//!  hub messages ────┼─> stream task ──> responses (created, events, progress, cancel)
//!  lag notices ─────┤      │
//!  progress tick ───┘      └─ catch-up steps: history, <= 1000 revisions with events
//! ```
//!
//! Per watcher `next_rev` is the first revision not yet delivered. Live
//! messages below it are dropped (no duplicate); a watcher registers on the
//! hub only when the hub has published nothing at or after `next_rev` (no
//! gap). A watcher whose start was compacted is created, then cancelled
//! with `compact_revision`, as etcd 3.4 does.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use lookout_proto::mvccpb::{Event, KeyValue, event::EventType};
use lookout_proto::pb::{
    WatchCreateRequest, WatchRequest, WatchResponse, watch_create_request::FilterType,
    watch_request::RequestUnion,
};
use prost::Message;
use redb::ReadableDatabase;
use tokio::sync::mpsc;

use crate::auth::Credentials;
use crate::error::Result;
use crate::mvcc::backend::{self, KV};
use crate::mvcc::hub::{HubMsg, Lagged};
use crate::mvcc::revision::Revision;
use crate::store::Store;
use lookout_semantics::in_range;

/// Buffer between the hub and one stream, in revisions.
const HUB_BUFFER: usize = 1024;
/// Revisions with events for the watcher per catch-up response: etcd's
/// `watchBatchMaxRevs`.
const WATCH_BATCH_REVS: usize = 1000;

#[derive(Debug)]
struct Watcher {
    id: i64,
    key: Bytes,
    range_end: Bytes,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    fragment: bool,
    /// First revision not yet delivered.
    next_rev: i64,
    /// Hub slot while live; `None` while catching up.
    slot: Option<u64>,
    /// Whether a response went out since the last progress tick.
    sent_since_tick: bool,
}

struct StreamState {
    store: Store,
    out: mpsc::Sender<Result<WatchResponse>>,
    watchers: BTreeMap<i64, Watcher>,
    slots: HashMap<u64, i64>,
    hub_tx: mpsc::Sender<HubMsg>,
    lagged: Arc<Lagged>,
    /// Next server-assigned watch ID (etcd starts at 0).
    next_id: i64,
    /// The client's token or certificate name: each create is checked.
    creds: crate::auth::Credentials,
}

/// Output closed: the client went away.
struct Gone;

pub(crate) async fn run_stream<S>(
    store: Store,
    creds: crate::auth::Credentials,
    mut requests: S,
    out: mpsc::Sender<Result<WatchResponse>>,
) where
    S: futures::Stream<Item = WatchRequest> + Send + Unpin + 'static,
{
    let (hub_tx, mut hub_rx) = mpsc::channel(HUB_BUFFER);
    let interval = store.config().progress_notify_interval;
    let mut st = StreamState {
        store,
        out,
        watchers: BTreeMap::new(),
        slots: HashMap::new(),
        hub_tx,
        lagged: Arc::new(Lagged::default()),
        next_id: 0,
        creds,
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let lagged = st.lagged.clone();
    let _ = async {
        loop {
            let catching = st.watchers.values().any(|w| w.slot.is_none());
            tokio::select! {
                biased;
                req = requests.next() => match req {
                    Some(r) => st.request(r, &mut hub_rx).await?,
                    None => return Ok::<(), Gone>(()),
                },
                _ = lagged.notify.notified() => st.on_lag(&mut hub_rx).await?,
                Some(msg) = hub_rx.recv() => st.deliver(msg).await?,
                _ = tick.tick() => st.progress_tick(&mut hub_rx).await?,
                _ = std::future::ready(()), if catching => st.catch_up_one().await?,
            }
        }
    }
    .await;
    for slot in st.slots.keys() {
        st.store.hub().unregister(*slot);
    }
}

impl StreamState {
    async fn send(&self, r: WatchResponse) -> Result<(), Gone> {
        self.out.send(Ok(r)).await.map_err(|_| Gone)
    }

    async fn request(
        &mut self,
        req: WatchRequest,
        hub_rx: &mut mpsc::Receiver<HubMsg>,
    ) -> Result<(), Gone> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                if let Some(w) = self.watchers.remove(&c.watch_id) {
                    if let Some(slot) = w.slot {
                        self.store.hub().unregister(slot);
                        self.slots.remove(&slot);
                    }
                    let rev = self.store.hub().rev();
                    self.send(WatchResponse {
                        header: self.store.header(rev),
                        watch_id: w.id,
                        canceled: true,
                        ..Default::default()
                    })
                    .await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // etcd 3.4 answers with watch_id -1 and a revision; ours is
                // never above what any watcher on this stream has been sent.
                // Revision first, then flush what the hub queued for us:
                // every event at or below it goes out before this answer.
                let rev = self.safe_progress_rev();
                self.drain_hub(hub_rx).await?;
                self.send(WatchResponse {
                    header: self.store.header(rev),
                    watch_id: -1,
                    ..Default::default()
                })
                .await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), Gone> {
        let cur = self.store.hub().rev();
        let range_end = if c.range_end.as_ref() == [0] {
            // ">= key", spelled as in range reads.
            Bytes::from_static(&[0])
        } else {
            c.range_end.clone()
        };
        let fail = |reason: &str| WatchResponse {
            header: self.store.header(cur),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason.into(),
            ..Default::default()
        };
        if let Err(reason) = watch_permitted(&self.store, &self.creds, &c) {
            return self.send(fail(&reason)).await;
        }
        if !range_end.is_empty() && range_end.as_ref() != [0] && c.key >= range_end {
            let r = fail("mvcc: watcher range is empty");
            return self.send(r).await;
        }
        let id = if c.watch_id != 0 {
            if self.watchers.contains_key(&c.watch_id) {
                let r = fail("mvcc: duplicate watch ID provided on the WatchStream");
                return self.send(r).await;
            }
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        let filters: Vec<FilterType> = c
            .filters
            .iter()
            .filter_map(|f| FilterType::try_from(*f).ok())
            .collect();
        let w = Watcher {
            id,
            key: c.key.clone(),
            range_end,
            prev_kv: c.prev_kv,
            no_put: filters.contains(&FilterType::Noput),
            no_delete: filters.contains(&FilterType::Nodelete),
            progress_notify: c.progress_notify,
            fragment: c.fragment,
            next_rev: if c.start_revision > 0 {
                c.start_revision
            } else {
                cur + 1
            },
            slot: None,
            sent_since_tick: false,
        };
        self.watchers.insert(id, w);
        self.send(WatchResponse {
            header: self.store.header(cur),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await?;
        // Go live at once when possible, so the created response and the
        // first event are not separated by a catch-up round.
        self.try_register(id);
        Ok(())
    }

    /// Registers watcher `id` on the hub if it has nothing left to read
    /// from history.
    fn try_register(&mut self, id: i64) {
        let Some(w) = self.watchers.get_mut(&id) else {
            return;
        };
        if w.slot.is_some() {
            return;
        }
        if let Some(slot) = self.store.hub().register(
            w.key.clone(),
            w.range_end.clone(),
            w.next_rev,
            self.hub_tx.clone(),
            self.lagged.clone(),
        ) {
            w.slot = Some(slot);
            self.slots.insert(slot, id);
        }
    }

    async fn deliver(&mut self, msg: HubMsg) -> Result<(), Gone> {
        let Some(&id) = self.slots.get(&msg.slot) else {
            return Ok(());
        };
        let Some(w) = self.watchers.get(&id) else {
            return Ok(());
        };
        if msg.rev < w.next_rev {
            return Ok(());
        }
        let events = filter(w, msg.events);
        self.send_events(id, msg.rev, events).await?;
        if let Some(w) = self.watchers.get_mut(&id) {
            w.next_rev = msg.rev + 1;
        }
        Ok(())
    }

    async fn drain_hub(&mut self, hub_rx: &mut mpsc::Receiver<HubMsg>) -> Result<(), Gone> {
        while let Ok(msg) = hub_rx.try_recv() {
            self.deliver(msg).await?;
        }
        Ok(())
    }

    async fn on_lag(&mut self, hub_rx: &mut mpsc::Receiver<HubMsg>) -> Result<(), Gone> {
        // Everything queued before the slot was dropped comes first.
        self.drain_hub(hub_rx).await?;
        let lagged: Vec<(u64, i64)> = std::mem::take(&mut *self.lagged.slots.lock());
        for (slot, from) in lagged {
            if let Some(id) = self.slots.remove(&slot)
                && let Some(w) = self.watchers.get_mut(&id)
            {
                tracing::debug!(
                    watch_id = id,
                    from,
                    "watcher fell behind; catching up from history"
                );
                w.slot = None;
                w.next_rev = w.next_rev.max(from);
            }
        }
        Ok(())
    }

    /// A revision no watcher of this stream will later see an event at or
    /// below: the hub's revision (every hub event at or below it is already
    /// in our queue, which the caller drains before answering), lowered to
    /// what any watcher still catching up has been sent (`next_rev - 1`).
    fn safe_progress_rev(&self) -> i64 {
        let hub_rev = self.store.hub().rev();
        self.watchers
            .values()
            .filter(|w| w.slot.is_none())
            .map(|w| w.next_rev - 1)
            .fold(hub_rev, i64::min)
    }

    async fn progress_tick(&mut self, hub_rx: &mut mpsc::Receiver<HubMsg>) -> Result<(), Gone> {
        let hub_rev = self.store.hub().rev();
        self.drain_hub(hub_rx).await?;
        let due: Vec<(i64, i64)> = self
            .watchers
            .values_mut()
            .filter_map(|w| {
                let quiet = !std::mem::replace(&mut w.sent_since_tick, false);
                (w.progress_notify && quiet && w.slot.is_some())
                    .then(|| (w.id, hub_rev.max(w.next_rev - 1)))
            })
            .collect();
        for (id, rev) in due {
            self.send(WatchResponse {
                header: self.store.header(rev),
                watch_id: id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    async fn send_events(&mut self, id: i64, rev: i64, events: Vec<Event>) -> Result<(), Gone> {
        if events.is_empty() {
            return Ok(());
        }
        let Some(w) = self.watchers.get_mut(&id) else {
            return Ok(());
        };
        w.sent_since_tick = true;
        let fragment = w.fragment;
        let header = self.store.header(rev);
        let resp = WatchResponse {
            header,
            watch_id: id,
            events,
            ..Default::default()
        };
        let limit = self.store.config().max_request_bytes;
        if !fragment || resp.encoded_len() <= limit {
            return self.send(resp).await;
        }
        // Split into responses under the limit (at least one event each);
        // all but the last carry `fragment`.
        let mut parts: Vec<Vec<Event>> = vec![Vec::new()];
        let mut size = 0usize;
        for ev in resp.events {
            let n = ev.encoded_len() + 4;
            let last = parts.last_mut().expect("non-empty");
            if !last.is_empty() && size + n > limit {
                parts.push(Vec::new());
                size = 0;
            }
            size += n;
            parts.last_mut().expect("non-empty").push(ev);
        }
        let count = parts.len();
        for (i, evs) in parts.into_iter().enumerate() {
            self.send(WatchResponse {
                header: resp.header,
                watch_id: id,
                fragment: i + 1 < count,
                events: evs,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    /// One bounded step of history for the first watcher catching up.
    async fn catch_up_one(&mut self) -> Result<(), Gone> {
        let Some(id) = self
            .watchers
            .values()
            .find(|w| w.slot.is_none())
            .map(|w| w.id)
        else {
            return Ok(());
        };
        match self.read_history(id) {
            Ok(History::Compacted(compact)) => {
                self.watchers.remove(&id);
                // Exactly etcd 3.4's answer: header revision 0, no reason
                // text, only `compact_revision` (checked against etcd).
                self.send(WatchResponse {
                    header: self.store.header(0),
                    watch_id: id,
                    canceled: true,
                    compact_revision: compact,
                    ..Default::default()
                })
                .await
            }
            Ok(History::UpToDate) => {
                self.try_register(id);
                if self.watchers.get(&id).is_some_and(|w| w.slot.is_none()) {
                    // Commits landed between our read and registering;
                    // let other work run before the next step.
                    tokio::task::yield_now().await;
                }
                Ok(())
            }
            Ok(History::Events { upto, cur, events }) => {
                let w = self.watchers.get(&id).expect("watcher exists");
                let events = filter(w, events);
                // etcd's header on history is the store's revision when it
                // read it, not the batch's last one (`syncWatchers`).
                self.send_events(id, cur, events).await?;
                if let Some(w) = self.watchers.get_mut(&id) {
                    w.next_rev = upto + 1;
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(watch_id = id, error = %e, "reading watch history failed");
                let _ = self.out.send(Err(e)).await;
                Err(Gone)
            }
        }
    }

    fn read_history(&self, id: i64) -> Result<History> {
        let w = self.watchers.get(&id).expect("watcher exists");
        let db = self.store.db();
        let tx = db.begin_read()?;
        let kv = tx.open_table(KV)?;
        let meta = backend::read_meta(&kv)?;
        // The index snapshot is taken after the read transaction began, so
        // it knows every revision the transaction can see that was
        // published; redb may also hold an apply still waiting for its log
        // fsync (see `raft/sm/`), which must not be delivered yet.
        let snap = self.store.snapshot();
        let (compact, cur) = (meta.compact_rev, meta.rev.min(snap.rev).max(1));
        if compact > 0 && w.next_rev < compact {
            return Ok(History::Compacted(compact));
        }
        if w.next_rev > cur {
            return Ok(History::UpToDate);
        }
        // etcd's batches (`eventBatch`): the events of at most
        // WATCH_BATCH_REVS revisions that touch the watcher's range, however
        // many other revisions lie between them.
        let mut upto = cur;
        let (mut batch_revs, mut last_main) = (0, 0);
        let mut events = Vec::new();
        for row in kv.range(Revision::first_key(w.next_rev)..=Revision::last_key(cur))? {
            let (k, v) = row?;
            let rec = KeyValue::decode(v.value())?;
            if !in_range(&rec.key, &w.key, &w.range_end) {
                continue;
            }
            let rev = Revision::from_key(k.value());
            if rev.main != last_main {
                if batch_revs == WATCH_BATCH_REVS {
                    upto = rev.main - 1;
                    break;
                }
                batch_revs += 1;
                last_main = rev.main;
            }
            let prev_kv = if w.prev_kv {
                snap.keys
                    .get(&rec.key)
                    .and_then(|ki| prev_revision(ki, rev))
                    .map(|r| backend::read_rev(&kv, r))
                    .transpose()?
                    .flatten()
            } else {
                None
            };
            let ty = if rec.version == 0 {
                EventType::Delete
            } else {
                EventType::Put
            };
            events.push(Event {
                r#type: ty as i32,
                kv: Some(rec),
                prev_kv,
            });
        }
        Ok(History::Events { upto, cur, events })
    }
}

/// The revision just before `rev` in this key's history, if it was a put
/// (the value a prev_kv shows).
fn prev_revision(ki: &crate::mvcc::keyindex::KeyIndex, rev: Revision) -> Option<Revision> {
    let mut prev = None;
    for g in &ki.generations {
        for (i, r) in g.revs.iter().enumerate() {
            if *r >= rev {
                return prev;
            }
            let is_tomb = g.closed && i + 1 == g.revs.len();
            prev = (!is_tomb).then_some(*r);
        }
    }
    prev
}

enum History {
    Compacted(i64),
    UpToDate,
    /// The watcher's events up to `upto` (from at most
    /// [`WATCH_BATCH_REVS`] revisions), read with the store at `cur`.
    Events {
        upto: i64,
        cur: i64,
        events: Vec<Event>,
    },
}

/// Applies a watcher's NOPUT/NODELETE filters and prev_kv choice.
fn filter(w: &Watcher, events: Vec<Event>) -> Vec<Event> {
    events
        .into_iter()
        .filter(|e| {
            let put = e.r#type == EventType::Put as i32;
            !(put && w.no_put || !put && w.no_delete)
        })
        .map(|mut e| {
            if !w.prev_kv {
                e.prev_kv = None;
            }
            e
        })
        .collect()
}

impl Store {
    /// Serves one watch stream: `requests` are the client's messages, the
    /// returned channel yields responses until the client goes away.
    pub fn watch<S>(&self, requests: S) -> mpsc::Receiver<Result<WatchResponse>>
    where
        S: futures::Stream<Item = WatchRequest> + Send + Unpin + 'static,
    {
        self.watch_as(Credentials::default(), requests)
    }

    /// [`Store::watch`] for a client with `creds`: each watch create is
    /// checked (identity resolved again, read permission on its range),
    /// as etcd does; a refused create is answered created + canceled.
    pub fn watch_as<S>(
        &self,
        creds: Credentials,
        requests: S,
    ) -> mpsc::Receiver<Result<WatchResponse>>
    where
        S: futures::Stream<Item = WatchRequest> + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(128);
        tokio::spawn(run_stream(self.clone(), creds, requests, tx));
        rx
    }
}

/// etcd's watch-create check: the identity resolved again (a token may
/// have expired since the stream opened), then read permission on the
/// range. `Err` is the cancel reason etcd sends: the full gRPC status text.
fn watch_permitted(
    store: &Store,
    creds: &Credentials,
    c: &lookout_proto::pb::WatchCreateRequest,
) -> Result<(), String> {
    let checked = store.resolve(creds).and_then(|who| {
        crate::auth::check_watch(&store.auth_state(), who.as_ref(), &c.key, &c.range_end)
    });
    checked.map_err(|e| crate::auth::watch_refusal(&e))
}
