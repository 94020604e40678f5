//! A pool of logged-in PKCS#11 sessions, one in use per thread at a time.
//!
//! When the token invalidates sessions (`C_CloseAllSessions`, a device
//! error), a session handle still in the pool may be given to a new
//! session by the token. Using or closing such a stale handle would act
//! on another thread's session, so the pool counts generations: after a
//! failure every session of the older generation is forgotten, never
//! closed, and new sessions are opened only once no thread still holds an
//! old one.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, MutexGuard};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CryptokiError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use cryptoki_sys::CK_SESSION_HANDLE;

use crate::HsmError;

/// Retries of one operation after its session became unusable. Old
/// sessions are forgotten, not closed, so each failure leaks at most one
/// pool's worth of dead session objects in the PKCS#11 library.
const MAX_RETRIES: u32 = 1;

struct PooledSession {
    session: Session,
    generation: u64,
}

struct PoolState {
    idle: Vec<PooledSession>,
    /// Sessions of the current generation, idle or in use.
    live: usize,
    generation: u64,
    /// Sessions in use, counted by generation.
    checked_out: BTreeMap<u64, usize>,
    /// Handles of every session of the current generation.
    handles: Vec<CK_SESSION_HANDLE>,
}

impl PoolState {
    fn old_sessions_in_use(&self) -> bool {
        self.checked_out
            .iter()
            .any(|(generation, count)| *generation < self.generation && *count > 0)
    }

    fn check_out(&mut self, generation: u64) {
        *self.checked_out.entry(generation).or_default() += 1;
    }

    fn check_in(&mut self, generation: u64) {
        if let Some(count) = self.checked_out.get_mut(&generation) {
            *count -= 1;
            if *count == 0 {
                self.checked_out.remove(&generation);
            }
        }
    }
}

/// Sessions waiting to be used. A PKCS#11 session runs one operation at a
/// time, so each caller takes one out and puts it back afterwards.
pub(crate) struct SessionPool {
    context: Pkcs11,
    slot: Slot,
    label: String,
    pin: AuthPin,
    size: usize,
    /// Held while a session is opened and logged in. SoftHSM 2.6 can return
    /// CKR_USER_ALREADY_LOGGED_IN to a second concurrent C_Login before the
    /// first has unlocked the token's private objects.
    login: Mutex<()>,
    state: Mutex<PoolState>,
    changed: Condvar,
}

impl SessionPool {
    /// Opens `size` sessions and logs in as the user.
    pub(crate) fn open(
        context: Pkcs11,
        slot: Slot,
        label: String,
        pin: AuthPin,
        size: usize,
    ) -> Result<SessionPool, HsmError> {
        let pool = SessionPool {
            context,
            slot,
            label,
            pin,
            size,
            login: Mutex::new(()),
            state: Mutex::new(PoolState {
                idle: Vec::with_capacity(size),
                live: 0,
                generation: 0,
                checked_out: BTreeMap::new(),
                handles: Vec::new(),
            }),
            changed: Condvar::new(),
        };
        let mut sessions = Vec::with_capacity(size);
        for _ in 0..size {
            sessions.push(PooledSession {
                session: pool.open_session()?,
                generation: 0,
            });
        }
        let mut state = pool.lock();
        state.handles = sessions.iter().map(|pooled| pooled.session.handle()).collect();
        state.live = sessions.len();
        state.idle = sessions;
        drop(state);
        Ok(pool)
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().expect("session pool lock")
    }

    fn open_session(&self) -> Result<Session, HsmError> {
        let _login = self.login.lock().expect("login lock");
        let session = self
            .context
            .open_rw_session(self.slot)
            .map_err(HsmError::pkcs11("C_OpenSession"))?;
        // NOTE: PKCS#11 keeps the login state per process and token, so
        // once one session is logged in, C_Login returns
        // CKR_USER_ALREADY_LOGGED_IN without checking the PIN again.
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) => Ok(session),
            Err(CryptokiError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(CryptokiError::Pkcs11(RvError::PinIncorrect, _)) => Err(HsmError::WrongPin {
                label: self.label.clone(),
            }),
            Err(CryptokiError::Pkcs11(RvError::PinLocked, _)) => Err(HsmError::PinLocked {
                label: self.label.clone(),
            }),
            Err(e) => Err(HsmError::pkcs11("C_Login")(e)),
        }
    }

    /// Runs `operation` on an idle session. If the token invalidated the
    /// session (closed, device error, handle invalid), the session is
    /// replaced and `operation` runs again on the new one, so the caller
    /// never sees a stale handle. `on_retry` runs before each retry, to
    /// drop cached object handles.
    ///
    /// NOTE: SoftHSM 2.6 crashes when a session is closed while another
    /// thread runs an operation on it, so recovery is tested with sessions
    /// closed between operations.
    pub(crate) fn with_session<T>(
        &self,
        mut operation: impl FnMut(&Session) -> Result<T, HsmError>,
        on_retry: impl Fn(),
    ) -> Result<T, HsmError> {
        let mut pooled = self.take()?;
        let mut retries = 0;
        loop {
            match operation(&pooled.session) {
                Err(err) if err.is_stale_session() && retries < MAX_RETRIES => {
                    tracing::warn!(error = %err, token = %self.label, retry = retries + 1, "HSM session became unusable; replacing the pool's sessions and retrying");
                    retries += 1;
                    pooled = self.replace_after_failure(pooled)?;
                    on_retry();
                }
                result => {
                    self.give_back(pooled);
                    return result;
                }
            }
        }
    }

    /// Takes an idle session, opening one if the pool has shrunk after a
    /// failure, or waits until another thread returns one.
    fn take(&self) -> Result<PooledSession, HsmError> {
        let mut state = self.lock();
        loop {
            if let Some(pooled) = state.idle.pop() {
                state.check_out(pooled.generation);
                return Ok(pooled);
            }
            if state.live < self.size && !state.old_sessions_in_use() {
                let generation = state.generation;
                state.live += 1;
                state.check_out(generation);
                drop(state);
                return self.open_checked_out(generation);
            }
            state = self.changed.wait(state).expect("session pool lock");
        }
    }

    /// Opens a session for a slot already counted as live and checked out.
    fn open_checked_out(&self, generation: u64) -> Result<PooledSession, HsmError> {
        match self.open_session() {
            Ok(session) => {
                let mut state = self.lock();
                if state.generation == generation {
                    state.handles.push(session.handle());
                }
                Ok(PooledSession { session, generation })
            }
            Err(err) => {
                let mut state = self.lock();
                state.check_in(generation);
                if state.generation == generation {
                    state.live -= 1;
                }
                drop(state);
                self.changed.notify_all();
                Err(err)
            }
        }
    }

    /// Retires `failed` and every session of its generation, waits until no
    /// thread uses an old session, and opens a new one.
    fn replace_after_failure(&self, failed: PooledSession) -> Result<PooledSession, HsmError> {
        let mut state = self.lock();
        state.check_in(failed.generation);
        if failed.generation == state.generation {
            state.generation += 1;
            state.live = 0;
            state.handles.clear();
            for old in state.idle.drain(..) {
                std::mem::forget(old.session);
            }
        }
        // The handle may already belong to a new session: forget it.
        std::mem::forget(failed.session);
        self.changed.notify_all();
        while state.old_sessions_in_use() {
            state = self.changed.wait(state).expect("session pool lock");
        }
        let generation = state.generation;
        state.live += 1;
        state.check_out(generation);
        drop(state);
        self.open_checked_out(generation)
    }

    fn give_back(&self, pooled: PooledSession) {
        let mut state = self.lock();
        state.check_in(pooled.generation);
        if pooled.generation == state.generation {
            state.idle.push(pooled);
        } else {
            // An old session that finished before the failure was noticed.
            std::mem::forget(pooled.session);
        }
        drop(state);
        self.changed.notify_all();
    }

    /// Returns the handles of the pool's current sessions, idle or in use.
    pub(crate) fn handles(&self) -> Vec<CK_SESSION_HANDLE> {
        self.lock().handles.clone()
    }

    /// Returns the slot of the token.
    pub(crate) fn slot(&self) -> Slot {
        self.slot
    }

    /// Returns the PKCS#11 context the sessions belong to.
    pub(crate) fn context(&self) -> Pkcs11 {
        self.context.clone()
    }
}
