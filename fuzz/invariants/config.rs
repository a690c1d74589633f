//! The configuration loader: any text either loads into a configuration that passes
//! its own validation, or fails with an error that names a key or the file, and the
//! same way every time.
//!
//! Shared by the fuzz target `config` and the corpus replay in mxgate-config's tests.

use mxgate_config::{Config, ConfigError};

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = Config::from_toml_str(text);
    match &first {
        Ok(config) => {
            assert!(config.validate().is_ok(), "loaded but invalid: {config:?}");
        }
        Err(ConfigError::Invalid { key, message }) => {
            assert!(!key.is_empty(), "an error without a key: {message}");
            assert!(!message.is_empty(), "an error without a message: {key}");
        }
        Err(ConfigError::File { message, .. }) => assert!(!message.is_empty()),
    }
    let second = Config::from_toml_str(text);
    assert_eq!(
        first.as_ref().ok(),
        second.as_ref().ok(),
        "loading is not deterministic"
    );
    assert_eq!(first.is_ok(), second.is_ok());
}
