//! Cryptographic primitives, in one place: AEAD sealing, key derivation, randomness, digests.
//! Nothing else in the crate touches a cipher API.

use crate::secret::SecretBytes;
use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// Wrong key, or the sealed bytes or their associated data were altered.
    #[error("authentication failed")]
    Authentication,
    #[error("key derivation parameters out of bounds: {0}")]
    KdfParams(String),
}

/// A 256-bit symmetric key, zeroed on drop.
#[derive(Clone)]
pub struct Key(Zeroizing<[u8; KEY_LEN]>);

impl Key {
    /// A fresh key from the operating system's CSPRNG.
    pub fn random() -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(bytes.as_mut_slice());
        Self(bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let array: [u8; KEY_LEN] = bytes.try_into().ok()?;
        Some(Self(Zeroizing::new(array)))
    }

    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key([REDACTED])")
    }
}

/// Fills `out` from the OS CSPRNG.
pub fn fill_random(out: &mut [u8]) {
    getrandom::fill(out).expect("the OS random source is available on Linux");
}

/// sealed = nonce(24, random) ‖ XChaCha20-Poly1305(key, nonce, plaintext, aad) (RFC 8439 + XChaCha draft).
/// A random 192-bit nonce makes collisions negligible without nonce bookkeeping.
pub fn seal(key: &Key, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce);
    let cipher = XChaCha20Poly1305::new(key.expose_secret().into());
    let ciphertext = cipher
        .encrypt(&XNonce::from(nonce), Payload { msg: plaintext, aad })
        .expect("encryption cannot fail for inputs under 256 GiB");
    let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&ciphertext);
    sealed
}

/// Inverse of [`seal`]: fails unless key, aad and every sealed byte are exactly as sealed.
pub fn open(key: &Key, aad: &[u8], sealed: &[u8]) -> Result<SecretBytes, CryptoError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Authentication);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at NONCE_LEN");
    let cipher = XChaCha20Poly1305::new(key.expose_secret().into());
    cipher
        .decrypt(&XNonce::from(nonce), Payload { msg: ciphertext, aad })
        .map(SecretBytes::new)
        .map_err(|_| CryptoError::Authentication)
}

/// Argon2id cost parameters, as stored beside the salt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl KdfParams {
    /// 64 MiB, 3 passes: about 0.2 s here, far above OWASP's minimum (19 MiB, 2 passes).
    pub const DEFAULT: Self = Self { m_cost: 64 * 1024, t_cost: 3, p_cost: 1 };

    /// Parameters read from disk are bounded: too low would let a tampered file weaken the
    /// unlock key, too high would let it stall the vault.
    fn check(&self) -> Result<(), CryptoError> {
        let ok = (8 * 1024..=1024 * 1024).contains(&self.m_cost)
            && (1..=16).contains(&self.t_cost)
            && (1..=8).contains(&self.p_cost);
        if ok { Ok(()) } else { Err(CryptoError::KdfParams(format!("{self:?}"))) }
    }
}

/// key = Argon2id(password, salt, m, t, p) truncated to 32 bytes (RFC 9106).
pub fn derive_key(password: &[u8], salt: &[u8], params: &KdfParams) -> Result<Key, CryptoError> {
    params.check()?;
    let argon_params = Params::new(params.m_cost, params.t_cost, params.p_cost, Some(KEY_LEN))
        .map_err(|e| CryptoError::KdfParams(e.to_string()))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params);
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    argon.hash_password_into(password, salt, out.as_mut_slice()).map_err(|e| CryptoError::KdfParams(e.to_string()))?;
    Ok(Key(out))
}

/// key = HKDF-SHA256(salt = none, ikm = `key`, info = `purpose`, L = 32) (RFC 5869): one
/// independent key per purpose from the data key, so a key used for one job never serves another.
pub fn derive_subkey(key: &Key, purpose: &[u8]) -> Key {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(key.expose_secret());
    let info = [purpose];
    let okm = prk.expand(&info, ring::hkdf::HKDF_SHA256).expect("32 bytes is within HKDF-SHA256's output limit");
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    okm.fill(out.as_mut_slice()).expect("the output length is HKDF_SHA256's");
    Key(out)
}

/// tag = HMAC-SHA256(key, data) (RFC 2104), lowercase hex.
pub fn hmac_hex(key: &Key, data: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.expose_secret());
    hex::encode(ring::hmac::sign(&key, data).as_ref())
}

/// Whether `tag_hex` is HMAC-SHA256(key, data), compared in constant time.
pub fn hmac_verify(key: &Key, data: &[u8], tag_hex: &str) -> bool {
    let Ok(tag) = hex::decode(tag_hex) else { return false };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.expose_secret());
    ring::hmac::verify(&key, data, &tag).is_ok()
}

/// Lowercase hex SHA-256 (FIPS 180-4).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trips() {
        let key = Key::random();
        let sealed = seal(&key, b"aad", b"plaintext");
        assert_eq!(open(&key, b"aad", &sealed).unwrap().expose_secret(), b"plaintext");
    }

    #[test]
    fn open_refuses_other_aad_key_or_any_flipped_byte() {
        let key = Key::random();
        let sealed = seal(&key, b"secret/abc/1", b"value");
        assert_eq!(open(&key, b"secret/abc/2", &sealed), Err(CryptoError::Authentication));
        assert_eq!(open(&Key::random(), b"secret/abc/1", &sealed), Err(CryptoError::Authentication));
        for i in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[i] ^= 1;
            assert!(open(&key, b"secret/abc/1", &altered).is_err(), "byte {i}");
        }
        assert!(open(&key, b"secret/abc/1", &sealed[..10]).is_err());
    }

    #[test]
    fn sealing_twice_differs() {
        let key = Key::random();
        assert_ne!(seal(&key, b"", b"x"), seal(&key, b"", b"x"));
    }

    #[test]
    fn derive_key_is_deterministic_and_salted() {
        let params = KdfParams { m_cost: 8 * 1024, t_cost: 1, p_cost: 1 };
        let a = derive_key(b"pw", b"saltsaltsaltsalt", &params).unwrap();
        let b = derive_key(b"pw", b"saltsaltsaltsalt", &params).unwrap();
        let c = derive_key(b"pw", b"othersaltothersa", &params).unwrap();
        assert_eq!(a.expose_secret(), b.expose_secret());
        assert_ne!(a.expose_secret(), c.expose_secret());
    }

    #[test]
    fn subkeys_differ_by_purpose_and_hmac_verifies() {
        let key = Key::random();
        let a = derive_subkey(&key, b"a");
        assert_eq!(a.expose_secret(), derive_subkey(&key, b"a").expose_secret());
        assert_ne!(a.expose_secret(), derive_subkey(&key, b"b").expose_secret());
        assert_ne!(a.expose_secret(), key.expose_secret());
        let tag = hmac_hex(&a, b"line");
        assert_eq!(tag.len(), 64);
        assert!(hmac_verify(&a, b"line", &tag));
        assert!(!hmac_verify(&a, b"lime", &tag));
        assert!(!hmac_verify(&key, b"line", &tag));
        assert!(!hmac_verify(&a, b"line", "not hex"));
    }

    #[test]
    fn derive_key_refuses_weak_or_huge_params() {
        let weak = KdfParams { m_cost: 1024, t_cost: 1, p_cost: 1 };
        assert!(derive_key(b"pw", b"saltsaltsaltsalt", &weak).is_err());
        let huge = KdfParams { m_cost: 64 * 1024, t_cost: 1000, p_cost: 1 };
        assert!(derive_key(b"pw", b"saltsaltsaltsalt", &huge).is_err());
    }
}
