//! `SecretBytes`: plaintext of a secret or config, zeroed on drop and never printed.

use std::fmt;
use zeroize::Zeroizing;

/// Plaintext bytes. The only way to the bytes is [`SecretBytes::expose_secret`], so every place
/// that handles a value is visible in a search; `Debug` shows the length only.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self::new(bytes)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([REDACTED; {} bytes])", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_length_not_value() {
        let value = SecretBytes::new(b"correct horse".to_vec());
        assert_eq!(format!("{value:?}"), "SecretBytes([REDACTED; 13 bytes])");
    }
}
