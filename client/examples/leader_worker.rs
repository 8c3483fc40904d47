//! A leader-elected worker: several copies campaign, one works at a time, and
//! every write it makes as leader is fenced, so a deposed leader (paused past
//! its lease, partitioned, ...) cannot overwrite its successor's work.
//!
//! Runs against the single member `make run` starts (or `CAIRN_ENDPOINTS`,
//! comma-separated). Start two copies and stop the leader (Ctrl-C) to see the
//! other take over from where it left off:
//!
//! ```sh
//! cargo run -p cairn-client --example leader_worker -- worker-1 &
//! cargo run -p cairn-client --example leader_worker -- worker-2
//! ```

use std::time::Duration;

use anyhow::Context;
use cairn_client::{Client, ClientOptions, Election, Error, Keyspace, LeaseHandle};

const ELECTION: &str = "examples/worker/leader";
const PROGRESS: &str = "examples/worker/progress";
/// Steps each leadership performs before resigning, so that the example ends.
const STEPS: u64 = 5;

fn endpoints() -> Vec<String> {
    std::env::var("CAIRN_ENDPOINTS")
        .unwrap_or_else(|_| "http://127.0.0.1:2379".into())
        .split(',')
        .map(str::to_string)
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let name = std::env::args().nth(1).unwrap_or_else(|| format!("worker-{}", std::process::id()));
    let client = Client::connect(endpoints(), ClientOptions::default()).await.context("connect")?;
    let lease = LeaseHandle::grant(&client, 5).await?;
    let election = Election::new(&client, ELECTION);
    if let Some(current) = election.leader().await? {
        println!("{name}: {} leads (token {}); waiting", String::from_utf8_lossy(&current.value), current.token);
    }
    let leadership = election.campaign(&lease, name.clone()).await?;
    let fence = leadership.fence();
    println!("{name}: leading with fencing token {}", fence.token());

    let progress: Keyspace<u64> = Keyspace::new(client.clone(), "");
    for _ in 0..STEPS {
        let done = progress.get(PROGRESS).await?.map(|v| v.value).unwrap_or(0);
        // The work itself would go here; its result is recorded only if we still lead.
        let write = fence.put(PROGRESS, serde_json::to_vec(&(done + 1))?);
        tokio::select! {
            r = write => match r {
                Ok(resp) => println!("{name}: step {} recorded at revision {}", done + 1, resp.header.revision),
                Err(Error::Fenced { .. }) => {
                    println!("{name}: deposed; stopping");
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            },
            e = lease.lost() => {
                println!("{name}: {e}; stopping");
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    leadership.resign().await?;
    lease.revoke().await?;
    println!("{name}: resigned after {STEPS} steps");
    Ok(())
}
