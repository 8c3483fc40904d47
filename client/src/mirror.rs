//! [`Mirror<T>`]: a local, continuously updated copy of a keyspace.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::client::backoff;
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::keyspace::{Keyspace, Value, Versioned};
use crate::kv::KeyValue;
use crate::typed_watch::{AbortOnDrop, Event, Item};

/// How long [`Mirror::wait_for_revision`] waits for one progress confirmation
/// before asking again.
pub const MIRROR_PROGRESS_POLL_MS: u64 = 500;

/// The state of a [`Mirror`] at one revision.
///
/// ```no_run
/// # async fn demo(mirror: cairn_client::Mirror<String>) {
/// let snap = mirror.snapshot();
/// println!("{} keys at revision {}", snap.items.len(), snap.revision);
/// # }
/// ```
#[derive(Debug)]
pub struct MirrorSnapshot<T> {
    /// Every change up to this revision is reflected in `items`.
    pub revision: i64,
    /// The values by key (relative to the prefix).
    pub items: Arc<BTreeMap<String, Versioned<T>>>,
}

impl<T> Clone for MirrorSnapshot<T> {
    fn clone(&self) -> Self {
        MirrorSnapshot { revision: self.revision, items: self.items.clone() }
    }
}

struct Shared<T> {
    state: RwLock<MirrorSnapshot<T>>,
    revision_tx: watch::Sender<i64>,
    progress: Arc<Notify>,
    last_error: Mutex<Option<String>>,
}

/// A local copy of a keyspace, kept up to date in the background.
///
/// It starts from a linearizable listing at revision `R`, then applies the
/// keyspace's watch from `R + 1`, one whole revision at a time, so every
/// [`Mirror::snapshot`] is the keyspace's exact state at
/// [`MirrorSnapshot::revision`]. The revision never goes back: after a
/// disconnect the watch resumes where it stopped; if the history it needs was
/// compacted, the mirror lists again (at a newer revision) and carries on. A
/// value the codec cannot decode is left out (and reported by
/// [`Mirror::last_error`]).
///
/// This is what a config consumer or a partition router embeds.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::{Keyspace, Mirror};
///
/// let config: Mirror<String> = Mirror::start(Keyspace::new(client.clone(), "config/")).await?;
/// let mut changes = config.subscribe();
/// // Read-your-writes: wait until the mirror has seen our own write.
/// let rev = client.put("config/mode", "\"fast\"").await?.header.revision;
/// config.wait_for_revision(rev).await?;
/// assert_eq!(config.get("mode").map(|v| v.value), Some("fast".to_string()));
/// loop {
///     let rev = changes.changed().await?;
///     println!("config at revision {rev}: {:?}", config.snapshot().items);
/// }
/// # }
/// ```
pub struct Mirror<T> {
    shared: Arc<Shared<T>>,
    _task: AbortOnDrop,
}

impl<T> std::fmt::Debug for Mirror<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let revision = self.shared.state.read().map(|s| s.revision).unwrap_or(-1);
        f.debug_struct("Mirror").field("revision", &revision).finish()
    }
}

/// Change notifications of a [`Mirror`] (see [`Mirror::subscribe`]).
///
/// ```no_run
/// # async fn demo(mirror: cairn_client::Mirror<String>) -> cairn_client::Result<()> {
/// let mut changes = mirror.subscribe();
/// let rev = changes.changed().await?;
/// println!("now at {rev}");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct MirrorChanges {
    rx: watch::Receiver<i64>,
}

impl MirrorChanges {
    /// Waits until the mirror's revision moves past the last one this
    /// subscriber saw; answers the new revision. Notifications coalesce: a slow
    /// subscriber sees the latest revision, not every step.
    pub async fn changed(&mut self) -> Result<i64> {
        self.rx.changed().await.map_err(|_| Error::Stopped("the mirror was dropped".into()))?;
        Ok(*self.rx.borrow_and_update())
    }
}

impl<T: Value + Clone> Mirror<T> {
    /// Lists the keyspace (linearizably) and starts following it. Fails if the
    /// first listing fails; later failures are retried in the background.
    pub async fn start<C: Codec>(keyspace: Keyspace<T, C>) -> Result<Mirror<T>> {
        let (revision, kvs) = keyspace.list_raw().await?;
        let (items, error) = decode_all(&keyspace, kvs);
        let (revision_tx, _) = watch::channel(revision);
        let shared = Arc::new(Shared {
            state: RwLock::new(MirrorSnapshot { revision, items: Arc::new(items) }),
            revision_tx,
            progress: Arc::new(Notify::new()),
            last_error: Mutex::new(error),
        });
        let task = tokio::spawn(follow(keyspace, shared.clone()));
        Ok(Mirror { shared, _task: AbortOnDrop(task) })
    }

    /// The value of `key` in the mirror.
    pub fn get(&self, key: &str) -> Option<Versioned<T>> {
        self.shared.state.read().expect("mirror lock").items.get(key).cloned()
    }

    /// The whole mirrored state at one revision (cheap: shares the map until the
    /// next change).
    pub fn snapshot(&self) -> MirrorSnapshot<T> {
        self.shared.state.read().expect("mirror lock").clone()
    }

    /// The revision the mirror reflects: every change up to it is applied.
    pub fn revision(&self) -> i64 {
        self.shared.state.read().expect("mirror lock").revision
    }

    /// Waits until the mirror reflects revision `rev` (for example the revision
    /// of the caller's own write). Asks the server for progress confirmations
    /// meanwhile, so it also returns when `rev` changed keys outside the
    /// keyspace. Wrap it in a timeout if the cluster may be unreachable.
    pub async fn wait_for_revision(&self, rev: i64) -> Result<i64> {
        let mut rx = self.shared.revision_tx.subscribe();
        loop {
            let now = *rx.borrow_and_update();
            if now >= rev {
                return Ok(now);
            }
            self.shared.progress.notify_one();
            match tokio::time::timeout(Duration::from_millis(MIRROR_PROGRESS_POLL_MS), rx.changed()).await {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(_)) => return Err(Error::Stopped("the mirror's task has ended".into())),
            }
        }
    }

    /// Change notifications: one wake-up per revision step (coalesced).
    pub fn subscribe(&self) -> MirrorChanges {
        MirrorChanges { rx: self.shared.revision_tx.subscribe() }
    }

    /// The last problem the mirror worked around (undecodable value, resync
    /// after compaction, ...), if any.
    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error.lock().expect("mirror error lock").clone()
    }
}

fn decode_all<T: Value, C: Codec>(
    ks: &Keyspace<T, C>,
    kvs: Vec<KeyValue>,
) -> (BTreeMap<String, Versioned<T>>, Option<String>) {
    let mut items = BTreeMap::new();
    let mut error = None;
    for kv in kvs {
        match ks.decode_kv(kv) {
            Ok(v) => {
                items.insert(v.key.clone(), v);
            }
            Err(e) => error = Some(e.to_string()),
        }
    }
    (items, error)
}

impl<T> Shared<T> {
    fn note(&self, e: impl ToString) {
        *self.last_error.lock().expect("mirror error lock") = Some(e.to_string());
    }

    fn advance(&self, revision: i64) {
        {
            let mut st = self.state.write().expect("mirror lock");
            if revision <= st.revision {
                return;
            }
            st.revision = revision;
        }
        self.revision_tx.send_replace(revision);
    }
}

/// Applies the watch to the shared state forever (until aborted), relisting
/// when the watch cannot resume.
async fn follow<T: Value + Clone, C: Codec>(ks: Keyspace<T, C>, shared: Arc<Shared<T>>) {
    loop {
        let from = shared.state.read().expect("mirror lock").revision + 1;
        let (mut rx, _watch_task) = ks.watch_items(from, shared.progress.clone());
        while let Some(item) = rx.recv().await {
            match item {
                Item::Batch { revision, events } => apply(&shared, revision, events),
                Item::Progress(rev) => shared.advance(rev),
                Item::Failed(e) => {
                    shared.note(format!("watch failed ({e}); listing again"));
                    break;
                }
            }
        }
        relist(&ks, &shared).await;
    }
}

fn apply<T: Value + Clone>(shared: &Shared<T>, revision: i64, events: Vec<Result<Event<T>>>) {
    {
        let mut st = shared.state.write().expect("mirror lock");
        if revision <= st.revision {
            // Every revision up to st.revision was confirmed delivered: a server
            // sending older events again is misbehaving. Keep the newer state.
            shared.note(format!("ignored events at revision {revision}, already at {}", st.revision));
            return;
        }
        let items = Arc::make_mut(&mut st.items);
        for e in events {
            match e {
                Ok(Event::Put { item, .. }) => {
                    items.insert(item.key.clone(), item);
                }
                Ok(Event::Delete { key, .. }) => {
                    items.remove(&key);
                }
                Err(Error::Codec { key, message }) => {
                    items.remove(&key);
                    shared.note(format!("value of {key:?} left out: {message}"));
                }
                Err(e) => shared.note(e),
            }
        }
        st.revision = revision;
    }
    shared.revision_tx.send_replace(revision);
}

/// Replaces the state with a fresh listing at a revision not older than the
/// current one.
async fn relist<T: Value + Clone, C: Codec>(ks: &Keyspace<T, C>, shared: &Shared<T>) {
    let mut failures = 0;
    loop {
        match ks.list_raw().await {
            Ok((revision, kvs)) if revision >= shared.state.read().expect("mirror lock").revision => {
                let (items, error) = decode_all(ks, kvs);
                if let Some(e) = error {
                    shared.note(e);
                }
                {
                    let mut st = shared.state.write().expect("mirror lock");
                    *st = MirrorSnapshot { revision, items: Arc::new(items) };
                }
                shared.revision_tx.send_replace(revision);
                return;
            }
            Ok((revision, _)) => shared.note(format!("listing at {revision} is older than the mirror; retrying")),
            Err(e) => shared.note(format!("listing failed: {e}")),
        }
        failures += 1;
        tokio::time::sleep(backoff(failures)).await;
    }
}
