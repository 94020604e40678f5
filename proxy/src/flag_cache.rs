//! A short in-process cache of confirmed session flags.
//!
//! A flag seen in Redis is trusted for `gateway.session_cache_ms` (1 s by
//! default) without another Redis round trip. Only confirmed flags are
//! cached, never their absence, so a session flagged on another instance
//! works at once. The cost is staleness: a logout or reset on another
//! instance reaches this one at most that long later. A logout through this
//! instance removes the entry at once. Set the key to 0 to turn the cache off.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::headers::Identity;

/// Maximum number of entries. A full cache is emptied: that costs one
/// Redis round trip per active session and bounds memory to an estimated
/// 10 MB (about 100 bytes per entry).
const MAX_ENTRIES: usize = 100_000;

/// Session flags confirmed recently, keyed by the session cookie value
/// (process memory only; Redis keys use its SHA-256).
pub struct FlagCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Identity, Instant)>>,
}

impl FlagCache {
    /// Creates a cache whose entries live `ttl`; a zero `ttl` turns it off.
    pub fn new(ttl: Duration) -> FlagCache {
        FlagCache { ttl, entries: Mutex::new(HashMap::new()) }
    }

    /// Returns the member of a flag confirmed less than `ttl` ago.
    pub fn get(&self, cookie: &str) -> Option<Identity> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().expect("flag cache lock");
        let (user, at) = entries.get(cookie)?;
        (at.elapsed() < self.ttl).then(|| user.clone())
    }

    /// Records a flag just read from Redis.
    pub fn put(&self, cookie: &str, user: Identity) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().expect("flag cache lock");
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(cookie.to_string(), (user, Instant::now()));
    }

    /// Forgets a flag (logout through this instance).
    pub fn remove(&self, cookie: &str) {
        self.entries.lock().expect("flag cache lock").remove(cookie);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn alice() -> Identity {
        Identity::new(Arc::from("alice"))
    }

    #[test]
    fn entry_expires_after_ttl() {
        let cache = FlagCache::new(Duration::from_millis(30));
        cache.put("d1", alice());
        assert_eq!(cache.get("d1"), Some(alice()));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get("d1"), None);
    }

    #[test]
    fn zero_ttl_disables_cache() {
        let cache = FlagCache::new(Duration::ZERO);
        cache.put("d1", alice());
        assert_eq!(cache.get("d1"), None);
    }

    #[test]
    fn remove_forgets_entry() {
        let cache = FlagCache::new(Duration::from_secs(5));
        cache.put("d1", alice());
        cache.remove("d1");
        assert_eq!(cache.get("d1"), None);
    }
}
