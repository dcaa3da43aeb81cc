//! Readings of another process and of the machine from `/proc`: CPU time
//! (utime + stime from `/proc/<pid>/stat`), resident memory (`VmHWM`, `VmRSS`
//! from `/proc/<pid>/status`), and the machine description for the results.

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("unexpected format in {0}")]
    Format(String),
}

fn read(path: &str) -> Result<String, ProcError> {
    std::fs::read_to_string(path).map_err(|source| ProcError::Read {
        path: path.into(),
        source,
    })
}

/// Clock ticks per second, the unit of utime and stime.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// CPU time a process has used so far (user + system), in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64, ProcError> {
    let path = format!("/proc/{pid}/stat");
    let stat = read(&path)?;
    parse_cpu_ticks(&stat)
        .map(|ticks| ticks as f64 / clock_ticks_per_second() as f64)
        .ok_or(ProcError::Format(path))
}

/// User and system CPU time of a process so far, in seconds.
pub fn cpu_split(pid: u32) -> Result<(f64, f64), ProcError> {
    let path = format!("/proc/{pid}/stat");
    let stat = read(&path)?;
    let (u, s) = parse_user_system_ticks(&stat).ok_or(ProcError::Format(path))?;
    let hz = clock_ticks_per_second() as f64;
    Ok((u as f64 / hz, s as f64 / hz))
}

/// Every process whose command name (`/proc/<pid>/comm`) is one of
/// `comms`, with that name. A process that ends while it is read is left
/// out.
pub fn pids_named(comms: &[&str]) -> Result<Vec<(u32, String)>, ProcError> {
    let entries = std::fs::read_dir("/proc").map_err(|source| ProcError::Read {
        path: "/proc".into(),
        source,
    })?;
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        let comm = comm.trim_end();
        if comms.contains(&comm) {
            out.push((pid, comm.to_owned()));
        }
    }
    Ok(out)
}

/// CPU seconds so far of every process whose command name
/// (`/proc/<pid>/comm`) is `comm`, by pid; e.g. every `postgres` process.
/// A process that ends while it is read is left out.
pub fn cpu_of_named(comm: &str) -> Result<BTreeMap<u32, f64>, ProcError> {
    Ok(cpu_of(pids_named(&[comm])?.into_iter().map(|(pid, _)| pid)))
}

/// CPU seconds of the given processes, by pid; one that has ended is left out.
pub fn cpu_of(pids: impl IntoIterator<Item = u32>) -> BTreeMap<u32, f64> {
    pids.into_iter()
        .filter_map(|pid| cpu_seconds(pid).ok().map(|c| (pid, c)))
        .collect()
}

/// CPU used between two readings by pid: each process of `after` counts
/// from its `before` reading, or from zero when it started in between. A
/// process that ended in between is lost (so this is a lower bound).
pub fn cpu_between(before: &BTreeMap<u32, f64>, after: &BTreeMap<u32, f64>) -> f64 {
    after
        .iter()
        .map(|(pid, a)| (a - before.get(pid).copied().unwrap_or(0.0)).max(0.0))
        .sum()
}

/// utime + stime (fields 14 and 15) from a `/proc/<pid>/stat` line. The
/// command name (field 2) may hold spaces and parentheses, so fields are
/// counted from the last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    parse_user_system_ticks(stat).map(|(u, s)| u + s)
}

/// (utime, stime) in ticks.
pub fn parse_user_system_ticks(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime, stime))
}

/// CPU time the whole machine has been busy (every CPU, everything but idle
/// and iowait), in seconds; with the three processes' own times it tells how
/// much of a step went to something else on the machine.
pub fn machine_busy_seconds() -> Result<f64, ProcError> {
    Ok(machine_cpu()?.busy_s)
}

/// user + nice + system + irq + softirq + steal from the `cpu` line.
pub fn parse_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    busy_and_total(line).map(|(busy, _)| busy)
}

/// The machine's CPU time so far, from one read of `/proc/stat`.
pub struct MachineCpu {
    /// As [`machine_busy_seconds`].
    pub busy_s: f64,
    /// Each CPU's (busy, all) ticks, in CPU order.
    pub per_cpu: Vec<(u64, u64)>,
}

/// [`MachineCpu`] now.
pub fn machine_cpu() -> Result<MachineCpu, ProcError> {
    let stat = read("/proc/stat")?;
    let format = || ProcError::Format("/proc/stat".into());
    Ok(MachineCpu {
        busy_s: parse_busy_ticks(&stat).ok_or_else(format)? as f64 / clock_ticks_per_second() as f64,
        per_cpu: parse_per_cpu_ticks(&stat).ok_or_else(format)?,
    })
}

/// The `cpuN` lines' (busy, all) ticks; `None` if there is none or one is
/// malformed.
pub fn parse_per_cpu_ticks(stat: &str) -> Option<Vec<(u64, u64)>> {
    let cpus: Vec<(u64, u64)> = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(busy_and_total)
        .collect::<Option<_>>()?;
    (!cpus.is_empty()).then_some(cpus)
}

/// Percent of each CPU's time between two [`MachineCpu::per_cpu`] readings that
/// it was busy (a CPU with no ticks in between counts as idle).
pub fn busy_percent(before: &[(u64, u64)], after: &[(u64, u64)]) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            let all = a.1.saturating_sub(b.1);
            if all == 0 {
                0.0
            } else {
                a.0.saturating_sub(b.0) as f64 * 100.0 / all as f64
            }
        })
        .collect()
}

/// (user + nice + system + irq + softirq + steal, all of them with idle and
/// iowait) of one `/proc/stat` CPU line. Guest time is already in user.
fn busy_and_total(line: &str) -> Option<(u64, u64)> {
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    (v.len() >= 4).then(|| (busy, busy + at(3) + at(4)))
}

/// The load averages line, for the record.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Resident memory of a process, in KiB.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memory {
    /// Peak resident set size since the process started.
    pub hwm_kib: u64,
    pub rss_kib: u64,
}

pub fn memory(pid: u32) -> Result<Memory, ProcError> {
    let path = format!("/proc/{pid}/status");
    let status = read(&path)?;
    parse_memory(&status).ok_or(ProcError::Format(path))
}

pub fn parse_memory(status: &str) -> Option<Memory> {
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse().ok()
    };
    Some(Memory {
        hwm_kib: field("VmHWM:")?,
        rss_kib: field("VmRSS:")?,
    })
}

/// The machine the figures came from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_kib: u64,
    pub kernel: String,
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_total_kib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    Machine {
        nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        cpu_model,
        mem_total_kib,
        kernel,
    }
}

/// Whether `/proc` is there at all (it is on Linux).
pub fn available() -> bool {
    Path::new("/proc/self/stat").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_survive_odd_command_names() {
        let line = "1234 (tollgate (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 5 0 100 1000 200";
        assert_eq!(parse_cpu_ticks(line), Some(325));
        assert_eq!(parse_user_system_ticks(line), Some((250, 75)));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert_eq!(parse_cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn busy_ticks() {
        assert_eq!(
            parse_busy_ticks("cpu  10 1 5 100 7 2 3 4 0 0\ncpu0 1 1 1 1\n"),
            Some(25)
        );
        assert_eq!(parse_busy_ticks("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse_busy_ticks("cpu  1 x 3 4\n"), None);
        assert!(machine_busy_seconds().unwrap() >= 0.0);
    }

    #[test]
    fn per_cpu_busy() {
        let stat = "cpu  30 0 10 160 0 0 0 0 0 0\ncpu0 10 0 10 80 0 0 0 0 0 0\ncpu1 20 0 0 80 0 0 0 0 0 0\nintr 5\n";
        let before = parse_per_cpu_ticks(stat).unwrap();
        assert_eq!(before, vec![(20, 100), (20, 100)]);
        // cpu0: 30 busy of 40 more ticks; cpu1: 5 busy (steal) and 10 of
        // iowait; a third CPU that appeared is left out.
        let after =
            parse_per_cpu_ticks("cpu0 30 5 15 90 0 0 0 0 0 0\ncpu1 20 0 0 80 10 0 0 5 0 0\ncpu2 1 0 0 1\n").unwrap();
        assert_eq!(busy_percent(&before, &after), vec![75.0, 100.0 * 5.0 / 15.0]);
        // No tick in between: idle, not a division by zero.
        assert_eq!(busy_percent(&before, &before), vec![0.0, 0.0]);
        assert_eq!(parse_per_cpu_ticks("cpu  1 2 3 4\n"), None);
        assert_eq!(parse_per_cpu_ticks("cpu0 1 x 3 4\n"), None);
        let now = machine_cpu().unwrap();
        assert!(!now.per_cpu.is_empty());
        assert!(now.per_cpu.iter().all(|(busy, all)| busy <= all));
        assert!(now.busy_s >= 0.0);
    }

    #[test]
    fn memory_fields() {
        let s = "Name:\ttollgate\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        let m = parse_memory(s).unwrap();
        assert_eq!((m.hwm_kib, m.rss_kib), (20480, 10240));
        assert!(parse_memory("Name:\tx\n").is_none());
    }

    #[test]
    fn named_processes_and_cpu_between_readings() {
        let own = std::fs::read_to_string("/proc/self/comm").unwrap();
        let found = cpu_of_named(own.trim_end()).unwrap();
        assert!(found.contains_key(&std::process::id()), "{found:?}");
        assert!(cpu_of_named("no-such-command-name").unwrap().is_empty());
        let some = cpu_of([std::process::id(), u32::MAX]);
        assert_eq!(some.keys().copied().collect::<Vec<_>>(), vec![std::process::id()]);
        let before = BTreeMap::from([(1, 2.0), (2, 5.0), (3, 1.0)]);
        // 1 used 0.5 s, 2 went backwards (counted as 0), 3 ended, 4 started and used 0.25 s.
        let after = BTreeMap::from([(1, 2.5), (2, 4.0), (4, 0.25)]);
        assert_eq!(cpu_between(&before, &after), 0.75);
    }

    #[test]
    fn own_process_is_readable() {
        assert!(available());
        let pid = std::process::id();
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert!(memory(pid).unwrap().hwm_kib > 0);
        assert!(cpu_seconds(u32::MAX).is_err());
        assert!(machine().nproc >= 1);
    }
}
