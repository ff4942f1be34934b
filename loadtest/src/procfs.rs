//! CPU time and peak memory of a process (or of some of its threads) from
//! `/proc`, without `libc`.
//!
//! `utime` and `stime` in `/proc/<pid>/stat` are in clock ticks. We assume
//! `CLK_TCK` = 100 (`getconf CLK_TCK`), which is what Linux reports to user
//! space on every mainstream architecture; reading it for real needs
//! `sysconf(_SC_CLK_TCK)` and so `libc`, which this crate avoids. The
//! resolution is therefore 10 ms, which is why runs should last seconds.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Assumed clock ticks per second (see the module docs).
pub const CLK_TCK: f64 = 100.0;

/// Whose CPU time is measured.
#[derive(Debug, Clone)]
pub enum CpuProbe {
    /// Another process (the node or nats-server), by pid.
    Pid(u32),
    /// This whole process: the in-process node *and* the load generator.
    SelfProcess,
}

impl CpuProbe {
    fn dir(&self) -> PathBuf {
        match self {
            CpuProbe::Pid(p) => PathBuf::from(format!("/proc/{p}")),
            CpuProbe::SelfProcess => PathBuf::from("/proc/self"),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        match self {
            CpuProbe::Pid(p) => Some(*p),
            CpuProbe::SelfProcess => Some(std::process::id()),
        }
    }

    pub fn scope(&self) -> String {
        match self {
            CpuProbe::Pid(p) => format!("pid {p}"),
            CpuProbe::SelfProcess => {
                "this process (in-process node + load generator: includes the clients' CPU)".into()
            }
        }
    }

    /// utime + stime of the whole process, in seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let path = self.dir().join("stat");
        let stat = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let (_, ticks) =
            parse_stat(&stat).with_context(|| format!("parsing {}", path.display()))?;
        Ok(ticks as f64 / CLK_TCK)
    }

    /// Current resident set size (VmRSS) in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let path = self.dir().join("status");
        let status = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        parse_status_kib(&status, "VmRSS:")
            .with_context(|| format!("no VmRSS in {}", path.display()))
    }

    /// Peak resident set size (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        let path = self.dir().join("status");
        let status = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        parse_vm_hwm(&status).with_context(|| format!("no VmHWM in {}", path.display()))
    }
}

/// Host-wide count of UDP datagrams dropped because a socket's receive
/// buffer was full (`RcvbufErrors` in /proc/net/snmp). QUIC runs over UDP,
/// so a growing count means the node (or a client) lost packets to its
/// socket buffer and QUIC had to retransmit.
pub fn udp_rcvbuf_errors() -> Result<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").context("reading /proc/net/snmp")?;
    parse_udp_rcvbuf_errors(&snmp).context("no Udp RcvbufErrors in /proc/net/snmp")
}

fn parse_udp_rcvbuf_errors(snmp: &str) -> Option<u64> {
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let head = lines.next()?;
    let vals = lines.next()?;
    let i = head.split_whitespace().position(|k| k == "RcvbufErrors")?;
    vals.split_whitespace().nth(i)?.parse().ok()
}

/// Sum of utime + stime, in seconds, over this process's threads whose name
/// starts with `prefix` (threads that already exited are not counted).
pub fn self_threads_cpu_seconds(prefix: &str) -> Result<f64> {
    let mut ticks = 0u64;
    let task = Path::new("/proc/self/task");
    for entry in std::fs::read_dir(task).context("reading /proc/self/task")? {
        let path = entry?.path().join("stat");
        // A thread may exit between listing and reading.
        let Ok(stat) = std::fs::read_to_string(&path) else {
            continue;
        };
        let (comm, t) = parse_stat(&stat).with_context(|| format!("parsing {}", path.display()))?;
        if comm.starts_with(prefix) {
            ticks += t;
        }
    }
    Ok(ticks as f64 / CLK_TCK)
}

/// Returns (comm, utime + stime in ticks) from a `/proc/.../stat` line. The
/// command name is in parentheses and may itself contain spaces or ')', so
/// the fields are counted from the last ')'.
fn parse_stat(stat: &str) -> Result<(&str, u64)> {
    let open = stat.find('(').context("no '('")?;
    let close = stat.rfind(')').context("no ')'")?;
    if close < open {
        bail!("malformed stat line");
    }
    let comm = &stat[open + 1..close];
    // After ")": field 3 (state) is index 0, so utime (field 14) is index 11
    // and stime (field 15) index 12.
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let get = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .context("stat line too short")?
            .parse::<u64>()
            .context("non-numeric stat field")
    };
    Ok((comm, get(11)? + get(12)?))
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    parse_status_kib(status, "VmHWM:")
}

fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let line =
            "1234 (we ird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 1 2 3";
        let (comm, ticks) = parse_stat(line).unwrap();
        assert_eq!(comm, "we ird) name");
        assert_eq!(ticks, 325);
    }

    #[test]
    fn parses_vm_hwm() {
        let s = "Name:\tx\nVmPeak:\t  100 kB\nVmHWM:\t    4242 kB\nVmRSS:\t 10 kB\n";
        assert_eq!(parse_vm_hwm(s), Some(4242));
        assert_eq!(parse_status_kib(s, "VmRSS:"), Some(10));
    }

    #[test]
    fn parses_udp_counters() {
        let s = "Ip: Forwarding\nIp: 1\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\n\
                 Udp: 10 2 3 4 77\nUdpLite: InDatagrams RcvbufErrors\nUdpLite: 0 0\n";
        assert_eq!(parse_udp_rcvbuf_errors(s), Some(77));
    }

    #[test]
    fn reads_own_process() {
        let p = CpuProbe::SelfProcess;
        assert!(p.cpu_seconds().unwrap() >= 0.0);
        assert!(p.peak_rss_kib().unwrap() > 0);
        assert!(p.rss_kib().unwrap() > 0);
    }
}
