//! `Plaintext`: secret bytes held only in memory, zeroed on drop, never printed.

use std::fmt;

use zeroize::Zeroizing;

/// The plaintext content of one served file.
///
/// Shared as `Arc<Plaintext>`: rotation swaps the `Arc`, and the old bytes are zeroed when the
/// last reader that opened them closes its file.
///
/// # Security
/// Only the bytes in this buffer are zeroed. Build it from a `Vec` that was not grown after
/// the secret was written into it (growing reallocates and leaves a copy behind), and expect
/// copies outside our control: the FUSE reply buffer and the page the kernel copies to the reader.
pub struct Plaintext(Zeroizing<Vec<u8>>);

impl Plaintext {
    /// Takes ownership of `bytes`; they are zeroed when this value is dropped.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The secret bytes. Every use is a place where plaintext leaves this type: keep them few.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes (not secret: it is the file size every `stat` shows).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the content is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for Plaintext {
    fn from(bytes: Vec<u8>) -> Self {
        Self::new(bytes)
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plaintext([REDACTED; {} bytes])", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let p = Plaintext::new(b"hunter2".to_vec());
        assert_eq!(format!("{p:?}"), "Plaintext([REDACTED; 7 bytes])");
        assert_eq!(format!("{p:#?}"), "Plaintext([REDACTED; 7 bytes])");
        assert_eq!(p.expose_secret(), b"hunter2");
    }
}
