//! A throwaway `redis-server` for tests that stop, restart or inspect Redis:
//! its own free port on 127.0.0.1, nothing kept on disk (`--save ''`), killed
//! (by its process id) when dropped. With `cluster`, it is a one-node Redis
//! Cluster owning every slot, so that a command or script whose keys span
//! two slots fails with `CROSSSLOT`, as on a real cluster.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    cluster: bool,
    /// More `redis-server` arguments.
    args: Vec<String>,
    child: Option<Child>,
    dir: std::path::PathBuf,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers.
    pub fn start(cluster: bool) -> RedisServer {
        RedisServer::start_with(cluster, &[])
    }

    /// [`RedisServer::start`] with more `redis-server` arguments
    /// (`["--rename-command", "INFO", "\"\""]`).
    pub fn start_with(cluster: bool, args: &[&str]) -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("tollgate-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("redis test directory");
        let mut s = RedisServer {
            port,
            cluster,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
            dir,
        };
        s.restart();
        s
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would: no shutdown, nothing saved).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again, empty, on the same port (killing it first if it runs).
    pub fn restart(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(self.dir.join("nodes.conf"));
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&self.dir)
        .args(&self.args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]);
        }
        self.child = Some(cmd.spawn().expect("redis-server starts (is it installed?)"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.command("PING").as_deref() != Some("+PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.cluster {
            assert_eq!(self.command("CLUSTER ADDSLOTSRANGE 0 16383").as_deref(), Some("+OK"));
            while !self.info("CLUSTER INFO").contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "the one-node cluster did not come up");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Makes this server a replica of `master`, reached at `through` (its
    /// address, or a [`TcpProxy`](crate::tcp_proxy::TcpProxy) in front of it
    /// that a test can cut), and waits until it holds everything `master`
    /// has.
    pub fn replicate(&self, master: &RedisServer, through: std::net::SocketAddr) {
        let line = format!("REPLICAOF {} {}", through.ip(), through.port());
        assert_eq!(self.command(&line).as_deref(), Some("+OK"));
        self.catch_up(master);
    }

    /// Waits until this replica has applied everything `master` has written.
    pub fn catch_up(&self, master: &RedisServer) {
        let offset = |s: &RedisServer, field: &str| -> Option<u64> {
            s.info("INFO replication")
                .lines()
                .find_map(|l| l.strip_prefix(field)?.trim().parse().ok())
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let linked = self.info("INFO replication").contains("master_link_status:up");
            let wanted = offset(master, "master_repl_offset:");
            if linked && wanted.is_some() && offset(self, "slave_repl_offset:") == wanted {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the replica on port {} did not catch up",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Makes this replica a master (what a failover does to the replica it
    /// promotes).
    pub fn promote(&self) {
        assert_eq!(self.command("REPLICAOF NO ONE").as_deref(), Some("+OK"));
    }

    /// Sends one inline command and returns the first line of the answer.
    pub fn command(&self, line: &str) -> Option<String> {
        command_at(self.port, line)
    }

    /// A command whose answer is one bulk string (`INFO …`, `CLUSTER INFO`):
    /// its text, or empty.
    pub fn info(&self, line: &str) -> String {
        info_at(self.port, line)
    }

    /// Calls of each command since the last `CONFIG RESETSTAT`, from
    /// `INFO commandstats`: (command, calls).
    pub fn command_calls(&self) -> Vec<(String, u64)> {
        command_calls_at(self.port)
    }
}

/// Sends one inline command to the server on `port` and returns the first
/// line of the answer.
pub fn command_at(port: u16, line: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(format!("{line}\r\n").as_bytes()).ok()?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).ok()?;
    Some(answer.trim_end().to_owned())
}

/// A command whose answer is one bulk string (`INFO …`, `CLUSTER INFO`),
/// sent to the server on `port`: its text, or empty.
pub fn info_at(port: u16, line: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(format!("{line}\r\n").as_bytes()).is_err() {
        return String::new();
    }
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    if reader.read_line(&mut head).is_err() {
        return String::new();
    }
    let Some(len) = head.trim_end().strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) else {
        return String::new();
    };
    let mut body = vec![0u8; len + 2];
    if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&body[..len]).into_owned()
}

/// Calls of each command on the server on `port` since its last `CONFIG
/// RESETSTAT`, from `INFO commandstats`: (command, calls).
pub fn command_calls_at(port: u16) -> Vec<(String, u64)> {
    info_at(port, "INFO commandstats")
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|f| f.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
