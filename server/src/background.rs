//! A background thread that stops and is joined when its handle is dropped, so that
//! what it holds (a RocksDB handle above all) is released before its owner goes on:
//! RocksDB must never be closed by a thread the process has forgotten.

use std::thread;

/// Owns a thread and the sending half it listens on. Dropping the handle drops the
/// sender first (which tells the thread to finish), then waits for it.
pub(crate) struct Worker<S> {
    sender: Option<S>,
    thread: Option<thread::JoinHandle<()>>,
}

impl<S> Worker<S> {
    /// Starts `body` on a thread named `name`; `sender` is what the owner uses to
    /// reach it, and the thread must return once every sender is gone.
    pub fn spawn(name: &str, sender: S, body: impl FnOnce() + Send + 'static) -> Self {
        let thread = thread::Builder::new()
            .name(name.into())
            .spawn(body)
            .unwrap_or_else(|e| panic!("spawning the {name} thread: {e}"));
        Worker { sender: Some(sender), thread: Some(thread) }
    }

    pub fn sender(&self) -> &S {
        self.sender.as_ref().expect("the sender is taken only on drop")
    }
}

impl<S> Drop for Worker<S> {
    fn drop(&mut self) {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
