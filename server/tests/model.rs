//! Model-based test of the KV API: random sequences of Put / DeleteRange /
//! Txn / Range / Compact run against one real server and against an
//! in-memory model of etcd's MVCC semantics written here; every response
//! (kvs with all fields, count, more, deleted, prev_kvs, succeeded, header
//! revisions, error code and message) must match the model.
//!
//! One single-member server is started for the whole test. Each proptest case
//! works under its own key prefix, so cases do not see each other's keys, but
//! revisions and compaction are global: the model starts each case at the
//! server's current revision and carries the compaction revision over from
//! earlier cases.
//!
//! `PROPTEST_CASES=n` changes the number of cases (default 32).

mod common;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{grpc_status, Cluster};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, DeleteResponse, GetOptions, GetResponse, PutOptions, PutResponse,
    SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tonic::Code;

// ---------------------------------------------------------------------------
// Generated operations (abstract: resolved against the model when run).

const NKEYS: usize = 6;
/// Key names under the case prefix; the last one is never written (a range end).
const KEY_NAMES: [&str; NKEYS + 1] = ["a", "b", "c", "d", "e", "f", "g"];
/// Values; the empty value is a legal value.
const VALUES: [&str; 4] = ["", "x", "y", "z"];

#[derive(Clone, Debug)]
enum KeySel {
    One(usize),
    Prefix,
    /// [KEY_NAMES[lo], KEY_NAMES[hi]) with lo < hi.
    Span(usize, usize),
    /// range_end = "\0": every key >= KEY_NAMES[i].
    FromKey(usize),
}

#[derive(Clone, Debug)]
enum RevSel {
    Latest,
    Past(u16),
    Compacted(u16),
    Future(u8),
}

#[derive(Clone, Debug)]
enum PutKind {
    Normal,
    IgnoreValue,
    /// Invalid: ignore_value with a value.
    IgnoreValueWithValue,
}

#[derive(Clone, Debug)]
struct PutGen {
    key: usize,
    value: usize,
    prev_kv: bool,
    kind: PutKind,
}

#[derive(Clone, Debug)]
struct DelGen {
    keys: KeySel,
    prev_kv: bool,
}

#[derive(Clone, Debug)]
struct RangeGen {
    keys: KeySel,
    rev: RevSel,
    limit: i64,
    count_only: bool,
    keys_only: bool,
    serializable: bool,
    /// (target 0..5, order 0..3)
    sort: Option<(u8, u8)>,
    /// (which of min_mod/max_mod/min_create/max_create, revision selector)
    filter: Option<(u8, u16)>,
}

#[derive(Clone, Debug)]
enum CmpVal {
    /// The key's actual value plus a delta (for VALUE: the actual value if 0).
    Model(i8),
    Raw(u8),
}

#[derive(Clone, Debug)]
struct CmpGen {
    keys: KeySel,
    /// 0 VERSION, 1 CREATE, 2 MOD, 3 VALUE, 4 LEASE
    target: u8,
    /// 0 EQUAL, 1 GREATER, 2 LESS, 3 NOT_EQUAL
    op: u8,
    val: CmpVal,
}

#[derive(Clone, Debug)]
enum TOp {
    Put(PutGen),
    Del(DelGen),
    Range(RangeGen),
}

#[derive(Clone, Debug)]
struct TxnGen {
    compares: Vec<CmpGen>,
    success: Vec<TOp>,
    failure: Vec<TOp>,
}

#[derive(Clone, Debug)]
enum CompactSel {
    Valid(u16),
    Old(u8),
    Future(u8),
}

#[derive(Clone, Debug)]
enum Op {
    Put(PutGen),
    Del(DelGen),
    Range(RangeGen),
    Txn(TxnGen),
    Compact(CompactSel),
}

fn key_sel(allow_from_key: bool) -> BoxedStrategy<KeySel> {
    let one = (0..NKEYS).prop_map(KeySel::One);
    let span = (0..NKEYS, 1..=NKEYS).prop_map(|(a, b)| {
        let (lo, hi) = match a.cmp(&b) {
            std::cmp::Ordering::Less => (a, b),
            std::cmp::Ordering::Greater => (b, a),
            std::cmp::Ordering::Equal => (a, a + 1),
        };
        KeySel::Span(lo, hi)
    });
    if allow_from_key {
        prop_oneof![
            5 => one,
            1 => Just(KeySel::Prefix),
            2 => span,
            1 => (0..NKEYS).prop_map(KeySel::FromKey),
        ]
        .boxed()
    } else {
        prop_oneof![5 => one, 1 => Just(KeySel::Prefix), 2 => span].boxed()
    }
}

fn rev_sel() -> impl Strategy<Value = RevSel> {
    prop_oneof![
        8 => Just(RevSel::Latest),
        5 => any::<u16>().prop_map(RevSel::Past),
        1 => any::<u16>().prop_map(RevSel::Compacted),
        1 => (0u8..3).prop_map(RevSel::Future),
    ]
}

fn put_gen() -> impl Strategy<Value = PutGen> {
    (
        0..NKEYS,
        0..VALUES.len(),
        proptest::bool::weighted(0.3),
        prop_oneof![
            10 => Just(PutKind::Normal),
            2 => Just(PutKind::IgnoreValue),
            1 => Just(PutKind::IgnoreValueWithValue),
        ],
    )
        .prop_map(|(key, value, prev_kv, kind)| PutGen { key, value, prev_kv, kind })
}

fn del_gen(allow_from_key: bool) -> impl Strategy<Value = DelGen> {
    (key_sel(allow_from_key), proptest::bool::weighted(0.5)).prop_map(|(keys, prev_kv)| DelGen { keys, prev_kv })
}

fn range_gen(standalone: bool) -> impl Strategy<Value = RangeGen> {
    (
        key_sel(true),
        rev_sel(),
        prop_oneof![3 => Just(0i64), 2 => 1i64..4],
        proptest::bool::weighted(0.15),
        proptest::bool::weighted(0.2),
        proptest::bool::weighted(if standalone { 0.3 } else { 0.0 }),
        proptest::option::weighted(0.35, (0u8..5, 0u8..3)),
        proptest::option::weighted(0.2, (0u8..4, any::<u16>())),
    )
        .prop_map(|(keys, rev, limit, count_only, keys_only, serializable, sort, filter)| RangeGen {
            keys,
            rev,
            limit,
            count_only,
            keys_only,
            serializable,
            sort,
            filter,
        })
}

fn cmp_gen() -> impl Strategy<Value = CmpGen> {
    (
        prop_oneof![4 => (0..NKEYS).prop_map(KeySel::One), 1 => key_sel(false)],
        prop_oneof![3 => 0u8..4, 1 => Just(4u8)],
        0u8..4,
        prop_oneof![
            3 => (-1i8..=1).prop_map(CmpVal::Model),
            1 => any::<u8>().prop_map(CmpVal::Raw),
        ],
    )
        .prop_map(|(keys, target, op, val)| CmpGen { keys, target, op, val })
}

fn txn_op() -> impl Strategy<Value = TOp> {
    prop_oneof![
        4 => put_gen().prop_map(TOp::Put),
        2 => del_gen(false).prop_map(TOp::Del),
        2 => range_gen(false).prop_map(TOp::Range),
    ]
}

/// Drops the ops that would make a branch invalid (duplicate put keys, a put
/// inside a deleted range, ignore_value with a value).
fn repair_branch(ops: Vec<TOp>) -> Vec<TOp> {
    let mut puts: Vec<usize> = Vec::new();
    let mut dels: Vec<(usize, usize)> = Vec::new(); // [lo, hi) over key indices
    let span = |k: &KeySel| match *k {
        KeySel::One(i) => (i, i + 1),
        KeySel::Prefix => (0, NKEYS + 1),
        KeySel::Span(lo, hi) => (lo, hi),
        KeySel::FromKey(i) => (i, NKEYS + 1),
    };
    let mut out = Vec::new();
    for op in ops {
        match &op {
            TOp::Put(p) => {
                if matches!(p.kind, PutKind::IgnoreValueWithValue)
                    || puts.contains(&p.key)
                    || dels.iter().any(|&(lo, hi)| lo <= p.key && p.key < hi)
                {
                    continue;
                }
                puts.push(p.key);
            }
            TOp::Del(d) => {
                let (lo, hi) = span(&d.keys);
                if puts.iter().any(|&k| lo <= k && k < hi) {
                    continue;
                }
                dels.push((lo, hi));
            }
            TOp::Range(_) => {}
        }
        out.push(op);
    }
    out
}

fn txn_gen() -> impl Strategy<Value = TxnGen> {
    (
        proptest::collection::vec(cmp_gen(), 0..3),
        proptest::collection::vec(txn_op(), 0..5),
        proptest::collection::vec(txn_op(), 0..4),
        // Most txns are made valid; the rest keep whatever they drew.
        proptest::bool::weighted(0.85),
    )
        .prop_map(|(compares, success, failure, valid)| {
            if valid {
                TxnGen { compares, success: repair_branch(success), failure: repair_branch(failure) }
            } else {
                TxnGen { compares, success, failure }
            }
        })
}

fn op_gen() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => put_gen().prop_map(Op::Put),
        2 => del_gen(true).prop_map(Op::Del),
        5 => range_gen(true).prop_map(Op::Range),
        5 => txn_gen().prop_map(Op::Txn),
        1 => prop_oneof![
            4 => any::<u16>().prop_map(CompactSel::Valid),
            1 => (0u8..3).prop_map(CompactSel::Old),
            1 => (0u8..3).prop_map(CompactSel::Future),
        ]
        .prop_map(Op::Compact),
    ]
}

// ---------------------------------------------------------------------------
// Concrete requests.

#[derive(Clone, Debug, Copy, PartialEq, Eq)]
enum Target {
    Version,
    Create,
    Mod,
    Value,
    Lease,
}

#[derive(Clone, Debug)]
struct PutReq {
    key: Vec<u8>,
    value: Vec<u8>,
    prev_kv: bool,
    ignore_value: bool,
}

#[derive(Clone, Debug)]
struct RangeReq {
    key: Vec<u8>,
    end: Vec<u8>,
    rev: i64,
    limit: i64,
    count_only: bool,
    keys_only: bool,
    serializable: bool,
    sort: Option<(SortTarget, SortOrder)>,
    min_mod: i64,
    max_mod: i64,
    min_create: i64,
    max_create: i64,
}

#[derive(Clone, Debug)]
struct DelReq {
    key: Vec<u8>,
    end: Vec<u8>,
    prev_kv: bool,
}

#[derive(Clone, Debug)]
struct CmpReq {
    key: Vec<u8>,
    end: Vec<u8>,
    target: Target,
    op: CompareOp,
    num: i64,
    value: Vec<u8>,
}

#[derive(Clone, Debug)]
enum Req {
    Put(PutReq),
    Range(RangeReq),
    Del(DelReq),
    Txn { compares: Vec<CmpReq>, success: Vec<Req>, failure: Vec<Req> },
    Compact(i64),
}

// ---------------------------------------------------------------------------
// Responses, as the model predicts them and as the server sent them.

#[derive(Clone, Debug, PartialEq)]
struct Kv {
    key: Vec<u8>,
    value: Vec<u8>,
    create: i64,
    modr: i64,
    version: i64,
    lease: i64,
}

/// For a range sorted on a target other than the key, etcd does not define
/// the order of ties: the check accepts any order (and any choice at a limit
/// boundary) that is sorted and made of the right key-values.
#[derive(Clone, Debug, PartialEq)]
struct Loose {
    target: SortTarget,
    keys_only: bool,
    /// Every key-value that passed the filters, with values.
    all: Vec<Kv>,
}

#[derive(Clone, Debug, PartialEq)]
enum Resp {
    Put { rev: i64, prev: Option<Kv> },
    Range { rev: i64, kvs: Vec<Kv>, count: i64, more: bool, loose: Option<Loose> },
    Del { rev: i64, deleted: i64, prev: Vec<Kv> },
    Txn { rev: i64, succeeded: bool, responses: Vec<Resp> },
    Compact { rev: i64 },
}

type Outcome = Result<Resp, (Code, String)>;

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
const VALUE_PROVIDED: &str = "etcdserver: value is provided";
const KEY_NOT_FOUND: &str = "etcdserver: key not found";

fn err(code: Code, msg: &str) -> (Code, String) {
    (code, msg.to_string())
}

// ---------------------------------------------------------------------------
// The model.

struct Model {
    /// Current revision.
    rev: i64,
    /// Revision of the latest compaction (global, carried across cases).
    compact_rev: i64,
    /// Revision when the case started (for choosing interesting revisions).
    start_rev: i64,
    /// key -> every change: (revision, state after it; None = deleted).
    history: BTreeMap<Vec<u8>, Vec<(i64, Option<Kv>)>>,
}

fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        k == key
    } else if end == [0] {
        k >= key
    } else {
        k >= key && k < end
    }
}

fn target_value(kv: &Kv, t: SortTarget) -> (i64, Vec<u8>) {
    match t {
        SortTarget::Key => (0, kv.key.clone()),
        SortTarget::Version => (kv.version, Vec::new()),
        SortTarget::Create => (kv.create, Vec::new()),
        SortTarget::Mod => (kv.modr, Vec::new()),
        SortTarget::Value => (0, kv.value.clone()),
    }
}

impl Model {
    fn get_at(&self, key: &[u8], rev: i64) -> Option<&Kv> {
        let events = self.history.get(key)?;
        events.iter().rev().find(|(r, _)| *r <= rev).and_then(|(_, kv)| kv.as_ref())
    }

    /// Live key-values in [key, end) at `rev`, in key order.
    fn range_at(&self, key: &[u8], end: &[u8], rev: i64) -> Vec<Kv> {
        self.history.keys().filter(|k| in_range(k, key, end)).filter_map(|k| self.get_at(k, rev).cloned()).collect()
    }

    fn record(&mut self, key: &[u8], rev: i64, kv: Option<Kv>) {
        self.history.entry(key.to_vec()).or_default().push((rev, kv));
    }

    fn check_range_rev(&self, r: &RangeReq, cur: i64) -> Result<(), (Code, String)> {
        if r.rev > cur {
            return Err(err(Code::OutOfRange, FUTURE_REV));
        }
        if r.rev > 0 && r.rev < self.compact_rev {
            return Err(err(Code::OutOfRange, COMPACTED));
        }
        Ok(())
    }

    /// A range read at `view` (the store's current revision as the request sees it).
    fn range(&self, r: &RangeReq, view: i64) -> Resp {
        let at = if r.rev > 0 { r.rev } else { view };
        let all = self.range_at(&r.key, &r.end, at);
        let count = all.len() as i64;
        let mut kvs: Vec<Kv> = all
            .into_iter()
            .filter(|kv| {
                (r.min_mod == 0 || kv.modr >= r.min_mod)
                    && (r.max_mod == 0 || kv.modr <= r.max_mod)
                    && (r.min_create == 0 || kv.create >= r.min_create)
                    && (r.max_create == 0 || kv.create <= r.max_create)
            })
            .collect();
        let mut loose = None;
        if let Some((target, order)) = r.sort {
            let order = if order == SortOrder::None && target != SortTarget::Key { SortOrder::Ascend } else { order };
            match order {
                SortOrder::None => {}
                SortOrder::Ascend => kvs.sort_by_key(|kv| target_value(kv, target)),
                SortOrder::Descend => kvs.sort_by_key(|kv| std::cmp::Reverse(target_value(kv, target))),
            }
            if order != SortOrder::None && target != SortTarget::Key {
                loose = Some(Loose { target, keys_only: r.keys_only, all: kvs.clone() });
            }
        }
        if r.count_only {
            return Resp::Range { rev: view, kvs: Vec::new(), count, more: false, loose: None };
        }
        let more = r.limit > 0 && kvs.len() as i64 > r.limit;
        if r.limit > 0 {
            kvs.truncate(r.limit as usize);
        }
        if r.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Resp::Range { rev: view, kvs, count, more, loose }
    }

    fn put(&mut self, p: &PutReq, new_rev: i64, view: i64) -> Resp {
        let old = self.get_at(&p.key, view).cloned();
        let value =
            if p.ignore_value { old.as_ref().map(|kv| kv.value.clone()).unwrap_or_default() } else { p.value.clone() };
        let kv = Kv {
            key: p.key.clone(),
            value,
            create: old.as_ref().map(|kv| kv.create).unwrap_or(new_rev),
            modr: new_rev,
            version: old.as_ref().map(|kv| kv.version).unwrap_or(0) + 1,
            lease: 0,
        };
        self.record(&p.key, new_rev, Some(kv));
        Resp::Put { rev: new_rev, prev: if p.prev_kv { old } else { None } }
    }

    fn delete(&mut self, d: &DelReq, new_rev: i64, view: i64) -> Resp {
        let live = self.range_at(&d.key, &d.end, view);
        for kv in &live {
            self.record(&kv.key, new_rev, None);
        }
        let deleted = live.len() as i64;
        Resp::Del {
            rev: if deleted > 0 { new_rev } else { view },
            deleted,
            prev: if d.prev_kv { live } else { Vec::new() },
        }
    }

    fn compare(&self, c: &CmpReq, rev: i64) -> bool {
        let kvs = self.range_at(&c.key, &c.end, rev);
        let holds = |kv: &Kv| {
            let ord = match c.target {
                Target::Version => kv.version.cmp(&c.num),
                Target::Create => kv.create.cmp(&c.num),
                Target::Mod => kv.modr.cmp(&c.num),
                Target::Lease => kv.lease.cmp(&c.num),
                Target::Value => kv.value.as_slice().cmp(c.value.as_slice()),
            };
            match c.op {
                CompareOp::Equal => ord.is_eq(),
                CompareOp::NotEqual => ord.is_ne(),
                CompareOp::Greater => ord.is_gt(),
                CompareOp::Less => ord.is_lt(),
            }
        };
        if kvs.is_empty() {
            // A missing key compares as the zero key-value, except that a
            // VALUE compare on a missing key always fails.
            let zero = Kv { key: c.key.clone(), value: Vec::new(), create: 0, modr: 0, version: 0, lease: 0 };
            return c.target != Target::Value && holds(&zero);
        }
        kvs.iter().all(holds)
    }

    fn apply(&mut self, req: &Req) -> Outcome {
        match req {
            Req::Put(p) => {
                if p.ignore_value && !p.value.is_empty() {
                    return Err(err(Code::InvalidArgument, VALUE_PROVIDED));
                }
                if p.ignore_value && self.get_at(&p.key, self.rev).is_none() {
                    return Err(err(Code::InvalidArgument, KEY_NOT_FOUND));
                }
                let new_rev = self.rev + 1;
                let resp = self.put(p, new_rev, self.rev);
                self.rev = new_rev;
                Ok(resp)
            }
            Req::Range(r) => {
                self.check_range_rev(r, self.rev)?;
                Ok(self.range(r, self.rev))
            }
            Req::Del(d) => {
                let resp = self.delete(d, self.rev + 1, self.rev);
                if let Resp::Del { rev, .. } = resp {
                    self.rev = rev;
                }
                Ok(resp)
            }
            Req::Compact(rev) => {
                if *rev <= self.compact_rev {
                    return Err(err(Code::OutOfRange, COMPACTED));
                }
                if *rev > self.rev {
                    return Err(err(Code::OutOfRange, FUTURE_REV));
                }
                self.compact_rev = *rev;
                Ok(Resp::Compact { rev: self.rev })
            }
            Req::Txn { compares, success, failure } => self.txn(compares, success, failure),
        }
    }

    fn txn(&mut self, compares: &[CmpReq], success: &[Req], failure: &[Req]) -> Outcome {
        // Checks made before the request is proposed: every branch.
        for op in success.iter().chain(failure) {
            if let Req::Put(p) = op {
                if p.ignore_value && !p.value.is_empty() {
                    return Err(err(Code::InvalidArgument, VALUE_PROVIDED));
                }
            }
        }
        for branch in [success, failure] {
            if has_duplicate_key(branch) {
                return Err(err(Code::InvalidArgument, DUPLICATE_KEY));
            }
        }
        let begin = self.rev;
        let succeeded = compares.iter().all(|c| self.compare(c, begin));
        let branch = if succeeded { success } else { failure };
        // Checks against the store, on the branch taken: puts first (only in
        // a txn that writes at all), then ranges.
        let writes = success.iter().chain(failure).any(|op| matches!(op, Req::Put(_) | Req::Del(_)));
        if writes {
            for op in branch {
                if let Req::Put(p) = op {
                    if p.ignore_value && self.get_at(&p.key, begin).is_none() {
                        return Err(err(Code::InvalidArgument, KEY_NOT_FOUND));
                    }
                }
            }
        }
        for op in branch {
            if let Req::Range(r) = op {
                self.check_range_rev(r, begin)?;
            }
        }
        // Apply: one revision for every write; later ops see earlier ones.
        let new_rev = begin + 1;
        let mut changed = false;
        let mut responses = Vec::new();
        for op in branch {
            let view = if changed { new_rev } else { begin };
            let resp = match op {
                Req::Put(p) => {
                    changed = true;
                    self.put(p, new_rev, view)
                }
                Req::Del(d) => {
                    let resp = self.delete(d, new_rev, view);
                    if let Resp::Del { deleted, .. } = resp {
                        changed |= deleted > 0;
                    }
                    resp
                }
                Req::Range(r) => self.range(r, view),
                other => unreachable!("not generated in a txn: {other:?}"),
            };
            responses.push(resp);
        }
        if changed {
            self.rev = new_rev;
        }
        Ok(Resp::Txn { rev: self.rev, succeeded, responses })
    }
}

/// etcd's rule for one branch: a key may be put at most once, and not inside
/// any range deleted in the same branch (in either order).
fn has_duplicate_key(branch: &[Req]) -> bool {
    let mut puts = BTreeSet::new();
    let dels: Vec<(&[u8], &[u8])> = branch
        .iter()
        .filter_map(|op| match op {
            Req::Del(d) => Some((d.key.as_slice(), d.end.as_slice())),
            _ => None,
        })
        .collect();
    for op in branch {
        if let Req::Put(p) = op {
            if !puts.insert(p.key.clone()) {
                return true;
            }
            if dels.iter().any(|(k, e)| in_range(&p.key, k, e)) {
                return true;
            }
        }
    }
    false
}

// ---------------------------------------------------------------------------
// Resolving generated ops against the model.

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

struct Resolver<'a> {
    prefix: &'a str,
    m: &'a Model,
}

impl Resolver<'_> {
    fn key(&self, i: usize) -> Vec<u8> {
        format!("{}{}", self.prefix, KEY_NAMES[i]).into_bytes()
    }

    fn keys(&self, k: &KeySel) -> (Vec<u8>, Vec<u8>) {
        match *k {
            KeySel::One(i) => (self.key(i), Vec::new()),
            KeySel::Prefix => (self.prefix.as_bytes().to_vec(), prefix_end(self.prefix.as_bytes())),
            KeySel::Span(lo, hi) => (self.key(lo), self.key(hi)),
            KeySel::FromKey(i) => (self.key(i), vec![0]),
        }
    }

    /// A revision in [lo, hi] chosen by x (hi if the interval is empty).
    fn pick(lo: i64, hi: i64, x: u64) -> i64 {
        if lo > hi {
            hi
        } else {
            lo + (x % (hi - lo + 1) as u64) as i64
        }
    }

    /// A readable revision from shortly before the case started on.
    fn past(&self, x: u16) -> i64 {
        let lo = self.m.compact_rev.max(self.m.start_rev - 1).max(1);
        Self::pick(lo, self.m.rev, x as u64)
    }

    fn rev(&self, r: &RevSel) -> i64 {
        match *r {
            RevSel::Latest => 0,
            RevSel::Past(x) => self.past(x),
            RevSel::Compacted(x) if self.m.compact_rev > 1 => (self.m.compact_rev - 1 - (x % 3) as i64).max(1),
            RevSel::Compacted(x) => self.past(x),
            RevSel::Future(x) => self.m.rev + 1 + x as i64,
        }
    }

    fn put(&self, p: &PutGen) -> PutReq {
        let value = VALUES[p.value].as_bytes().to_vec();
        let (value, ignore_value) = match p.kind {
            PutKind::Normal => (value, false),
            PutKind::IgnoreValue => (Vec::new(), true),
            PutKind::IgnoreValueWithValue => (b"v".to_vec(), true),
        };
        PutReq { key: self.key(p.key), value, prev_kv: p.prev_kv, ignore_value }
    }

    fn del(&self, d: &DelGen) -> DelReq {
        let (key, end) = self.keys(&d.keys);
        DelReq { key, end, prev_kv: d.prev_kv }
    }

    fn range(&self, r: &RangeGen) -> RangeReq {
        let (key, end) = self.keys(&r.keys);
        let targets = [SortTarget::Key, SortTarget::Version, SortTarget::Create, SortTarget::Mod, SortTarget::Value];
        let orders = [SortOrder::None, SortOrder::Ascend, SortOrder::Descend];
        let mut req = RangeReq {
            key,
            end,
            rev: self.rev(&r.rev),
            limit: r.limit,
            count_only: r.count_only,
            keys_only: r.keys_only,
            serializable: r.serializable,
            sort: r.sort.map(|(t, o)| (targets[t as usize], orders[o as usize])),
            min_mod: 0,
            max_mod: 0,
            min_create: 0,
            max_create: 0,
        };
        if let Some((t, SortOrder::None)) = req.sort {
            if t != SortTarget::Key && req.limit > 0 {
                // etcd quirk, not modelled: with a sort target other than KEY
                // and order NONE (which sorts ascending), etcd 3.4 applies the
                // limit *before* sorting (it fetches the first limit+1 keys by
                // key, then sorts those), unlike with ASCEND/DESCEND. Such
                // requests are not generated with a limit.
                req.limit = 0;
            }
        }
        if let Some((which, x)) = r.filter {
            let rev = Self::pick(self.m.start_rev, self.m.rev + 1, x as u64);
            match which {
                0 => req.min_mod = rev,
                1 => req.max_mod = rev,
                2 => req.min_create = rev,
                _ => req.max_create = rev,
            }
        }
        req
    }

    fn cmp(&self, c: &CmpGen) -> CmpReq {
        let (key, end) = self.keys(&c.keys);
        let target = [Target::Version, Target::Create, Target::Mod, Target::Value, Target::Lease][c.target as usize];
        let op = [CompareOp::Equal, CompareOp::Greater, CompareOp::Less, CompareOp::NotEqual][c.op as usize];
        // The first live key of the range, as the base for "model" values.
        let first = self.m.range_at(&key, &end, self.m.rev).into_iter().next();
        let (mut num, mut value) = (0, Vec::new());
        match (&c.val, target) {
            (CmpVal::Model(d), Target::Value) => {
                value = match (d, &first) {
                    (0, Some(kv)) => kv.value.clone(),
                    _ => VALUES[d.rem_euclid(VALUES.len() as i8) as usize].as_bytes().to_vec(),
                }
            }
            (CmpVal::Raw(x), Target::Value) => value = VALUES[*x as usize % VALUES.len()].as_bytes().to_vec(),
            (CmpVal::Model(d), _) => {
                let base = first
                    .map(|kv| match target {
                        Target::Version => kv.version,
                        Target::Create => kv.create,
                        Target::Mod => kv.modr,
                        _ => kv.lease,
                    })
                    .unwrap_or(0);
                num = base + *d as i64;
            }
            (CmpVal::Raw(x), Target::Version) => num = (*x % 4) as i64,
            (CmpVal::Raw(x), Target::Lease) => num = (*x % 2) as i64,
            (CmpVal::Raw(x), _) => num = Self::pick(self.m.start_rev, self.m.rev + 1, *x as u64),
        }
        CmpReq { key, end, target, op, num, value }
    }

    fn top(&self, op: &Op) -> Req {
        match op {
            Op::Put(p) => Req::Put(self.put(p)),
            Op::Del(d) => Req::Del(self.del(d)),
            Op::Range(r) => Req::Range(self.range(r)),
            Op::Txn(t) => {
                let branch = |ops: &[TOp]| -> Vec<Req> {
                    ops.iter()
                        .map(|op| match op {
                            TOp::Put(p) => Req::Put(self.put(p)),
                            TOp::Del(d) => Req::Del(self.del(d)),
                            TOp::Range(r) => Req::Range(self.range(r)),
                        })
                        .collect()
                };
                Req::Txn {
                    compares: t.compares.iter().map(|c| self.cmp(c)).collect(),
                    success: branch(&t.success),
                    failure: branch(&t.failure),
                }
            }
            Op::Compact(c) => {
                let m = self.m;
                Req::Compact(match *c {
                    CompactSel::Valid(x) => {
                        let lo = (m.compact_rev + 1).max(m.start_rev - 1);
                        Self::pick(lo, m.rev, x as u64)
                    }
                    CompactSel::Old(x) => (m.compact_rev - x as i64).max(1),
                    CompactSel::Future(x) => m.rev + 1 + x as i64,
                })
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Talking to the server.

fn kv_of(kv: &etcd_client::KeyValue) -> Kv {
    Kv {
        key: kv.key().to_vec(),
        value: kv.value().to_vec(),
        create: kv.create_revision(),
        modr: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

fn rev_of(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    // A missing header shows up as revision -1, which never matches.
    h.map(|h| h.revision()).unwrap_or(-1)
}

fn from_put(p: &PutResponse) -> Resp {
    Resp::Put { rev: rev_of(p.header()), prev: p.prev_key().map(kv_of) }
}

fn from_range(g: &GetResponse) -> Resp {
    Resp::Range {
        rev: rev_of(g.header()),
        kvs: g.kvs().iter().map(kv_of).collect(),
        count: g.count(),
        more: g.more(),
        loose: None,
    }
}

fn from_del(d: &DeleteResponse) -> Resp {
    Resp::Del { rev: rev_of(d.header()), deleted: d.deleted(), prev: d.prev_kvs().iter().map(kv_of).collect() }
}

fn from_txn(t: &TxnResponse) -> Resp {
    Resp::Txn {
        rev: rev_of(t.header()),
        succeeded: t.succeeded(),
        responses: t
            .op_responses()
            .iter()
            .map(|r| match r {
                TxnOpResponse::Put(p) => from_put(p),
                TxnOpResponse::Get(g) => from_range(g),
                TxnOpResponse::Delete(d) => from_del(d),
                TxnOpResponse::Txn(t) => from_txn(t),
            })
            .collect(),
    }
}

fn put_opts(p: &PutReq) -> PutOptions {
    let mut o = PutOptions::new();
    if p.prev_kv {
        o = o.with_prev_key();
    }
    if p.ignore_value {
        o = o.with_ignore_value();
    }
    o
}

fn get_opts(r: &RangeReq) -> GetOptions {
    let mut o = GetOptions::new()
        .with_revision(r.rev)
        .with_limit(r.limit)
        .with_min_mod_revision(r.min_mod)
        .with_max_mod_revision(r.max_mod)
        .with_min_create_revision(r.min_create)
        .with_max_create_revision(r.max_create);
    if !r.end.is_empty() {
        o = o.with_range(r.end.clone());
    }
    if r.count_only {
        o = o.with_count_only();
    }
    if r.keys_only {
        o = o.with_keys_only();
    }
    if r.serializable {
        o = o.with_serializable();
    }
    if let Some((t, ord)) = r.sort {
        o = o.with_sort(t, ord);
    }
    o
}

fn del_opts(d: &DelReq) -> DeleteOptions {
    let mut o = DeleteOptions::new();
    if !d.end.is_empty() {
        o = o.with_range(d.end.clone());
    }
    if d.prev_kv {
        o = o.with_prev_key();
    }
    o
}

fn txn_op_of(r: &Req) -> TxnOp {
    match r {
        Req::Put(p) => TxnOp::put(p.key.clone(), p.value.clone(), Some(put_opts(p))),
        Req::Range(g) => TxnOp::get(g.key.clone(), Some(get_opts(g))),
        Req::Del(d) => TxnOp::delete(d.key.clone(), Some(del_opts(d))),
        other => unreachable!("not generated in a txn: {other:?}"),
    }
}

fn compare_of(c: &CmpReq) -> Compare {
    let k = c.key.clone();
    let cmp = match c.target {
        Target::Version => Compare::version(k, c.op, c.num),
        Target::Create => Compare::create_revision(k, c.op, c.num),
        Target::Mod => Compare::mod_revision(k, c.op, c.num),
        Target::Lease => Compare::lease(k, c.op, c.num),
        Target::Value => Compare::value(k, c.op, c.value.clone()),
    };
    if c.end.is_empty() {
        cmp
    } else {
        cmp.with_range(c.end.clone())
    }
}

async fn send(c: &mut Client, req: &Req) -> Outcome {
    let call = async {
        match req {
            Req::Put(p) => c.put(p.key.clone(), p.value.clone(), Some(put_opts(p))).await.map(|r| from_put(&r)),
            Req::Range(r) => c.get(r.key.clone(), Some(get_opts(r))).await.map(|g| from_range(&g)),
            Req::Del(d) => c.delete(d.key.clone(), Some(del_opts(d))).await.map(|d| from_del(&d)),
            Req::Txn { compares, success, failure } => {
                let txn = Txn::new()
                    .when(compares.iter().map(compare_of).collect::<Vec<_>>())
                    .and_then(success.iter().map(txn_op_of).collect::<Vec<_>>())
                    .or_else(failure.iter().map(txn_op_of).collect::<Vec<_>>());
                c.txn(txn).await.map(|t| from_txn(&t))
            }
            Req::Compact(rev) => c.compact(*rev, None).await.map(|r| Resp::Compact { rev: rev_of(r.header()) }),
        }
    };
    match tokio::time::timeout(Duration::from_secs(20), call).await {
        Ok(res) => res.map_err(|e| grpc_status(&e)),
        Err(_) => Err((Code::DeadlineExceeded, "no answer within 20 s".into())),
    }
}

// ---------------------------------------------------------------------------
// Comparing.

fn check_resp(exp: &Resp, act: &Resp) -> Result<(), String> {
    match (exp, act) {
        (
            Resp::Range { rev, kvs, count, more, loose },
            Resp::Range { rev: arev, kvs: akvs, count: acount, more: amore, .. },
        ) => {
            if (rev, count, more) != (arev, acount, amore) {
                return Err(format!(
                    "range (revision, count, more): expected {:?}, got {:?}",
                    (rev, count, more),
                    (arev, acount, amore)
                ));
            }
            match loose {
                None => {
                    if kvs != akvs {
                        return Err(format!("range kvs: expected {kvs:?}, got {akvs:?}"));
                    }
                }
                Some(l) => {
                    if kvs.len() != akvs.len() {
                        return Err(format!("range kvs: expected {kvs:?}, got {akvs:?}"));
                    }
                    let full = |kv: &Kv| l.all.iter().find(|f| f.key == kv.key).cloned();
                    let mut seen = BTreeSet::new();
                    for (e, a) in kvs.iter().zip(akvs) {
                        let Some(f) = full(a) else {
                            return Err(format!("range returned {a:?}, not in {:?}", l.all));
                        };
                        let mut stripped = f.clone();
                        if l.keys_only {
                            stripped.value.clear();
                        }
                        if &stripped != a || !seen.insert(a.key.clone()) {
                            return Err(format!("range kvs: expected {kvs:?}, got {akvs:?}"));
                        }
                        let ef = full(e).expect("model kv is in its own list");
                        if target_value(&ef, l.target) != target_value(&f, l.target) {
                            return Err(format!(
                                "range not sorted by {:?} as expected: expected {kvs:?}, got {akvs:?}",
                                l.target
                            ));
                        }
                    }
                }
            }
            Ok(())
        }
        (Resp::Txn { rev, succeeded, responses }, Resp::Txn { rev: arev, succeeded: asucc, responses: aresp }) => {
            if (rev, succeeded, responses.len()) != (arev, asucc, aresp.len()) {
                return Err(format!(
                    "txn (revision, succeeded, #responses): expected {:?}, got {:?}",
                    (rev, succeeded, responses.len()),
                    (arev, asucc, aresp.len())
                ));
            }
            for (i, (e, a)) in responses.iter().zip(aresp).enumerate() {
                check_resp(e, a).map_err(|m| format!("txn response #{i}: {m}"))?;
            }
            Ok(())
        }
        _ if exp == act => Ok(()),
        _ => Err("responses differ".into()),
    }
}

fn check(exp: &Outcome, act: &Outcome) -> Result<(), String> {
    match (exp, act) {
        (Ok(e), Ok(a)) => check_resp(e, a),
        (Err(e), Err(a)) if e == a => Ok(()),
        _ => Err("outcome differs".into()),
    }
}

fn outcome_kind(req: &Req, out: &Outcome) -> String {
    let op = match req {
        Req::Put(_) => "put",
        Req::Range(_) => "range",
        Req::Del(_) => "delete",
        Req::Txn { .. } => "txn",
        Req::Compact(_) => "compact",
    };
    match out {
        Ok(Resp::Txn { succeeded, .. }) => format!("{op} ok succeeded={succeeded}"),
        Ok(_) => format!("{op} ok"),
        Err((_, m)) => format!("{op} error: {m}"),
    }
}

struct Shared {
    compact_rev: Cell<i64>,
    cases: Cell<u32>,
    stats: RefCell<BTreeMap<String, usize>>,
}

async fn run_case(client: &Client, ops: &[Op], shared: &Shared) -> Result<(), TestCaseError> {
    let mut c = client.clone();
    let n = shared.cases.get();
    shared.cases.set(n + 1);
    let prefix = format!("model/{n:05}/");
    let start = match send(&mut c, &Req::Range(whole(&prefix))).await {
        Ok(Resp::Range { rev, count: 0, .. }) => rev,
        other => return Err(TestCaseError::fail(format!("case start read: {other:?}"))),
    };
    let mut m = Model { rev: start, compact_rev: shared.compact_rev.get(), start_rev: start, history: BTreeMap::new() };
    let mut log = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let req = Resolver { prefix: &prefix, m: &m }.top(op);
        let expected = m.apply(&req);
        let actual = send(&mut c, &req).await;
        if let (Req::Compact(rev), Ok(_)) = (&req, &actual) {
            shared.compact_rev.set(*rev);
        }
        *shared.stats.borrow_mut().entry(outcome_kind(&req, &actual)).or_default() += 1;
        if let Err(why) = check(&expected, &actual) {
            return Err(TestCaseError::fail(format!(
                "case {prefix}, op #{i}: {why}\nrequest: {req:?}\nexpected: {expected:?}\nactual:   {actual:?}\nearlier requests:\n{}",
                log.join("\n")
            )));
        }
        log.push(format!("  #{i} {req:?} -> {actual:?}"));
    }
    // Finally the whole case prefix, as the model has it.
    let req = Req::Range(whole(&prefix));
    let expected = m.apply(&req);
    let actual = send(&mut c, &req).await;
    check(&expected, &actual).map_err(|why| {
        TestCaseError::fail(format!("case {prefix}, final read: {why}\nexpected: {expected:?}\nactual:   {actual:?}"))
    })
}

fn whole(prefix: &str) -> RangeReq {
    RangeReq {
        key: prefix.as_bytes().to_vec(),
        end: prefix_end(prefix.as_bytes()),
        rev: 0,
        limit: 0,
        count_only: false,
        keys_only: false,
        serializable: false,
        sort: None,
        min_mod: 0,
        max_mod: 0,
        min_create: 0,
        max_create: 0,
    }
}

#[test]
fn kv_api_matches_the_mvcc_model() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let cluster = rt.block_on(Cluster::start(1));
    let client = rt.block_on(cluster.client(0));

    // Start from a known compaction so that the model knows it.
    let initial_compact = rt.block_on(async {
        let mut c = client.clone();
        c.put("model-init", "1", None).await.expect("put");
        let r = c.put("model-init", "2", None).await.expect("put");
        let rev = r.header().expect("header").revision() - 1;
        c.compact(rev, None).await.expect("initial compaction");
        rev
    });
    let shared =
        Shared { compact_rev: Cell::new(initial_compact), cases: Cell::new(0), stats: RefCell::new(BTreeMap::new()) };

    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 300,
        max_shrink_time: 120_000,
        ..Config::default()
    });
    let strategy = proptest::collection::vec(op_gen(), 20..60);
    let result = runner.run(&strategy, |ops| rt.block_on(run_case(&client, &ops, &shared)));

    eprintln!("outcomes over {} cases:", shared.cases.get());
    for (kind, n) in shared.stats.borrow().iter() {
        eprintln!("  {n:6}  {kind}");
    }
    if let Err(e) = result {
        panic!("{e}");
    }
    drop(cluster);
}
