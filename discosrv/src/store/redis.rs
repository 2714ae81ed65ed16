//! Redis (or Redis Cluster) store, shared by several replicas.
//!
//! One hash per device, `<prefix>d:<device ID>`: a field per address
//! holding its expiry (Unix seconds) and a `~seen` field (Unix ns). A Lua
//! script merges an announcement atomically, dropping expired fields, so
//! each address keeps its own expiry whichever replica wrote it. The key
//! itself lives a week after the last announcement, which lets lookups of
//! offline devices count as "seen before".
//!
//! Redis being down never stops the process: the connection is made
//! lazily and re-made by redis' connection manager; meanwhile every
//! request gets a [`StoreError`] (503 with `Retry-After`).

use std::time::Duration;

use proto::discovery::ADDRESS_LIFETIME_SECS;
use proto::DeviceId;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use tokio::sync::OnceCell;

use super::memory::FORGET_AFTER_SECS;
use super::{Announced, Found, Lookup, Now, Store, StoreError};

/// Longest a single Redis operation may take before the request gets 503.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
const SEEN_FIELD: &str = "~seen";

/// The members of an allow-list set (KEYS[1]), refused whole when the set
/// holds more than ARGV[1] members or a member longer than ARGV[2] bytes:
/// the list is bounded before anything is sent or allocated here, however
/// the set was filled.
const BOUNDED_MEMBERS: &str = r"
local n = redis.call('SCARD', KEYS[1])
if n > tonumber(ARGV[1]) then
  return redis.error_reply('the set has ' .. n .. ' members, more than ' .. ARGV[1])
end
local members = redis.call('SMEMBERS', KEYS[1])
for _, m in ipairs(members) do
  if #m > tonumber(ARGV[2]) then
    return redis.error_reply('a member is ' .. #m .. ' bytes long, more than ' .. ARGV[2])
  end
end
return members
";
/// Longest member of an allow-list set: a device ID with dashes is 63
/// bytes; room for spaces and a `#` comment, as in a list file.
const MAX_MEMBER_BYTES: usize = 256;

const MERGE: &str = r"
local now = tonumber(ARGV[1])
local h = redis.call('HGETALL', KEYS[1])
for i = 1, #h, 2 do
  if h[i] ~= '~seen' and tonumber(h[i + 1]) <= now then
    redis.call('HDEL', KEYS[1], h[i])
  end
end
for i = 6, #ARGV do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[2])
end
-- Bound the record: keep the MAX addresses that expire last.
local max = tonumber(ARGV[5])
if redis.call('HLEN', KEYS[1]) > max then
  local all = redis.call('HGETALL', KEYS[1])
  local list = {}
  for i = 1, #all, 2 do
    if all[i] ~= '~seen' then
      table.insert(list, {all[i], tonumber(all[i + 1])})
    end
  end
  table.sort(list, function(a, b) return a[2] > b[2] end)
  for i = max + 1, #list do
    redis.call('HDEL', KEYS[1], list[i][1])
  end
end
redis.call('HSET', KEYS[1], '~seen', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
";

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

enum Target {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

pub struct RedisStore {
    target: Target,
    conn: OnceCell<Conn>,
    prefix: String,
    merge: Script,
    bounded_members: Script,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("redis: {e}"))
}

impl RedisStore {
    /// Checks the URLs; the connection itself is made on first use, so the
    /// server starts (answering 503) even while Redis is down.
    pub async fn connect(urls: &[String], cluster: bool, prefix: &str) -> Result<Self, StoreError> {
        let target = if cluster {
            Target::Cluster(redis::cluster::ClusterClient::new(urls.to_vec()).map_err(err)?)
        } else {
            let [url] = urls else {
                return Err(StoreError(
                    "give exactly one --redis-url, or --redis-cluster with one per seed node"
                        .into(),
                ));
            };
            Target::Single(redis::Client::open(url.as_str()).map_err(err)?)
        };
        let store = RedisStore {
            target,
            conn: OnceCell::new(),
            prefix: prefix.to_string(),
            merge: Script::new(MERGE),
            bounded_members: Script::new(BOUNDED_MEMBERS),
        };
        if let Err(e) = store.conn().await {
            tracing::warn!(error = %e, "Redis is not reachable yet; answering 503 until it is");
        }
        Ok(store)
    }

    async fn conn(&self) -> Result<Conn, StoreError> {
        let c = self
            .conn
            .get_or_try_init(|| async {
                let made = tokio::time::timeout(OP_TIMEOUT, async {
                    match &self.target {
                        Target::Single(client) => {
                            let config = ConnectionManagerConfig::new()
                                .set_connection_timeout(OP_TIMEOUT)
                                .set_response_timeout(OP_TIMEOUT)
                                .set_number_of_retries(2)
                                .set_max_delay(1000);
                            client
                                .get_connection_manager_with_config(config)
                                .await
                                .map(Conn::Single)
                        }
                        Target::Cluster(client) => {
                            client.get_async_connection().await.map(Conn::Cluster)
                        }
                    }
                })
                .await;
                match made {
                    Ok(Ok(c)) => Ok(c),
                    Ok(Err(e)) => Err(err(e)),
                    Err(_) => Err(err("connection timed out")),
                }
            })
            .await?;
        Ok(c.clone())
    }

    fn key(&self, id: &DeviceId) -> String {
        format!("{}d:{id}", self.prefix)
    }

    /// Runs `op` with a time limit. A connection that turns out to be
    /// broken (Redis restarted) is retried once: the connection manager
    /// reconnects on the first failure, so the request need not fail.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        for attempt in 0..2 {
            let conn = self.conn().await?;
            match tokio::time::timeout(OP_TIMEOUT, op(conn)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e))
                    if attempt == 0
                        && (e.is_io_error()
                            || e.is_connection_dropped()
                            || e.is_connection_refusal()) =>
                {
                    tracing::debug!(error = %e, "redis connection broken; retrying once");
                }
                Ok(Err(e)) => return Err(err(e)),
                Err(_) => return Err(err("operation timed out")),
            }
        }
        Err(err("connection lost"))
    }
}

impl RedisStore {
    /// The members of the set `key`, verbatim (no prefix added: the
    /// operator names the key of the `--allow-devices-redis` set). A
    /// missing key is an empty set, as Redis answers. More than
    /// [`proto::allowlist::MAX_DEVICES`] members, or one longer than a
    /// list line may be, is an error naming the size.
    pub async fn set_members(&self, key: &str) -> Result<Vec<String>, StoreError> {
        self.run(|mut conn| {
            let mut inv = self.bounded_members.key(key);
            inv.arg(proto::allowlist::MAX_DEVICES).arg(MAX_MEMBER_BYTES);
            async move { inv.invoke_async::<Vec<String>>(&mut conn).await }
        })
        .await
    }
}

impl Store for RedisStore {
    async fn announce(
        &self,
        id: DeviceId,
        addresses: Vec<String>,
        now: Now,
    ) -> Result<Announced, StoreError> {
        let key = self.key(&id);
        self.run(|mut conn| {
            let mut inv = self.merge.key(&key);
            inv.arg(now.secs())
                .arg(now.secs() + ADDRESS_LIFETIME_SECS as i64)
                .arg(now.0)
                .arg(FORGET_AFTER_SECS)
                .arg(super::record::MAX_ADDRESSES);
            for a in &addresses {
                inv.arg(a);
            }
            async move { inv.invoke_async::<i64>(&mut conn).await }
        })
        .await?;
        Ok(Announced::Stored)
    }

    async fn lookup(&self, id: DeviceId, now: Now) -> Result<Lookup, StoreError> {
        let key = self.key(&id);
        let fields: Vec<(String, i64)> = self
            .run(|mut conn| {
                let key = key.clone();
                async move { redis::cmd("HGETALL").arg(key).query_async(&mut conn).await }
            })
            .await?;
        if fields.is_empty() {
            return Ok(Lookup::NotFound { seen_before: false });
        }
        let now_s = now.secs();
        let mut seen = 0;
        let mut addresses = Vec::new();
        for (field, value) in fields {
            if field == SEEN_FIELD {
                seen = value;
            } else if value > now_s {
                addresses.push(field);
            }
        }
        if addresses.is_empty() {
            return Ok(Lookup::NotFound { seen_before: true });
        }
        addresses.sort_unstable();
        Ok(Lookup::Found(Found {
            seen_unix_ns: seen,
            addresses,
        }))
    }

    async fn healthy(&self) -> bool {
        self.run(
            |mut conn| async move { redis::cmd("PING").query_async::<String>(&mut conn).await },
        )
        .await
        .is_ok()
    }

    fn current_devices(&self) -> Option<u64> {
        None
    }
}
