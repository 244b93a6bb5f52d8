//! Secrets at rest: API keys and tokens are stored encrypted with AES-256-GCM, under a key from
//! `CLAUDEFLARE_SECRET_KEY` or, when that is unset, a key file created on first run beside the
//! configuration (mode 0600). A copy of the database without the key reveals no secret.

use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Marks an encrypted value (and the scheme, should it ever change).
const PREFIX: &str = "enc:v1:";
/// The key file's name, beside the configuration file.
pub const KEY_FILE: &str = "secret.key";

/// Why the secret key is not usable.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// `CLAUDEFLARE_SECRET_KEY` is not 32 bytes.
    #[error(
        "CLAUDEFLARE_SECRET_KEY must be 32 bytes in base64 or hex (make one with `openssl rand -base64 32`)"
    )]
    BadEnvKey,
    /// The key file is not a key.
    #[error(
        "{0} does not hold a 32-byte base64 key; restore it from a backup, or move it away to start over (then re-authenticate every account)"
    )]
    BadFile(PathBuf),
    /// The key file could not be read or written.
    #[error("cannot use the key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A stored value that the key cannot open: the key changed or was lost.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("cannot decrypt a stored secret: the secret key differs from the one it was stored with")]
pub struct Undecryptable;

/// Encrypts and decrypts stored secrets.
#[derive(Clone)]
pub struct Cipher(Aes256Gcm);

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher")
    }
}

fn decode_key(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?
    } else {
        STANDARD.decode(text).ok()?
    };
    bytes.try_into().ok()
}

impl Cipher {
    /// A cipher with this key.
    pub fn new(key: [u8; 32]) -> Self {
        Self(Aes256Gcm::new(&Key::<Aes256Gcm>::from(key)))
    }

    /// The key from `CLAUDEFLARE_SECRET_KEY`, else from the key file in `dir`, created (0600) if
    /// missing.
    pub fn load(dir: &Path) -> Result<Self, KeyError> {
        if let Ok(text) = std::env::var("CLAUDEFLARE_SECRET_KEY") {
            if !text.is_empty() {
                return decode_key(&text).map(Self::new).ok_or(KeyError::BadEnvKey);
            }
        }
        let path = dir.join(KEY_FILE);
        let io = |source| KeyError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => decode_key(&text)
                .map(Self::new)
                .ok_or_else(|| KeyError::BadFile(path.clone())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = Aes256Gcm::generate_key(OsRng).into();
                crate::fsutil::create_private_dir(dir).map_err(io)?;
                crate::fsutil::write_private(
                    &path,
                    format!("{}\n", STANDARD.encode(key)).as_bytes(),
                )
                .map_err(io)?;
                Ok(Self::new(key))
            }
            Err(error) => Err(io(error)),
        }
    }

    /// The stored form of `plain`: `enc:v1:` and base64 of nonce and ciphertext.
    pub fn encrypt(&self, plain: &str) -> String {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        // Encryption into a Vec fails only for plaintexts beyond AES-GCM's 64 GiB limit.
        let sealed = self.0.encrypt(&nonce, plain.as_bytes()).unwrap_or_default();
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        format!("{PREFIX}{}", STANDARD.encode(bytes))
    }

    /// The secret behind a stored value. Values stored before encryption existed are returned as
    /// they are (and re-encrypted by the next write).
    pub fn decrypt(&self, stored: &str) -> Result<String, Undecryptable> {
        let Some(encoded) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_owned());
        };
        let bytes = STANDARD.decode(encoded).map_err(|_| Undecryptable)?;
        if bytes.len() < 12 {
            return Err(Undecryptable);
        }
        let (nonce, sealed) = bytes.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| Undecryptable)?;
        let plain = self
            .0
            .decrypt(&Nonce::from(nonce), sealed)
            .map_err(|_| Undecryptable)?;
        String::from_utf8(plain).map_err(|_| Undecryptable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_key() {
        let cipher = Cipher::new([7; 32]);
        let stored = cipher.encrypt("sk-ant-oat01-secret");
        assert!(stored.starts_with(PREFIX) && !stored.contains("secret"));
        assert_ne!(
            stored,
            cipher.encrypt("sk-ant-oat01-secret"),
            "a fresh nonce each time"
        );
        assert_eq!(cipher.decrypt(&stored).unwrap(), "sk-ant-oat01-secret");
        assert!(Cipher::new([8; 32]).decrypt(&stored).is_err());
        assert_eq!(cipher.decrypt("legacy-plain").unwrap(), "legacy-plain");
        assert!(cipher.decrypt("enc:v1:!!!").is_err());
    }

    #[test]
    fn keys_decode_from_hex_or_base64() {
        assert_eq!(decode_key(&"ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(decode_key(&STANDARD.encode([3u8; 32])), Some([3; 32]));
        assert_eq!(decode_key("short"), None);
        assert_eq!(decode_key(&STANDARD.encode([3u8; 16])), None);
    }

    #[test]
    fn the_key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = Cipher::load(dir.path()).unwrap();
        let stored = first.encrypt("x");
        let second = Cipher::load(dir.path()).unwrap();
        assert_eq!(second.decrypt(&stored).unwrap(), "x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
