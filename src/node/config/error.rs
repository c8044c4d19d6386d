//! What a node config can get wrong: [`ConfigError`], and the checks of keys and tokens.

use std::path::PathBuf;

use crate::core::keys::PublicKey;
use crate::core::types::NodeId;
use crate::net::addr::AddressError;

/// The longest HTTP bearer token taken, in bytes.
pub const HTTP_TOKEN_BYTES_MAX: usize = 1024;

/// A configuration that does not make sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML does not parse.
    #[error("invalid node config: {0}")]
    Parse(String),
    /// Both or neither of what is required.
    #[error("invalid node config: {0}")]
    Invalid(&'static str),
    /// A key that is not 64 hex characters.
    #[error("invalid node config: {0}")]
    BadKey(#[from] crate::core::types::ParseIdError),
    /// 64 hex characters that are not an ed25519 public key (no node can hold its secret).
    #[error("invalid node config: `{field}`: {key} is not a valid node key (not an ed25519 public key)")]
    NotANodeKey {
        /// Which setting.
        field: &'static str,
        /// The key as given.
        key: String,
    },
    /// An HTTP bearer token that is empty, too long, or holds characters a header cannot
    /// carry (visible ASCII only).
    #[error("invalid node config: `{field}`: {problem}")]
    BadToken {
        /// Which setting (or file).
        field: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The token file could not be read.
    #[error("invalid node config: `http_token_file` {path}: {source}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An address that is not `HOST:PORT` (port 1..=65535; 0 too for `listen`).
    #[error("invalid node config: `{field}`: {source}")]
    BadAddress {
        /// Which setting.
        field: &'static str,
        /// What is wrong with it.
        #[source]
        source: AddressError,
    },
    /// A duration that is not a whole number and a unit (`ms`, `s`, `m`, `h`, `d`).
    #[error("invalid node config: `{field}`: {value:?} is not a duration such as 300ms, 30s, 5m, 1h or 1d")]
    BadDuration {
        /// Which setting.
        field: &'static str,
        /// The value as given.
        value: String,
    },
    /// A builder given an address and the private in-process network: nothing would listen
    /// at the address, and no peer could reach the node.
    #[error(
        "the node is given the address {addr} but a private in-process network, where nothing listens: \
         drop .private_network() to listen there on QUIC, or drop .addr()"
    )]
    PrivateWithAddress {
        /// The address given.
        addr: String,
    },
}

/// Checks an HTTP bearer token: 1 to [`HTTP_TOKEN_BYTES_MAX`] bytes of visible ASCII (what an
/// `Authorization` header carries as it is).
pub(super) fn check_http_token(field: &str, token: &str) -> Result<(), ConfigError> {
    let problem = if token.is_empty() {
        "the token is empty"
    } else if token.len() > HTTP_TOKEN_BYTES_MAX {
        "the token is longer than 1024 bytes"
    } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
        "the token holds characters other than visible ASCII (no spaces)"
    } else {
        return Ok(());
    };
    Err(ConfigError::BadToken { field: field.to_string(), problem })
}

/// Parses a node key: 64 hex characters that are an ed25519 public key.
pub fn parse_node_key(field: &'static str, key: &str) -> Result<NodeId, ConfigError> {
    let id = NodeId::from_hex(key)?;
    if PublicKey::from_node_id(&id).is_none() {
        return Err(ConfigError::NotANodeKey { field, key: key.to_string() });
    }
    Ok(id)
}
