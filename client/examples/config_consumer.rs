//! A configuration consumer: mirrors a prefix of JSON documents and reacts to
//! every change, with read-your-writes through `wait_for_revision`.
//!
//! Runs against the single member `make run` starts (or `CAIRN_ENDPOINTS`,
//! comma-separated). It changes its own configuration a few times to have
//! something to react to; change keys under `examples/config/` with etcdctl
//! while it runs to see those too (`FOLLOW=1` keeps it running).
//!
//! ```sh
//! cargo run -p cairn-client --example config_consumer
//! etcdctl put examples/config/log-level '"debug"'
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use cairn_client::{Client, ClientOptions, Keyspace, Mirror};
use serde_json::{json, Value};

const PREFIX: &str = "examples/config/";

fn endpoints() -> Vec<String> {
    std::env::var("CAIRN_ENDPOINTS")
        .unwrap_or_else(|_| "http://127.0.0.1:2379".into())
        .split(',')
        .map(str::to_string)
        .collect()
}

/// Prints what differs between two versions of the configuration.
fn report(old: &BTreeMap<String, Value>, new: &BTreeMap<String, Value>, revision: i64) {
    for (k, v) in new {
        match old.get(k) {
            None => println!("[rev {revision}] + {k} = {v}"),
            Some(o) if o != v => println!("[rev {revision}] ~ {k}: {o} -> {v}"),
            Some(_) => {}
        }
    }
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        println!("[rev {revision}] - {k}");
    }
}

fn values(snapshot: &cairn_client::MirrorSnapshot<Value>) -> BTreeMap<String, Value> {
    snapshot.items.iter().map(|(k, v)| (k.clone(), v.value.clone())).collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let client = Client::connect(endpoints(), ClientOptions::default()).await.context("connect")?;
    let config: Keyspace<Value> = Keyspace::new(client.clone(), PREFIX);
    config.put("log-level", json!("info")).await?;
    config.put("limits", json!({"requests_per_second": 100})).await?;

    let mirror = Mirror::start(config.clone()).await.context("start mirror")?;
    let mut changes = mirror.subscribe();
    let mut current = values(&mirror.snapshot());
    println!("configuration at revision {}: {}", mirror.revision(), serde_json::to_string(&current)?);

    // Something to react to: our own updates, a little later.
    let writer = config.clone();
    tokio::spawn(async move {
        for step in 1..=3u64 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = writer
                .update(
                    "limits",
                    |l| json!({"requests_per_second": l["requests_per_second"].as_u64().unwrap_or(0) + 50}),
                )
                .await;
            if step == 2 {
                let _ = writer.put("feature-x", json!(true)).await;
            }
        }
        let _ = writer.delete("feature-x").await;
    });

    let follow = std::env::var_os("FOLLOW").is_some();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let changed = tokio::time::timeout_at(deadline, changes.changed()).await;
        let revision = match changed {
            Ok(r) => r?,
            Err(_) if follow => continue,
            Err(_) => break,
        };
        let next = values(&mirror.snapshot());
        report(&current, &next, revision);
        current = next;
    }

    // Read-your-writes: a write is visible in the mirror once it reached its revision.
    let rev = config.put("log-level", json!("warn")).await?.mod_revision;
    mirror.wait_for_revision(rev).await?;
    println!("after our write at {rev}: log-level = {}", mirror.get("log-level").context("log-level missing")?.value);
    Ok(())
}
