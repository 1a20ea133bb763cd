//! `Debug` for messages that carry values: fields shown, values replaced by their length.

use crate::v1::{
    AssignedValue, CreateRequest, InspectResponse, JoinRequest, JoinTokenResponse, RotateKeyResponse, RotateRequest,
    UnlockRequest,
};
use std::fmt;

/// Stands in for a value in `Debug` output.
struct Redacted(usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[REDACTED; {} bytes]", self.0)
    }
}

impl fmt::Debug for CreateRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateRequest")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("data", &Redacted(self.data.len()))
            .finish()
    }
}

impl fmt::Debug for RotateRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotateRequest")
            .field("kind", &self.kind)
            .field("reference", &self.reference)
            .field("data", &Redacted(self.data.len()))
            .field("only_if_changed", &self.only_if_changed)
            .finish()
    }
}

impl fmt::Debug for InspectResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InspectResponse").field("meta", &self.meta).field("data", &Redacted(self.data.len())).finish()
    }
}

impl fmt::Debug for UnlockRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnlockRequest").field("unlock_key", &Redacted(self.unlock_key.len())).finish()
    }
}

impl fmt::Debug for RotateKeyResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotateKeyResponse").field("unlock_key", &Redacted(self.unlock_key.len())).finish()
    }
}

impl fmt::Debug for AssignedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssignedValue")
            .field("kind", &self.kind)
            .field("object_id", &self.object_id)
            .field("version", &self.version)
            .field("data", &Redacted(self.data.len()))
            .finish()
    }
}

impl fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinRequest")
            .field("token", &Redacted(self.token.len()))
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for JoinTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinTokenResponse").field("token", &Redacted(self.token.len())).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_values() {
        let request = CreateRequest {
            kind: 1,
            name: "db_password".into(),
            labels: Default::default(),
            data: b"hunter2-plaintext".to_vec(),
        };
        let shown = format!("{request:?}");
        assert!(shown.contains("db_password"));
        assert!(shown.contains("[REDACTED; 17 bytes]"));
        assert!(!shown.contains("hunter2"));

        let unlock = UnlockRequest { unlock_key: "HUSH-UNLOCK-abc".into() };
        assert!(!format!("{unlock:?}").contains("abc"));
    }
}
