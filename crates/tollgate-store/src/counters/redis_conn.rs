//! How the Redis counters and breakers reach Redis: one server, or a Redis
//! Cluster (`redis_cluster`). Everything above this module (admission,
//! settlement, rebuilds, breakers) runs the same code on both: a
//! [`RedisConn`] is the async `ConnectionLike` the `redis` crate's commands
//! run on, and [`eval`] runs a script with its keys.
//!
//! - **One server**: a reconnecting [`ConnectionManager`].
//! - **A cluster**: the `redis` crate's own [`ClusterConnection`], which
//!   learns the slot map from the seed nodes, sends each command to the
//!   master of its key's slot, follows `MOVED`/`ASK` and reconnects. Every
//!   script call names its keys, and all keys of one call share one hash
//!   tag (`{ws:<id>}`, `{cb:<key>}`), so each runs whole on one node.
//!
//! Scripts are called by their SHA-1 (`EVALSHA`); a node that does not have
//! the script (it restarted, or a replica was promoted: scripts are not
//! replicated) answers `NOSCRIPT`, and the call is sent again with the
//! script's text (`EVAL`), to the same node, which keeps it for the next
//! `EVALSHA`. So a call costs one round trip, two the first time a node
//! meets the script, and never needs every node of a cluster to answer.

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{get_slot, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, ErrorKind, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};
use std::time::Duration;

/// The seed URLs of `redis_url`: comma separated, blanks ignored.
pub fn redis_nodes(url: &str) -> Vec<&str> {
    url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect()
}

/// Where the counters' Redis is: a client for one server or for a cluster.
#[derive(Clone)]
pub(crate) enum RedisClient {
    Single(redis::Client),
    Cluster(ClusterClient),
}

impl RedisClient {
    /// Checks `url` (one `redis://` URL, or with `cluster` one or more seed
    /// nodes, comma separated); connects nothing. The error never quotes
    /// the URL (it may carry a password).
    pub(crate) fn open(url: &str, cluster: bool, timeout: Duration) -> Result<RedisClient, String> {
        let nodes = redis_nodes(url);
        let not_url = |e: redis::RedisError| format!("redis_url is not a Redis URL: {e}");
        match (cluster, nodes.as_slice()) {
            (_, []) => Err("redis_url names no Redis server".into()),
            (false, [one]) => redis::Client::open(*one).map(RedisClient::Single).map_err(not_url),
            (false, more) => Err(format!(
                "redis_url lists {} servers: that is a Redis Cluster's seed nodes, so set redis_cluster = true (TOLLGATE_REDIS_CLUSTER, --redis-cluster); else give one URL",
                more.len()
            )),
            (true, seeds) => {
                // Each seed must parse on its own, so that a mistyped one
                // is named by position rather than skipped.
                for (i, seed) in seeds.iter().enumerate() {
                    redis::Client::open(*seed)
                        .map_err(|e| format!("redis_url: seed node {} is not a Redis URL: {e}", i + 1))?;
                }
                ClusterClient::builder(seeds.to_vec())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    // A redirection (MOVED, ASK) or a lost connection is
                    // retried a few times, quickly; every call is bounded
                    // by `timeout` above this anyway.
                    .retries(3)
                    .min_retry_wait(10)
                    .max_retry_wait(500)
                    .build()
                    .map(RedisClient::Cluster)
                    .map_err(not_url)
            }
        }
    }

    /// A connection that reconnects by itself after Redis comes back.
    pub(crate) async fn connect(&self, timeout: Duration) -> RedisResult<RedisConn> {
        match self {
            RedisClient::Single(client) => {
                // Retries a lost connection every half second at most; each
                // call is bounded by `timeout` anyway.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout)
                    .set_number_of_retries(2)
                    .set_factor(2)
                    .set_max_delay(500);
                ConnectionManager::new_with_config(client.clone(), config)
                    .await
                    .map(RedisConn::Single)
            }
            RedisClient::Cluster(client) => client.get_async_connection().await.map(RedisConn::Cluster),
        }
    }
}

/// A connection to the counters' Redis: clones share it.
// One lives in the counters; each call works on a clone on its stack, as
// with a bare `ConnectionManager` (boxing would allocate on every call).
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub(crate) enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

impl RedisConn {
    /// One `SCAN` step over the keys of the node that holds `slot_key`'s
    /// slot (on one server, over its keys). The `redis` crate sends a keyless
    /// `SCAN` to any node of a cluster, so it is routed here.
    pub(crate) async fn scan_slot(
        &mut self,
        slot_key: &str,
        cursor: u64,
        pattern: &str,
    ) -> RedisResult<(u64, Vec<String>)> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
        match self {
            RedisConn::Single(c) => cmd.query_async(c).await,
            RedisConn::Cluster(c) => {
                let node = Route::new(get_slot(slot_key.as_bytes()), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(node));
                let value = c.route_command(&cmd, routing).await?;
                redis::from_owned_redis_value(value)
            }
        }
    }

    /// Whether every server answers `PING` (on a cluster, every master).
    pub(crate) async fn ping(&mut self) -> RedisResult<()> {
        redis::cmd("PING").query_async::<()>(self).await
    }
}

/// A Lua script, called by its SHA-1.
pub(crate) struct Lua {
    source: &'static str,
    sha: String,
}

impl Lua {
    pub(crate) fn new(source: &'static str) -> Lua {
        Lua {
            source,
            sha: redis::Script::new(source).get_hash().to_owned(),
        }
    }
}

/// Runs `script` with `keys` and `args`: `EVALSHA`, and once more with the
/// script's text (`EVAL`) if the node answers `NOSCRIPT` (see the module
/// documentation).
pub(crate) async fn eval<T: FromRedisValue>(
    conn: &mut RedisConn,
    script: &Lua,
    keys: &[String],
    args: &[String],
) -> RedisResult<T> {
    let call = |name: &str, body: &str| {
        let mut cmd = redis::cmd(name);
        cmd.arg(body).arg(keys.len()).arg(keys).arg(args);
        cmd
    };
    match call("EVALSHA", &script.sha).query_async(conn).await {
        Err(e) if e.kind() == ErrorKind::NoScriptError => call("EVAL", script.source).query_async(conn).await,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_seed_lists_are_checked() {
        let t = Duration::from_secs(1);
        assert_eq!(
            redis_nodes(" redis://a:1, ,redis://b:2 "),
            vec!["redis://a:1", "redis://b:2"]
        );
        assert!(matches!(
            RedisClient::open("redis://127.0.0.1:6379", false, t),
            Ok(RedisClient::Single(_))
        ));
        assert!(matches!(
            RedisClient::open("redis://127.0.0.1:7000", true, t),
            Ok(RedisClient::Cluster(_))
        ));
        assert!(matches!(
            RedisClient::open("redis://127.0.0.1:7000,redis://127.0.0.1:7001", true, t),
            Ok(RedisClient::Cluster(_))
        ));
        let err = |url: &str, cluster: bool| match RedisClient::open(url, cluster, t) {
            Ok(_) => panic!("{url} accepted"),
            Err(e) => e,
        };
        let several = err("redis://127.0.0.1:7000,redis://127.0.0.1:7001", false);
        assert!(
            several.contains("redis_cluster") && several.contains("TOLLGATE_REDIS_CLUSTER"),
            "{several}"
        );
        assert!(err(" , ", true).contains("no Redis server"));
        let bad_seed = err("redis://:secret@127.0.0.1:7000,http://x", true);
        assert!(bad_seed.contains("seed node 2"), "{bad_seed}");
        assert!(!bad_seed.contains("secret"), "{bad_seed}");
        assert!(err("http://example.com", false).contains("redis_url"));
        let two_passwords = err("redis://:first@127.0.0.1:7000,redis://:second@127.0.0.1:7001", true);
        assert!(two_passwords.contains("password"), "{two_passwords}");
        assert!(
            !two_passwords.contains("first") && !two_passwords.contains("second"),
            "{two_passwords}"
        );
    }

    #[test]
    fn scripts_are_called_by_their_sha1() {
        // SHA-1 of "return 1", as Redis computes it.
        assert_eq!(Lua::new("return 1").sha, "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
    }
}
