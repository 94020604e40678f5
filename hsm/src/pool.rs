//! A pool of logged-in PKCS#11 sessions, one in use per thread at a time.

use std::sync::{Condvar, Mutex};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CryptokiError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use crate::HsmError;

/// Sessions waiting to be used. A PKCS#11 session runs one operation at a
/// time, so each caller takes one out and puts it back afterwards.
pub(crate) struct SessionPool {
    context: Pkcs11,
    slot: Slot,
    label: String,
    pin: AuthPin,
    idle: Mutex<Vec<Session>>,
    returned: Condvar,
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
            idle: Mutex::new(Vec::with_capacity(size)),
            returned: Condvar::new(),
        };
        let mut sessions = Vec::with_capacity(size);
        for _ in 0..size {
            sessions.push(pool.open_session()?);
        }
        *pool.idle.lock().expect("session pool lock") = sessions;
        Ok(pool)
    }

    fn open_session(&self) -> Result<Session, HsmError> {
        let session = self
            .context
            .open_rw_session(self.slot)
            .map_err(HsmError::pkcs11("C_OpenSession"))?;
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
    /// replaced and `operation` runs once more on the new one, so the caller
    /// never sees a stale handle. `on_retry` runs before the retry, to drop
    /// cached object handles.
    pub(crate) fn with_session<T>(
        &self,
        mut operation: impl FnMut(&Session) -> Result<T, HsmError>,
        on_retry: impl FnOnce(),
    ) -> Result<T, HsmError> {
        let session = self.take();
        match operation(&session) {
            Ok(value) => {
                self.give_back(session);
                Ok(value)
            }
            Err(err) if err.is_stale_session() => {
                tracing::warn!(error = %err, "HSM session became unusable; opening a new one and retrying once");
                drop_quietly(session);
                on_retry();
                let fresh = self.open_session()?;
                let result = operation(&fresh);
                self.give_back(fresh);
                result
            }
            Err(err) => {
                self.give_back(session);
                Err(err)
            }
        }
    }

    /// Takes an idle session, waiting until another thread returns one.
    fn take(&self) -> Session {
        let mut idle = self.idle.lock().expect("session pool lock");
        loop {
            if let Some(session) = idle.pop() {
                return session;
            }
            idle = self.returned.wait(idle).expect("session pool lock");
        }
    }

    fn give_back(&self, session: Session) {
        self.idle.lock().expect("session pool lock").push(session);
        self.returned.notify_one();
    }

    /// Returns the slot of the token.
    pub(crate) fn slot(&self) -> Slot {
        self.slot
    }
}

/// Closes a dead session without reporting the error the token gives for it.
fn drop_quietly(session: Session) {
    if let Err(err) = session.close() {
        tracing::debug!(error = %err, "closing an unusable HSM session failed, as expected");
    }
}

impl SessionPool {
    /// Returns the PKCS#11 context the sessions belong to.
    pub(crate) fn context(&self) -> Result<Pkcs11, HsmError> {
        Ok(self.context.clone())
    }
}
