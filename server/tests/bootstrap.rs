//! A data directory stays with the cluster and member it was created for: starting
//! a member on it with another cluster's flags, another name, or starting on a
//! directory Cairn did not create, fails with a clear error and changes nothing.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Ports {
    client: u16,
    peer: u16,
}

fn args(dir: &Path, name: &str, token: &str, p: &Ports) -> Vec<String> {
    let peer = format!("http://127.0.0.1:{}", p.peer);
    vec![
        "--name".into(),
        name.into(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--listen-client-urls".into(),
        format!("http://127.0.0.1:{}", p.client),
        "--listen-peer-urls".into(),
        peer.clone(),
        "--initial-cluster".into(),
        format!("{name}={peer}"),
        "--initial-cluster-token".into(),
        token.into(),
    ]
}

/// Kills the member when dropped, so a failing test leaves no process behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[String]) -> Running {
    Running(Command::new(CAIRN).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn cairn"))
}

/// Runs a member that is expected to refuse to start, bounded in time.
fn run_expecting_exit(args: &[String]) -> Output {
    let mut child = Command::new(CAIRN).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cairn {args:?} kept running; it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

async fn put_and_get(client_port: u16, key: &str) -> Option<String> {
    let endpoint = format!("http://127.0.0.1:{client_port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = etcd_client::Client::connect([endpoint.as_str()], None).await {
            if c.put(key, "v", None).await.is_ok() {
                let got = c.get(key, None).await.unwrap();
                return got.kvs().first().map(|kv| kv.value_str().unwrap().to_string());
            }
        }
        assert!(Instant::now() < deadline, "member on {endpoint} never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn data_dir_of_another_cluster_or_member_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("member");
    let ports = Ports { client: free_port(), peer: free_port() };
    {
        let _member = start(&args(&data, "m1", "cluster-a", &ports));
        assert_eq!(put_and_get(ports.client, "kept").await.as_deref(), Some("v"));
    }

    let out = run_expecting_exit(&args(&data, "m1", "cluster-b", &ports));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("belongs to cluster"), "unexpected error: {stderr}");

    let out = run_expecting_exit(&args(&data, "m2", "cluster-a", &ports));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("belongs to member \"m1\""), "unexpected error: {stderr}");

    let moved = Ports { client: ports.client, peer: free_port() };
    let out = run_expecting_exit(&args(&data, "m1", "cluster-a", &moved));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("the cluster knows member m1 at"), "unexpected error: {stderr}");

    // The right flags still open it, with the data intact.
    let _member = start(&args(&data, "m1", "cluster-a", &ports));
    let endpoint = format!("http://127.0.0.1:{}", ports.client);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = etcd_client::Client::connect([endpoint.as_str()], None).await {
            if let Ok(got) = c.get("kept", None).await {
                assert_eq!(got.kvs()[0].value(), b"v");
                break;
            }
        }
        assert!(Instant::now() < deadline, "restarted member never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn a_directory_cairn_did_not_create_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious.txt"), "not Cairn's").unwrap();
    let ports = Ports { client: free_port(), peer: free_port() };
    let out = run_expecting_exit(&args(dir.path(), "m1", "t", &ports));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("holds no Cairn database"), "unexpected error: {stderr}");
    assert_eq!(std::fs::read_to_string(dir.path().join("precious.txt")).unwrap(), "not Cairn's");
}

#[test]
fn malformed_config_is_refused_before_touching_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cairn.toml");
    std::fs::write(&config, "max-request-bytes = \"lots\"\n").unwrap();
    let data = dir.path().join("data");
    let out = run_expecting_exit(&[
        "--config-file".into(),
        config.display().to_string(),
        "--data-dir".into(),
        data.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("malformed config file"));
    assert!(!data.exists());
}
