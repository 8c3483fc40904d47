//! Batching of ReadIndex rounds: every read that arrives while a round is running
//! joins the next round, so one quorum round trip serves many concurrent reads.
//!
//! A read may only use a round that *started* after the read arrived: a round
//! started earlier may have captured a commit index that predates the read.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::RaftNodeError;

type Waiter = oneshot::Sender<Result<u64, RaftNodeError>>;

#[derive(Default)]
pub(crate) struct ReadBatcher {
    state: Mutex<BatchState>,
}

#[derive(Default)]
struct BatchState {
    waiting: Vec<Waiter>,
    running: bool,
}

impl ReadBatcher {
    /// Returns a read index obtained by a round that started after this call.
    pub async fn read_index<F, Fut>(self: &Arc<Self>, fetch: F) -> Result<u64, RaftNodeError>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<u64, RaftNodeError>> + Send,
    {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut state = self.state.lock().expect("read batch lock");
            state.waiting.push(tx);
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            let batcher = self.clone();
            tokio::spawn(async move {
                while let Some(round) = batcher.next_round() {
                    let result = fetch().await;
                    for waiter in round {
                        // The reader may have given up (timeout); that is fine.
                        let _ = waiter.send(result.clone());
                    }
                }
            });
        }
        rx.await.map_err(|_| RaftNodeError::Stopped)?
    }

    /// The readers for the next round, or `None` (and the runner stops) if there are none.
    fn next_round(&self) -> Option<Vec<Waiter>> {
        let mut state = self.state.lock().expect("read batch lock");
        if state.waiting.is_empty() {
            state.running = false;
            return None;
        }
        Some(std::mem::take(&mut state.waiting))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test]
    async fn concurrent_reads_share_rounds_and_each_gets_a_later_round() {
        let batcher = Arc::new(ReadBatcher::default());
        let rounds = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (b, r) = (batcher.clone(), rounds.clone());
            tasks.push(tokio::spawn(async move {
                let seen_before = r.load(Ordering::SeqCst);
                let got = b
                    .read_index(move || {
                        let r = r.clone();
                        async move {
                            tokio::task::yield_now().await;
                            Ok(r.fetch_add(1, Ordering::SeqCst) + 1)
                        }
                    })
                    .await
                    .unwrap();
                // The round that answered started after this read joined.
                assert!(got > seen_before);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(rounds.load(Ordering::SeqCst) <= 50);
    }
}
