//! The one error type of this crate.

/// Why a configuration could not be loaded or is not acceptable.
///
/// Every variant names what to fix: the file, the key (dotted, as in the file) or the
/// environment variable.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {message}")]
    Io { path: String, message: String },
    /// The config file is not valid TOML or does not fit the schema (an unknown field, a
    /// value of the wrong type); `message` is toml's, with the line and the key.
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    /// A value breaks a rule, or a value from env or a flag cannot be parsed. `key` is the
    /// dotted key (`limits.max_key_bytes`); `message` states the rule and the value.
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    /// A `LEASEHOLD_*` variable that is neither a setting nor in [`crate::OTHER_ENV`];
    /// most likely a misspelt setting, which would otherwise be silently ignored.
    #[error("unknown environment variable {var}: it is not a leasehold setting (see `leasehold serve --help`)")]
    UnknownEnv { var: String },
}

pub(crate) fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}
