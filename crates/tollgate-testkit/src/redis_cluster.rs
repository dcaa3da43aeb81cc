//! A throwaway Redis Cluster of three masters for tests (and, with
//! [`RedisCluster::start_with_replicas`], a replica of each): one
//! `redis-server --cluster-enabled yes` process per node on free ports of
//! 127.0.0.1 (nothing kept on disk), joined by `redis-cli --cluster create`,
//! ready once every node reports `cluster_state:ok`. Every process is killed
//! (by its process id) when the value is dropped, also when a test fails
//! half way. Without `redis-server` or `redis-cli` it panics: a test that
//! needs a cluster fails rather than skip.

use crate::redis_server::{command_at, command_calls_at, info_at};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How many masters the cluster has.
pub const NODES: usize = 3;

/// How long a node may be unreachable before a cluster with replicas fails
/// it over (`cluster-node-timeout`), in milliseconds.
pub const FAILOVER_TIMEOUT_MS: u32 = 1000;

pub struct RedisCluster {
    /// The nodes' client ports (masters and replicas).
    pub ports: Vec<u16>,
    /// Replicas per master.
    replicas: usize,
    /// Each node's process (in the order of `ports`), while it runs.
    children: Vec<Option<Child>>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts three nodes, creates the cluster (slots spread evenly, no
    /// replicas) and waits until every node serves all 16384 slots.
    pub fn start() -> RedisCluster {
        RedisCluster::start_with(0)
    }

    /// Three masters with a replica each, failed over after
    /// [`FAILOVER_TIMEOUT_MS`]; ready once every replica is in sync.
    pub fn start_with_replicas() -> RedisCluster {
        RedisCluster::start_with(1)
    }

    fn start_with(replicas: usize) -> RedisCluster {
        let ports = free_ports(NODES * (1 + replicas));
        let dir = std::env::temp_dir().join(format!("tollgate-redis-cluster-{}-{}", std::process::id(), ports[0]));
        std::fs::create_dir_all(&dir).expect("cluster test directory");
        // Built before the first process starts, so that Drop kills
        // whatever was started if a later step panics.
        let mut cluster = RedisCluster {
            ports: ports.clone(),
            replicas,
            children: Vec::new(),
            dir,
        };
        for port in &ports {
            let child = cluster.spawn(*port);
            cluster.children.push(Some(child));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in &ports {
            wait_for_pong(*port, deadline);
        }
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs (is it installed?)");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        cluster.wait_until_ok(deadline);
        if replicas > 0 {
            cluster.wait_for_replicas(deadline);
        }
        cluster
    }

    /// One node's process: its cluster configuration (id, slots, peers) in
    /// `nodes-<port>.conf`, no data on disk.
    fn spawn(&self, port: u16) -> Child {
        let mut cmd = Command::new("redis-server");
        if self.replicas > 0 {
            cmd.args(["--cluster-node-timeout", &FAILOVER_TIMEOUT_MS.to_string()]);
        }
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-config-file"])
            .arg(self.dir.join(format!("nodes-{port}.conf")))
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (is it installed?)")
    }

    /// Waits until every running node reports the cluster ok with all
    /// slots served.
    fn wait_until_ok(&self, deadline: Instant) {
        for port in self.running() {
            poll(deadline, || {
                let info = info_at(port, "CLUSTER INFO");
                let ok = info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && info.contains(&format!("cluster_known_nodes:{}", self.ports.len()));
                ok.then_some(())
                    .ok_or_else(|| format!("the cluster is not ok on port {port}: {info}"))
            });
        }
    }

    /// Waits until every master has its replicas online and in sync.
    fn wait_for_replicas(&self, deadline: Instant) {
        for port in self.masters() {
            poll(deadline, || {
                let info = info_at(port, "INFO replication");
                let online = info
                    .lines()
                    .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                    .count();
                (online >= self.replicas)
                    .then_some(())
                    .ok_or_else(|| format!("the replicas of {port} are not in sync: {info}"))
            });
        }
    }

    /// The ports of the nodes whose process runs.
    fn running(&self) -> Vec<u16> {
        self.ports
            .iter()
            .zip(&self.children)
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
            .collect()
    }

    /// The masters (every running node that says so).
    pub fn masters(&self) -> Vec<u16> {
        self.running()
            .into_iter()
            .filter(|p| info_at(*p, "INFO replication").contains("role:master"))
            .collect()
    }

    /// Kills the master at `port` and waits until its replica has taken its
    /// slots over and the cluster is ok again on every running node.
    pub fn kill_and_fail_over(&mut self, port: u16) {
        assert!(self.replicas > 0, "a cluster without replicas cannot fail over");
        self.kill(port);
        let deadline = Instant::now() + Duration::from_secs(30);
        for p in self.running() {
            poll(deadline, || {
                let info = info_at(p, "CLUSTER INFO");
                let nodes = info_at(p, "CLUSTER NODES");
                let dead_is_master = nodes
                    .lines()
                    .any(|l| l.contains(&format!(":{port}@")) && l.contains("master") && !l.contains("fail"));
                let over =
                    info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384") && !dead_is_master;
                over.then_some(())
                    .ok_or_else(|| format!("no failover of {port} seen on {p}: {info}\n{nodes}"))
            });
        }
    }

    fn index(&self, port: u16) -> usize {
        self.ports
            .iter()
            .position(|p| *p == port)
            .expect("a node of this cluster")
    }

    /// Kills the node at `port`, as a crash would.
    pub fn kill(&mut self, port: u16) {
        let i = self.index(port);
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the node at `port` again (killed first if it runs): empty,
    /// with its cluster identity and slots, and waits until the cluster is
    /// ok again.
    pub fn restart(&mut self, port: u16) {
        self.kill(port);
        let i = self.index(port);
        self.children[i] = Some(self.spawn(port));
        let deadline = Instant::now() + Duration::from_secs(20);
        wait_for_pong(port, deadline);
        self.wait_until_ok(deadline);
    }

    /// The seed nodes as `redis_url` takes them: every node, comma separated.
    pub fn url(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The port of the master that holds `key`'s slot (a hash tag counts,
    /// as in Redis), from `CLUSTER NODES`.
    pub fn node_of(&self, key: &str) -> u16 {
        let slot = redis::cluster_routing::get_slot(key.as_bytes());
        let nodes = info_at(self.running()[0], "CLUSTER NODES");
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let port: u16 = fields[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .expect("a node's address");
            for range in &fields[8..] {
                let (start, end) = range.split_once('-').unwrap_or((range, range));
                let (Ok(start), Ok(end)) = (start.parse::<u16>(), end.parse::<u16>()) else {
                    continue;
                };
                if (start..=end).contains(&slot) {
                    return port;
                }
            }
        }
        panic!("no master holds slot {slot}: {nodes}")
    }

    /// Moves the slot of `key`, with its keys, to the master at `to`, as
    /// `redis-cli --cluster reshard` does for one slot: the slot is marked
    /// importing on `to` and migrating on its owner, every key is
    /// `MIGRATE`d, then `to` is announced as the owner to every master (to
    /// itself first). Clients that still send the slot's keys to the old
    /// owner get `MOVED` (or `ASK` while it moves).
    pub fn move_slot_of(&self, key: &str, to: u16) {
        let slot = redis::cluster_routing::get_slot(key.as_bytes());
        let from = self.node_of(key);
        assert_ne!(from, to, "slot {slot} is on {to} already");
        let id = |port: u16| -> String {
            redis::cmd("CLUSTER")
                .arg("MYID")
                .query(&mut connect(port))
                .expect("CLUSTER MYID")
        };
        let (from_id, to_id) = (id(from), id(to));
        let setslot = |port: u16, state: &str, node: &str| {
            let _: () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(state)
                .arg(node)
                .query(&mut connect(port))
                .unwrap_or_else(|e| panic!("CLUSTER SETSLOT {slot} {state} on {port}: {e}"));
        };
        setslot(to, "IMPORTING", &from_id);
        setslot(from, "MIGRATING", &to_id);
        let mut source = connect(from);
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query(&mut source)
                .expect("CLUSTER GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            let _: () = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query(&mut source)
                .expect("MIGRATE");
        }
        setslot(to, "NODE", &to_id);
        setslot(from, "NODE", &to_id);
        for port in self.masters().into_iter().filter(|p| *p != to && *p != from) {
            setslot(port, "NODE", &to_id);
        }
    }

    /// The keys matching `pattern` on the node at `port` (that node's own
    /// keys only).
    pub fn keys_on(&self, port: u16, pattern: &str) -> Vec<String> {
        let mut conn = connect(port);
        let mut keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut conn).expect("KEYS");
        keys.sort();
        keys
    }

    /// A field of the hash `key` on the node at `port`.
    pub fn hget_on(&self, port: u16, key: &str, field: &str) -> Option<String> {
        let mut conn = connect(port);
        redis::cmd("HGET").arg(key).arg(field).query(&mut conn).expect("HGET")
    }

    /// Sends one inline command to every node; the first line of each answer.
    pub fn on_every_node(&self, line: &str) -> Vec<Option<String>> {
        self.ports.iter().map(|p| command_at(*p, line)).collect()
    }

    /// Calls of `command` (lower case, e.g. `evalsha`) on every node since
    /// the last `CONFIG RESETSTAT`, summed.
    pub fn calls_of(&self, command: &str) -> u64 {
        self.ports
            .iter()
            .flat_map(|p| command_calls_at(*p))
            .filter(|(c, _)| c == command)
            .map(|(_, n)| n)
            .sum()
    }

    /// Every command called on each node since the last `CONFIG RESETSTAT`.
    pub fn command_calls(&self) -> Vec<(u16, Vec<(String, u64)>)> {
        self.ports.iter().map(|p| (*p, command_calls_at(*p))).collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().filter_map(Option::take) {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A connection to the node at `port` alone (no cluster routing).
fn connect(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .and_then(|c| c.get_connection())
        .expect("a connection to the node")
}

/// Checks every 50 ms until `ready` answers `Ok`; past `deadline`, fails
/// with its last answer (what the cluster looked like).
fn poll(deadline: Instant, mut ready: impl FnMut() -> Result<(), String>) {
    loop {
        match ready() {
            Ok(()) => return,
            Err(state) => assert!(Instant::now() < deadline, "{state}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for_pong(port: u16, deadline: Instant) {
    while command_at(port, "PING").as_deref() != Some("+PONG") {
        assert!(Instant::now() < deadline, "redis-server on port {port} did not answer");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `n` distinct ports that are free on 127.0.0.1 together with their
/// cluster bus ports (port + 10000).
fn free_ports(n: usize) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ports.len() < n {
        assert!(Instant::now() < deadline, "no free ports for a Redis Cluster");
        let port = 20_000 + (rand::random::<u16>() % 25_000);
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if !ports.contains(&port) && free(port) && free(port + 10_000) {
            ports.push(port);
        }
    }
    ports
}
