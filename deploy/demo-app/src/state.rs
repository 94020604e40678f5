//! In-memory application state: sessions and the records behind the `/_demo/`
//! endpoints. Everything is lost when the process stops.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rand::rngs::OsRng;
use rand::RngCore;
use serde::Serialize;

/// Session lifetime, counted from login. The session cookie itself has no Max-Age,
/// so an expired session is noticed on the server side only.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(14 * 24 * 60 * 60);

/// Maximum number of entries that `GET /_demo/requests` returns.
pub const REQUEST_LOG_CAPACITY: usize = 100;

/// Shared state of all handlers. Clones share the same data.
#[derive(Clone, Default)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    sessions: Mutex<HashMap<String, Session>>,
    login_record: Mutex<LoginRecord>,
    request_log: Mutex<VecDeque<String>>,
}

struct Session {
    username: String,
    created: Instant,
}

/// Requests that reached `/login`, as returned by `GET /_demo/last-login`.
/// `count` includes every method. The other fields describe the last POST and are
/// null until the first one arrives.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoginRecord {
    pub count: u64,
    pub body_sha256: Option<String>,
    pub body_len: Option<usize>,
    pub raw_path: Option<String>,
}

impl AppState {
    /// Creates a session for `username` and returns its id: 32 random bytes as
    /// lowercase hex. Expired sessions are dropped at the same time.
    pub fn create_session(&self, username: &str) -> String {
        let id = random_token();
        let now = Instant::now();
        let mut sessions = lock(&self.inner.sessions);
        sessions.retain(|_, session| !session_expired(session.created, now));
        sessions.insert(
            id.clone(),
            Session {
                username: username.to_owned(),
                created: now,
            },
        );
        id
    }

    /// Returns the username of a live session, and removes the session if it has
    /// expired.
    pub fn session_user(&self, id: &str) -> Option<String> {
        let mut sessions = lock(&self.inner.sessions);
        let session = sessions.get(id)?;
        if session_expired(session.created, Instant::now()) {
            sessions.remove(id);
            return None;
        }
        Some(session.username.clone())
    }

    pub fn delete_session(&self, id: &str) {
        lock(&self.inner.sessions).remove(id);
    }

    pub fn count_login_request(&self) {
        lock(&self.inner.login_record).count += 1;
    }

    /// Stores the body digest, body length and raw path of a `POST /login`.
    pub fn record_login_post(&self, body_sha256: String, body_len: usize, raw_path: &str) {
        let mut record = lock(&self.inner.login_record);
        record.body_sha256 = Some(body_sha256);
        record.body_len = Some(body_len);
        record.raw_path = Some(raw_path.to_owned());
    }

    pub fn login_record(&self) -> LoginRecord {
        lock(&self.inner.login_record).clone()
    }

    /// Appends `entry` to the request log and drops the oldest entry beyond
    /// [`REQUEST_LOG_CAPACITY`].
    pub fn log_request(&self, entry: String) {
        let mut log = lock(&self.inner.request_log);
        if log.len() == REQUEST_LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(entry);
    }

    /// Returns the logged requests, oldest first.
    pub fn recent_requests(&self) -> Vec<String> {
        lock(&self.inner.request_log).iter().cloned().collect()
    }
}

/// Returns 32 bytes from the operating system's random source as lowercase hex.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    data_encoding::HEXLOWER.encode(&bytes)
}

fn session_expired(created: Instant, now: Instant) -> bool {
    now.saturating_duration_since(created) >= SESSION_LIFETIME
}

/// Locks `mutex` and ignores poisoning, because every update above leaves the data
/// consistent even if a handler panicked while holding the lock.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_lifecycle() {
        let state = AppState::default();
        let id = state.create_session("alice");
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(state.session_user(&id).as_deref(), Some("alice"));

        state.delete_session(&id);
        assert_eq!(state.session_user(&id), None);
    }

    #[test]
    fn session_expires_after_lifetime() {
        let created = Instant::now();
        assert!(!session_expired(created, created));
        assert!(!session_expired(
            created,
            created + SESSION_LIFETIME - Duration::from_secs(1)
        ));
        assert!(session_expired(created, created + SESSION_LIFETIME));
    }

    #[test]
    fn random_tokens_differ() {
        assert_ne!(random_token(), random_token());
    }

    #[test]
    fn request_log_keeps_last_entries() {
        let state = AppState::default();
        for i in 0..REQUEST_LOG_CAPACITY + 5 {
            state.log_request(format!("GET /{i}"));
        }
        let log = state.recent_requests();
        assert_eq!(log.len(), REQUEST_LOG_CAPACITY);
        assert_eq!(log.first().map(String::as_str), Some("GET /5"));
        assert_eq!(log.last().map(String::as_str), Some("GET /104"));
    }
}
