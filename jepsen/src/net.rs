//! The test network: one network namespace per member, each with a veth pair
//! onto a bridge in the root namespace, on a private /24. Partitions are
//! nftables rules inside the members' namespaces; slow links are `tbf` qdiscs.
//!
//! Every run takes a *slot* (an exclusive lock file); the slot names all its
//! resources (`cj<slot>-...`) and its subnet (`10.213.<slot>.0/24`), so runs in
//! parallel never touch each other's. Leftovers of a slot whose lock is free
//! come from a run that died: they are removed before the slot is used, and the
//! run refuses to start if that fails.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};

/// Slots (parallel runs on one machine) at most.
pub const SLOTS_MAX: u8 = 64;
/// Where slot lock files live.
pub const LOCK_DIR: &str = "/run/cairn-jepsen";
/// The nftables table the harness owns inside each member's namespace.
const NFT_TABLE: &str = "cairn_jepsen";
/// Rate of a slowed link (`tbf`), and the queueing it allows.
pub const SLOW_LINK_RATE: &str = "512kbit";
const SLOW_LINK_BURST: &str = "32kbit";
const SLOW_LINK_LATENCY: &str = "400ms";

/// Slots with live resources in this process, torn down by the panic hook.
static ACTIVE_SLOTS: Mutex<BTreeSet<u8>> = Mutex::new(BTreeSet::new());

/// Runs `ip`, `nft` or `tc` and fails with its stderr.
pub fn sh(program: &str, args: &[&str]) -> Result<String> {
    sh_stdin(program, args, None)
}

fn sh_stdin(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let command = format!("{program} {}", args.join(" "));
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().map_err(|e| Error::Command { command: command.clone(), message: e.to_string() })?;
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input.as_bytes())
            .map_err(|e| Error::Command { command: command.clone(), message: e.to_string() })?;
    }
    let out =
        child.wait_with_output().map_err(|e| Error::Command { command: command.clone(), message: e.to_string() })?;
    if !out.status.success() {
        return Err(Error::Command { command, message: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The network of one run. Dropping it removes every namespace, link and rule
/// (and kills whatever still runs inside the namespaces).
pub struct Net {
    slot: u8,
    nodes: usize,
    _lock: Flock<File>,
    torn_down: bool,
}

impl Net {
    /// Checks that the tools exist and that we may create namespaces.
    pub fn preflight() -> Result<()> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(Error::Setup("network namespaces need root: run as root (CI runs as root)".into()));
        }
        for tool in ["ip", "nft", "tc"] {
            let found = std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
                .unwrap_or(false);
            if !found {
                return Err(Error::Setup(format!(
                    "`{tool}` not found on PATH: install iproute2 and nftables (scripts/setup.sh does)"
                )));
            }
        }
        Ok(())
    }

    /// Takes a free slot, removes its leftovers, and builds the network for `nodes` members.
    pub fn create(nodes: usize) -> Result<Net> {
        Net::preflight()?;
        std::fs::create_dir_all(LOCK_DIR).map_err(|e| Error::io(&PathBuf::from(LOCK_DIR), e))?;
        let mut taken = None;
        for slot in 0..SLOTS_MAX {
            let path = PathBuf::from(LOCK_DIR).join(format!("slot-{slot}.lock"));
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                taken = Some((slot, lock));
                break;
            }
        }
        let Some((slot, lock)) = taken else {
            return Err(Error::Setup(format!("all {SLOTS_MAX} slots are in use by other runs")));
        };
        // Leftovers of a dead run in this slot: clean them or refuse.
        teardown_slot(slot);
        let left = leftovers(slot)?;
        if !left.is_empty() {
            return Err(Error::Setup(format!(
                "leftovers of an earlier run in slot {slot} could not be removed: {}",
                left.join(", ")
            )));
        }
        ACTIVE_SLOTS.lock().expect("slots lock").insert(slot);
        let mut net = Net { slot, nodes, _lock: lock, torn_down: false };
        if let Err(e) = net.build() {
            net.teardown();
            return Err(e);
        }
        Ok(net)
    }

    fn build(&mut self) -> Result<()> {
        let br = self.bridge();
        sh("ip", &["link", "add", &br, "type", "bridge"])?;
        sh("ip", &["addr", "add", &format!("{}/24", self.host_ip()), "dev", &br])?;
        sh("ip", &["link", "set", &br, "up"])?;
        for i in 0..self.nodes {
            let ns = self.ns(i);
            let (host, peer) = (self.host_veth(i), self.node_veth(i));
            sh("ip", &["netns", "add", &ns])?;
            sh("ip", &["link", "add", &host, "type", "veth", "peer", "name", &peer])?;
            sh("ip", &["link", "set", &peer, "netns", &ns])?;
            sh("ip", &["link", "set", &host, "master", &br])?;
            sh("ip", &["link", "set", &host, "up"])?;
            let ip = format!("{}/24", self.node_ip(i));
            sh("ip", &["netns", "exec", &ns, "ip", "addr", "add", &ip, "dev", &peer])?;
            sh("ip", &["netns", "exec", &ns, "ip", "link", "set", &peer, "up"])?;
            sh("ip", &["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Number of members the network was built for.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// The slot this run holds.
    pub fn slot(&self) -> u8 {
        self.slot
    }

    /// Namespace of member `i`.
    pub fn ns(&self, i: usize) -> String {
        format!("cj{}-n{}", self.slot, i)
    }

    fn bridge(&self) -> String {
        format!("cj{}-br", self.slot)
    }

    fn host_veth(&self, i: usize) -> String {
        format!("cj{}-h{}", self.slot, i)
    }

    fn node_veth(&self, i: usize) -> String {
        format!("cj{}-p{}", self.slot, i)
    }

    /// The root namespace's address on the bridge (where clients run).
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.slot, 1)
    }

    /// Member `i`'s address.
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.slot, 10 + i as u8)
    }

    /// Blocks all traffic between member `i` and each member of `blocked`
    /// (replacing `i`'s earlier rules). Clients (the host address) stay reachable.
    pub fn block(&self, i: usize, blocked: &[usize]) -> Result<()> {
        self.heal_node(i)?;
        if blocked.is_empty() {
            return Ok(());
        }
        let set = blocked.iter().map(|j| self.node_ip(*j).to_string()).collect::<Vec<_>>().join(", ");
        let rules = format!(
            "table inet {NFT_TABLE} {{\n\
             chain input {{ type filter hook input priority 0; policy accept; ip saddr {{ {set} }} drop; }}\n\
             chain output {{ type filter hook output priority 0; policy accept; ip daddr {{ {set} }} drop; }}\n\
             }}\n"
        );
        sh_stdin("ip", &["netns", "exec", &self.ns(i), "nft", "-f", "-"], Some(&rules)).map(|_| ())
    }

    fn heal_node(&self, i: usize) -> Result<()> {
        // Declaring the table first makes the delete succeed whether or not it existed.
        let script = format!("table inet {NFT_TABLE} {{}}\ndelete table inet {NFT_TABLE}\n");
        sh_stdin("ip", &["netns", "exec", &self.ns(i), "nft", "-f", "-"], Some(&script)).map(|_| ())
    }

    /// Applies a partition given as, for each member, the members it cannot reach.
    pub fn partition(&self, cut: &[Vec<usize>]) -> Result<()> {
        for (i, blocked) in cut.iter().enumerate() {
            self.block(i, blocked)?;
        }
        Ok(())
    }

    /// Removes every partition rule.
    pub fn heal(&self) -> Result<()> {
        for i in 0..self.nodes {
            self.heal_node(i)?;
        }
        Ok(())
    }

    /// Limits member `i`'s outgoing bandwidth (a slow network link).
    pub fn slow(&self, i: usize) -> Result<()> {
        let dev = self.node_veth(i);
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns(i),
                "tc",
                "qdisc",
                "replace",
                "dev",
                &dev,
                "root",
                "tbf",
                "rate",
                SLOW_LINK_RATE,
                "burst",
                SLOW_LINK_BURST,
                "latency",
                SLOW_LINK_LATENCY,
            ],
        )
        .map(|_| ())
    }

    /// Removes the bandwidth limit of member `i` (if any).
    pub fn unslow(&self, i: usize) -> Result<()> {
        let dev = self.node_veth(i);
        match sh("ip", &["netns", "exec", &self.ns(i), "tc", "qdisc", "del", "dev", &dev, "root"]) {
            Ok(_) => Ok(()),
            // No qdisc of ours: nothing to remove.
            Err(Error::Command { message, .. })
                if message.contains("No such file") || message.contains("Cannot delete qdisc with handle of zero") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Removes everything now (also done on drop).
    pub fn teardown(&mut self) {
        if !self.torn_down {
            teardown_slot(self.slot);
            ACTIVE_SLOTS.lock().expect("slots lock").remove(&self.slot);
            self.torn_down = true;
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Names of a slot's namespaces and links that exist.
fn leftovers(slot: u8) -> Result<Vec<String>> {
    let prefix = format!("cj{slot}-");
    let mut out = Vec::new();
    for line in sh("ip", &["netns", "list"])?.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with(&prefix) {
            out.push(format!("netns {name}"));
        }
    }
    for line in sh("ip", &["-o", "link", "show"])?.lines() {
        // "12: cj3-br: <...>" or "13: cj3-h1@if2: <...>"
        let Some(name) = line.split(':').nth(1) else { continue };
        let name = name.trim().split('@').next().unwrap_or("");
        if name.starts_with(&prefix) {
            out.push(format!("link {name}"));
        }
    }
    Ok(out)
}

/// Kills every process in the slot's namespaces and removes them and its links.
/// Best effort: [`leftovers`] tells what remains.
pub fn teardown_slot(slot: u8) {
    let Ok(left) = leftovers(slot) else { return };
    for item in &left {
        if let Some(ns) = item.strip_prefix("netns ") {
            if let Ok(pids) = sh("ip", &["netns", "pids", ns]) {
                for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                    let pid = nix::unistd::Pid::from_raw(pid);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
    }
    // Give the kernel a moment to reap killed processes before deleting namespaces.
    if left.iter().any(|l| l.starts_with("netns ")) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for item in &left {
        if let Some(ns) = item.strip_prefix("netns ") {
            let _ = sh("ip", &["netns", "del", ns]);
        } else if let Some(link) = item.strip_prefix("link ") {
            // Deleting one end of a veth removes both; the other may already be gone.
            let _ = sh("ip", &["link", "del", link]);
        }
    }
}

/// Tears down every slot this process holds: for the panic hook and Ctrl-C.
pub fn teardown_active() {
    let slots: Vec<u8> = match ACTIVE_SLOTS.lock() {
        Ok(s) => s.iter().copied().collect(),
        Err(p) => p.into_inner().iter().copied().collect(),
    };
    for slot in slots {
        teardown_slot(slot);
    }
}

/// Installs a panic hook that tears the network down (and kills the members)
/// before the default hook reports the panic.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        teardown_active();
        default(info);
    }));
}
