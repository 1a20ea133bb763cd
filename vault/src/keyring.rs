//! The key hierarchy on disk: a random data key that seals every value, wrapped by a
//! key-encryption key (KEK). The KEK comes from a 0600 key file by default or, with autolock,
//! from an unlock key through Argon2id; the unlock key itself is never stored.
//!
//! # Security
//! The keyring file holds only the wrapped data key and public KDF parameters. A rotation
//! writes the new KEK file first, then replaces the keyring atomically, then removes the old
//! KEK file: a crash at any point leaves a keyring whose KEK is on disk.

use crate::crypto::{self, CryptoError, KdfParams, Key};
use crate::fsutil::write_private_atomic;
use crate::layout::DataDir;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use zeroize::Zeroizing;

const FORMAT: u32 = 1;
const WRAP_AAD: &[u8] = b"hush/v1/data-key";
const UNLOCK_PREFIX: &str = "HUSHKEY-1-";
const SALT_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("data dir {0} is not initialised (run `hush vault init --data-dir {0}`)")]
    NotInitialised(String),
    #[error("wrong unlock key")]
    WrongUnlockKey,
    #[error("the key-encryption key does not open the data key (keyring or key file altered)")]
    WrongKeyFile,
    #[error("this vault is not autolocked: it has no unlock key")]
    NotAutolocked,
    #[error("this vault is autolocked: unlock it with `hush vault unlock`")]
    Autolocked,
    #[error("keyring: {0}")]
    Invalid(String),
    #[error("keyring I/O: {0}")]
    Io(#[from] io::Error),
}

/// How the KEK is obtained.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
enum KekSource {
    /// From `kek-<id>.key` in the data dir.
    File { id: String },
    /// From the unlock key: KEK = Argon2id(unlock key, salt, params).
    Autolock { salt: String, params: KdfParams },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyringFile {
    format: u32,
    kek: KekSource,
    /// base64url(seal(KEK, "hush/v1/data-key", data key))
    wrapped_data_key: String,
}

/// The unlock key of an autolocked vault, shown to the operator once.
pub struct UnlockKey(Zeroizing<String>);

impl UnlockKey {
    fn random() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        crypto::fill_random(bytes.as_mut_slice());
        Self(Zeroizing::new(format!("{UNLOCK_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes.as_slice()))))
    }

    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for UnlockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnlockKey([REDACTED])")
    }
}

/// The loaded keyring of a data dir.
#[derive(Debug, Clone)]
pub struct Keyring {
    dir: DataDir,
    file: KeyringFile,
}

impl Keyring {
    /// Makes a new data key and its wrapping. Returns the unlock key when `autolock`.
    pub fn create(dir: &DataDir, autolock: bool) -> Result<(Self, Key, Option<UnlockKey>), KeyringError> {
        let data_key = Key::random();
        let (keyring, unlock) = Self::create_for(dir, &data_key, autolock)?;
        Ok((keyring, data_key, unlock))
    }

    /// Wraps an existing data key (init seals the CA's keys under it before the keyring, which
    /// marks the dir initialised, is written). Returns the unlock key when `autolock`.
    pub fn create_for(
        dir: &DataDir,
        data_key: &Key,
        autolock: bool,
    ) -> Result<(Self, Option<UnlockKey>), KeyringError> {
        let mut keyring = Self {
            dir: dir.clone(),
            file: KeyringFile {
                format: FORMAT,
                kek: KekSource::File { id: String::new() },
                wrapped_data_key: String::new(),
            },
        };
        let unlock = keyring.wrap_with_new_kek(data_key, autolock)?;
        Ok((keyring, unlock))
    }

    pub fn load(dir: &DataDir) -> Result<Self, KeyringError> {
        let text = match fs::read_to_string(dir.keyring()) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(KeyringError::NotInitialised(dir.root().display().to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        let file: KeyringFile = serde_json::from_str(&text).map_err(|e| KeyringError::Invalid(e.to_string()))?;
        if file.format != FORMAT {
            return Err(KeyringError::Invalid(format!("unsupported format {}", file.format)));
        }
        Ok(Self { dir: dir.clone(), file })
    }

    pub fn is_autolock(&self) -> bool {
        matches!(self.file.kek, KekSource::Autolock { .. })
    }

    /// Unwraps the data key with the KEK file (vaults without autolock).
    pub fn open_with_key_file(&self) -> Result<Key, KeyringError> {
        let KekSource::File { id } = &self.file.kek else { return Err(KeyringError::Autolocked) };
        let bytes = Zeroizing::new(fs::read(self.dir.kek_file(id))?);
        let kek =
            Key::from_bytes(&bytes).ok_or_else(|| KeyringError::Invalid("key file has the wrong length".into()))?;
        self.unwrap(&kek).map_err(|_| KeyringError::WrongKeyFile)
    }

    /// Unwraps the data key with an operator-supplied unlock key (autolocked vaults).
    /// Slow on purpose (Argon2id): call it off the async runtime.
    pub fn open_with_unlock_key(&self, unlock_key: &str) -> Result<Key, KeyringError> {
        let KekSource::Autolock { salt, params } = &self.file.kek else { return Err(KeyringError::NotAutolocked) };
        let salt = hex::decode(salt).map_err(|e| KeyringError::Invalid(e.to_string()))?;
        let kek = crypto::derive_key(unlock_key.trim().as_bytes(), &salt, params).map_err(|e| match e {
            CryptoError::KdfParams(p) => KeyringError::Invalid(p),
            CryptoError::Authentication => KeyringError::WrongUnlockKey,
        })?;
        self.unwrap(&kek).map_err(|_| KeyringError::WrongUnlockKey)
    }

    /// Re-wraps `data_key` under a fresh KEK of the same kind; returns the new unlock key when
    /// autolocked. Values stay sealed under the same data key, so nothing else is rewritten.
    pub fn rotate(&mut self, data_key: &Key) -> Result<Option<UnlockKey>, KeyringError> {
        let autolock = self.is_autolock();
        self.wrap_with_new_kek(data_key, autolock)
    }

    fn unwrap(&self, kek: &Key) -> Result<Key, CryptoError> {
        let wrapped = URL_SAFE_NO_PAD.decode(&self.file.wrapped_data_key).map_err(|_| CryptoError::Authentication)?;
        let plain = crypto::open(kek, WRAP_AAD, &wrapped)?;
        Key::from_bytes(plain.expose_secret()).ok_or(CryptoError::Authentication)
    }

    fn wrap_with_new_kek(&mut self, data_key: &Key, autolock: bool) -> Result<Option<UnlockKey>, KeyringError> {
        let old = self.file.kek.clone();
        let (kek, source, unlock) = if autolock {
            let unlock = UnlockKey::random();
            let mut salt = [0u8; SALT_LEN];
            crypto::fill_random(&mut salt);
            let params = KdfParams::DEFAULT;
            let kek = crypto::derive_key(unlock.expose_secret().as_bytes(), &salt, &params)
                .expect("default KDF parameters are within bounds");
            (kek, KekSource::Autolock { salt: hex::encode(salt), params }, Some(unlock))
        } else {
            let kek = Key::random();
            let mut id = [0u8; 8];
            crypto::fill_random(&mut id);
            let id = hex::encode(id);
            write_private_atomic(&self.dir.kek_file(&id), kek.expose_secret())?;
            (kek, KekSource::File { id }, None)
        };
        let wrapped = crypto::seal(&kek, WRAP_AAD, data_key.expose_secret());
        self.file = KeyringFile { format: FORMAT, kek: source, wrapped_data_key: URL_SAFE_NO_PAD.encode(wrapped) };
        let json = serde_json::to_vec_pretty(&self.file).expect("keyring serialises");
        write_private_atomic(&self.dir.keyring(), &json)?;
        if let KekSource::File { id } = old
            && !id.is_empty()
        {
            // The keyring no longer refers to it; a leftover file would only be clutter.
            let _ = fs::remove_file(self.dir.kek_file(&id));
        }
        Ok(unlock)
    }
}

/// AAD of a file sealed under the data key: `hush/v1/file/PURPOSE`.
fn file_aad(purpose: &str) -> Vec<u8> {
    format!("hush/v1/file/{purpose}").into_bytes()
}

/// Writes `plaintext` sealed under the data key (0600, atomically). `purpose` is bound in as
/// associated data, so a sealed file renamed to another purpose does not open.
pub fn write_sealed(path: &std::path::Path, data_key: &Key, purpose: &str, plaintext: &[u8]) -> io::Result<()> {
    write_private_atomic(path, &crypto::seal(data_key, &file_aad(purpose), plaintext))
}

/// Reads a file written by [`write_sealed`]. `None`: it does not open with this key and
/// purpose (altered, moved, or another vault's).
pub fn read_sealed(
    path: &std::path::Path,
    data_key: &Key,
    purpose: &str,
) -> io::Result<Option<crate::secret::SecretBytes>> {
    let sealed = fs::read(path)?;
    Ok(crypto::open(data_key, &file_aad(purpose), &sealed).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> (tempfile::TempDir, DataDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        (tmp, dir)
    }

    #[test]
    fn key_file_round_trip_and_rotation() {
        let (_tmp, dir) = dir();
        let (mut keyring, data_key, unlock) = Keyring::create(&dir, false).unwrap();
        assert!(unlock.is_none());
        let loaded = Keyring::load(&dir).unwrap();
        assert_eq!(loaded.open_with_key_file().unwrap().expose_secret(), data_key.expose_secret());
        let kek_files = |d: &DataDir| {
            fs::read_dir(d.root())
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("kek-"))
                .count()
        };
        assert_eq!(kek_files(&dir), 1);
        keyring.rotate(&data_key).unwrap();
        assert_eq!(kek_files(&dir), 1);
        let reloaded = Keyring::load(&dir).unwrap();
        assert_eq!(reloaded.open_with_key_file().unwrap().expose_secret(), data_key.expose_secret());
    }

    #[test]
    fn autolock_needs_the_right_unlock_key() {
        let (_tmp, dir) = dir();
        let (mut keyring, data_key, unlock) = Keyring::create(&dir, true).unwrap();
        let unlock = unlock.unwrap();
        assert!(unlock.expose_secret().starts_with(UNLOCK_PREFIX));
        let loaded = Keyring::load(&dir).unwrap();
        assert!(matches!(loaded.open_with_key_file(), Err(KeyringError::Autolocked)));
        assert!(matches!(loaded.open_with_unlock_key("HUSHKEY-1-wrong"), Err(KeyringError::WrongUnlockKey)));
        let opened = loaded.open_with_unlock_key(&format!("{}\n", unlock.expose_secret())).unwrap();
        assert_eq!(opened.expose_secret(), data_key.expose_secret());

        let new_unlock = keyring.rotate(&data_key).unwrap().unwrap();
        let reloaded = Keyring::load(&dir).unwrap();
        assert!(reloaded.open_with_unlock_key(unlock.expose_secret()).is_err());
        assert!(reloaded.open_with_unlock_key(new_unlock.expose_secret()).is_ok());
        assert!(!fs::read_to_string(dir.keyring()).unwrap().contains(new_unlock.expose_secret()));
    }

    #[test]
    fn sealed_files_open_only_with_their_key_and_purpose() {
        let (_tmp, dir) = dir();
        let key = Key::random();
        let path = dir.root().join("f");
        write_sealed(&path, &key, "ca-key", b"PRIVATE").unwrap();
        assert!(!fs::read(&path).unwrap().windows(7).any(|w| w == b"PRIVATE"));
        assert_eq!(read_sealed(&path, &key, "ca-key").unwrap().unwrap().expose_secret(), b"PRIVATE");
        assert!(read_sealed(&path, &key, "server-key").unwrap().is_none());
        assert!(read_sealed(&path, &Key::random(), "ca-key").unwrap().is_none());
    }

    #[test]
    fn missing_keyring_says_not_initialised() {
        let (_tmp, dir) = dir();
        let err = Keyring::load(&dir).unwrap_err();
        assert!(err.to_string().contains("is not initialised"), "{err}");
    }
}
