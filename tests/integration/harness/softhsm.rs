//! SoftHSM tokens in temporary directories, selected through `SOFTHSM2_CONF`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use otpgate_config::{KeyMode, Secret};
use otpgate_hsm::{Vault, VaultOptions};

/// Path of the SoftHSM library that Debian's softhsm2 package installs.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// User PIN of every test token.
pub const USER_PIN: &str = "4711-test";
const SO_PIN: &str = "0815-so";

/// A SoftHSM configuration with its own token directory.
pub struct SoftHsm {
    dir: tempfile::TempDir,
}

impl SoftHsm {
    /// Creates a configuration and initialises one token per label in it.
    pub fn create(labels: &[&str]) -> SoftHsm {
        let dir = tempfile::Builder::new().prefix("otpgate-softhsm-").tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let hsm = SoftHsm { dir };
        for label in labels {
            hsm.init_token(label);
        }
        hsm
    }

    /// Runs `softhsm2-util --init-token` for a new token with `label`.
    pub fn init_token(&self, label: &str) {
        let output = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", self.conf())
            .args(["--init-token", "--free", "--label", label, "--so-pin", SO_PIN, "--pin", USER_PIN])
            .output()
            .expect("softhsm2-util is installed (Debian package softhsm2)");
        assert!(
            output.status.success(),
            "softhsm2-util --init-token failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Path of the configuration file, for `SOFTHSM2_CONF`.
    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    /// Returns the temporary directory with the configuration and tokens.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Labels of the tokens in the in-process SoftHSM configuration.
pub const LABEL_MAIN: &str = "otpgate-test";
/// A token only the session-kill test uses, because `C_CloseAllSessions`
/// closes every session of the process on a slot.
pub const LABEL_KILL: &str = "otpgate-kill";
/// A token no vault logs into, for the wrong-PIN test: once a process is
/// logged in to a token, PKCS#11 does not check the PIN again.
pub const LABEL_FRESH: &str = "otpgate-fresh";

/// Returns the SoftHSM configuration of this test process. SoftHSM reads
/// `SOFTHSM2_CONF` once, at `C_Initialize`, so every in-process vault uses
/// this one; gateway processes get configurations of their own.
pub fn in_process() -> &'static SoftHsm {
    static HSM: OnceLock<SoftHsm> = OnceLock::new();
    HSM.get_or_init(|| {
        let hsm = SoftHsm::create(&[LABEL_MAIN, LABEL_KILL, LABEL_FRESH]);
        std::env::set_var("SOFTHSM2_CONF", hsm.conf());
        hsm
    })
}

/// Opens a vault on a token of the in-process configuration and creates its keys.
pub fn open_vault(label: &str, mode: KeyMode, pool_size: usize) -> Vault {
    in_process();
    let options = VaultOptions {
        module: MODULE.into(),
        token_label: label.into(),
        key_mode: mode,
        pool_size,
    };
    let vault = Vault::open(&options, &Secret::new(USER_PIN.into())).expect("open test vault");
    vault.init_keys().expect("create vault keys");
    vault
}
