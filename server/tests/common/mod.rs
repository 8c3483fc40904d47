//! Shared harness for Cairn's integration tests.
//!
//! A [`Cluster`] is a set of real server processes on loopback ports, each with
//! its own temporary directory (data dir + captured stdout/stderr). The same
//! harness runs either the `cairn` binary (default) or real etcd, so that every
//! test can be validated against etcd itself:
//!
//! ```text
//! cargo test -p cairn-server --test cluster                          # Cairn
//! CAIRN_TEST_SERVER=etcd cargo test -p cairn-server --test cluster   # etcd 3.4
//! ```
//!
//! Other knobs: `CAIRN_TEST_ETCD_BIN` / `CAIRN_TEST_ETCDCTL_BIN` (paths, default
//! `/usr/bin/etcd` / `/usr/bin/etcdctl`), `CAIRN_TEST_KEEP_DIRS=1` (keep the
//! temporary directories of a failed test and print where they are).
#![allow(dead_code)]

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};
use tempfile::TempDir;

/// Overall bound for a cluster (or a restarted member) to become ready.
/// Puts, in this order, chosen so that every sort target gives a different,
/// tie-free order of the keys `s/a`..`s/d`: create c a d b; mod a d b c;
/// version a(1) d(2) b(3) c(4); value d("b") b("k") c("p") a("z"); key a b c d.
pub const SORT_FIXTURE: [(&str, &str); 10] = [
    ("s/c", "m"),
    ("s/a", "z"),
    ("s/d", "a"),
    ("s/b", "q"),
    ("s/c", "n"),
    ("s/d", "b"),
    ("s/b", "r"),
    ("s/c", "o"),
    ("s/b", "k"),
    ("s/c", "p"),
];

pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for one client call made through [`within`].
pub const RPC_TIMEOUT: Duration = Duration::from_secs(20);
/// How many times `Cluster::start` picks new ports after a bind failure.
const START_ATTEMPTS: usize = 5;
/// Lines of each member's log printed when a test fails.
const LOG_TAIL_LINES: usize = 60;

/// Which server binary the suite runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    Cairn,
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

pub fn is_etcd() -> bool {
    server_kind() == ServerKind::Etcd
}

fn server_binary() -> PathBuf {
    match server_kind() {
        ServerKind::Cairn => PathBuf::from(env!("CARGO_BIN_EXE_cairn")),
        ServerKind::Etcd => {
            std::env::var_os("CAIRN_TEST_ETCD_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
        }
    }
}

/// The real etcdctl binary (Debian package `etcd-client`).
pub fn etcdctl_binary() -> PathBuf {
    std::env::var_os("CAIRN_TEST_ETCDCTL_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/etcdctl"))
}

/// Awaits `fut`, panicking with `what` if it takes longer than [`RPC_TIMEOUT`].
/// Every client call in the tests goes through this (or [`retry`]) so that a
/// hung server fails the test instead of hanging it.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(RPC_TIMEOUT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {RPC_TIMEOUT:?}"),
    }
}

/// Like [`within`] but unwraps the result with a message naming the call.
pub async fn ok<T, E: Debug>(what: &str, fut: impl Future<Output = Result<T, E>>) -> T {
    match within(what, fut).await {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected error: {e:?}"),
    }
}

/// Retries `f` (each attempt bounded by `per_try`) until it succeeds or
/// `overall` has passed; panics with the last error then. Only for idempotent
/// operations (reads, or writes whose repetition the test tolerates).
pub async fn retry<T, E, F, Fut>(what: &str, overall: Duration, per_try: Duration, mut f: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + overall;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last = match tokio::time::timeout(per_try, f()).await {
            Ok(Ok(v)) => return v,
            Ok(Err(e)) => format!("{e:?}"),
            Err(_) => format!("no answer within {per_try:?}"),
        };
        if Instant::now() >= deadline {
            panic!("{what}: still failing after {overall:?} ({attempts} attempts); last error: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The gRPC status of a client error (panics if it is not a gRPC status).
pub fn grpc_status(err: &etcd_client::Error) -> (tonic::Code, String) {
    match err {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status error, got {other:?}"),
    }
}

/// Asserts that `res` failed with exactly this gRPC code and message.
pub fn assert_grpc_error<T: Debug>(what: &str, res: Result<T, etcd_client::Error>, code: tonic::Code, message: &str) {
    match res {
        Ok(v) => panic!("{what}: expected {code:?} {message:?}, got success: {v:?}"),
        Err(e) => {
            let (c, m) = grpc_status(&e);
            assert_eq!((c, m.as_str()), (code, message), "{what}: wrong gRPC error (full error: {e:?})");
        }
    }
}

/// A client connected to exactly one endpoint.
pub async fn connect(endpoint: &str) -> Client {
    let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(3)).with_timeout(Duration::from_secs(15));
    ok(&format!("connect to {endpoint}"), Client::connect([endpoint], Some(opts))).await
}

fn free_ports(n: usize) -> Vec<u16> {
    // Hold every listener until all ports are chosen so that they are distinct.
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port")).collect();
    listeners.iter().map(|l| l.local_addr().expect("local_addr").port()).collect()
}

static CLUSTER_SEQ: AtomicUsize = AtomicUsize::new(0);

struct Node {
    name: String,
    client_port: u16,
    peer_port: u16,
    dir: TempDir,
    child: Option<Child>,
    /// How many times this member's process has been spawned.
    spawns: u32,
    /// `--initial-cluster` and `--initial-cluster-state` of this member: a member
    /// added later joins with the members of its time and `existing`.
    initial_cluster: String,
    state: &'static str,
    /// When set, the peer URL other members are told goes through this proxy.
    proxy: Option<PeerProxy>,
}

impl Node {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The peer URL other members use: the proxy's, if there is one.
    fn peer_url(&self) -> String {
        match &self.proxy {
            Some(proxy) => format!("http://127.0.0.1:{}", proxy.port),
            None => self.listen_peer_url(),
        }
    }

    fn listen_peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn stdout_path(&self) -> PathBuf {
        self.dir.path().join("stdout.log")
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    fn spawn(&mut self, token: &str, extra: &[String]) {
        let initial_cluster = self.initial_cluster.clone();
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.spawns += 1;
        let open = |p: PathBuf| -> File {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
            // Mark each incarnation so that a restart is visible in the log.
            let _ = writeln!(f, "===== cairn test harness: spawn #{} =====", self.spawns);
            f
        };
        let stdout = open(self.stdout_path());
        let stderr = open(self.stderr_path());
        let bin = server_binary();
        let mut cmd = Command::new(&bin);
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(self.client_url())
            .arg("--advertise-client-urls")
            .arg(self.client_url())
            .arg("--listen-peer-urls")
            .arg(self.listen_peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(self.peer_url())
            .arg("--initial-cluster")
            .arg(&initial_cluster)
            // Also right for a restart: like etcd, an existing data dir wins.
            .arg("--initial-cluster-state")
            .arg(self.state)
            .arg("--initial-cluster-token")
            .arg(token)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
        match server_kind() {
            ServerKind::Etcd => {
                // etcd reads every flag from ETCD_* too: only ours count.
                for (k, _) in std::env::vars_os() {
                    if k.to_string_lossy().starts_with("ETCD_") {
                        cmd.env_remove(k);
                    }
                }
                // etcd-only: structured logs instead of the deprecated capnslog.
                cmd.arg("--logger=zap");
                if !matches!(std::env::consts::ARCH, "x86_64" | "aarch64") {
                    cmd.env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH);
                }
            }
            ServerKind::Cairn => {
                if std::env::var_os("RUST_BACKTRACE").is_none() {
                    cmd.env("RUST_BACKTRACE", "1");
                }
            }
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {} ({}): {e}", self.name, bin.display()));
        self.child = Some(child);
    }

    /// SIGKILL (std's `Child::kill`) and reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `Some(description)` if the process was started and has exited since.
    fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(format!("{} exited with {status}", self.name))
            }
            Ok(None) => None,
            Err(e) => Some(format!("{}: try_wait failed: {e}", self.name)),
        }
    }

    fn log_mentions_addr_in_use(&self) -> bool {
        let text = tail_of(&self.stderr_path(), 64 * 1024) + &tail_of(&self.stdout_path(), 64 * 1024);
        let text = text.to_ascii_lowercase();
        text.contains("address already in use") || text.contains("addrinuse")
    }

    fn print_log_tail(&self) {
        for path in [self.stderr_path(), self.stdout_path()] {
            let text = tail_of(&path, 256 * 1024);
            if text.trim().is_empty() {
                continue;
            }
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(LOG_TAIL_LINES);
            eprintln!("----- {} ({}), last {} lines -----", self.name, path.display(), lines.len() - start);
            for line in &lines[start..] {
                eprintln!("{line}");
            }
        }
    }
}

/// A TCP forwarder in front of a member's peer listener, on a thread of its own
/// (tests' runtimes come and go); it stops when dropped.
struct PeerProxy {
    port: u16,
    cut: tokio::sync::watch::Sender<bool>,
}

impl PeerProxy {
    fn start(target_port: u16) -> PeerProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a proxy port");
        listener.set_nonblocking(true).expect("non-blocking proxy listener");
        let port = listener.local_addr().expect("local_addr").port();
        let (cut, mut ended) = tokio::sync::watch::channel(false);
        let cuts = cut.subscribe();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("proxy runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("proxy listener");
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            if let Ok((inbound, _)) = accepted {
                                tokio::spawn(forward(inbound, target_port, cuts.clone()));
                            }
                        }
                        // The sender is dropped with the proxy.
                        changed = ended.changed() => if changed.is_err() { return },
                    }
                }
            });
        });
        PeerProxy { port, cut }
    }
}

async fn forward(mut inbound: tokio::net::TcpStream, target_port: u16, mut cut: tokio::sync::watch::Receiver<bool>) {
    if *cut.borrow_and_update() {
        // Accepted and never answered; dropped once the cut heals.
        let _ = cut.wait_for(|c| !*c).await;
        return;
    }
    let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = cut.wait_for(|c| *c) => {}
    }
}

fn tail_of(path: &Path, max_bytes: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max_bytes)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

enum StartError {
    AddrInUse(String),
    Fatal(String),
}

/// A running test cluster. Every process is killed and every directory removed
/// when it is dropped, also when the test panics (the tail of each member's log
/// is printed first in that case).
pub struct Cluster {
    nodes: Vec<Node>,
    token: String,
    /// Flags given to every member on top of the harness's own.
    extra: Vec<String>,
}

impl Cluster {
    /// Starts an `n`-member cluster and waits until every member answers a
    /// linearizable read and all members agree on a leader.
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[]).await
    }

    /// Like [`Cluster::start`], with `extra` flags for every member.
    pub async fn start_with(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_inner(n, extra, false).await
    }

    /// Like [`Cluster::start_with`], with a proxy in front of every member's peer
    /// listener, so that [`Cluster::cut`] can cut the network into a member.
    pub async fn start_cuttable(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_inner(n, extra, true).await
    }

    async fn start_inner(n: usize, extra: &[&str], cuttable: bool) -> Cluster {
        assert!(n >= 1);
        let mut last = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let mut cluster = Cluster::spawn_new(n, extra, cuttable);
            match cluster.wait_ready_inner(false).await {
                Ok(()) => return cluster,
                Err(StartError::AddrInUse(msg)) => {
                    eprintln!("cluster start attempt {attempt}: {msg}; retrying with new ports");
                    last = msg;
                    drop(cluster);
                }
                Err(StartError::Fatal(msg)) => {
                    panic!("starting a {n}-member {:?} cluster failed: {msg}", server_kind())
                }
            }
        }
        panic!("starting a {n}-member cluster failed {START_ATTEMPTS} times on busy ports: {last}");
    }

    fn spawn_new(n: usize, extra: &[&str], cuttable: bool) -> Cluster {
        let mut cluster = Cluster::unspawned(n, extra, cuttable);
        for node in &mut cluster.nodes {
            node.spawn(&cluster.token, &cluster.extra);
        }
        cluster
    }

    /// Members with ports and data directories, not started.
    fn unspawned(n: usize, extra: &[&str], cuttable: bool) -> Cluster {
        let ports = free_ports(2 * n);
        let seq = CLUSTER_SEQ.fetch_add(1, Ordering::SeqCst);
        let token = format!("cairn-test-{}-{seq}", std::process::id());
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("n{}", i + 1);
            let dir =
                tempfile::Builder::new().prefix(&format!("cairn-test-{name}-")).tempdir().expect("create temp dir");
            nodes.push(Node {
                name,
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                dir,
                child: None,
                spawns: 0,
                initial_cluster: String::new(),
                state: "new",
                proxy: cuttable.then(|| PeerProxy::start(ports[2 * i + 1])),
            });
        }
        let initial_cluster =
            nodes.iter().map(|n| format!("{}={}", n.name, n.peer_url())).collect::<Vec<_>>().join(",");
        for node in &mut nodes {
            node.initial_cluster = initial_cluster.clone();
        }
        let extra = extra.iter().map(|s| s.to_string()).collect();
        Cluster { nodes, token, extra }
    }

    /// Starts an `n`-member cluster whose members are first restored from `backup`
    /// with `cairn restore`, and waits until it is ready.
    pub async fn start_restored(n: usize, backup: &Path) -> Cluster {
        let mut cluster = Cluster::unspawned(n, &[], false);
        for node in &cluster.nodes {
            let out = Command::new(server_binary())
                .arg("restore")
                .arg(backup)
                .args(["--name", &node.name])
                .arg("--data-dir")
                .arg(node.data_dir())
                .args(["--initial-cluster", &node.initial_cluster])
                .args(["--initial-cluster-token", &format!("{}-restored", cluster.token)])
                .args(["--initial-advertise-peer-urls", &node.peer_url()])
                .args(["--listen-peer-urls", &node.listen_peer_url()])
                .output()
                .expect("run cairn restore");
            assert!(
                out.status.success(),
                "cairn restore failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        cluster.token = format!("{}-restored", cluster.token);
        for node in &mut cluster.nodes {
            node.spawn(&cluster.token, &cluster.extra);
        }
        cluster.wait_ready().await;
        cluster
    }

    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    pub fn endpoint(&self, i: usize) -> String {
        self.nodes[i].client_url()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(Node::client_url).collect()
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].is_running()
    }

    /// Indices of the members whose process is running.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].is_running()).collect()
    }

    /// A client connected to member `i` only.
    pub async fn client(&self, i: usize) -> Client {
        connect(&self.endpoint(i)).await
    }

    /// The process ID of member `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].pid()
    }

    /// Resident memory of member `i` in KiB (Linux), for reports.
    pub fn rss_kib(&self, i: usize) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid(i)?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Peak resident memory of member `i`'s current process in KiB (Linux VmHWM).
    pub fn peak_rss_kib(&self, i: usize) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid(i)?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Freezes member `i` (SIGSTOP): it keeps its sockets but answers nothing.
    pub fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// Thaws a member frozen by [`Cluster::pause`] (SIGCONT).
    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    fn signal(&self, i: usize, sig: &str) {
        let pid = self.pid(i).unwrap_or_else(|| panic!("member {i} is not running"));
        let status = Command::new("kill").arg(sig).arg(pid.to_string()).status().expect("run kill");
        assert!(status.success(), "kill {sig} {pid} failed");
    }

    /// What member `i` has logged so far (stderr, every incarnation).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].stderr_path()).unwrap_or_default()
    }

    /// SIGKILL member `i` (no chance to flush or clean up).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts member `i` again with the same flags and data dir. Does not wait:
    /// a member may not serve before it has a quorum, so call
    /// [`Cluster::wait_ready`] once every member that should run is started.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].kill();
        let token = self.token.clone();
        self.nodes[i].spawn(&token, &self.extra);
    }

    /// Makes room for a new member (ports and a data directory) without starting
    /// it; returns its index. Add it with MemberAdd (its peer URL is
    /// [`Cluster::peer_url`]), then start it with [`Cluster::start_joining`].
    pub fn prepare_member(&mut self) -> usize {
        let ports = free_ports(2);
        let i = self.nodes.len();
        let name = format!("n{}", i + 1);
        let dir = tempfile::Builder::new().prefix(&format!("cairn-test-{name}-")).tempdir().expect("create temp dir");
        self.nodes.push(Node {
            name,
            client_port: ports[0],
            peer_port: ports[1],
            dir,
            child: None,
            spawns: 0,
            initial_cluster: String::new(),
            state: "existing",
            proxy: None,
        });
        i
    }

    /// Member `i`'s peer URL.
    pub fn peer_url(&self, i: usize) -> String {
        self.nodes[i].peer_url()
    }

    /// Cuts the network into member `i` (of a [`Cluster::start_cuttable`] cluster):
    /// its open peer connections are reset and new ones are accepted but never
    /// answered, as in a partition, until [`Cluster::heal`]. What member `i` sends
    /// to others still arrives.
    pub fn cut(&self, i: usize) {
        self.nodes[i].proxy.as_ref().expect("a cuttable cluster").cut.send_replace(true);
    }

    /// Ends a [`Cluster::cut`].
    pub fn heal(&self, i: usize) {
        self.nodes[i].proxy.as_ref().expect("a cuttable cluster").cut.send_replace(false);
    }

    /// Starts member `i` (made by [`Cluster::prepare_member`], with an empty data
    /// directory) to join the cluster formed by the running members
    /// (`--initial-cluster-state existing`). Does not wait.
    pub fn start_joining(&mut self, i: usize) {
        let members: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, n)| *j == i || n.is_running())
            .map(|(_, n)| format!("{}={}", n.name, n.peer_url()))
            .collect();
        self.nodes[i].initial_cluster = members.join(",");
        self.nodes[i].state = "existing";
        let token = self.token.clone();
        self.nodes[i].spawn(&token, &self.extra);
    }

    /// Waits (bounded) until member `i`'s process exits by itself; returns whether it did.
    pub async fn wait_exit(&mut self, i: usize, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.nodes[i].exited().is_some() || !self.nodes[i].is_running() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Member `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.nodes[i].data_dir()
    }

    /// Waits (bounded by [`READY_TIMEOUT`]) until every running member answers
    /// a linearizable read and all of them agree on a running leader.
    pub async fn wait_ready(&mut self) {
        match self.wait_ready_inner(true).await {
            Ok(()) => {}
            Err(StartError::AddrInUse(m)) | Err(StartError::Fatal(m)) => {
                panic!("cluster did not become ready: {m}")
            }
        }
    }

    async fn wait_ready_inner(&mut self, respawn_on_addr_in_use: bool) -> Result<(), StartError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut respawns = 0;
        loop {
            for i in 0..self.nodes.len() {
                if let Some(why) = self.nodes[i].exited() {
                    if self.nodes[i].log_mentions_addr_in_use() {
                        if respawn_on_addr_in_use && respawns < 3 {
                            respawns += 1;
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            let token = self.token.clone();
                            self.nodes[i].spawn(&token, &self.extra);
                            continue;
                        }
                        return Err(StartError::AddrInUse(why));
                    }
                    return Err(StartError::Fatal(why));
                }
            }
            let problem = match self.readiness_problem().await {
                None => return Ok(()),
                Some(p) => p,
            };
            if Instant::now() >= deadline {
                return Err(StartError::Fatal(format!("not ready within {READY_TIMEOUT:?}: {problem}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `None` when ready, else what is still missing.
    async fn readiness_problem(&self) -> Option<String> {
        let probe = Duration::from_secs(2);
        if self.leader_within(probe).await.is_none() {
            return Some("running members do not agree on a running leader".into());
        }
        for i in self.running() {
            let ep = self.endpoint(i);
            let res = tokio::time::timeout(probe, async {
                let mut c =
                    Client::connect([ep.as_str()], Some(ConnectOptions::new().with_connect_timeout(probe))).await?;
                c.get("cairn-test-readiness-probe", Some(GetOptions::new())).await
            })
            .await;
            match res {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Some(format!("{ep}: linearizable get failed: {e}")),
                Err(_) => return Some(format!("{ep}: linearizable get timed out")),
            }
        }
        None
    }

    /// Status of member `i`: `(own member id, leader id it reports)`.
    async fn status_of(&self, i: usize, probe: Duration) -> Option<(u64, u64)> {
        let ep = self.endpoint(i);
        let res = tokio::time::timeout(probe, async {
            let mut c = Client::connect([ep.as_str()], Some(ConnectOptions::new().with_connect_timeout(probe))).await?;
            c.status().await
        })
        .await;
        match res {
            Ok(Ok(s)) => {
                let me = s.header().map(|h| h.member_id()).unwrap_or(0);
                Some((me, s.leader()))
            }
            _ => None,
        }
    }

    async fn leader_within(&self, probe: Duration) -> Option<usize> {
        let running = self.running();
        let mut ids = Vec::new();
        let mut leader_id = None;
        for &i in &running {
            let (me, leader) = self.status_of(i, probe).await?;
            if leader == 0 || *leader_id.get_or_insert(leader) != leader {
                return None;
            }
            ids.push((i, me));
        }
        let leader_id = leader_id?;
        ids.iter().find(|(_, me)| *me == leader_id).map(|(i, _)| *i)
    }

    /// The index of the leader, if every running member answers `Status` and
    /// they all name the same leader, which is itself running.
    pub async fn leader(&self) -> Option<usize> {
        self.leader_within(Duration::from_secs(3)).await
    }

    /// Waits (bounded by [`READY_TIMEOUT`]) for [`Cluster::leader`].
    pub async fn wait_for_leader(&self) -> usize {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(l) = self.leader().await {
                return l;
            }
            if Instant::now() >= deadline {
                panic!("no leader agreed on by running members {:?} within {READY_TIMEOUT:?}", self.running());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Indices of running members other than the leader.
    pub async fn followers(&self) -> Vec<usize> {
        let leader = self.wait_for_leader().await;
        self.running().into_iter().filter(|&i| i != leader).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "===== test failed against {:?} ({} members); member logs follow =====",
                server_kind(),
                self.nodes.len()
            );
            let keep = std::env::var_os("CAIRN_TEST_KEEP_DIRS").is_some();
            for node in &mut self.nodes {
                eprintln!("member {} client {} peer {}", node.name, node.client_url(), node.peer_url());
                node.print_log_tail();
                if keep {
                    node.dir.disable_cleanup(true);
                    eprintln!("kept {}", node.dir.path().display());
                }
            }
        }
    }
}

/// GETs `path` from `endpoint` over HTTP/1.1: `(status, body)`, or `None` if the
/// member does not answer in time.
pub async fn http_get(endpoint: &str, path: &str) -> Option<(u16, String)> {
    let authority = endpoint.trim_start_matches("http://").to_string();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(&authority).await.ok()?;
        tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut raw).await.ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await.ok().flatten()
}

/// `len` pseudo-random bytes from `seed`: values that compression cannot shrink, so
/// that a snapshot holding them is as large on disk and on the wire as in the store.
pub fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    // xorshift64*; any nonzero state works.
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Puts `writers × puts_each` incompressible values of `value_bytes` under
/// `prefix/<writer>/<n>` from `writers` concurrent tasks, each put once, and returns
/// how many keys the prefix then holds. Panics, naming the key, on a failed put.
pub async fn put_large_values(
    client: &Client,
    prefix: &str,
    writers: usize,
    puts_each: usize,
    value_bytes: usize,
) -> usize {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (mut c, prefix) = (client.clone(), prefix.to_string());
        tasks.push(tokio::spawn(async move {
            for i in 0..puts_each {
                let key = format!("{prefix}/{w}/{i:03}");
                let value = incompressible(value_bytes, (w * puts_each + i) as u64);
                if let Err(e) = c.put(key.clone(), value, None).await {
                    panic!("put {key}: {e}");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("a writer failed");
    }
    let mut c = client.clone();
    let count = c.get(format!("{prefix}/"), Some(GetOptions::new().with_prefix().with_count_only())).await;
    count.expect("count the values put").count() as usize
}
