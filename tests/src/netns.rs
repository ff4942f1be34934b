//! Network-namespace topologies for multi-cluster tests: real kernels, real
//! NAT, real firewall rules, the real binaries.
//!
//! ```text
//!   ns admin (192.168.100.10) ─┐
//!   ns b     (192.168.100.20) ─┼─ ns wan: bridge br0 ("the internet")
//!   ns ra    (192.168.100.30) ─┘
//!     │ lan0 10.1.0.1, masquerade on wan0, inbound: only established/related
//!   ns a     (10.1.0.2, default via 10.1.0.1)   cluster A, behind NAT
//! ```
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables); `scripts/install-deps.sh`
//! installs them and CI runs as root. Everything a topology creates —
//! namespaces, and every process started in them — is removed when it is
//! dropped, also when a test panics; namespaces left by a killed run are
//! removed by the next one (their names carry the owning pid).

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Every namespace this harness creates starts with this.
pub const PREFIX: &str = "slimt";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Why namespace tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("needs root (ip netns, nftables)".into());
    }
    for tool in ["ip", "nft", "ss"] {
        let ok = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Some(format!(
                "`{tool}` not found (run scripts/install-deps.sh nftables iproute2)"
            ));
        }
    }
    None
}

/// Panics with a clear message unless namespace tests can run. They are part
/// of the suite (CI runs as root), so a missing capability is a failure, not
/// a skip.
pub fn require() {
    if let Some(why) = unavailable() {
        panic!("network-namespace test cannot run: {why}");
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

/// Runs a command and panics with its output if it fails.
pub fn must(args: &[&str]) -> String {
    let out = run(Command::new(args[0]).args(&args[1..]));
    if !out.status.success() {
        panic!(
            "{:?} failed: {}{}",
            args,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes namespaces left behind by runs whose process is gone.
fn reap_stale() {
    let Ok(list) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            kill_all_in(name);
            let _ = Command::new("ip").args(["netns", "del", name]).status();
            let _ = std::fs::remove_dir_all(etc_dir(name));
        }
    }
}

fn kill_all_in(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
}

/// `/etc/netns/NAME`: `ip netns exec` bind-mounts each file in it over the
/// same file in `/etc` for the process it starts.
fn etc_dir(ns: &str) -> PathBuf {
    Path::new("/etc/netns").join(ns)
}

/// One network namespace; deleted (with every process in it, and its
/// `/etc/netns/NAME` files) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    fn create(name: String) -> Netns {
        must(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Sets the `/etc/hosts` that processes started in this namespace from
    /// now on see (`/etc/netns/NAME/hosts`), with `localhost` and `entries`
    /// (name, address). Processes already running see a rewrite too: the
    /// file is rewritten in place, so their bind mount still shows it, and
    /// the resolver reads it at every lookup.
    pub fn set_hosts(&self, entries: &[(&str, Ipv4Addr)]) {
        let dir = etc_dir(&self.name);
        std::fs::create_dir_all(&dir).expect("create /etc/netns/NAME");
        let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for (name, ip) in entries {
            text.push_str(&format!("{ip} {name}\n"));
        }
        std::fs::write(dir.join("hosts"), text).expect("write /etc/netns/NAME/hosts");
    }

    /// `ip -n <ns> …`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        must(&all)
    }

    /// Runs a command inside the namespace, panicking if it fails.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        must(&all)
    }

    /// Runs a command inside the namespace and returns its output, whatever its status.
    pub fn try_exec(&self, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args))
    }

    /// Loads an nftables ruleset into the namespace.
    pub fn nft(&self, ruleset: &str) {
        let path =
            std::env::temp_dir().join(format!("{}-{}.nft", self.name, rand::random::<u32>()));
        std::fs::write(&path, ruleset).expect("write nft ruleset");
        let p = path.to_string_lossy().into_owned();
        let out = self.try_exec(&["nft", "-f", &p]);
        let _ = std::fs::remove_file(&path);
        if !out.status.success() {
            panic!(
                "nft -f in {} failed: {}\n{ruleset}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Packets counted by the named nftables counter `name` of table `inet slim`.
    pub fn counter(&self, name: &str) -> u64 {
        let out = self.exec(&["nft", "list", "counter", "inet", "slim", name]);
        out.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no packet count in {out}"))
    }

    /// Starts `bin args…` inside the namespace; stdout and stderr go to `log`.
    pub fn spawn(&self, bin: &Path, args: &[&str], envs: &[(&str, &str)], log: &Path) -> Proc {
        let out = File::create(log).expect("create log");
        let err = out.try_clone().expect("clone log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} in {}: {e}", bin.display(), self.name));
        Proc {
            child: Some(child),
            log: log.to_path_buf(),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_all_in(&self.name);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(etc_dir(&self.name));
    }
}

/// A process started in a namespace; killed on drop.
pub struct Proc {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Kills the process the hard way (SIGKILL), as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Waits up to `timeout` for the process to exit; its status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the log until it contains `needle`; panics with the log after `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{} did not log {needle:?} within {timeout:?}:\n{}",
            self.log.display(),
            self.log_text()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The path of a workspace binary built next to the running test
/// (`target/<profile>/<name>`); `scripts/test.sh` builds them all first.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// The address a test run by [`in_own_netns`] has besides loopback.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

/// Set in the test process [`in_own_netns`] starts inside the namespace.
const CHILD_ENV: &str = "SLIM_TEST_IN_NETNS";

/// Runs the calling test in a network namespace of its own where the host
/// has an address that is not loopback ([`HOST_IP`], on a veth interface):
/// what code that treats loopback peers specially sees on a real network,
/// while the packets still never leave the namespace.
///
/// Called first thing in a test, on the thread the test harness runs it on
/// (whose name is the test's, as `cargo test` lists it). In the test
/// process `cargo test` started, it creates the namespace, runs this test
/// binary again inside it for that one test, panics with its output unless
/// it passed, and returns `None`: the test then returns. In that second
/// process it returns `Some(HOST_IP)`: the test body runs there.
pub fn in_own_netns() -> Option<Ipv4Addr> {
    if std::env::var_os(CHILD_ENV).is_some() {
        return Some(HOST_IP);
    }
    let thread = std::thread::current();
    let test = match thread.name() {
        Some(n) if n != "main" => n,
        _ => panic!("in_own_netns: call it from the test's own thread (named after the test)"),
    };
    require();
    reap_stale();
    let ns = Netns::create(format!(
        "{PREFIX}{}-{}-host",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    // A veth pair with both ends inside (no `dummy` module everywhere).
    ns.ip(&["link", "add", "h0", "type", "veth", "peer", "name", "h1"]);
    ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", "h0"]);
    ns.ip(&["link", "set", "h0", "up"]);
    ns.ip(&["link", "set", "h1", "up"]);
    let exe = std::env::current_exe().expect("current exe");
    let exe = exe.to_string_lossy();
    let env = format!("{CHILD_ENV}=1");
    // `timeout` bounds the child even if its own deadline never fires.
    let out = run(Command::new("ip").args([
        "netns",
        "exec",
        &ns.name,
        "timeout",
        "-s",
        "KILL",
        "300",
        "env",
        &env,
        &exe,
        "--exact",
        test,
        "--nocapture",
        "--test-threads",
        "1",
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} failed in namespace {} ({}):\n{stdout}{stderr}",
        ns.name,
        out.status
    );
    None
}

/// Addresses of the standard topology.
pub const ADMIN_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 10);
pub const B_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 20);
pub const ROUTER_A_WAN_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 30);
pub const A_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);

/// The admin cluster, cluster B (reachable) and cluster A behind a NAT
/// router that lets nothing new in.
pub struct NatTopology {
    // Field order is drop order: hosts before the switch.
    pub admin: Netns,
    pub b: Netns,
    pub a: Netns,
    pub router_a: Netns,
    pub wan: Netns,
}

impl NatTopology {
    pub fn build() -> NatTopology {
        require();
        reap_stale();
        let tag = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let wan = Netns::create(format!("{tag}-wan"));
        let admin = Netns::create(format!("{tag}-adm"));
        let b = Netns::create(format!("{tag}-b"));
        let router_a = Netns::create(format!("{tag}-ra"));
        let a = Netns::create(format!("{tag}-a"));

        wan.ip(&["link", "add", "br0", "type", "bridge"]);
        wan.ip(&["link", "set", "br0", "up"]);
        for (host, port, ifname, ip) in [
            (&admin, "w-adm", "eth0", ADMIN_IP),
            (&b, "w-b", "eth0", B_IP),
            (&router_a, "w-ra", "wan0", ROUTER_A_WAN_IP),
        ] {
            must(&[
                "ip", "link", "add", port, "netns", &wan.name, "type", "veth", "peer", "name",
                ifname, "netns", &host.name,
            ]);
            wan.ip(&["link", "set", port, "master", "br0"]);
            wan.ip(&["link", "set", port, "up"]);
            host.ip(&["addr", "add", &format!("{ip}/24"), "dev", ifname]);
            host.ip(&["link", "set", ifname, "up"]);
        }
        must(&[
            "ip",
            "link",
            "add",
            "lan0",
            "netns",
            &router_a.name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &a.name,
        ]);
        router_a.ip(&["addr", "add", "10.1.0.1/24", "dev", "lan0"]);
        router_a.ip(&["link", "set", "lan0", "up"]);
        a.ip(&["addr", "add", &format!("{A_IP}/24"), "dev", "eth0"]);
        a.ip(&["link", "set", "eth0", "up"]);
        a.ip(&["route", "add", "default", "via", "10.1.0.1"]);
        router_a.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        // NAT for cluster A: out is masqueraded, in only what answers it.
        // `inbound_new` counts every attempt to open something from outside;
        // the `flap` chain is where tests cut the A↔B path.
        router_a.nft(
            "table inet slim {
  counter inbound_new { }
  counter outbound { }
  chain flap { }
  chain forward {
    type filter hook forward priority 0; policy drop;
    jump flap
    ct state established,related accept
    iifname \"lan0\" oifname \"wan0\" counter name \"outbound\" accept
    iifname \"wan0\" counter name \"inbound_new\" drop
  }
  chain input {
    type filter hook input priority 0; policy accept;
    iifname \"wan0\" ct state established,related accept
    iifname \"wan0\" counter name \"inbound_new\" drop
  }
  chain postrouting {
    type nat hook postrouting priority 100;
    oifname \"wan0\" masquerade
  }
}
",
        );
        NatTopology {
            admin,
            b,
            a,
            router_a,
            wan,
        }
    }

    /// Cuts (or, with `false`, restores) every packet between cluster A and `peer`.
    pub fn block_a_to(&self, peer: Ipv4Addr, blocked: bool) {
        self.router_a
            .exec(&["nft", "flush", "chain", "inet", "slim", "flap"]);
        if blocked {
            let p = peer.to_string();
            self.router_a.exec(&[
                "nft", "add", "rule", "inet", "slim", "flap", "ip", "daddr", &p, "drop",
            ]);
            self.router_a.exec(&[
                "nft", "add", "rule", "inet", "slim", "flap", "ip", "saddr", &p, "drop",
            ]);
        }
    }

    /// Drops `percent` % of forwarded packets at A's router (random, both ways).
    pub fn loss_a(&self, percent: u32) {
        self.router_a
            .exec(&["nft", "flush", "chain", "inet", "slim", "flap"]);
        if percent > 0 {
            let rule = format!("numgen random mod 100 < {percent} drop");
            let mut args = vec!["nft", "add", "rule", "inet", "slim", "flap"];
            args.extend(rule.split(' '));
            self.router_a.exec(&args);
        }
    }

    /// Listening TCP sockets in a namespace with their processes (`ss -ltnpH`).
    pub fn tcp_listeners(ns: &Netns) -> Vec<String> {
        ns.exec(&["ss", "-ltnpH"])
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

/// A socket address in a namespace.
pub fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}
