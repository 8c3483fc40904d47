//! Test harness for cairn-client: real `cairn` clusters on free loopback ports,
//! modelled on `server/tests/common/mod.rs` but driven through cairn-client itself.
//!
//! The `cairn` binary is looked up next to the test executable
//! (`target/<profile>/deps/<test>` → `target/<profile>/cairn`), or taken from
//! `CAIRN_BIN`; if it is missing, the harness builds it once with
//! `cargo build -p cairn-server --bin cairn` into the same target directory.
//! `CAIRN_TEST_KEEP_DIRS=1` keeps the data and log directories of a failed test.
//!
//! `CAIRN_TEST_SERVER=etcd` runs the same tests against real etcd (Debian
//! `etcd-server`, `/usr/bin/etcd` or `CAIRN_TEST_ETCD_BIN`), to check that the
//! client relies only on etcd's semantics. [`Cluster::start_etcd`] always uses
//! etcd (for calls Cairn does not implement yet).
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cairn_client::{Client, ClientOptions};
use tempfile::TempDir;

/// Bound for a cluster (or a restarted member) to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for one awaited step of a test (see [`within`]).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);
const LOG_TAIL_LINES: usize = 40;
const START_ATTEMPTS: usize = 3;

/// Which server a cluster runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    /// The `cairn` binary.
    Cairn,
    /// Real etcd.
    Etcd,
}

/// `CAIRN_TEST_SERVER=etcd` selects etcd; unset, empty or `cairn` selects Cairn.
pub fn server_kind() -> ServerKind {
    match std::env::var("CAIRN_TEST_SERVER") {
        Err(_) => ServerKind::Cairn,
        Ok(v) if v.is_empty() || v.eq_ignore_ascii_case("cairn") => ServerKind::Cairn,
        Ok(v) if v.eq_ignore_ascii_case("etcd") => ServerKind::Etcd,
        Ok(v) => panic!("CAIRN_TEST_SERVER={v:?}: expected `cairn` or `etcd`"),
    }
}

fn etcd_binary() -> PathBuf {
    std::env::var_os("CAIRN_TEST_ETCD_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

static CLUSTER_SEQ: AtomicUsize = AtomicUsize::new(0);
static CAIRN_BIN: OnceLock<PathBuf> = OnceLock::new();

/// Awaits `fut`, panicking with `what` if it takes longer than [`STEP_TIMEOUT`],
/// so that a hung server fails the test instead of hanging it.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: nothing within {STEP_TIMEOUT:?}"),
    }
}

/// Like [`within`], unwrapping the result with a message naming the step.
pub async fn ok<T, E: std::fmt::Debug>(what: &str, fut: impl Future<Output = Result<T, E>>) -> T {
    match within(what, fut).await {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e:?}"),
    }
}

/// Client options for tests: quick connect; against Cairn, short keep-alive so
/// that a frozen member's streams fail fast (etcd refuses pings that often, so
/// it gets the defaults).
pub fn test_options() -> ClientOptions {
    let opts = ClientOptions::default().connect_timeout(Duration::from_secs(2)).request_timeout(Duration::from_secs(8));
    match server_kind() {
        ServerKind::Cairn => {
            opts.keep_alive(Duration::from_secs(1), Duration::from_secs(2)).keep_alive_while_idle(true)
        }
        ServerKind::Etcd => opts,
    }
}

/// The `cairn` binary (built on first use if missing).
pub fn cairn_binary() -> PathBuf {
    CAIRN_BIN
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("CAIRN_BIN") {
                return PathBuf::from(p);
            }
            let exe = std::env::current_exe().expect("current_exe");
            let profile_dir =
                exe.parent().and_then(Path::parent).expect("test executable lives in <target>/<profile>/deps");
            let bin = profile_dir.join("cairn");
            if bin.exists() {
                return bin;
            }
            let target_dir = profile_dir.parent().expect("<target>/<profile>");
            eprintln!("{} is missing; building it (cargo build -p cairn-server --bin cairn)", bin.display());
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "cairn-server", "--bin", "cairn", "--target-dir"])
                .arg(target_dir)
                .status()
                .expect("run cargo build");
            assert!(
                status.success() && bin.exists(),
                "could not build the cairn binary; run `cargo build -p cairn-server --bin cairn` (or set CAIRN_BIN)"
            );
            bin
        })
        .clone()
}

fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    listeners.iter().map(|l| l.local_addr().expect("local_addr").port()).collect()
}

struct Node {
    kind: ServerKind,
    name: String,
    client_port: u16,
    peer_port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Node {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    fn spawn(&mut self, initial_cluster: &str, token: &str) {
        assert!(self.child.is_none(), "{} already runs", self.name);
        let open = |p: PathBuf| -> File { OpenOptions::new().create(true).append(true).open(p).expect("open log") };
        let bin = match self.kind {
            ServerKind::Cairn => cairn_binary(),
            ServerKind::Etcd => etcd_binary(),
        };
        let mut cmd = Command::new(&bin);
        if self.kind == ServerKind::Etcd {
            // etcd reads every flag from ETCD_* too: only ours count.
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("ETCD_") {
                    cmd.env_remove(k);
                }
            }
            cmd.arg("--logger=zap");
            if !matches!(std::env::consts::ARCH, "x86_64" | "aarch64") {
                cmd.env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH);
            }
        }
        let child = cmd
            .args(["--name", &self.name, "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.client_url(), "--advertise-client-urls", &self.client_url()])
            .args(["--listen-peer-urls", &self.peer_url(), "--initial-advertise-peer-urls", &self.peer_url()])
            .args(["--initial-cluster", initial_cluster, "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", token])
            .stdin(Stdio::null())
            .stdout(Stdio::from(open(self.dir.path().join("stdout.log"))))
            .stderr(Stdio::from(open(self.log_path())))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} ({}): {e}", self.name, bin.display()));
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(format!("{} exited with {status}", self.name))
            }
            _ => None,
        }
    }

    fn log_tail(&self) -> String {
        let Ok(mut f) = File::open(self.log_path()) else { return String::new() };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

/// A running cluster; every process is killed and every directory removed on
/// drop (member logs are printed first if the test panicked).
pub struct Cluster {
    nodes: Vec<Node>,
    token: String,
    initial_cluster: String,
}

impl Cluster {
    /// Starts `n` members and waits until they agree on a leader and serve reads.
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_kind(n, server_kind()).await
    }

    /// Starts `n` members of real etcd, whatever `CAIRN_TEST_SERVER` says.
    pub async fn start_etcd(n: usize) -> Cluster {
        Cluster::start_kind(n, ServerKind::Etcd).await
    }

    /// Which server this cluster runs.
    pub fn kind(&self) -> ServerKind {
        self.nodes[0].kind
    }

    async fn start_kind(n: usize, kind: ServerKind) -> Cluster {
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let mut c = Cluster::spawn_new(n, kind);
            match c.wait_ready_inner().await {
                Ok(()) => return c,
                Err(e) if e.contains("address already in use") || e.contains("exited") => {
                    last = e;
                    drop(c);
                }
                Err(e) => panic!("cluster of {n} did not start: {e}"),
            }
        }
        panic!("cluster of {n} did not start after {START_ATTEMPTS} attempts: {last}");
    }

    fn spawn_new(n: usize, kind: ServerKind) -> Cluster {
        let ports = free_ports(2 * n);
        let seq = CLUSTER_SEQ.fetch_add(1, Ordering::SeqCst);
        let token = format!("cairn-client-test-{}-{seq}", std::process::id());
        let nodes: Vec<Node> = (0..n)
            .map(|i| Node {
                kind,
                name: format!("n{}", i + 1),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                dir: tempfile::Builder::new().prefix("cairn-client-test-").tempdir().expect("tempdir"),
                child: None,
            })
            .collect();
        let initial_cluster =
            nodes.iter().map(|n| format!("{}={}", n.name, n.peer_url())).collect::<Vec<_>>().join(",");
        let mut c = Cluster { nodes, token, initial_cluster };
        for node in &mut c.nodes {
            node.spawn(&c.initial_cluster, &c.token);
        }
        c
    }

    /// Client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        self.nodes[i].client_url()
    }

    /// Client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(Node::client_url).collect()
    }

    /// A client for every member (with failover), with [`test_options`].
    pub async fn client(&self) -> Client {
        ok("connect", Client::connect(self.endpoints(), test_options())).await
    }

    /// A client whose first endpoint is member `i` (it still fails over).
    pub async fn client_starting_at(&self, i: usize) -> Client {
        let n = self.nodes.len();
        let eps: Vec<String> = (0..n).map(|k| self.endpoint((i + k) % n)).collect();
        ok("connect", Client::connect(eps, test_options())).await
    }

    /// SIGKILL member `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Freezes member `i` (SIGSTOP): its sockets stay open but it answers nothing.
    pub fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// Thaws a member frozen by [`Cluster::pause`] (SIGCONT).
    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    fn signal(&self, i: usize, sig: &str) {
        let pid = self.nodes[i].child.as_ref().unwrap_or_else(|| panic!("member {i} is not running")).id();
        let status = Command::new("kill").arg(sig).arg(pid.to_string()).status().expect("run kill");
        assert!(status.success(), "kill {sig} {pid} failed");
    }

    /// Starts member `i` again on its data dir (does not wait).
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].kill();
        let (ic, t) = (self.initial_cluster.clone(), self.token.clone());
        self.nodes[i].spawn(&ic, &t);
    }

    /// Indices of running members.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].child.is_some()).collect()
    }

    /// Waits until the running members agree on a running leader and serve reads.
    pub async fn wait_ready(&mut self) {
        if let Err(e) = self.wait_ready_inner().await {
            panic!("cluster not ready: {e}");
        }
    }

    async fn wait_ready_inner(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for n in &mut self.nodes {
                if let Some(why) = n.exited() {
                    let tail = n.log_tail().to_ascii_lowercase();
                    let busy = if tail.contains("address already in use") { " (address already in use)" } else { "" };
                    return Err(format!("{why}{busy}"));
                }
            }
            let problem = match self.leader_within(Duration::from_secs(2)).await {
                None => "no agreed leader".to_string(),
                Some(_) => match self.read_probe().await {
                    None => return Ok(()),
                    Some(p) => p,
                },
            };
            if Instant::now() >= deadline {
                return Err(format!("not ready within {READY_TIMEOUT:?}: {problem}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn read_probe(&self) -> Option<String> {
        for i in self.running() {
            let ep = self.endpoint(i);
            let res = tokio::time::timeout(Duration::from_secs(2), async {
                let c = Client::connect([ep.as_str()], test_options().request_attempts_max(1)).await?;
                c.get("cairn-client-readiness-probe").await
            })
            .await;
            match res {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Some(format!("{ep}: {e}")),
                Err(_) => return Some(format!("{ep}: read timed out")),
            }
        }
        None
    }

    async fn leader_within(&self, probe: Duration) -> Option<usize> {
        let mut leader_id = None;
        let mut ids = Vec::new();
        for i in self.running() {
            let ep = self.endpoint(i);
            let s = tokio::time::timeout(probe, async {
                let c = Client::connect([ep.as_str()], test_options().request_attempts_max(1)).await?;
                c.status().await
            })
            .await
            .ok()?
            .ok()?;
            if s.leader == 0 || *leader_id.get_or_insert(s.leader) != s.leader {
                return None;
            }
            ids.push((i, s.header.member_id));
        }
        let leader_id = leader_id?;
        ids.iter().find(|(_, me)| *me == leader_id).map(|(i, _)| *i)
    }

    /// Waits for an agreed, running leader and returns its index.
    pub async fn wait_for_leader(&self) -> usize {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(l) = self.leader_within(Duration::from_secs(2)).await {
                return l;
            }
            assert!(Instant::now() < deadline, "no leader within {READY_TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        if std::thread::panicking() {
            let keep = std::env::var_os("CAIRN_TEST_KEEP_DIRS").is_some();
            for n in &mut self.nodes {
                eprintln!("----- {} ({}), last lines -----\n{}", n.name, n.client_url(), n.log_tail());
                if keep {
                    n.dir.disable_cleanup(true);
                    eprintln!("kept {}", n.dir.path().display());
                }
            }
        }
    }
}
