//! Local clusters of real server processes (etcd or Cairn) on loopback ports, with
//! their data directories under one root, stopped and removed when dropped.

use std::fmt;
use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cairn_proto::etcdserverpb::{
    kv_client::KvClient, maintenance_client::MaintenanceClient, RangeRequest, StatusRequest,
};
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::procstat::{dir_bytes, ServerProc};

/// How long a cluster (or a restart) may take to serve.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound for one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// Which server a cluster runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    Etcd,
    Cairn,
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerKind::Etcd => "etcd",
            ServerKind::Cairn => "cairn",
        })
    }
}

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub kind: ServerKind,
    pub binary: PathBuf,
    pub members: usize,
    /// Parent of the cluster's temporary directory (the disk under test).
    pub data_root: Option<PathBuf>,
    /// Keep the data directories and server logs when the cluster stops.
    pub keep_data: bool,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
}

/// A running local cluster. Its processes are killed and its directories removed
/// on drop.
pub struct Cluster {
    spec: ClusterSpec,
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    /// Removed (with every member's data) on drop, after the processes are killed.
    _root: TempDir,
}

/// Ports the OS considers free right now, all distinct.
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>().context("bind a loopback port")?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

impl Cluster {
    /// Starts every member and waits until the cluster serves linearizable reads.
    pub async fn start(spec: ClusterSpec) -> Result<Cluster> {
        if spec.members == 0 {
            bail!("a cluster needs at least one member");
        }
        // A bare name is looked up on PATH when spawned.
        if spec.binary.components().count() > 1 && !spec.binary.exists() {
            bail!(
                "{} binary not found at {} (for Cairn: cargo build --release -p cairn-server)",
                spec.kind,
                spec.binary.display()
            );
        }
        let prefix = format!("cairn-bench-{}-", spec.kind);
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix);
        let root = match &spec.data_root {
            Some(dir) => builder.tempdir_in(dir),
            None => builder.tempdir(),
        }
        .context("create the cluster's data directory")?;
        let ports = free_ports(2 * spec.members)?;
        let members: Vec<Member> = (0..spec.members)
            .map(|i| {
                let name = format!("m{}", i + 1);
                let dir = root.path().join(&name);
                Member { name, client_port: ports[2 * i], peer_port: ports[2 * i + 1], dir, child: None }
            })
            .collect();
        let initial_cluster =
            members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect::<Vec<_>>().join(",");
        let token = format!("cairn-bench-{}-{}", spec.kind, std::process::id());
        let mut cluster = Cluster { spec, members, initial_cluster, token, _root: root };
        for i in 0..cluster.members.len() {
            cluster.spawn(i)?;
        }
        cluster.wait_ready(READY_TIMEOUT).await?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let m = &self.members[i];
        std::fs::create_dir_all(&m.dir)?;
        let log = File::options().create(true).append(true).open(m.dir.join("server.log"))?;
        let mut cmd = Command::new(&self.spec.binary);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(m.data_dir())
            .arg("--listen-client-urls")
            .arg(m.client_url())
            .arg("--advertise-client-urls")
            .arg(m.client_url())
            .arg("--listen-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--initial-cluster-state")
            .arg("new")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        // Each server also reads its settings from variables (ETCD_*, or CAIRN_* and
        // CAIRN_CONFIG_FILE): only the flags given here count, for both alike.
        // Runtime variables (GOMAXPROCS, MALLOC_CONF, ...) pass through.
        let own_prefix = match self.spec.kind {
            ServerKind::Etcd => "ETCD_",
            ServerKind::Cairn => "CAIRN_",
        };
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with(own_prefix) {
                cmd.env_remove(k);
            }
        }
        match self.spec.kind {
            ServerKind::Etcd => {
                // Both fsync every acknowledged write by default; keep logs quiet for
                // both, and give etcd room for the scale runs (its default quota is 2 GiB).
                cmd.args(["--logger=zap", "--log-level=warn", "--quota-backend-bytes=8589934592"]);
            }
            ServerKind::Cairn => {
                cmd.args(["--log-level", "warn"]);
            }
        }
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        // The members die with this process even when it is killed.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("start {}", self.spec.binary.display()))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// The member processes, for usage accounting.
    pub fn procs(&self) -> Vec<ServerProc> {
        self.members
            .iter()
            .filter_map(|m| {
                let metrics = (self.spec.kind == ServerKind::Cairn).then(|| m.client_url());
                Some(ServerProc { name: m.name.clone(), pid: m.child.as_ref()?.id(), metrics })
            })
            .collect()
    }

    /// Bytes on disk in every member's data directory, summed.
    pub fn data_bytes(&self) -> u64 {
        self.members.iter().map(|m| dir_bytes(&m.data_dir())).sum()
    }

    /// SIGKILL every member (no chance to flush).
    pub fn kill_all(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Starts every stopped member again on its data directory and waits until the
    /// cluster serves; returns how long that took.
    pub async fn restart_all(&mut self) -> Result<Duration> {
        let started = Instant::now();
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.spawn(i)?;
            }
        }
        self.wait_ready(READY_TIMEOUT).await?;
        Ok(started.elapsed())
    }

    fn check_alive(&mut self) -> Result<()> {
        for m in &mut self.members {
            if let Some(c) = m.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    let log = std::fs::read_to_string(m.dir.join("server.log")).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(20).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    bail!(
                        "{} member {} exited with {status}; last log lines:\n{}",
                        self.spec.kind,
                        m.name,
                        tail.join("\n")
                    );
                }
            }
        }
        Ok(())
    }

    /// Waits until every member names the same leader and answers a linearizable read.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let problem = match self.readiness_problem().await {
                None => return Ok(()),
                Some(p) => p,
            };
            if Instant::now() >= deadline {
                bail!("{} cluster not ready within {timeout:?}: {problem}", self.spec.kind);
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    async fn readiness_problem(&self) -> Option<String> {
        let mut leader = None;
        for ep in self.endpoints() {
            match tokio::time::timeout(PROBE_TIMEOUT, probe(&ep)).await {
                Ok(Ok(l)) if l != 0 => {
                    if *leader.get_or_insert(l) != l {
                        return Some("members disagree on the leader".into());
                    }
                }
                Ok(Ok(_)) => return Some(format!("{ep}: no leader")),
                Ok(Err(e)) => return Some(format!("{ep}: {e:#}")),
                Err(_) => return Some(format!("{ep}: no answer within {PROBE_TIMEOUT:?}")),
            }
        }
        None
    }
}

/// The leader a member reports, after it answered a linearizable read.
async fn probe(endpoint: &str) -> Result<u64> {
    let channel = Channel::from_shared(endpoint.to_string())?.connect_timeout(PROBE_TIMEOUT).connect().await?;
    let status = MaintenanceClient::new(channel.clone()).status(StatusRequest {}).await?.into_inner();
    KvClient::new(channel)
        .range(RangeRequest { key: b"cairn-bench-ready".to_vec(), ..Default::default() })
        .await
        .map_err(|s| anyhow!("linearizable read: {s}"))?;
    Ok(status.leader)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
        if self.spec.keep_data {
            self._root.disable_cleanup(true);
            eprintln!("kept the {} cluster's data and logs in {}", self.spec.kind, self._root.path().display());
        }
    }
}

/// The `cairn` binary next to this executable (`target/<profile>/cairn`), or the one
/// on `PATH`.
pub fn default_cairn_binary() -> PathBuf {
    let sibling = std::env::current_exe().ok().and_then(|exe| {
        let dir = exe.parent()?;
        // Test executables live one level deeper, in target/<profile>/deps.
        [dir.join("cairn"), dir.parent()?.join("cairn")].into_iter().find(|p| p.exists())
    });
    sibling.unwrap_or_else(|| PathBuf::from("cairn"))
}

/// A server's version string (`etcd --version` or `cairn --version`, first line).
pub fn server_version(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}
