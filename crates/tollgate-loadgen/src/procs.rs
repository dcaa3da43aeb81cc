//! The processes a benchmark starts (the mock upstream and Tollgate): spawned
//! optionally pinned to CPUs with `taskset`, waited for until they accept
//! connections, and stopped (SIGTERM, then SIGKILL) when dropped, so no run
//! leaves a server behind; and the machine's shared services kept on some
//! CPUs for a run ([`PinnedServices`]), given their CPUs back when dropped.

use crate::procfs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ProcsError {
    #[error("cannot start {what}: {source}")]
    Spawn { what: String, source: std::io::Error },
    #[error("{what} exited before it accepted connections ({status}); see {log}")]
    Exited { what: String, status: String, log: String },
    #[error("{what} did not accept connections on port {port} within {secs} s; see {log}")]
    NotReady {
        what: String,
        port: u16,
        secs: u64,
        log: String,
    },
    #[error("no free port: {0}")]
    Port(std::io::Error),
    #[error("{what} failed: {message}")]
    Command { what: String, message: String },
}

/// A port that was free a moment ago (the server binds it right after).
pub fn free_port() -> Result<u16, ProcsError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(ProcsError::Port)?;
    l.local_addr().map(|a| a.port()).map_err(ProcsError::Port)
}

/// Whether `taskset` can be run.
pub fn taskset_available() -> bool {
    Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Pins the calling thread (and so every thread it starts later) to `cpus`,
/// a comma-separated list such as `0` or `0,1`.
pub fn pin_self(cpus: &str) -> Result<(), ProcsError> {
    set_affinity(0, &cpu_set(cpus)?).map_err(|e| ProcsError::Command {
        what: "pin".into(),
        message: e.to_string(),
    })
}

/// The CPU set of a comma-separated list such as `0` or `0,1`.
fn cpu_set(cpus: &str) -> Result<libc::cpu_set_t, ProcsError> {
    let list: Vec<usize> = cpus
        .split(',')
        .map(|c| c.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|e| ProcsError::Command {
            what: "pin".into(),
            message: format!("bad CPU list {cpus:?}: {e}"),
        })?;
    // SAFETY: a zeroed cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for c in list {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(ProcsError::Command {
                what: "pin".into(),
                message: format!("CPU {c} out of range"),
            });
        }
        // SAFETY: CPU_SET writes inside the set for an index below
        // CPU_SETSIZE, checked above.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    Ok(set)
}

/// The CPUs thread `tid` may run on (`None`: it has ended).
fn affinity(tid: libc::pid_t) -> Option<libc::cpu_set_t> {
    // SAFETY: sched_getaffinity writes at most the size given into `set`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0).then_some(set)
    }
}

/// Pins thread `tid` (0: the calling thread) to `set`.
fn set_affinity(tid: libc::pid_t, set: &libc::cpu_set_t) -> std::io::Result<()> {
    // SAFETY: sched_setaffinity reads the size given from `set`.
    if unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), set) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Every thread of every process whose command name is one of `comms`
/// ([`procfs::pids_named`]), with that name.
fn threads_named(comms: &[&str]) -> Result<Vec<(libc::pid_t, String)>, procfs::ProcError> {
    let mut out = Vec::new();
    for (pid, comm) in procfs::pids_named(comms)? {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            if let Some(tid) = t.file_name().to_str().and_then(|n| n.parse::<libc::pid_t>().ok()) {
                out.push((tid, comm.clone()));
            }
        }
    }
    Ok(out)
}

/// The services named (e.g. `postgres`, `redis-server`), every thread of
/// them, kept on some CPUs until dropped, when each thread gets back the
/// CPUs it had; a process started in between (a PostgreSQL backend forked
/// by the pinned server) gets those its kind had. A run killed outright
/// cannot restore them: `taskset -a -p -c 0-N PID` does by hand.
pub struct PinnedServices {
    comms: Vec<&'static str>,
    saved: std::collections::HashMap<libc::pid_t, libc::cpu_set_t>,
    by_comm: std::collections::HashMap<String, libc::cpu_set_t>,
}

impl PinnedServices {
    pub fn pin(comms: &[&'static str], cpus: &str) -> Result<PinnedServices, ProcsError> {
        let set = cpu_set(cpus)?;
        let mut pinned = PinnedServices {
            comms: comms.to_vec(),
            saved: Default::default(),
            by_comm: Default::default(),
        };
        let threads = threads_named(comms).map_err(|e| ProcsError::Command {
            what: format!("list the threads of {}", comms.join(", ")),
            message: e.to_string(),
        })?;
        for (tid, comm) in threads {
            let Some(old) = affinity(tid) else { continue };
            match set_affinity(tid, &set) {
                Ok(()) => {
                    pinned.by_comm.entry(comm).or_insert(old);
                    pinned.saved.insert(tid, old);
                }
                // Ended between the listing and now.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                // Dropping `pinned` gives back what was already pinned.
                Err(e) => {
                    return Err(ProcsError::Command {
                        what: format!("pin {comm} (thread {tid}) to CPUs {cpus}"),
                        message: e.to_string(),
                    })
                }
            }
        }
        Ok(pinned)
    }

    /// How many threads were pinned.
    pub fn threads(&self) -> usize {
        self.saved.len()
    }
}

impl Drop for PinnedServices {
    fn drop(&mut self) {
        for (tid, comm) in threads_named(&self.comms).unwrap_or_default() {
            if let Some(set) = self.saved.get(&tid).or_else(|| self.by_comm.get(&comm)) {
                if let Err(e) = set_affinity(tid, set) {
                    if e.raw_os_error() != Some(libc::ESRCH) {
                        eprintln!("warning: cannot give {comm} (thread {tid}) its CPUs back: {e}");
                    }
                }
            }
        }
    }
}

/// A running child process, stopped on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    log: String,
}

impl Proc {
    /// Starts `bin args`, under `taskset -c cpus` when `cpus` is given, with
    /// stdout and stderr going to `log`.
    pub fn spawn(
        name: &str,
        bin: &Path,
        args: &[String],
        env: &[(&str, String)],
        cpus: Option<&str>,
        log: &Path,
    ) -> Result<Proc, ProcsError> {
        let err = |source| ProcsError::Spawn {
            what: name.into(),
            source,
        };
        let out = std::fs::File::create(log).map_err(err)?;
        let out2 = out.try_clone().map_err(err)?;
        let mut cmd = match cpus {
            // taskset execs the program, so the child's pid is the server's.
            Some(c) => {
                let mut cmd = Command::new("taskset");
                cmd.arg("-c").arg(c).arg(bin);
                cmd
            }
            None => Command::new(bin),
        };
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(out2);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().map_err(err)?;
        Ok(Proc {
            name: name.into(),
            child,
            log: log.display().to_string(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded by `within`) until `port` accepts a connection.
    pub async fn wait_ready(&mut self, port: u16, within: Duration) -> Result<(), ProcsError> {
        let until = Instant::now() + within;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ProcsError::Exited {
                    what: self.name.clone(),
                    status: status.to_string(),
                    log: self.log.clone(),
                });
            }
            if Instant::now() >= until {
                return Err(ProcsError::NotReady {
                    what: self.name.clone(),
                    port,
                    secs: within.as_secs(),
                    log: self.log.clone(),
                });
            }
            // Nothing to await: the server gives no signal but its socket.
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: signalling our own child, whose pid is still reserved
            // because it has not been waited for.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        // A graceful stop drains the request log (and a profiler writes its
        // output); give it 30 s, then kill.
        for _ in 0..600 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to completion and returns its trimmed stdout.
pub fn output(what: &str, bin: &Path, args: &[String], env: &[(&str, String)]) -> Result<String, ProcsError> {
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().map_err(|source| ProcsError::Spawn {
        what: what.into(),
        source,
    })?;
    if !out.status.success() {
        return Err(ProcsError::Command {
            what: what.into(),
            message: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_nonzero() {
        assert_ne!(free_port().unwrap(), 0);
    }

    #[test]
    fn bad_cpu_lists_are_refused() {
        assert!(pin_self("x").is_err());
        assert!(pin_self("100000").is_err());
    }

    #[test]
    fn failing_commands_report_stderr() {
        let e = output(
            "sh",
            Path::new("sh"),
            &["-c".into(), "echo oops >&2; exit 3".into()],
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("oops"), "{e}");
        let e = output("nothing", Path::new("/nonexistent/bin"), &[], &[]).unwrap_err();
        assert!(matches!(e, ProcsError::Spawn { .. }));
        assert_eq!(output("echo", Path::new("echo"), &["hi".into()], &[]).unwrap(), "hi");
    }

    fn allowed(pid: u32) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// A service is pinned while the guard lives and has its CPUs back
    /// after, and one started meanwhile gets those of its kind.
    #[test]
    fn services_are_pinned_and_given_their_cpus_back() {
        let dir = tempfile::tempdir().unwrap();
        // A name of its own (a command name is at most 15 bytes), so that
        // no other process on the machine is touched.
        let name: &'static str = Box::leak(format!("tgpin{}", std::process::id() % 10_000_000).into_boxed_str());
        let bin = dir.path().join(name);
        std::fs::copy("/bin/sleep", &bin).unwrap();
        let mut first = Command::new(&bin).arg("30").spawn().unwrap();
        // The command name is set when the program has been exec'd.
        let comm = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        while comm(first.id()).trim_end() != name {
            std::thread::sleep(Duration::from_millis(5));
        }
        let before = allowed(first.id());
        let guard = PinnedServices::pin(&[name], "0").unwrap();
        assert_eq!(guard.threads(), 1);
        assert_eq!(allowed(first.id()), "0");
        // Started while pinned (here by taskset, as a fork of a pinned
        // server would be): given its kind's CPUs at the end.
        let mut later = Command::new("taskset")
            .args(["-c", "0"])
            .arg(&bin)
            .arg("30")
            .spawn()
            .unwrap();
        while comm(later.id()).trim_end() != name {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(guard);
        assert_eq!(allowed(first.id()), before);
        assert_eq!(allowed(later.id()), before);
        for c in [&mut first, &mut later] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        assert!(PinnedServices::pin(&[name], "x").is_err(), "a bad CPU list is refused");
    }

    #[tokio::test]
    async fn a_child_that_exits_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Proc::spawn("false", Path::new("false"), &[], &[], None, &dir.path().join("log")).unwrap();
        let port = free_port().unwrap();
        let e = p.wait_ready(port, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, ProcsError::Exited { .. }), "{e}");
        let mut p = Proc::spawn(
            "sleep",
            Path::new("sleep"),
            &["30".into()],
            &[],
            None,
            &dir.path().join("log2"),
        )
        .unwrap();
        let e = p.wait_ready(port, Duration::from_millis(100)).await.unwrap_err();
        assert!(matches!(e, ProcsError::NotReady { .. }), "{e}");
        drop(p); // SIGTERM ends `sleep` at once
    }
}
