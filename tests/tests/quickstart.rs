//! The README's quickstart, run as written: its shell commands are parsed
//! out of README.md (so the text cannot drift from what works) and run
//! against the built binaries, in a scratch copy of `deploy/config` laid out
//! like the repository (configs in `deploy/config/`, identities in
//! `target/dev-identity/`), so the shipped configs are what is tested. Also
//! `slim-node --check` / `slim-controller --check` on the shipped configs
//! and on broken ones. Needs `cargo build --workspace --bins` first.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use slim_tests::free_udp_port;
use slim_tests::netns::bin;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The ```sh blocks of the README section headed `heading`, as commands:
/// comments dropped (a `#` outside quotes that starts a word), one command
/// per line.
fn section_commands(readme: &str, heading: &str) -> Vec<String> {
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README.md has no {heading:?} section"));
    let body = &readme[start + heading.len()..];
    let body = &body[..body.find("\n## ").unwrap_or(body.len())];
    let mut out = Vec::new();
    let mut in_block = false;
    for line in body.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            in_block = !in_block && t == "```sh";
            continue;
        }
        if in_block {
            let cmd = strip_comment(t).trim().to_owned();
            if !cmd.is_empty() {
                out.push(cmd);
            }
        }
    }
    out
}

fn strip_comment(line: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => return &line[..i],
            _ => {}
        }
        prev = c;
    }
    line
}

/// Shell words: single quotes literal, double quotes without expansion
/// (the quickstart uses no variables in the commands this test runs).
fn words(cmd: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut any = false;
    let mut chars = cmd.chars();
    let (mut single, mut double) = (false, false);
    while let Some(c) = chars.next() {
        match c {
            '\'' if !double => {
                single = !single;
                any = true;
            }
            '"' if !single => {
                double = !double;
                any = true;
            }
            '\\' if !single => cur.extend(chars.next()),
            c if c.is_whitespace() && !single && !double => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => cur.push(c),
        }
    }
    assert!(!single && !double, "unbalanced quotes in {cmd:?}");
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

struct Scratch {
    dir: tempfile::TempDir,
    node_port: u16,
    metrics_port: u16,
}

impl Scratch {
    /// The repository's layout: `deploy/config/*.toml` as shipped.
    fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("deploy/config");
        std::fs::create_dir_all(&cfg).unwrap();
        for f in ["node.toml", "controller.toml", "policy.toml"] {
            std::fs::copy(repo().join("deploy/config").join(f), cfg.join(f)).unwrap();
        }
        Scratch {
            dir,
            node_port: free_udp_port(),
            metrics_port: free_tcp_port(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A quickstart command with its program taken from the build. The
    /// node's ports come from the environment (the overrides every
    /// deployment uses), so that the test never needs 4500 and 9464 free.
    fn command(&self, argv: &[String]) -> Command {
        let mut c = Command::new(bin(&argv[0]));
        c.args(&argv[1..])
            .current_dir(self.path())
            .env_remove("SLIM_CONFIG")
            .env("SLIM_LISTEN", format!("127.0.0.1:{}", self.node_port))
            .env(
                "SLIM_METRICS_LISTEN",
                format!("127.0.0.1:{}", self.metrics_port),
            )
            .env("SLIMCTL_NODE", format!("127.0.0.1:{}", self.node_port))
            .stdin(Stdio::null());
        c
    }

    fn run(&self, argv: &[String]) -> Output {
        let out = self.command(argv).output().expect("run");
        assert!(
            out.status.success(),
            "{argv:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Starts a long-running command; stdout and stderr go to files.
    fn spawn(&self, argv: &[String], tag: &str) -> Bg {
        let out = self.path().join(format!("{tag}.out"));
        let err = self.path().join(format!("{tag}.err"));
        let child = self
            .command(argv)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("spawn");
        Bg { child, out, err }
    }
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral TCP port")
}

/// A background process, killed on drop.
struct Bg {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Bg {
    fn text(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("{}{}", read(&self.out), read(&self.err))
    }

    fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.text().contains(needle) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("exited ({st}) before {needle:?}:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no {needle:?} within {timeout:?}:\n{}", self.text());
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn readme_quickstart_runs_as_written() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let cmds = section_commands(&readme, "## Quickstart");
    // The build and PATH lines are what the test harness did already.
    let (setup, run): (Vec<_>, Vec<_>) = cmds
        .iter()
        .partition(|c| c.starts_with("cargo ") || c.starts_with("export "));
    let build = setup
        .iter()
        .find(|c| c.starts_with("cargo build"))
        .expect("the quickstart builds the binaries");
    for p in ["-p slim-node", "-p slim-ctl"] {
        assert!(build.contains(p), "{build:?} lacks {p}");
    }
    let argv: Vec<Vec<String>> = run.iter().map(|c| words(c)).collect();
    let find = |prefix: &[&str]| -> &Vec<String> {
        argv.iter()
            .find(|a| a.len() >= prefix.len() && a[..prefix.len()] == *prefix)
            .unwrap_or_else(|| panic!("the quickstart has no `{}` command", prefix.join(" ")))
    };
    let identities = find(&["slimctl", "dev-ca", "setup"]);
    let node = find(&["slim-node", "--config"]);
    let subscribe = find(&["slimctl", "channel", "subscribe"]);
    let publish = find(&["slimctl", "channel", "publish"]);
    // Nothing else is left unrun (the check line is run too).
    for a in &argv {
        assert!(
            ["slimctl", "slim-node"].contains(&a[0].as_str()),
            "unexpected quickstart command {a:?}"
        );
    }

    let s = Scratch::new();
    // The shipped config does not work before the identity command …
    let before = s.command(&["slim-node".into(), "--check".into(), node[2].clone()]);
    let before = { before }.output().unwrap();
    assert_eq!(before.status.code(), Some(2));
    // … and every command runs, in the README's order.
    let mut node_proc = None;
    let mut sub_proc = None;
    let mut published = None;
    for a in &argv {
        if a == identities || a[..2] == ["slim-node", "--check"] {
            let out = s.run(a);
            eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        } else if a == node {
            let mut p = s.spawn(a, "node");
            p.wait_for("listening on", Duration::from_secs(20));
            node_proc = Some(p);
        } else if a == subscribe {
            assert!(node_proc.is_some(), "the node starts before the subscriber");
            let mut p = s.spawn(a, "subscribe");
            p.wait_for("subscribed to", Duration::from_secs(20));
            sub_proc = Some(p);
        } else if a == publish {
            assert!(
                sub_proc.is_some(),
                "the subscriber starts before the publisher"
            );
            s.run(a);
            published = Some(a[4].clone());
        } else {
            panic!("unexpected quickstart command {a:?}");
        }
    }
    let payload = published.expect("published");
    let mut sub = sub_proc.expect("subscriber");
    // The subscriber prints the message with the sender's SPIFFE ID.
    sub.wait_for(&payload, Duration::from_secs(20));
    let got = std::fs::read_to_string(&sub.out).unwrap();
    let line = got.lines().find(|l| l.contains(&payload)).unwrap();
    assert!(
        line.contains("spiffe://acme.example/cluster-b/agent/security-monitor"),
        "{line}"
    );
    assert!(line.contains("acme/us-east/security-monitor"), "{line}");
    eprintln!("subscriber received: {line}");
}

fn check(bin_name: &str, dir: &Path, file: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(bin(bin_name))
        .arg("--check")
        .arg(file)
        .current_dir(dir)
        .env_remove("SLIM_CONFIG")
        .env_remove("SLIM_CONTROLLER_CONFIG")
        .env_remove("SLIM_LISTEN")
        .env_remove("SLIM_IDENTITY_DIR")
        .output()
        .expect("run --check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Makes the dev identities in the scratch tree, as the quickstart does.
fn with_identities() -> Scratch {
    let s = Scratch::new();
    s.run(&["slimctl".into(), "dev-ca".into(), "setup".into()]);
    s
}

#[test]
fn check_accepts_the_shipped_configs() {
    let s = with_identities();
    let node = s.path().join("deploy/config/node.toml");
    let (code, out, err) = check("slim-node", s.path(), &node);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with(&format!("{}: ok", node.display())), "{out}");
    assert!(
        out.contains("identity spiffe://acme.example/admin/node"),
        "{out}"
    );
    assert!(out.contains("policy "), "{out}");
    let ctl = s.path().join("deploy/config/controller.toml");
    let (code, out, err) = check("slim-controller", s.path(), &ctl);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with(&format!("{}: ok", ctl.display())), "{out}");
    assert!(
        out.contains("identity spiffe://acme.example/controller"),
        "{out}"
    );
}

/// Writes a new file next to the shipped configs: the shipped `file` with
/// `from` replaced by `to` (which must occur).
fn variant(s: &Scratch, file: &str, from: &str, to: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let text = std::fs::read_to_string(s.path().join("deploy/config").join(file)).unwrap();
    assert!(text.contains(from), "{file} has no {from:?}");
    let path = s
        .path()
        .join("deploy/config")
        .join(format!("bad-{n}-{file}"));
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    path
}

#[test]
fn check_rejects_broken_configs_with_the_reason() {
    let s = with_identities();
    let node_cases: Vec<(PathBuf, &str)> = vec![
        // A missing SVID directory: the file is named.
        (
            variant(
                &s,
                "node.toml",
                "target/dev-identity/node\"",
                "target/dev-identity/nobody\"",
            ),
            "dev-identity/nobody/tls.crt",
        ),
        // A missing policy file.
        (
            variant(
                &s,
                "node.toml",
                "policy_file = \"policy.toml\"",
                "policy_file = \"nope.toml\"",
            ),
            "nope.toml",
        ),
        // An address that is no address.
        (
            variant(
                &s,
                "node.toml",
                "listen = \"127.0.0.1:4500\"",
                "listen = \"127.0.0.1:45000000\"",
            ),
            "listen",
        ),
        (
            variant(
                &s,
                "node.toml",
                "listen = \"127.0.0.1:9464\"",
                "listen = \"localhost\"",
            ),
            "metrics.listen",
        ),
        // A value out of range.
        (
            variant(
                &s,
                "node.toml",
                "keep_alive_ms = 1000",
                "keep_alive_ms = 9000",
            ),
            "keep_alive_ms",
        ),
    ];
    for (file, needle) in &node_cases {
        let (code, out, err) = check("slim-node", s.path(), file);
        assert_eq!(code, Some(2), "{}: {out}{err}", file.display());
        assert!(out.is_empty(), "nothing on stdout when invalid: {out}");
        assert!(err.contains(needle), "{needle:?} not in: {err}");
        assert!(err.starts_with(&file.display().to_string()), "{err}");
    }
    // A policy of another trust domain than the node's bundle.
    let policy = s.path().join("deploy/config/policy.toml");
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(
        s.path().join("deploy/config/other-td.toml"),
        text.replace("spiffe://acme.example/", "spiffe://example.org/"),
    )
    .unwrap();
    let file = variant(
        &s,
        "node.toml",
        "policy_file = \"policy.toml\"",
        "policy_file = \"other-td.toml\"",
    );
    let (code, _, err) = check("slim-node", s.path(), &file);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("trust domain mismatch"), "{err}");
    assert!(
        err.contains("example.org") && err.contains("acme.example"),
        "{err}"
    );

    // The controller: authz of another trust domain (the shipped file's
    // old state), a missing SVID, a bad listen address.
    for (file, needle) in [
        (
            variant(
                &s,
                "controller.toml",
                "admins = [\"spiffe://acme.example/ops/**\"]",
                "admins = [\"spiffe://example.org/ops/**\"]",
            ),
            "trust domain mismatch: authz.admins[0]",
        ),
        (
            variant(
                &s,
                "controller.toml",
                "dev-identity/controller\"",
                "dev-identity/gone\"",
            ),
            "dev-identity/gone/tls.crt",
        ),
        (
            variant(
                &s,
                "controller.toml",
                "listen = \"0.0.0.0:4600\"",
                "listen = \"controller:4600\"",
            ),
            "listen",
        ),
    ] {
        let (code, out, err) = check("slim-controller", s.path(), &file);
        assert_eq!(code, Some(2), "{}: {out}{err}", file.display());
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
    // A config file that does not exist.
    let (code, _, err) = check("slim-node", s.path(), &s.path().join("absent.toml"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("absent.toml"), "{err}");
}

#[test]
fn shell_words_and_comments() {
    assert_eq!(
        words(r#"a 'b c' "d e" f\ g '{"x":1}'"#),
        ["a", "b c", "d e", "f g", r#"{"x":1}"#]
    );
    assert_eq!(strip_comment("x '#y' # z"), "x '#y' ");
    assert_eq!(strip_comment("a#b"), "a#b");
}
