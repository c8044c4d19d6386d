//! Node keys at rest: generated from the operating system's randomness, kept in PKCS#8 PEM key
//! files, mode 0600, written atomically.
//!
//! A key file readable by group or others is refused on load (as ssh does): a node key is
//! the node's identity in the network.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;

use crate::core::keys::NodeKey;

/// The operating system's random number generator failed.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RandomnessError(String);

/// Key generation reads the operating system's randomness, so it lives here, above the core
/// (which reads none), next to the key files.
impl NodeKey {
    /// A fresh key from the operating system's random number generator.
    pub fn generate() -> Result<Self, RandomnessError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| RandomnessError(e.to_string()))?;
        Ok(Self::from_seed(seed))
    }
}

/// The file name of the node key inside a data directory.
pub const KEY_FILE_NAME: &str = "node.key";

/// Errors reading or writing a key file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// Filesystem error.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Not a PKCS#8 PEM ed25519 key.
    #[error("key file {path} is not a PKCS#8 PEM ed25519 private key: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// Group- or world-accessible.
    #[error("key file {path} has mode {mode:o}; it must not be accessible by group or others (chmod 600)")]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// No randomness for a new key.
    #[error(transparent)]
    Randomness(#[from] RandomnessError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io { path: path.to_path_buf(), source }
}

/// Writes `key` to `path` with mode 0600 (temp file, fsync, rename, fsync dir).
#[tracing::instrument(skip(key), fields(node = %key.node_id().short()))]
pub fn save(path: &Path, key: &NodeKey) -> Result<(), KeyFileError> {
    let pem = key
        .signing_key()
        .to_pkcs8_pem(Default::default())
        .map_err(|e| KeyFileError::Malformed { path: path.to_path_buf(), reason: e.to_string() })?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension("key.tmp");
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io(&tmp))?;
        f.write_all(pem.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io(path))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads a key file, refusing one that group or others can access.
#[tracing::instrument]
pub fn load(path: &Path) -> Result<NodeKey, KeyFileError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).map_err(io(path))?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::TooOpen { path: path.to_path_buf(), mode });
        }
    }
    let text = fs::read_to_string(path).map_err(io(path))?;
    let sk = SigningKey::from_pkcs8_pem(&text)
        .map_err(|e| KeyFileError::Malformed { path: path.to_path_buf(), reason: e.to_string() })?;
    Ok(NodeKey::from_seed(sk.to_bytes()))
}

/// Loads the key at `path`, or generates and saves a new one if the file does not exist.
pub fn load_or_generate(path: &Path) -> Result<NodeKey, KeyFileError> {
    if path.exists() {
        return load(path);
    }
    let key = NodeKey::generate()?;
    save(path, &key)?;
    tracing::info!(node = %key.node_id(), path = %path.display(), "generated a new node key");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(KEY_FILE_NAME);
        let key = load_or_generate(&path).expect("generate");
        let again = load(&path).expect("load");
        assert_eq!(key.node_id(), again.node_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
            assert!(matches!(load(&path), Err(KeyFileError::TooOpen { .. })));
        }
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(KEY_FILE_NAME);
        save(&path, &NodeKey::from_seed([1; 32])).expect("save");
        fs::write(&path, "not a key").expect("write");
        assert!(matches!(load(&path), Err(KeyFileError::Malformed { .. })));
    }
}
