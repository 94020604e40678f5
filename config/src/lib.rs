//! Typed, validated settings for otpgate, loaded from a TOML file.
//!
//! Every section rejects unknown keys, so a typo never falls back to a
//! default. Secrets (the HSM PIN, the admin token) are never read from the
//! TOML text: the file names an environment variable or a file instead.
#![forbid(unsafe_code)]

mod cidr;
mod error;
mod model;
mod secret;
mod validate;

pub use cidr::CidrBlock;
pub use error::ConfigError;
pub use model::*;
pub use secret::{Secret, SecretSource};

use std::path::Path;

impl Settings {
    /// Reads, parses and validates the TOML file at `path`.
    ///
    /// Secrets are not read here: call [`HsmSettings::pin`] or
    /// [`AdminSettings::token`] when they are needed, so that
    /// `check-config` can run without them.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Settings::from_toml(&text).map_err(|err| match err {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text. Parse errors carry an empty path.
    pub fn from_toml(text: &str) -> Result<Settings, ConfigError> {
        let raw: model::RawSettings = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: Default::default(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        validate::settings(raw)
    }
}

#[cfg(test)]
mod tests;
