//! Test harness for cairnctl: real `cairn` (or etcd) clusters on free loopback
//! ports, each member in its own temporary directory, killed and removed on drop;
//! and a runner for the built `cairnctl` binary.
//!
//! The `cairn` binary is found next to the test executable's directory
//! (`target/debug/deps/x` → `target/debug/cairn`, built by
//! `cargo test --workspace`); if it is missing the harness builds it with
//! `cargo build -p cairn-server --bin cairn`; `CAIRN_BIN=/path/to/cairn` overrides
//! it. etcd is `/usr/bin/etcd` (Debian
//! `etcd-server`) unless `CAIRN_TEST_ETCD_BIN` says otherwise.
#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cairn_client::{Client, ClientOptions};
use serde_json::Value;
use tempfile::TempDir;

/// Bound for a cluster to elect a leader and serve linearizable reads.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for one cairnctl invocation (its own --command-timeout is shorter).
pub const CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// Times a cluster start is retried with new ports when a member dies at start.
const START_ATTEMPTS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Cairn,
    Etcd,
}

fn cairn_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("CAIRN_BIN") {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("current_exe");
        let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>/deps/<test>").to_path_buf();
        let bin = dir.join("cairn");
        if !bin.exists() {
            eprintln!("{} is missing; building it (cargo build -p cairn-server --bin cairn)", bin.display());
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "cairn-server", "--bin", "cairn"])
                .status()
                .expect("run cargo build");
            assert!(
                status.success() && bin.exists(),
                "could not build {}: run `cargo build -p cairn-server`",
                bin.display()
            );
        }
        bin
    })
    .clone()
}

fn etcd_binary() -> PathBuf {
    std::env::var_os("CAIRN_TEST_ETCD_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    listeners.iter().map(|l| l.local_addr().expect("addr").port()).collect()
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    dir: TempDir,
    child: Option<Child>,
}

/// A running cluster; every process is killed and every directory removed on drop.
pub struct TestCluster {
    pub kind: Kind,
    members: Vec<Member>,
}

impl TestCluster {
    /// Starts `n` members of `kind` and waits until they agree on a leader and serve reads.
    pub fn start(kind: Kind, n: usize) -> TestCluster {
        TestCluster::start_with(kind, n, &[])
    }

    /// Like [`TestCluster::start`], with `extra` flags for every member.
    pub fn start_with(kind: Kind, n: usize, extra: &[&str]) -> TestCluster {
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let mut c = TestCluster::spawn(kind, n, extra);
            match c.wait_ready() {
                Ok(()) => return c,
                Err(e) => {
                    eprintln!("{kind:?} cluster start failed ({e}); retrying with new ports");
                    c.print_logs();
                    last = e;
                }
            }
        }
        panic!("could not start a {n}-member {kind:?} cluster: {last}");
    }

    fn spawn(kind: Kind, n: usize, extra: &[&str]) -> TestCluster {
        let ports = free_ports(2 * n);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{}", i + 1),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                dir: tempfile::Builder::new().prefix("cairnctl-test-").tempdir().expect("temp dir"),
                child: None,
            })
            .collect();
        let initial: Vec<String> =
            members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port)).collect();
        let initial = initial.join(",");
        let token = format!("cairnctl-test-{}-{}", std::process::id(), ports[0]);
        let mut c = TestCluster { kind, members };
        for m in &mut c.members {
            let bin = match kind {
                Kind::Cairn => cairn_binary(),
                Kind::Etcd => etcd_binary(),
            };
            let log = File::create(m.dir.path().join("log")).expect("log file");
            let client = format!("http://127.0.0.1:{}", m.client_port);
            let peer = format!("http://127.0.0.1:{}", m.peer_port);
            let mut cmd = Command::new(&bin);
            cmd.args(["--name", &m.name])
                .arg("--data-dir")
                .arg(m.dir.path().join("data"))
                .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &initial, "--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &token])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log);
            if kind == Kind::Etcd {
                for (k, _) in std::env::vars_os() {
                    if k.to_string_lossy().starts_with("ETCD_") {
                        cmd.env_remove(k);
                    }
                }
                cmd.arg("--logger=zap");
            }
            m.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display())));
        }
        c
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for m in &mut self.members {
                if let Some(child) = m.child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(format!("{} exited with {status}", m.name));
                    }
                }
            }
            let problem = rt.block_on(self.readiness_problem());
            match problem {
                None => return Ok(()),
                Some(p) if Instant::now() >= deadline => return Err(format!("not ready in {READY_TIMEOUT:?}: {p}")),
                Some(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    async fn readiness_problem(&self) -> Option<String> {
        let opts = ClientOptions::default()
            .connect_timeout(Duration::from_secs(1))
            .request_timeout(Duration::from_secs(2))
            .request_attempts_max(1);
        let mut leader = None;
        for i in self.running() {
            let ep = self.url(i);
            let c = match Client::connect([ep.as_str()], opts.clone()).await {
                Ok(c) => c,
                Err(e) => return Some(format!("{ep}: {e}")),
            };
            match c.status().await {
                Ok(s) if s.leader != 0 && *leader.get_or_insert(s.leader) == s.leader => {}
                Ok(_) => return Some(format!("{ep}: no leader agreed yet")),
                Err(e) => return Some(format!("{ep}: {e}")),
            }
            if let Err(e) = c.get("readiness").await {
                return Some(format!("{ep}: {e}"));
            }
        }
        None
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.members.len()).filter(|&i| self.members[i].child.is_some()).collect()
    }

    /// `http://127.0.0.1:port` of member `i`.
    pub fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// `127.0.0.1:port` of member `i`, as etcdctl and cairnctl print endpoints.
    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client_port)
    }

    /// Every member's endpoint, comma-separated (for --endpoints).
    pub fn endpoints(&self) -> String {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect::<Vec<_>>().join(",")
    }

    pub fn peer_port(&self, i: usize) -> u16 {
        self.members[i].peer_port
    }

    /// SIGKILL member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn temp_dir(&self) -> PathBuf {
        self.members[0].dir.path().to_path_buf()
    }

    fn print_logs(&self) {
        for m in &self.members {
            let text = std::fs::read_to_string(m.dir.path().join("log")).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("----- {} (last 40 lines) -----", m.name);
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            self.print_logs();
        }
    }
}

/// What one cairnctl run produced.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    args: String,
}

impl Out {
    /// Asserts success and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "cairnctl {} failed: {}{}", self.args, self.stdout, self.stderr);
        &self.stdout
    }

    /// Asserts success and parses stdout as JSON.
    pub fn json(&self) -> Value {
        let text = self.ok();
        serde_json::from_str(text).unwrap_or_else(|e| panic!("cairnctl {}: bad JSON ({e}): {text}", self.args))
    }

    /// Asserts failure with `code` and that stderr mentions each of `needles`.
    pub fn fails(&self, code: i32, needles: &[&str]) {
        assert_eq!(self.code, code, "cairnctl {}: expected exit {code}: {}{}", self.args, self.stdout, self.stderr);
        for n in needles {
            assert!(self.stderr.contains(n), "cairnctl {}: stderr lacks {n:?}: {}", self.args, self.stderr);
        }
    }
}

/// Runs cairnctl with `args` (and `stdin`), bounded by [`CTL_TIMEOUT`].
pub fn run_ctl(args: &[&str], stdin: Option<&str>) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairnctl"));
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CAIRNCTL_") {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().expect("spawn cairnctl");
    if let Some(input) = stdin {
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    }
    // Drain both pipes while waiting, so that large output cannot block the child.
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + CTL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cairnctl {args:?} ran longer than {CTL_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Out {
        code: status.code().unwrap_or(-1),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
        args: args.join(" "),
    }
}

/// Runs `cairnctl --endpoints <endpoints> args...`.
pub fn ctl(endpoints: &str, args: &[&str]) -> Out {
    let mut all = vec!["--endpoints", endpoints];
    all.extend_from_slice(args);
    run_ctl(&all, None)
}

/// Like [`ctl`] with `stdin` piped in.
pub fn ctl_in(endpoints: &str, args: &[&str], stdin: &str) -> Out {
    let mut all = vec!["--endpoints", endpoints];
    all.extend_from_slice(args);
    run_ctl(&all, Some(stdin))
}
