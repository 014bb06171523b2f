//! CPU and memory of a process, read from `/proc` (Linux).
//!
//! CPU time is `utime + stime` of `/proc/PID/stat` in clock ticks; Linux
//! reports them in `USER_HZ`, which is 100 on every mainstream
//! architecture (it is fixed ABI, not the kernel's `HZ`), so a tick is 10 ms.
//! Resident memory is `VmRSS` of `/proc/PID/status`.

use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Clock ticks per second of `/proc/PID/stat` times.
const USER_HZ: f64 = 100.0;

/// CPU ticks of a process, split by where they were spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ticks {
    /// `utime`: in the program.
    pub user: u64,
    /// `stime`: in the kernel on its behalf (syscalls, networking).
    pub kernel: u64,
}

impl Ticks {
    /// Both together.
    pub fn total(self) -> u64 {
        self.user + self.kernel
    }
}

/// `utime` and `stime` (ticks) from the text of `/proc/PID/stat`.
pub fn parse_stat_split(stat: &str) -> Option<Ticks> {
    // The command name (field 2) is in parentheses and may hold spaces or
    // parentheses itself: split after the LAST ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    Some(Ticks {
        user: fields.get(14 - 3)?.parse().ok()?,
        kernel: fields.get(15 - 3)?.parse().ok()?,
    })
}

/// `VmRSS` in bytes from the text of `/proc/PID/status`.
pub fn parse_vmrss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(value * 1024),
        Some(_) => None,
    }
}

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU since the previous reading, percent of one core (200 = two
    /// cores busy).
    pub cpu_percent: f64,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
}

/// Samples one process over time.
#[derive(Debug)]
pub struct ProcWatch {
    /// `/proc/PID` or `/proc/self`.
    dir: PathBuf,
    /// The first reading: when and how many ticks.
    first: Option<(Instant, Ticks)>,
    /// The previous reading.
    last: Option<(Instant, Ticks)>,
    /// Highest RSS seen.
    peak_rss: u64,
    /// RSS at the first reading.
    first_rss: u64,
}

impl ProcWatch {
    /// Watch process `pid`.
    pub fn pid(pid: u32) -> ProcWatch {
        ProcWatch::at(PathBuf::from(format!("/proc/{pid}")))
    }

    /// Watch this process.
    pub fn this_process() -> ProcWatch {
        ProcWatch::at(PathBuf::from("/proc/self"))
    }

    fn at(dir: PathBuf) -> ProcWatch {
        ProcWatch {
            dir,
            first: None,
            last: None,
            peak_rss: 0,
            first_rss: 0,
        }
    }

    /// Read the process now; `None` if it is gone or /proc is unreadable.
    /// The first call returns 0 % CPU (no interval yet).
    pub fn sample(&mut self) -> Option<Usage> {
        let now = Instant::now();
        let stat = std::fs::read_to_string(self.dir.join("stat")).ok()?;
        let status = std::fs::read_to_string(self.dir.join("status")).ok()?;
        let ticks = parse_stat_split(&stat)?;
        let rss = parse_vmrss_bytes(&status)?;
        let cpu_percent = match self.last {
            Some((at, before)) => percent(ticks.total().saturating_sub(before.total()), now - at),
            None => 0.0,
        };
        if self.first.is_none() {
            self.first = Some((now, ticks));
            self.first_rss = rss;
        }
        self.last = Some((now, ticks));
        self.peak_rss = self.peak_rss.max(rss);
        Some(Usage {
            cpu_percent,
            rss_bytes: rss,
        })
    }

    /// Average CPU, peak and first/last RSS over every reading so far.
    pub fn summary(&self) -> Option<ProcSummary> {
        let (first_at, first_ticks) = self.first?;
        let (last_at, last_ticks) = self.last?;
        let used = last_ticks.total().saturating_sub(first_ticks.total());
        Some(ProcSummary {
            cpu_seconds: used as f64 / USER_HZ,
            kernel_cpu_seconds: last_ticks.kernel.saturating_sub(first_ticks.kernel) as f64
                / USER_HZ,
            avg_cpu_percent: percent(used, last_at - first_at),
            rss_start_mb: mb(self.first_rss),
            rss_peak_mb: mb(self.peak_rss),
        })
    }
}

fn percent(ticks: u64, over: std::time::Duration) -> f64 {
    let secs = over.as_secs_f64();
    if secs <= 0.0 {
        0.0
    } else {
        ticks as f64 / USER_HZ / secs * 100.0
    }
}

/// Bytes as MiB.
pub fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// What a process used over a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProcSummary {
    /// CPU time used between the first and last reading, seconds.
    pub cpu_seconds: f64,
    /// The part of it spent in the kernel (syscalls, loopback TCP), seconds.
    #[serde(default)]
    pub kernel_cpu_seconds: f64,
    /// That CPU time over the wall time, percent of one core.
    pub avg_cpu_percent: f64,
    /// RSS at the first reading, MiB.
    pub rss_start_mb: f64,
    /// Highest RSS seen, MiB.
    pub rss_peak_mb: f64,
}

/// Clock ticks of all CPUs from the text of `/proc/stat` (its first,
/// aggregate `cpu` line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemTicks {
    /// Everything but idle and iowait.
    pub busy: u64,
    /// Of `busy`, interrupts and soft interrupts: on a loopback benchmark
    /// mostly the kernel moving packets, charged to no process.
    pub irq: u64,
    /// All ticks.
    pub total: u64,
}

/// Parse the aggregate `cpu` line of `/proc/stat`.
pub fn parse_system_ticks(stat: &str) -> Option<SystemTicks> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice];
    // guest time is already counted in user, so only the first 8 add up.
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    let irq = values.get(5).copied().unwrap_or(0) + values.get(6).copied().unwrap_or(0);
    Some(SystemTicks {
        busy: total - idle,
        irq,
        total,
    })
}

/// Samples the whole machine's CPU, to tell how much of it went to
/// processes other than the server and the generator.
#[derive(Debug, Default)]
pub struct SystemWatch {
    /// First reading.
    first: Option<SystemTicks>,
    /// Previous reading.
    last: Option<SystemTicks>,
    /// Number of CPUs (lines `cpuN` of /proc/stat).
    cores: u32,
}

/// Machine CPU over an interval, in percent of one core (200 = two cores).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SystemUsage {
    /// Busy, all causes.
    pub busy: f64,
    /// Interrupts and soft interrupts.
    pub irq: f64,
}

impl SystemWatch {
    /// A watch with no reading yet.
    pub fn new() -> SystemWatch {
        SystemWatch::default()
    }

    /// CPU since the previous reading; `None` on the first call or
    /// without /proc.
    pub fn sample(&mut self) -> Option<SystemUsage> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let now = parse_system_ticks(&text)?;
        self.cores = text
            .lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .count() as u32;
        let out = self.last.map(|before| self.usage(before, now));
        self.first.get_or_insert(now);
        self.last = Some(now);
        out
    }

    fn usage(&self, a: SystemTicks, b: SystemTicks) -> SystemUsage {
        let total = b.total.saturating_sub(a.total);
        let scale = |ticks: u64| {
            if total == 0 {
                0.0
            } else {
                ticks as f64 / total as f64 * 100.0 * f64::from(self.cores.max(1))
            }
        };
        SystemUsage {
            busy: scale(b.busy.saturating_sub(a.busy)),
            irq: scale(b.irq.saturating_sub(a.irq)),
        }
    }

    /// Usage between the first and the last reading, and the core count.
    pub fn summary(&self) -> Option<(SystemUsage, u32)> {
        Some((self.usage(self.first?, self.last?), self.cores))
    }
}

/// The machine over a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MachineSummary {
    /// CPUs the machine has.
    pub cores: u32,
    /// Average busy CPU of the whole machine, percent of one core.
    pub busy_percent: f64,
    /// Of that, interrupts and soft interrupts (the kernel's loopback
    /// networking, charged to no process).
    pub irq_percent: f64,
    /// Of that, what neither the server, the generator nor interrupts used
    /// (other processes, e.g. a build): a run with a large share here was
    /// disturbed.
    pub other_percent: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_ticks_leave_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 800 20 3 2 0 7 0\ncpu0 50 2 25 400 10 1 1 0 0 0\ncpu1 50 3 25 400 10 2 1 0 0 0\n";
        assert_eq!(
            parse_system_ticks(stat),
            Some(SystemTicks {
                busy: 160,
                irq: 5,
                total: 980
            })
        );
        assert_eq!(parse_system_ticks("intr 1 2"), None);
    }

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let stat = "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    250 70 0 0 20 0 8 0 5000 100000000 3000 18446744073709551615";
        let ticks = parse_stat_split(stat).expect("a stat line");
        assert_eq!(
            ticks,
            Ticks {
                user: 250,
                kernel: 70
            }
        );
        assert_eq!(ticks.total(), 320);
        assert_eq!(parse_stat_split("garbage"), None);
    }

    #[test]
    fn vmrss_is_read_in_bytes() {
        let status = "Name:\tephemera\nVmPeak:\t  900 kB\nVmRSS:\t   2048 kB\nThreads:\t8\n";
        assert_eq!(parse_vmrss_bytes(status), Some(2048 * 1024));
        assert_eq!(parse_vmrss_bytes("Name: x\n"), None);
    }

    #[test]
    fn this_process_can_be_watched() {
        let mut w = ProcWatch::this_process();
        let u = w.sample().expect("/proc/self is readable");
        assert!(u.rss_bytes > 0);
        let s = w.summary().unwrap();
        assert!(s.rss_peak_mb > 0.0);
    }
}
