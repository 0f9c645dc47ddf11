//! CPU time and memory of processes and threads, from `/proc` (Linux). Where `/proc` is
//! missing the figures are simply absent from the report.

use std::time::Duration;

/// Clock ticks per second of `/proc/*/stat` times (`sysconf(_SC_CLK_TCK)`), which is 100 on
/// every Linux architecture the kernel's user ABI keeps it fixed for (x86, arm).
const CLOCK_TICKS_PER_S: u64 = 100;

/// User and system CPU time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTime {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTime {
    pub fn total(&self) -> Duration {
        self.user + self.system
    }

    pub fn since(&self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// `utime` and `stime` of a `/proc/.../stat` line (fields 14 and 15, after the `(comm)`).
fn parse_stat(stat: &str) -> Option<CpuTime> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    // After the comm: state is field 3, so utime (14) and stime (15) are the 12th and 13th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = |t: u64| Duration::from_millis(t * 1000 / CLOCK_TICKS_PER_S);
    Some(CpuTime {
        user: ticks(utime),
        system: ticks(stime),
    })
}

/// CPU time of a whole process (`self` or a pid).
pub fn process_cpu(pid: &str) -> Option<CpuTime> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU time of this process's threads whose name starts with `prefix`.
pub fn threads_cpu(prefix: &str) -> Option<CpuTime> {
    let mut sum = CpuTime::default();
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let path = entry.ok()?.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if !comm.starts_with(prefix) {
            continue;
        }
        if let Some(t) = std::fs::read_to_string(path.join("stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
        {
            sum.user += t.user;
            sum.system += t.system;
        }
    }
    Some(sum)
}

/// Time this process's threads were ready to run but waited for a CPU (the second field
/// of `/proc/self/task/*/schedstat`): on a shared machine, the CPU other processes took.
pub fn runqueue_wait() -> Option<Duration> {
    let mut ns: u64 = 0;
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let path = entry.ok()?.path();
        if let Some(wait) = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        {
            ns += wait;
        }
    }
    Some(Duration::from_nanos(ns))
}

/// Peak and current resident memory of a process, in bytes.
pub fn memory(pid: &str) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some((kib("VmHWM:")? * 1024, kib("VmRSS:")? * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let line = "42 (weir (bench) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0";
        let t = parse_stat(line).unwrap();
        assert_eq!(t.user, Duration::from_millis(2500));
        assert_eq!(t.system, Duration::from_millis(750));
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn this_process_has_figures_on_linux() {
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(process_cpu("self").is_some());
            assert!(runqueue_wait().is_some());
            let (peak, now) = memory("self").unwrap();
            assert!(peak >= now && now > 0);
        }
    }
}
