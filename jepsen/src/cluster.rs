//! The members under test: `cairn` processes, each in its own network
//! namespace, started, killed, paused, wiped and re-added on the nemesis's
//! orders, and the gRPC channels clients use to reach them.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_proto::etcdserverpb::cluster_client::ClusterClient;
use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_proto::etcdserverpb::{
    MemberAddRequest, MemberListRequest, MemberRemoveRequest, MoveLeaderRequest, RangeRequest, StatusRequest,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};
use crate::net::Net;

/// Client port every member listens on (each has its own address).
pub const CLIENT_PORT: u16 = 2379;
/// Peer port every member listens on.
pub const PEER_PORT: u16 = 2380;
/// How long a client connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Bound of one health probe or admin request.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a membership change refused as "unhealthy cluster" is retried.
pub const RECONFIG_RETRY: Duration = Duration::from_secs(10);

/// Which server the members run: Cairn, or etcd (to validate the harness).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    /// The `cairn` binary.
    Cairn,
    /// etcd (Debian's `etcd-server`), which takes the same flags.
    Etcd,
}

struct Member {
    name: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
    spawns: u32,
    /// Set while the member has been removed from the cluster by the nemesis.
    removed: bool,
}

/// The running members. Dropping it kills them all (then the network goes).
pub struct Cluster {
    members: Vec<Member>,
    channels: Vec<Channel>,
    bin: PathBuf,
    kind: ServerKind,
    token: String,
    extra: Vec<String>,
    net: Net,
}

impl Cluster {
    /// Starts `net`'s members from fresh data directories under `run_dir`.
    pub fn start(net: Net, run_dir: &Path, bin: &Path, kind: ServerKind, extra: Vec<String>) -> Result<Cluster> {
        let count = net.nodes();
        let mut members = Vec::new();
        let mut channels = Vec::new();
        for i in 0..count {
            let dir = run_dir.join(format!("n{}", i + 1));
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            members.push(Member {
                name: format!("n{}", i + 1),
                data_dir: dir.join("data"),
                log: dir.join("server.log"),
                child: None,
                paused: false,
                spawns: 0,
                removed: false,
            });
            let url = format!("http://{}:{CLIENT_PORT}", net.node_ip(i));
            let ep = Endpoint::from_shared(url.clone()).map_err(|e| Error::Setup(format!("endpoint {url}: {e}")))?;
            channels.push(ep.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true).connect_lazy());
        }
        let token = format!("cairn-jepsen-{}", net.slot());
        let mut cluster = Cluster { members, channels, bin: bin.to_path_buf(), kind, token, extra, net };
        let initial = cluster.initial_cluster(&(0..count).collect::<Vec<_>>());
        for i in 0..count {
            cluster.spawn(i, &initial, "new")?;
        }
        Ok(cluster)
    }

    /// The network the members run in.
    pub fn net(&self) -> &Net {
        &self.net
    }

    /// Number of members (including removed ones).
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// A channel to member `i` (connects lazily, reconnects by itself).
    pub fn channel(&self, i: usize) -> Channel {
        self.channels[i].clone()
    }

    /// Member `i`'s name.
    pub fn name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    fn peer_url(&self, i: usize) -> String {
        format!("http://{}:{PEER_PORT}", self.net.node_ip(i))
    }

    fn client_url(&self, i: usize) -> String {
        format!("http://{}:{CLIENT_PORT}", self.net.node_ip(i))
    }

    fn initial_cluster(&self, members: &[usize]) -> String {
        members.iter().map(|i| format!("{}={}", self.members[*i].name, self.peer_url(*i))).collect::<Vec<_>>().join(",")
    }

    fn open_log(&self, i: usize) -> Result<File> {
        let path = &self.members[i].log;
        OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))
    }

    fn spawn(&mut self, i: usize, initial_cluster: &str, state: &str) -> Result<()> {
        if self.members[i].child.is_some() {
            return Err(Error::Setup(format!("{} is already running", self.members[i].name)));
        }
        self.members[i].spawns += 1;
        let mut log = self.open_log(i)?;
        let _ = writeln!(log, "===== cairn-jepsen: start #{} ({state}) =====", self.members[i].spawns);
        let err = log.try_clone().map_err(|e| Error::io(&self.members[i].log, e))?;
        let ns = self.net.ns(i);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns]).arg(&self.bin);
        let m = &self.members[i];
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen-client-urls")
            .arg(self.client_url(i))
            .arg("--advertise-client-urls")
            .arg(self.client_url(i))
            .arg("--listen-peer-urls")
            .arg(self.peer_url(i))
            .arg("--initial-advertise-peer-urls")
            .arg(self.peer_url(i))
            .arg("--initial-cluster")
            .arg(initial_cluster)
            .arg("--initial-cluster-state")
            .arg(state)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        if self.kind == ServerKind::Etcd {
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("ETCD_") {
                    cmd.env_remove(k);
                }
            }
            cmd.arg("--logger=zap");
        }
        // `ip netns exec` enters the namespace and execs the server: the child's
        // pid is the server's, so signals reach it directly.
        let child = cmd.spawn().map_err(|e| Error::Setup(format!("spawn {} in {ns}: {e}", self.bin.display())))?;
        self.members[i].child = Some(child);
        self.members[i].paused = false;
        Ok(())
    }

    /// Whether member `i` has a live process.
    pub fn is_running(&mut self, i: usize) -> bool {
        let m = &mut self.members[i];
        match m.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                m.child = None;
                false
            }
            None => false,
        }
    }

    /// Whether member `i` is currently removed from the cluster.
    pub fn is_removed(&self, i: usize) -> bool {
        self.members[i].removed
    }

    /// SIGKILL member `i` (no-op if it is not running).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
        self.members[i].paused = false;
    }

    /// Restarts member `i` from its data directory (no-op if running or removed).
    pub fn restart(&mut self, i: usize) -> Result<()> {
        if self.is_running(i) || self.members[i].removed {
            return Ok(());
        }
        let all: Vec<usize> = (0..self.size()).collect();
        let initial = self.initial_cluster(&all);
        // An existing data directory wins over the initial-cluster flags.
        self.spawn(i, &initial, "new")
    }

    /// SIGSTOP member `i`.
    pub fn pause(&mut self, i: usize) -> Result<()> {
        self.signal(i, Signal::SIGSTOP)?;
        self.members[i].paused = true;
        Ok(())
    }

    /// SIGCONT member `i` (no-op if it is not paused).
    pub fn resume(&mut self, i: usize) -> Result<()> {
        if self.members[i].paused {
            self.signal(i, Signal::SIGCONT)?;
            self.members[i].paused = false;
        }
        Ok(())
    }

    fn signal(&mut self, i: usize, sig: Signal) -> Result<()> {
        let Some(child) = self.members[i].child.as_ref() else {
            return Ok(());
        };
        kill(Pid::from_raw(child.id() as i32), sig)
            .map_err(|e| Error::Setup(format!("{sig} {}: {e}", self.members[i].name)))
    }

    /// `(own member ID, leader ID)` as member `i` reports them.
    pub async fn status(&self, i: usize) -> Option<(u64, u64)> {
        let mut c = MaintenanceClient::new(self.channel(i));
        let resp = tokio::time::timeout(PROBE_TIMEOUT, c.status(StatusRequest {})).await.ok()?.ok()?.into_inner();
        Some((resp.header.map(|h| h.member_id).unwrap_or(0), resp.leader))
    }

    /// The leader as most running, reachable members report it.
    pub async fn leader(&mut self) -> Option<usize> {
        let mut reports: Vec<(usize, u64, u64)> = Vec::new();
        for i in 0..self.size() {
            if !self.is_running(i) || self.members[i].removed {
                continue;
            }
            if let Some((me, leader)) = self.status(i).await {
                reports.push((i, me, leader));
            }
        }
        let mut votes: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
        for (_, _, leader) in reports.iter().filter(|r| r.2 != 0) {
            *votes.entry(*leader).or_default() += 1;
        }
        let (leader_id, _) = votes.into_iter().max_by_key(|(id, n)| (*n, *id))?;
        reports.iter().find(|r| r.1 == leader_id).map(|r| r.0)
    }

    /// Member `i`'s ID (from its Status).
    pub async fn member_id(&self, i: usize) -> Option<u64> {
        self.status(i).await.map(|(me, _)| me)
    }

    /// Waits until every running member serves a linearizable read.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut problem = None;
            for i in 0..self.size() {
                if self.members[i].removed {
                    continue;
                }
                if !self.is_running(i) {
                    problem = Some(format!(
                        "{} is not running (see {})",
                        self.members[i].name,
                        self.members[i].log.display()
                    ));
                    break;
                }
                let mut kv = KvClient::new(self.channel(i));
                let req = RangeRequest { key: b"cairn-jepsen/health".to_vec(), ..Default::default() };
                match tokio::time::timeout(PROBE_TIMEOUT, kv.range(req)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => problem = Some(format!("{}: {}", self.members[i].name, e.message())),
                    Err(_) => problem = Some(format!("{}: no answer within {PROBE_TIMEOUT:?}", self.members[i].name)),
                }
                if problem.is_some() {
                    break;
                }
            }
            match problem {
                None => return Ok(()),
                Some(p) if Instant::now() >= deadline => {
                    return Err(Error::Setup(format!("cluster not healthy within {timeout:?}: {p}")))
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// Kills every member at once (SIGKILL).
    pub fn kill_all(&mut self) {
        for i in 0..self.size() {
            self.kill(i);
        }
    }

    /// Restarts every member that is not running (and not removed).
    pub fn restart_all(&mut self) -> Result<()> {
        for i in 0..self.size() {
            self.restart(i)?;
        }
        Ok(())
    }

    /// A running member other than `i` to send admin requests through.
    fn other_member(&mut self, i: usize) -> Option<usize> {
        (0..self.size()).find(|j| *j != i && !self.members[*j].removed && self.is_running(*j))
    }

    /// Removes member `i` from the cluster (MemberRemove through another
    /// member), kills it and deletes its data directory.
    pub async fn remove_member(&mut self, i: usize) -> Result<()> {
        let id = match self.member_id(i).await {
            Some(id) => id,
            None => self.member_id_from_list(i).await?,
        };
        let via = self.other_member(i).ok_or_else(|| Error::Setup("no other member to remove through".into()))?;
        let mut c = ClusterClient::new(self.channel(via));
        // A member added moments ago may not count as active yet: the strict
        // reconfiguration check answers "unhealthy cluster" until it does.
        let deadline = Instant::now() + RECONFIG_RETRY;
        loop {
            let res = tokio::time::timeout(PROBE_TIMEOUT * 3, c.member_remove(MemberRemoveRequest { id }))
                .await
                .map_err(|_| Error::Setup(format!("MemberRemove({}) timed out", self.members[i].name)))?;
            match res {
                Ok(_) => break,
                Err(e) if e.message().contains("unhealthy cluster") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await
                }
                Err(e) => return Err(Error::Setup(format!("MemberRemove({}): {}", self.members[i].name, e.message()))),
            }
        }
        self.members[i].removed = true;
        self.kill(i);
        let dir = self.members[i].data_dir.clone();
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        Ok(())
    }

    async fn member_id_from_list(&mut self, i: usize) -> Result<u64> {
        let via = self.other_member(i).ok_or_else(|| Error::Setup("no member to list through".into()))?;
        let mut c = ClusterClient::new(self.channel(via));
        let list = tokio::time::timeout(PROBE_TIMEOUT, c.member_list(MemberListRequest { linearizable: true }))
            .await
            .map_err(|_| Error::Setup("MemberList timed out".into()))?
            .map_err(|e| Error::Setup(format!("MemberList: {}", e.message())))?
            .into_inner();
        let url = self.peer_url(i);
        list.members
            .iter()
            .find(|m| m.peer_ur_ls.contains(&url))
            .map(|m| m.id)
            .ok_or_else(|| Error::Setup(format!("{} is not in the member list", self.members[i].name)))
    }

    /// Adds member `i` back (MemberAdd) and starts it from an empty data
    /// directory with `--initial-cluster-state existing`.
    pub async fn add_member(&mut self, i: usize) -> Result<()> {
        let via = self.other_member(i).ok_or_else(|| Error::Setup("no member to add through".into()))?;
        let mut c = ClusterClient::new(self.channel(via));
        let req = MemberAddRequest { peer_ur_ls: vec![self.peer_url(i)], is_learner: false };
        let resp = tokio::time::timeout(PROBE_TIMEOUT * 3, c.member_add(req))
            .await
            .map_err(|_| Error::Setup(format!("MemberAdd({}) timed out", self.members[i].name)))?
            .map_err(|e| Error::Setup(format!("MemberAdd({}): {}", self.members[i].name, e.message())))?
            .into_inner();
        // Every current member, by its name, plus this one.
        let mut initial: Vec<String> = Vec::new();
        for m in &resp.members {
            let Some(url) = m.peer_ur_ls.first() else { continue };
            let name = if m.name.is_empty() {
                match (0..self.size()).find(|j| self.peer_url(*j) == *url) {
                    Some(j) => self.members[j].name.clone(),
                    None => continue,
                }
            } else {
                m.name.clone()
            };
            initial.push(format!("{name}={url}"));
        }
        if !initial.iter().any(|e| e.starts_with(&format!("{}=", self.members[i].name))) {
            initial.push(format!("{}={}", self.members[i].name, self.peer_url(i)));
        }
        self.members[i].removed = false;
        self.spawn(i, &initial.join(","), "existing")
    }

    /// Asks the leader to hand leadership to member `to` (MoveLeader).
    pub async fn move_leader(&mut self, to: usize) -> Result<()> {
        let leader = self.leader().await.ok_or_else(|| Error::Setup("no leader to move".into()))?;
        if leader == to {
            return Ok(());
        }
        let target = self
            .member_id(to)
            .await
            .ok_or_else(|| Error::Setup(format!("{} did not answer Status", self.members[to].name)))?;
        let mut c = MaintenanceClient::new(self.channel(leader));
        tokio::time::timeout(PROBE_TIMEOUT * 3, c.move_leader(MoveLeaderRequest { target_id: target }))
            .await
            .map_err(|_| Error::Setup("MoveLeader timed out".into()))?
            .map_err(|e| Error::Setup(format!("MoveLeader: {}", e.message())))?;
        Ok(())
    }

    /// Path of member `i`'s log.
    pub fn log_path(&self, i: usize) -> &Path {
        &self.members[i].log
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}
