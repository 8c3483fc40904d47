//! Writes do not time out behind a flush starved of CPU. In a file of its own, so
//! that its busy processes slow no other test.
//!
//! Run against Cairn: `cargo test -p cairn-server --test write_stall`;
//! against etcd: `CAIRN_TEST_SERVER=etcd cargo test -p cairn-server --test write_stall`.

mod common;

use std::process::{Child, Command};

use common::Cluster;

/// Processes that keep every core busy until dropped.
struct BusyProcesses(Vec<Child>);

impl BusyProcesses {
    /// Each loop ends by itself once the test process is gone, so that a test run
    /// killed outright leaves none spinning.
    fn start(count: usize) -> BusyProcesses {
        let mut busy = BusyProcesses(Vec::new());
        for _ in 0..count {
            let child = Command::new("sh").args(["-c", "while kill -0 $PPID 2>/dev/null; do :; done"]).spawn();
            busy.0.push(child.expect("spawn a busy loop"));
        }
        busy
    }
}

impl Drop for BusyProcesses {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// With more busy processes than cores beside it, a member still takes 192 MiB of
/// 1 MiB puts (twelve 16 MiB memtables' worth in each of `kv` and `kv_history`)
/// without a write timing out. RocksDB's flushes run at nice 19; when one falls
/// behind, RocksDB stops writes until it catches up, and beside busy processes a
/// flush at nice 19 got so little CPU that writes stayed stopped for 10 s. The stall
/// guard raises the flush's priority while writes are held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_writes_beside_busy_processes_all_succeed() {
    const WRITERS: usize = 4;
    const PUTS_EACH: usize = 48;
    const VALUE_BYTES: usize = 1 << 20;
    let cluster = Cluster::start(1).await;
    let client = cluster.client(0).await;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let busy = BusyProcesses::start(cores + 1);
    let count = common::put_large_values(&client, "busy", WRITERS, PUTS_EACH, VALUE_BYTES).await;
    drop(busy);
    assert_eq!(count, WRITERS * PUTS_EACH);
}
