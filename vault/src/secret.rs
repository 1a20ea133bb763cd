//! `SecretBytes`: plaintext of a secret or config, zeroed on drop and never printed.

use std::fmt;
use std::io::Read;
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

    /// Moves the bytes out (leaving this empty), for a message that must own them: no copy.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut *self.0)
    }
}

impl SecretBytes {
    /// Reads at most `limit` bytes straight into a zeroizing buffer: a caller that sets the
    /// limit one past what it accepts can refuse a huge input without holding all of it.
    pub fn read_at_most(reader: impl Read, limit: u64) -> std::io::Result<Self> {
        let mut buffer = Zeroizing::new(Vec::new());
        reader.take(limit).read_to_end(&mut buffer)?;
        Ok(Self::new(std::mem::take(&mut *buffer)))
    }
}

/// Opens a file to read a value from; a directory is refused ("it is a directory").
pub fn open_value_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::File::open(path)?;
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(std::io::Error::new(std::io::ErrorKind::IsADirectory, "it is a directory"));
    }
    Ok(file)
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
