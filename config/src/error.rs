//! The error type of configuration loading and validation.

use std::path::PathBuf;

/// A configuration that could not be read, parsed or validated.
///
/// Every variant names the key (in dotted TOML form), the offending value
/// where it is safe to show, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}; check the path given to --config")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The TOML text is malformed or has an unknown key or a value of the wrong type.
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },

    /// A key has a value outside what the gateway accepts.
    #[error("{key}: {problem}; {fix}")]
    Invalid {
        key: &'static str,
        problem: String,
        fix: String,
    },

    /// A secret was written into the TOML text instead of being passed by
    /// environment variable or file.
    #[error("{key}: secrets must not be written in the config file; {fix}")]
    LiteralSecret { key: &'static str, fix: &'static str },

    /// A secret source (environment variable or file) could not be read.
    #[error("{key}: {problem}; {fix}")]
    Secret {
        key: &'static str,
        problem: String,
        fix: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(key: &'static str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key,
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}
