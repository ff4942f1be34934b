//! CPU time and memory of a process (or of some of its threads), read from
//! `/proc` through the `procfs` crate. CPU times are converted with the
//! kernel's real clock-tick rate (`sysconf(_SC_CLK_TCK)`), not an assumed
//! 100 Hz; at the usual 100 Hz the resolution is 10 ms, which is why runs
//! should last seconds.

use anyhow::{Context, Result};
use procfs::process::Process;

/// Whose CPU time is measured.
#[derive(Debug, Clone)]
pub enum CpuProbe {
    /// Another process (the node or nats-server), by pid.
    Pid(u32),
    /// This whole process: the in-process node *and* the load generator.
    SelfProcess,
}

/// Clock ticks (utime, stime) to seconds.
fn ticks_to_seconds(ticks: u64) -> f64 {
    ticks as f64 / procfs::ticks_per_second() as f64
}

impl CpuProbe {
    fn process(&self) -> Result<Process> {
        match self {
            CpuProbe::Pid(p) => {
                let pid = i32::try_from(*p).with_context(|| format!("pid {p} out of range"))?;
                Process::new(pid).with_context(|| format!("opening /proc/{p}"))
            }
            CpuProbe::SelfProcess => Process::myself().context("opening /proc/self"),
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
        let stat = self
            .process()?
            .stat()
            .with_context(|| format!("reading the stat of {}", self.scope()))?;
        Ok(ticks_to_seconds(stat.utime + stat.stime))
    }

    /// Current resident set size (VmRSS) in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        self.status_kib("VmRSS", |s| s.vmrss)
    }

    /// Peak resident set size (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        self.status_kib("VmHWM", |s| s.vmhwm)
    }

    fn status_kib(
        &self,
        what: &str,
        field: impl Fn(&procfs::process::Status) -> Option<u64>,
    ) -> Result<u64> {
        let status = self
            .process()?
            .status()
            .with_context(|| format!("reading the status of {}", self.scope()))?;
        // Kernel threads have no memory fields.
        field(&status).with_context(|| format!("no {what} in the status of {}", self.scope()))
    }
}

/// Host-wide count of UDP datagrams dropped because a socket's receive
/// buffer was full (`RcvbufErrors` in /proc/net/snmp). QUIC runs over UDP,
/// so a growing count means the node (or a client) lost packets to its
/// socket buffer and QUIC had to retransmit.
pub fn udp_rcvbuf_errors() -> Result<u64> {
    let snmp = procfs::net::snmp().context("reading /proc/net/snmp")?;
    Ok(snmp.udp_rcvbuf_errors)
}

/// Sum of utime + stime, in seconds, over this process's threads whose name
/// starts with `prefix` (threads that already exited are not counted).
pub fn self_threads_cpu_seconds(prefix: &str) -> Result<f64> {
    let me = Process::myself().context("opening /proc/self")?;
    let mut ticks = 0u64;
    for task in me.tasks().context("listing /proc/self/task")? {
        // A thread may exit between listing and reading.
        let Ok(stat) = task.and_then(|t| t.stat()) else {
            continue;
        };
        if stat.comm.starts_with(prefix) {
            ticks += stat.utime + stat.stime;
        }
    }
    Ok(ticks_to_seconds(ticks))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Burns CPU on this thread until its own utime + stime has grown,
    /// polling instead of sleeping for a fixed time.
    fn burn_until_ticks_grow(name_prefix: &str) -> f64 {
        let before = self_threads_cpu_seconds(name_prefix).unwrap();
        let mut x = 0u64;
        loop {
            for i in 0..1_000_000u64 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
            }
            std::hint::black_box(x);
            let now = self_threads_cpu_seconds(name_prefix).unwrap();
            if now > before {
                return now - before;
            }
        }
    }

    #[test]
    fn reads_own_process() {
        let p = CpuProbe::SelfProcess;
        assert!(p.cpu_seconds().unwrap() >= 0.0);
        assert!(p.peak_rss_kib().unwrap() > 0);
        assert!(p.rss_kib().unwrap() > 0);
        assert!(p.peak_rss_kib().unwrap() >= p.rss_kib().unwrap() / 2);
        let me = CpuProbe::Pid(std::process::id());
        assert!(me.cpu_seconds().unwrap() >= 0.0);
    }

    #[test]
    fn a_missing_pid_is_an_error() {
        // Above the kernel's pid_max limit (4 194 304), so never a live pid.
        let e = CpuProbe::Pid(5_000_000).cpu_seconds().unwrap_err();
        assert!(format!("{e:#}").contains("/proc/5000000"), "{e:#}");
    }

    #[test]
    fn counts_named_threads_in_seconds() {
        let grew = std::thread::Builder::new()
            .name("lt-burner".into())
            .spawn(|| burn_until_ticks_grow("lt-burner"))
            .unwrap()
            .join()
            .unwrap();
        // One tick at the kernel's rate is the smallest step seen.
        assert!(
            grew >= 1.0 / procfs::ticks_per_second() as f64 - 1e-12,
            "{grew}"
        );
        assert_eq!(
            self_threads_cpu_seconds("no-such-thread-prefix").unwrap(),
            0.0
        );
    }

    #[test]
    fn reads_udp_counters() {
        // The value depends on the host; reading it must work.
        udp_rcvbuf_errors().unwrap();
    }
}
