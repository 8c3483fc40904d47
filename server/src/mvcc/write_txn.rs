//! One mutating request applied at one revision: puts, deletes, transactions and
//! lease changes, collected in a RocksDB write batch that commits all of it or none
//! of it.

use rocksdb::{SnapshotWithThreadMode, WriteBatch, DB};

use super::lease_table::{self, LeaseRecord};
use super::live_keys::{KeyMeta, LiveKeys};
use super::range::{encode, execute_range, KvRecord, Overlay, RangeEnd, Source};
use super::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, Event, EventKind, KeyValue,
    LeaseCheckpoint, MvccError, OpResult, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseOp,
    Revision, TxnRequest, TxnResponse,
};
use crate::limits::LEASE_TTL_SECONDS_MAX;
use crate::schema::{self, meta_keys, CF_EVENTS, CF_HISTORY, CF_KV, CF_LEASES, CF_LEASE_KEYS, CF_META};

/// A write in progress at revision `begin + 1`. Reads inside it see its own changes.
pub(crate) struct WriteTxn<'a> {
    db: &'a DB,
    snap: &'a SnapshotWithThreadMode<'a, DB>,
    /// The committed state's recently written keys (the snapshot's, as the applier
    /// lock is held from the snapshot to the commit).
    keys: &'a LiveKeys,
    begin: Revision,
    compact_revision: Revision,
    /// Changes so far; also the sub-revision counter (`changes.len()` can be lower
    /// than `sub` when a key is changed twice, which the duplicate-key rule forbids).
    overlay: Overlay,
    sub: i64,
    batch: WriteBatch,
    /// Past versions written so far (history key, encoded record), added to `batch`
    /// in key order at the end (see [`WriteTxn::into_parts`]).
    history: Vec<(Vec<u8>, Vec<u8>)>,
    /// The changes, for watchers.
    events: Vec<Event>,
}

impl<'a> WriteTxn<'a> {
    pub fn new(
        db: &'a DB,
        snap: &'a SnapshotWithThreadMode<'a, DB>,
        keys: &'a LiveKeys,
        begin: Revision,
        compact_revision: Revision,
    ) -> Self {
        WriteTxn {
            db,
            snap,
            keys,
            begin,
            compact_revision,
            overlay: Overlay::new(),
            sub: 0,
            batch: WriteBatch::default(),
            history: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Whether anything changed, so that the write consumes a revision.
    pub fn changed(&self) -> bool {
        self.sub > 0
    }

    /// Closes the current revision if it changed anything, returning it and its
    /// events; later changes go to the next revision. Reads go on seeing every change
    /// made so far. Lets one batch hold several consecutive revisions.
    pub fn next_revision(&mut self) -> Option<(Revision, Vec<Event>)> {
        if !self.changed() {
            return None;
        }
        self.begin += 1;
        self.sub = 0;
        Some((self.begin, std::mem::take(&mut self.events)))
    }

    /// The batch holding every change, to commit with the store's metadata; the
    /// changes as events; and each changed key's new record (`None`: deleted), for
    /// the cache of live keys once the batch is committed.
    ///
    /// The key-ordered tables get their records in key order, each key once in the
    /// table of current records (its last change: the overlay). RocksDB inserts
    /// each into a memtable skip list and reuses the previous insert's search only
    /// when the new key lands right after it, with no other key in between. So the
    /// new keys of a batch that are neighbours (a txn filling a range, in whatever
    /// order it lists them) skip the search; random keys still search from the
    /// top, each (benches/RESULTS.md, ninth session).
    pub fn into_parts(mut self) -> (WriteBatch, Vec<Event>, Overlay) {
        let kv = schema::cf(self.db, CF_KV);
        for (key, change) in &self.overlay {
            match change {
                Some(r) => self.batch.put_cf(kv, key, encode(r)),
                None => self.batch.delete_cf(kv, key),
            }
        }
        let history = schema::cf(self.db, CF_HISTORY);
        self.history.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (key, record) in &self.history {
            self.batch.put_cf(history, key, record);
        }
        (self.batch, self.events, self.overlay)
    }

    fn write_revision(&self) -> Revision {
        self.begin + 1
    }

    fn source(&self) -> Source<'_> {
        Source { db: self.db, snap: self.snap, overlay: Some(&self.overlay) }
    }

    /// The revision reads see: the write's own revision once it changed something.
    fn read_revision(&self) -> Revision {
        if self.changed() {
            self.begin + 1
        } else {
            self.begin
        }
    }

    fn record(&mut self, key: &[u8], record: Option<KvRecord>, prev: Option<KeyValue>) {
        let rev = self.write_revision();
        self.events.push(match &record {
            Some(r) => Event { kind: EventKind::Put, kv: r.to_key_value(key), prev_kv: prev },
            None => Event { kind: EventKind::Delete, kv: tombstone(key, rev), prev_kv: prev },
        });
        self.history.push((schema::history_key(key, rev), encode(&record)));
        self.batch.put_cf(schema::cf(self.db, CF_EVENTS), schema::event_key(rev, self.sub), key);
        self.sub += 1;
        self.overlay.insert(key.to_vec(), record);
    }

    /// The create revision, version and lease of `key`'s live version, if any: from
    /// this write's own changes, else the cache of live keys, else RocksDB.
    fn current_meta(&self, key: &[u8]) -> Option<KeyMeta> {
        if let Some(change) = self.overlay.get(key) {
            return change.as_ref().map(KvRecord::meta);
        }
        if let Some(meta) = self.keys.get(key) {
            return Some(meta);
        }
        self.source().get_current(key).map(|r| r.meta())
    }

    /// A put reads the version it replaces in full only if it needs its value (to
    /// keep it, or to answer it). Otherwise its event carries no previous version
    /// and a watcher that wants it reads it from history (see [`Event::prev_elided`]).
    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse, MvccError> {
        self.check_lease(req.lease)?;
        let (prev, prev_kv) = if req.ignore_value || req.prev_kv {
            let full = self.source().get_current(&req.key);
            (full.as_ref().map(KvRecord::meta), full.map(|r| r.to_key_value(&req.key)))
        } else {
            (self.current_meta(&req.key), None)
        };
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        let rev = self.write_revision();
        let record = KvRecord {
            create_revision: prev.map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.map_or(1, |p| p.version + 1),
            lease: match (prev, req.ignore_lease) {
                (Some(p), true) => p.lease,
                _ => req.lease,
            },
            value: match (&prev_kv, req.ignore_value) {
                (Some(p), true) => p.value.clone(),
                _ => req.value.clone(),
            },
        };
        self.move_attachment(&req.key, prev.map_or(0, |p| p.lease), record.lease);
        self.record(&req.key, Some(record), prev_kv.clone());
        let prev_kv = if req.prev_kv { prev_kv } else { None };
        Ok(PutResponse { prev_kv })
    }

    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        let mut doomed = Vec::new();
        self.source().scan_current(&req.key, &RangeEnd::from_request(&req.range_end), |key, record| {
            doomed.push(record.to_key_value(key));
            true
        });
        for kv in &doomed {
            self.move_attachment(&kv.key, kv.lease, 0);
            self.record(&kv.key, None, Some(kv.clone()));
        }
        let deleted = doomed.len() as i64;
        let prev_kvs = if req.prev_kv { doomed } else { Vec::new() };
        Ok(DeleteRangeResponse { deleted, prev_kvs })
    }

    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        let current = self.read_revision();
        let rev = if req.revision <= 0 { current } else { req.revision };
        if rev == current {
            execute_range(&self.source(), req, current, self.compact_revision)
        } else {
            // Past revisions are all stored already: read history without the overlay.
            let stored = Source { db: self.db, snap: self.snap, overlay: None };
            execute_range(&stored, &RangeRequest { revision: rev, ..req.clone() }, current, self.compact_revision)
        }
    }

    /// Executes a Txn as etcd does: every compare, nested ones included, is decided
    /// against the state before the transaction; then the chosen puts are checked
    /// (in a transaction that writes at all), then the chosen ranges' revisions;
    /// only then do the operations run, each seeing the ones before it.
    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        let mut path = Vec::new();
        self.choose_branches(req, &mut path);
        if writes(req) {
            self.check_puts(req, &mut path.iter())?;
        }
        self.check_ranges(req, &mut path.iter())?;
        self.execute(req, &mut path.iter())
    }

    /// Decides each Txn's compares, depth first along the branches taken.
    fn choose_branches(&self, req: &TxnRequest, path: &mut Vec<bool>) {
        let succeeded = req.compare.iter().all(|c| self.compare(c));
        path.push(succeeded);
        for op in branch(req, succeeded) {
            if let RequestOp::Txn(t) = op {
                self.choose_branches(t, path);
            }
        }
    }

    fn check_puts(&self, req: &TxnRequest, path: &mut std::slice::Iter<'_, bool>) -> Result<(), MvccError> {
        let succeeded = *path.next().expect("a decision for every txn taken");
        for op in branch(req, succeeded) {
            match op {
                // etcd's order inside a Txn: the key first, then the lease.
                RequestOp::Put(p) => {
                    if (p.ignore_value || p.ignore_lease) && self.source().get_current(&p.key).is_none() {
                        return Err(MvccError::KeyNotFound);
                    }
                    self.check_lease(p.lease)?;
                }
                RequestOp::Txn(t) => self.check_puts(t, path)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn check_ranges(&self, req: &TxnRequest, path: &mut std::slice::Iter<'_, bool>) -> Result<(), MvccError> {
        let succeeded = *path.next().expect("a decision for every txn taken");
        for op in branch(req, succeeded) {
            match op {
                RequestOp::Range(r) if r.revision > self.begin => {
                    return Err(MvccError::FutureRevision { current_revision: self.begin })
                }
                RequestOp::Range(r) if r.revision > 0 && r.revision < self.compact_revision => {
                    return Err(MvccError::Compacted { compact_revision: self.compact_revision })
                }
                RequestOp::Txn(t) => self.check_ranges(t, path)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn execute(&mut self, req: &TxnRequest, path: &mut std::slice::Iter<'_, bool>) -> Result<TxnResponse, MvccError> {
        let succeeded = *path.next().expect("a decision for every txn taken");
        let ops = branch(req, succeeded);
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match op {
                RequestOp::Range(r) => ResponseOp::Range(self.range(r)?),
                RequestOp::Put(r) => ResponseOp::Put(self.put(r)?),
                RequestOp::DeleteRange(r) => ResponseOp::DeleteRange(self.delete_range(r)?),
                RequestOp::Txn(r) => ResponseOp::Txn(self.execute(r, path)?),
            };
            let revision = if matches!(response, ResponseOp::Txn(_)) { 0 } else { self.read_revision() };
            responses.push(OpResult { revision, response });
        }
        Ok(TxnResponse { succeeded, responses })
    }

    /// etcd's compare: every key in the range must satisfy it; a missing key compares
    /// as zero, except that a value compare on no key at all fails.
    fn compare(&self, c: &Compare) -> bool {
        let mut records = Vec::new();
        self.source().scan_current(&c.key, &RangeEnd::from_request(&c.range_end), |_, r| {
            records.push(r.clone());
            true
        });
        if records.is_empty() {
            if matches!(c.target, CompareTarget::Value(_)) {
                return false;
            }
            return compare_one(
                c,
                &KvRecord { create_revision: 0, mod_revision: 0, version: 0, lease: 0, value: Vec::new() },
            );
        }
        records.iter().all(|r| compare_one(c, r))
    }
}

/// What a delete event carries: the key and the deleting revision.
pub(crate) fn tombstone(key: &[u8], rev: Revision) -> KeyValue {
    KeyValue { key: key.to_vec(), mod_revision: rev, ..Default::default() }
}

/// Lease changes. A lease's record and its attachment index change in the same
/// batch as the keys, so that no member ever sees a key attached to a missing lease.
impl WriteTxn<'_> {
    fn check_lease(&self, lease: i64) -> Result<(), MvccError> {
        if lease != 0 && lease_table::get(self.db, self.snap, lease).is_none() {
            return Err(MvccError::LeaseNotFound { lease });
        }
        Ok(())
    }

    /// Moves `key`'s entry in the attachment index from lease `from` to lease `to`
    /// (0 is no lease).
    fn move_attachment(&mut self, key: &[u8], from: i64, to: i64) {
        if from == to {
            return;
        }
        let cf = schema::cf(self.db, CF_LEASE_KEYS);
        if from != 0 {
            self.batch.delete_cf(cf, schema::lease_attachment_key(from, key));
        }
        if to != 0 {
            self.batch.put_cf(cf, schema::lease_attachment_key(to, key), []);
        }
    }

    pub fn lease_grant(&mut self, id: i64, ttl_seconds: i64) -> Result<(), MvccError> {
        if id == 0 {
            return Err(MvccError::LeaseNotFound { lease: id });
        }
        if ttl_seconds > LEASE_TTL_SECONDS_MAX {
            return Err(MvccError::LeaseTtlTooLarge { ttl_seconds });
        }
        if lease_table::get(self.db, self.snap, id).is_some() {
            return Err(MvccError::LeaseExists { lease: id });
        }
        let meta = schema::cf(self.db, CF_META);
        let grants = self.snap.get_cf(meta, meta_keys::LEASE_GRANTS).expect("reading the lease grant count");
        let grant = grants.map_or(0, |b| u64::from_be_bytes(b.as_slice().try_into().expect("8 bytes"))) + 1;
        self.batch.put_cf(meta, meta_keys::LEASE_GRANTS, grant.to_be_bytes());
        self.put_lease(id, &LeaseRecord { ttl_seconds, remaining_ms: 0, grant });
        Ok(())
    }

    /// Deletes every attached key through the normal delete path (one DELETE event
    /// and one tombstone each, all at this write's revision), then the lease.
    pub fn lease_revoke(&mut self, id: i64) -> Result<(), MvccError> {
        if lease_table::get(self.db, self.snap, id).is_none() {
            return Err(MvccError::LeaseNotFound { lease: id });
        }
        for key in lease_table::attached_keys(self.db, self.snap, id) {
            let deleted = self.delete_range(&DeleteRangeRequest { key, range_end: Vec::new(), prev_kv: false })?;
            assert_eq!(deleted.deleted, 1, "lease {id:x} lists a key that is not live or not attached to it");
        }
        self.batch.delete_cf(schema::cf(self.db, CF_LEASES), schema::lease_key(id));
        Ok(())
    }

    pub fn lease_checkpoint(&mut self, checkpoints: &[LeaseCheckpoint]) -> Result<(), MvccError> {
        for cp in checkpoints {
            // The lease may have been revoked after the leader took the checkpoint.
            match lease_table::get(self.db, self.snap, cp.id) {
                Some(record) if record.grant == cp.grant => {
                    self.put_lease(cp.id, &LeaseRecord { remaining_ms: cp.remaining_ms.max(0), ..record })
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn put_lease(&mut self, id: i64, record: &LeaseRecord) {
        self.batch.put_cf(schema::cf(self.db, CF_LEASES), schema::lease_key(id), encode(record));
    }
}

fn branch(req: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &req.success
    } else {
        &req.failure
    }
}

/// Whether any branch, at any depth, writes (etcd's `!isTxnReadonly`).
fn writes(req: &TxnRequest) -> bool {
    req.success.iter().chain(&req.failure).any(|op| match op {
        RequestOp::Put(_) | RequestOp::DeleteRange(_) => true,
        RequestOp::Txn(t) => writes(t),
        RequestOp::Range(_) => false,
    })
}

fn compare_one(c: &Compare, r: &KvRecord) -> bool {
    let ord = match &c.target {
        CompareTarget::Version(v) => r.version.cmp(v),
        CompareTarget::Create(v) => r.create_revision.cmp(v),
        CompareTarget::Mod(v) => r.mod_revision.cmp(v),
        CompareTarget::Lease(v) => r.lease.cmp(v),
        CompareTarget::Value(v) => r.value.as_slice().cmp(v.as_slice()),
    };
    match c.result {
        CompareResult::Equal => ord.is_eq(),
        CompareResult::NotEqual => ord.is_ne(),
        CompareResult::Greater => ord.is_gt(),
        CompareResult::Less => ord.is_lt(),
    }
}
