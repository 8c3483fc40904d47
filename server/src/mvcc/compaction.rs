//! Physical compaction: removes history below the compact revision in the
//! background, so that a large compaction never stalls the apply loop.
//!
//! Logical compaction (refusing reads below the revision) happens at apply time;
//! this only reclaims space. It is idempotent, so after a crash it simply runs again
//! from the last revision it finished.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use parking_lot::RwLock;
use rocksdb::{WriteBatch, DB};
use tokio::sync::watch;

use super::range::{decode, KvRecord};
use super::Revision;
use crate::background::Worker;
use crate::limits::COMPACTION_BATCH_KEYS_MAX;
use crate::schema::{self, meta_keys, CF_EVENTS, CF_HISTORY, CF_META};

/// Handle to the background compaction thread.
pub struct Compactor {
    /// The highest revision asked for; only the newest request matters, so one
    /// number replaces a queue.
    wanted: Arc<AtomicI64>,
    /// The thread, woken through a one-slot channel (it reads `wanted` when it
    /// wakes); stopped and joined when the compactor is dropped.
    worker: Worker<mpsc::SyncSender<()>>,
    finished: watch::Sender<Revision>,
}

impl Compactor {
    /// Starts the thread. It holds `gate` shared while it works, so that a snapshot
    /// import (which holds it exclusively) never interleaves with a compaction.
    pub(crate) fn start(db: Arc<DB>, gate: Arc<RwLock<()>>) -> Self {
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        let wanted = Arc::new(AtomicI64::new(0));
        let (finished, _) = watch::channel(0);
        let done = finished.clone();
        let target_of = wanted.clone();
        let worker = Worker::spawn("cairn-compactor", wake, move || {
            while woken.recv().is_ok() {
                let target = target_of.load(Ordering::Acquire);
                let from = *done.borrow();
                if target <= from {
                    continue;
                }
                let result = {
                    let _gate = gate.read_recursive();
                    compact(&db, from, target)
                };
                match result {
                    Ok(()) => {
                        tracing::info!(compact_revision = target, "finished physical compaction");
                        done.send_replace(target);
                    }
                    Err(e) => {
                        tracing::error!(compact_revision = target, error = %e, "physical compaction failed; will retry on the next compaction")
                    }
                }
            }
        });
        Compactor { wanted, worker, finished }
    }

    /// Sets the revision up to which history is known to be removed.
    pub(crate) fn reset(&self, finished: Revision) {
        self.finished.send_replace(finished);
    }

    /// Asks for history below `revision` to be removed.
    pub(crate) fn schedule(&self, revision: Revision) {
        self.wanted.fetch_max(revision, Ordering::AcqRel);
        // Full means a wake-up is already pending, which will see `wanted`.
        let _ = self.worker.sender().try_send(());
    }

    /// Waits until history below `revision` has been physically removed.
    pub async fn wait_finished(&self, revision: Revision) {
        let mut rx = self.finished.subscribe();
        // The sender lives as long as self.
        let _ = rx.wait_for(|done| *done >= revision).await;
    }
}

/// Removes every version older than the newest one at or below `to`, for the keys
/// changed in `[from, to)`, tombstones included; then the events below `to`.
fn compact(db: &DB, from: Revision, to: Revision) -> Result<(), rocksdb::Error> {
    let events = schema::cf(db, CF_EVENTS);
    let mut it = db.raw_iterator_cf(events);
    it.seek(schema::event_key(from, 0));
    let mut keys = BTreeSet::new();
    while let Some(k) = it.key() {
        if schema::decode_event_key(k).0 >= to {
            break;
        }
        keys.insert(it.value().expect("valid").to_vec());
        it.next();
        if keys.len() >= COMPACTION_BATCH_KEYS_MAX {
            compact_keys(db, &std::mem::take(&mut keys), to)?;
        }
    }
    it.status()?;
    compact_keys(db, &keys, to)?;
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(events, schema::event_key(0, 0), schema::event_key(to, 0));
    batch.put_cf(schema::cf(db, CF_META), meta_keys::COMPACT_FINISHED, to.to_be_bytes());
    db.write(batch)
}

fn compact_keys(db: &DB, keys: &BTreeSet<Vec<u8>>, to: Revision) -> Result<(), rocksdb::Error> {
    let history = schema::cf(db, CF_HISTORY);
    let mut batch = WriteBatch::default();
    for key in keys {
        let mut it = db.raw_iterator_cf(history);
        it.seek(schema::history_key(key, to));
        let mut newest = true;
        while let Some(raw) = it.key() {
            let (at, rev) = schema::decode_history_key(raw);
            if at != *key {
                break;
            }
            let record: Option<KvRecord> = decode(it.value().expect("valid"), "history record");
            // Keep what reads and watches at or above `to` need: the version at
            // `to` itself (a watch may start there), or else the newest live version
            // below it. A tombstone below `to` hides nothing that remains.
            let keep = newest && (rev == to || record.is_some());
            if !keep {
                batch.delete_cf(history, raw);
            }
            newest = false;
            it.next();
        }
        it.status()?;
    }
    db.write(batch)
}
