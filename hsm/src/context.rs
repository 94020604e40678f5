//! The one `Pkcs11` context per PKCS#11 library and process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CryptokiError, RvError};

use crate::HsmError;

static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();

/// Returns the process-wide context of `module`, loading and initialising
/// it on first use. `OS_LOCKING_OK` is required: without it SoftHSM turns
/// its own locks off and concurrent sessions corrupt its state.
pub(crate) fn shared(module: &Path) -> Result<Pkcs11, HsmError> {
    let mut contexts = CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .expect("PKCS#11 context lock");
    if let Some(context) = contexts.get(module) {
        return Ok(context.clone());
    }
    let module_error = |source| HsmError::Module {
        module: module.display().to_string(),
        source,
    };
    let context = Pkcs11::new(module).map_err(module_error)?;
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CryptokiError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(err) => return Err(module_error(err)),
    }
    contexts.insert(module.to_path_buf(), context.clone());
    Ok(context)
}
