//! A partition map on Cairn: key ranges assigned to owners with epochs, a router
//! that follows the map through a `Mirror`, and a range moved with a fenced
//! compare-and-swap by the elected rebalancer.
//!
//! Runs against the single member `make run` starts (or `CAIRN_ENDPOINTS`,
//! comma-separated):
//!
//! ```sh
//! cargo run -p cairn-client --example partition_map
//! ```

use std::time::Duration;

use anyhow::{bail, Context};
use cairn_client::{
    Client, ClientOptions, Compare, CompareOp, Election, Keyspace, LeaseHandle, Mirror, TxnOp, TxnSpec,
};
use serde::{Deserialize, Serialize};

/// One range of the key space: keys in `[start, end)` (empty `end`: to the end).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Partition {
    start: String,
    end: String,
    owner: String,
    /// Grows by one on every move: servers reject requests stamped with an older epoch.
    epoch: u64,
}

const PREFIX: &str = "examples/partitions/";
const BOUNDARIES: [&str; 4] = ["", "g", "n", "t"];
const OWNERS: [&str; 3] = ["server-a", "server-b", "server-c"];

fn endpoints() -> Vec<String> {
    std::env::var("CAIRN_ENDPOINTS")
        .unwrap_or_else(|_| "http://127.0.0.1:2379".into())
        .split(',')
        .map(str::to_string)
        .collect()
}

/// The partition holding `key` in a mirrored map.
fn route<'a>(
    map: &'a std::collections::BTreeMap<String, cairn_client::Versioned<Partition>>,
    key: &str,
) -> Option<&'a Partition> {
    map.values().map(|v| &v.value).find(|p| p.start.as_str() <= key && (p.end.is_empty() || key < p.end.as_str()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let client = Client::connect(endpoints(), ClientOptions::default()).await.context("connect")?;
    let partitions: Keyspace<Partition> = Keyspace::new(client.clone(), PREFIX);

    // 1. Assign the ranges (idempotent: an existing assignment is kept).
    for (i, start) in BOUNDARIES.iter().enumerate() {
        let end = BOUNDARIES.get(i + 1).copied().unwrap_or("");
        let p = Partition {
            start: start.to_string(),
            end: end.to_string(),
            owner: OWNERS[i % OWNERS.len()].into(),
            epoch: 1,
        };
        match partitions.create(&format!("{i:04}"), p).await {
            Ok(_) | Err(cairn_client::Error::ConditionFailed { .. }) => {}
            Err(e) => return Err(e).context("create partition"),
        }
    }

    // 2. A router embeds a mirror of the map.
    let router = Mirror::start(partitions.clone()).await.context("start mirror")?;
    let snapshot = router.snapshot();
    for key in ["apple", "mango", "zebra"] {
        let p = route(&snapshot.items, key).context("unrouted key")?;
        println!("{key:>6} -> {} (epoch {})", p.owner, p.epoch);
    }

    // 3. Only the elected rebalancer moves ranges; every move is fenced by its
    //    leadership *and* compares the partition's mod revision.
    let lease = LeaseHandle::grant(&client, 10).await?;
    let leadership = Election::new(&client, "examples/rebalancer").campaign(&lease, "partition_map example").await?;
    println!("rebalancer elected with fencing token {}", leadership.fencing_token());

    let key = "0001";
    let cur = partitions.get(key).await?.context("partition 0001 missing")?;
    let target = OWNERS.iter().find(|o| **o != cur.value.owner).copied().unwrap_or(OWNERS[0]);
    let moved = Partition { owner: target.into(), epoch: cur.value.epoch + 1, ..cur.value.clone() };
    let full_key = partitions.full_key(key);
    let spec = TxnSpec::new()
        .when([Compare::mod_revision(full_key.clone(), CompareOp::Equal, cur.mod_revision)])
        .and_then([TxnOp::put(full_key, serde_json::to_vec(&moved)?)]);
    let resp = leadership.fence().txn(spec).await?;
    if !resp.succeeded {
        bail!("partition {key} changed concurrently; re-read and decide again");
    }
    println!(
        "moved [{}, {}) from {} to {} at epoch {} (revision {})",
        moved.start, moved.end, cur.value.owner, moved.owner, moved.epoch, resp.header.revision
    );

    // 4. The router sees the move once it has caught up with that revision.
    tokio::time::timeout(Duration::from_secs(10), router.wait_for_revision(resp.header.revision)).await??;
    let snapshot = router.snapshot();
    let p = route(&snapshot.items, "mango").context("unrouted key")?;
    println!(" mango -> {} (epoch {}) at mirror revision {}", p.owner, p.epoch, snapshot.revision);

    leadership.resign().await?;
    lease.revoke().await?;
    Ok(())
}
