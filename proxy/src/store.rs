//! The Redis store: enrollment records, used time steps, rate-limit
//! counters, pending logins and session flags.
//!
//! Every key of one member carries the member in a hash tag (`{u:NAME}`),
//! so a Redis Cluster keeps them in one slot. Checks and their updates run
//! as Lua scripts, so each is one atomic step.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use sha2::{Digest, Sha256};

/// A Redis failure. The gateway responds with 503 to anything that needs the
/// store while this happens; it never lets a request through instead.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Redis at {url} is unreachable or failed: {source}; check redis.url and that Redis is running")]
    Redis {
        url: String,
        #[source]
        source: redis::RedisError,
    },
}

/// Replay check: accept `step` only if it is above the stored highest
/// used step, and store it. Returns 1 when accepted, 0 when replayed.
const REPLAY_SCRIPT: &str = r#"
local used = tonumber(redis.call('GET', KEYS[1]) or '-1')
local step = tonumber(ARGV[1])
if step > used then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
"#;

/// Fixed-window counter: increments and sets the expiry in one step, so a
/// counter can never be left without one. Returns the new count.
const COUNT_SCRIPT: &str = r#"
local count = redis.call('INCR', KEYS[1])
if count == 1 or redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return count
"#;

/// Takes a pending login: returns its value and deletes it in one step, so
/// two concurrent submissions cannot both finish the same login.
const TAKE_SCRIPT: &str = r#"
local value = redis.call('GET', KEYS[1])
if value then redis.call('DEL', KEYS[1]) end
return value
"#;

/// A handle on the shared state. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    connection: ConnectionManager,
    prefix: String,
    url: String,
    replay: Script,
    count: Script,
    take: Script,
}

/// Returns a hex SHA-256 of `value`, used to key secrets (session cookies,
/// tickets) without storing them.
pub fn digest_hex(value: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(value))
}

impl Store {
    /// Connects to `url`. The connection reconnects by itself after Redis
    /// returns; each command gives up after `timeout`.
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Store, StoreError> {
        let error = |source| StoreError::Redis {
            url: redacted(url),
            source,
        };
        let client = redis::Client::open(url).map_err(error)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_with_config(client, config).await.map_err(error)?;
        Ok(Store {
            connection,
            prefix: prefix.to_string(),
            url: redacted(url),
            replay: Script::new(REPLAY_SCRIPT),
            count: Script::new(COUNT_SCRIPT),
            take: Script::new(TAKE_SCRIPT),
        })
    }

    fn error(&self) -> impl FnOnce(redis::RedisError) -> StoreError + '_ {
        |source| StoreError::Redis {
            url: self.url.clone(),
            source,
        }
    }

    /// Key of a member's item; the hash tag keeps one member in one slot.
    fn member_key(&self, kind: &str, user: &str) -> String {
        format!("{}{kind}:{{u:{user}}}", self.prefix)
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    /// Key of a pending login: the SHA-256 of its ticket.
    fn pending_key(&self, ticket: &str) -> String {
        self.key("pending", &digest_hex(ticket.as_bytes()))
    }

    /// Key of a session flag: the SHA-256 of the session cookie value.
    fn session_key(&self, cookie_value: &str) -> String {
        self.key("session", &digest_hex(cookie_value.as_bytes()))
    }

    /// Adds one count of `counter` in a window of `window_secs` to `pipe`.
    fn push_count(&self, pipe: &mut redis::Pipeline, (counter, window_secs): (&RateKey<'_>, u64)) {
        pipe.cmd("EVAL").arg(COUNT_SCRIPT).arg(1).arg(self.rate_key(counter)).arg(window_secs);
    }

    /// Checks that Redis responds, for `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        redis::cmd("PING").query_async::<String>(&mut connection).await.map_err(self.error())?;
        Ok(())
    }

    /// Reports whether Redis persists data (AOF or RDB snapshots).
    pub async fn persistence_enabled(&self) -> Result<bool, StoreError> {
        let mut connection = self.connection.clone();
        let aof: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("appendonly").query_async(&mut connection).await.map_err(self.error())?;
        let save: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("save").query_async(&mut connection).await.map_err(self.error())?;
        let aof_on = aof.get(1).is_some_and(|v| v == "yes");
        let save_on = save.get(1).is_some_and(|v| !v.trim().is_empty());
        Ok(aof_on || save_on)
    }

    /// Reads a member's enrollment record bytes.
    pub async fn record(&self, user: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut connection = self.connection.clone();
        connection.get(self.member_key("record", user)).await.map_err(self.error())
    }

    /// Writes a member's enrollment record bytes, sets (or clears) the used
    /// step, because a new seed starts a new sequence of codes, and clears
    /// the set of used backup codes, because the record carries a new set.
    pub async fn put_record(&self, user: &str, record: &[u8], used_step: Option<u64>) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .set(self.member_key("record", user), record)
            .del(self.member_key("backup_used", user));
        match used_step {
            Some(step) => pipe.set(self.member_key("used", user), step),
            None => pipe.del(self.member_key("used", user)),
        };
        pipe.query_async::<()>(&mut connection).await.map_err(self.error())
    }

    /// Deletes a member's record and used step. Returns true if a record existed.
    pub async fn delete_record(&self, user: &str) -> Result<bool, StoreError> {
        let mut connection = self.connection.clone();
        let (deleted, _, _, _): (u32, u32, u32, u32) = redis::pipe()
            .atomic()
            .del(self.member_key("record", user))
            .del(self.member_key("used", user))
            .del(self.member_key("backup_used", user))
            .del(self.member_key("enroll", user))
            .query_async(&mut connection)
            .await
            .map_err(self.error())?;
        Ok(deleted > 0)
    }

    /// Reads a member's record and highest used step in one round trip.
    pub async fn record_and_used_step(&self, user: &str) -> Result<(Option<Vec<u8>>, Option<u64>), StoreError> {
        let mut connection = self.connection.clone();
        redis::pipe()
            .get(self.member_key("record", user))
            .get(self.member_key("used", user))
            .query_async(&mut connection)
            .await
            .map_err(self.error())
    }

    /// Counts an attempt on the member's own `counter` and reads the
    /// member's record and used time step, in one round trip.
    pub async fn count_and_record(&self, counter: (&RateKey<'_>, u64), user: &str) -> Result<(u64, Option<Vec<u8>>, Option<u64>), StoreError> {
        let mut connection = self.connection.clone();
        let mut pipe = redis::pipe();
        self.push_count(&mut pipe, counter);
        pipe.get(self.member_key("record", user)).get(self.member_key("used", user));
        pipe.query_async(&mut connection).await.map_err(self.error())
    }

    /// Returns the highest time step the member has used, if any.
    pub async fn used_step(&self, user: &str) -> Result<Option<u64>, StoreError> {
        let mut connection = self.connection.clone();
        connection.get(self.member_key("used", user)).await.map_err(self.error())
    }

    /// Marks `step` used if it is above the highest used step. Returns
    /// false when the step (or a newer one) was used already.
    pub async fn consume_step(&self, user: &str, step: u64) -> Result<bool, StoreError> {
        let mut connection = self.connection.clone();
        let accepted: i32 = self
            .replay
            .key(self.member_key("used", user))
            .arg(step)
            .invoke_async(&mut connection)
            .await
            .map_err(self.error())?;
        Ok(accepted == 1)
    }

    /// Marks a backup code entry used. Returns false if it was used
    /// already; `SADD` makes this single-use under concurrent submissions.
    pub async fn consume_backup(&self, user: &str, entry: &str) -> Result<bool, StoreError> {
        let mut connection = self.connection.clone();
        let added: u32 = connection.sadd(self.member_key("backup_used", user), entry).await.map_err(self.error())?;
        Ok(added == 1)
    }

    /// Returns how many backup code entries the member has used.
    pub async fn backup_used_count(&self, user: &str) -> Result<usize, StoreError> {
        let mut connection = self.connection.clone();
        connection.scard(self.member_key("backup_used", user)).await.map_err(self.error())
    }

    /// Stores a member's enrollment in progress (seed not confirmed yet).
    pub async fn put_enrollment(&self, user: &str, value: &[u8], ttl_secs: u64) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        connection.set_ex(self.member_key("enroll", user), value, ttl_secs).await.map_err(self.error())
    }

    /// Reads a member's enrollment in progress.
    pub async fn enrollment(&self, user: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut connection = self.connection.clone();
        connection.get(self.member_key("enroll", user)).await.map_err(self.error())
    }

    /// Removes and returns a member's enrollment in progress; only one
    /// caller gets it.
    pub async fn take_enrollment(&self, user: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut connection = self.connection.clone();
        self.take
            .key(self.member_key("enroll", user))
            .invoke_async(&mut connection)
            .await
            .map_err(self.error())
    }

    /// Increments a rate-limit counter and returns the new count.
    pub async fn count(&self, counter: &RateKey<'_>, window_secs: u64) -> Result<u64, StoreError> {
        let mut connection = self.connection.clone();
        self.count
            .key(self.rate_key(counter))
            .arg(window_secs)
            .invoke_async(&mut connection)
            .await
            .map_err(self.error())
    }

    /// Increments two rate-limit counters in one round trip (a pipeline of
    /// two script calls, so the keys may live in different cluster slots)
    /// and returns their new counts.
    pub async fn count_pair(&self, first: (&RateKey<'_>, u64), second: (&RateKey<'_>, u64)) -> Result<(u64, u64), StoreError> {
        let mut connection = self.connection.clone();
        let mut pipe = redis::pipe();
        for counter in [first, second] {
            self.push_count(&mut pipe, counter);
        }
        pipe.query_async(&mut connection).await.map_err(self.error())
    }

    /// Returns a counter's current value and its seconds to expiry.
    pub async fn peek_count(&self, counter: &RateKey<'_>) -> Result<(u64, i64), StoreError> {
        let mut connection = self.connection.clone();
        let key = self.rate_key(counter);
        let (count, ttl): (Option<u64>, i64) = redis::pipe()
            .get(&key)
            .ttl(&key)
            .query_async(&mut connection)
            .await
            .map_err(self.error())?;
        Ok((count.unwrap_or(0), ttl))
    }

    fn rate_key(&self, counter: &RateKey<'_>) -> String {
        match counter {
            RateKey::PasswordUser(user) => self.member_key("rl:pw", user),
            RateKey::PasswordAddress(ip) => self.key("rl:pw:ip", ip),
            RateKey::SecondFactorUser(user) => self.member_key("rl:2f", user),
            RateKey::SecondFactorAddress(ip) => self.key("rl:2f:ip", ip),
        }
    }

    /// Stores a pending login under the SHA-256 of its ticket.
    pub async fn put_pending(&self, ticket: &str, value: &[u8], ttl_secs: u64) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        connection
            .set_ex(self.pending_key(ticket), value, ttl_secs)
            .await
            .map_err(self.error())
    }

    /// Reads a pending login without removing it.
    pub async fn pending(&self, ticket: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut connection = self.connection.clone();
        connection
            .get(self.pending_key(ticket))
            .await
            .map_err(self.error())
    }

    /// Reads a pending login and counts an attempt on `counter`, in one
    /// round trip. The attempt counts even when the login is gone.
    pub async fn pending_and_count(&self, ticket: &str, counter: (&RateKey<'_>, u64)) -> Result<(Option<Vec<u8>>, u64), StoreError> {
        let mut connection = self.connection.clone();
        let mut pipe = redis::pipe();
        pipe.get(self.pending_key(ticket));
        self.push_count(&mut pipe, counter);
        pipe.query_async(&mut connection).await.map_err(self.error())
    }

    /// Takes a pending login and sets the flags of its application
    /// sessions, in one round trip. Returns the login if this caller took
    /// it. The flags are set either way: the caller has verified the second
    /// factor for exactly these sessions, so a concurrent caller that took
    /// the login first sets the same flags.
    pub async fn take_pending_and_flag(&self, ticket: &str, flags: &[(String, Vec<u8>)], ttl_secs: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let mut connection = self.connection.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL").arg(TAKE_SCRIPT).arg(1).arg(self.pending_key(ticket));
        for (cookie_value, flag) in flags {
            pipe.set_ex(self.session_key(cookie_value), flag, ttl_secs).ignore();
        }
        let (taken,): (Option<Vec<u8>>,) = pipe.query_async(&mut connection).await.map_err(self.error())?;
        Ok(taken)
    }

    /// Removes a pending login and returns it; only one caller gets it.
    pub async fn take_pending(&self, ticket: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut connection = self.connection.clone();
        self.take
            .key(self.pending_key(ticket))
            .invoke_async(&mut connection)
            .await
            .map_err(self.error())
    }

    /// Sets the flag of an application session, keyed by the SHA-256 of
    /// the session cookie value.
    pub async fn put_session_flag(&self, cookie_value: &str, flag: &[u8], ttl_secs: u64) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        connection
            .set_ex(self.session_key(cookie_value), flag, ttl_secs)
            .await
            .map_err(self.error())
    }

    /// Reads the flag of an application session.
    pub async fn session_flag(&self, cookie_value: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut connection = self.connection.clone();
        connection
            .get(self.session_key(cookie_value))
            .await
            .map_err(self.error())
    }

    /// Deletes the flag of an application session (logout).
    pub async fn delete_session_flag(&self, cookie_value: &str) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        connection
            .del(self.session_key(cookie_value))
            .await
            .map_err(self.error())
    }
}

/// A rate-limit counter.
pub enum RateKey<'a> {
    PasswordUser(&'a str),
    PasswordAddress(&'a str),
    SecondFactorUser(&'a str),
    SecondFactorAddress(&'a str),
}

/// Removes a password from a Redis URL before it appears in an error.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => format!("{}://***@{}", &url[..scheme_end], &url[at + 1..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_password_is_redacted() {
        assert_eq!(redacted("redis://:s3cret@10.0.0.5:6379/0"), "redis://***@10.0.0.5:6379/0");
        assert_eq!(redacted("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
    }
}
