//! The writer thread: one write and one fsync per group of queued appends,
//! and the commands queued behind them, in order.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use openraft::storage::LogFlushed;
use tokio::sync::oneshot;

use super::{Inner, MAX_GROUP};
use crate::raft::durability::Durability;
use crate::raft::type_config::TypeConfig;
use crate::raft::wal::Wal;

pub(super) type Done = oneshot::Sender<std::io::Result<()>>;
/// Encoded log records: (index, bincode `Entry`).
pub(super) type Recs = Vec<(u64, Vec<u8>)>;

pub(super) enum Cmd {
    Append {
        recs: Recs,
        /// Called after the fsync; `None` when acknowledged early.
        cb: Option<LogFlushed<TypeConfig>>,
    },
    Truncate {
        index: u64,
        done: Done,
    },
    Purge {
        upto: u64,
        meta: Vec<u8>,
        done: Done,
    },
    SaveMeta {
        meta: Vec<u8>,
        done: Done,
    },
    Stop,
}

/// The writer thread: takes every queued command, writes the appends
/// with one write and one fsync, then completes them. Truncate, purge
/// and meta updates run in queue order, after the appends before them
/// are synced.
pub(super) fn writer(
    wal: Arc<Wal>,
    durable: Arc<Durability>,
    store: std::sync::Weak<Inner>,
    rx: mpsc::Receiver<Cmd>,
) {
    let mut failed: Option<String> = None;
    // Appends written but not yet synced: their callbacks and last index.
    let mut cbs: Vec<LogFlushed<TypeConfig>> = Vec::new();
    let mut last: Option<u64> = None;
    let flush = |cbs: &mut Vec<LogFlushed<TypeConfig>>,
                 last: &mut Option<u64>,
                 failed: &mut Option<String>| {
        let Some(l) = last.take() else { return };
        let res = match failed {
            Some(e) => Err(std::io::Error::other(e.clone())),
            None => wal.write().and_then(|()| {
                if let Some(s) = store.upgrade() {
                    let mut m = s.mem.lock();
                    m.written = Some(l);
                    m.evict();
                }
                wal.sync()
            }),
        };
        match res {
            Ok(()) => {
                durable.set_synced(l);
                for cb in cbs.drain(..) {
                    cb.log_io_completed(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "raft log write failed; this member stops accepting entries");
                *failed = Some(e.to_string());
                durable.fail();
                for cb in cbs.drain(..) {
                    cb.log_io_completed(Err(std::io::Error::other(e.to_string())));
                }
            }
        }
    };
    let done_cmds = |n: usize| {
        if let Some(s) = store.upgrade() {
            s.queued.fetch_sub(n, Ordering::SeqCst);
        }
    };
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let n = batch.len();
        for cmd in batch {
            let op_done = |done: Done, res: std::io::Result<()>| {
                let _ = done.send(res);
            };
            match cmd {
                Cmd::Append { recs, cb } => {
                    let mut res = Ok(());
                    if failed.is_none() {
                        for (i, b) in &recs {
                            res = wal.append(*i, b);
                            if res.is_err() {
                                break;
                            }
                        }
                    }
                    if let Err(e) = res {
                        failed = Some(e.to_string());
                        durable.fail();
                    }
                    last = recs.last().map(|r| r.0).or(last);
                    cbs.extend(cb);
                }
                Cmd::Truncate { index, done } => {
                    flush(&mut cbs, &mut last, &mut failed);
                    let res = match &failed {
                        Some(e) => Err(std::io::Error::other(e.clone())),
                        None => wal.truncate(index),
                    };
                    if res.is_ok() {
                        durable.truncated(index);
                    }
                    op_done(done, res);
                }
                Cmd::Purge { upto, meta, done } => {
                    flush(&mut cbs, &mut last, &mut failed);
                    let res = wal.save_meta(&meta).and_then(|()| wal.purge_upto(upto));
                    op_done(done, res);
                }
                Cmd::SaveMeta { meta, done } => {
                    flush(&mut cbs, &mut last, &mut failed);
                    op_done(done, wal.save_meta(&meta));
                }
                Cmd::Stop => {
                    flush(&mut cbs, &mut last, &mut failed);
                    return;
                }
            }
        }
        flush(&mut cbs, &mut last, &mut failed);
        done_cmds(n);
    }
    flush(&mut cbs, &mut last, &mut failed);
}
