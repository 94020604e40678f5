//! Secrets (HSM PIN, admin token) read from an environment variable or a file.

use std::fmt;
use std::path::PathBuf;

use zeroize::Zeroizing;

use crate::ConfigError;

/// A secret string that is wiped from memory on drop and never printed.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Self {
        Secret(Zeroizing::new(value))
    }

    /// Returns the secret text. Callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Source of a secret: the name of an environment variable or a file path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The secret is the value of this environment variable.
    Env(String),
    /// The secret is the content of this file, with one trailing newline removed.
    File(PathBuf),
}

impl SecretSource {
    /// Picks the source from the `*_env` and `*_file` keys; exactly one must be set.
    pub(crate) fn from_keys(
        key: &'static str,
        env: Option<String>,
        file: Option<PathBuf>,
        example_env: &'static str,
    ) -> Result<Self, ConfigError> {
        match (env, file) {
            (Some(_), Some(_)) => Err(ConfigError::invalid(
                key,
                "both the _env and the _file form are set",
                "keep only one of them",
            )),
            (Some(name), None) if name.trim().is_empty() => Err(ConfigError::invalid(
                key,
                "the environment variable name is empty",
                format!("name the variable that holds the secret, for example \"{example_env}\""),
            )),
            (Some(name), None) => Ok(SecretSource::Env(name)),
            (None, Some(path)) => Ok(SecretSource::File(path)),
            (None, None) => Err(ConfigError::invalid(
                key,
                "no secret source is set",
                format!("set {key}_env = \"{example_env}\" or {key}_file = \"/path/to/file\""),
            )),
        }
    }

    /// Reads the secret. An empty secret is an error.
    pub fn read(&self, key: &'static str) -> Result<Secret, ConfigError> {
        let value = match self {
            SecretSource::Env(name) => std::env::var(name).map_err(|_| ConfigError::Secret {
                key,
                problem: format!("environment variable {name} is not set or not valid UTF-8"),
                fix: format!("export {name} before starting otpgate"),
            })?,
            SecretSource::File(path) => {
                let mut text = std::fs::read_to_string(path).map_err(|e| ConfigError::Secret {
                    key,
                    problem: format!("cannot read {}: {e}", path.display()),
                    fix: "check the path and that the file is readable by the otpgate user".into(),
                })?;
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                text
            }
        };
        if value.is_empty() {
            return Err(ConfigError::Secret {
                key,
                problem: "the secret is empty".into(),
                fix: "put the secret into the variable or file".into(),
            });
        }
        Ok(Secret::new(value))
    }
}
