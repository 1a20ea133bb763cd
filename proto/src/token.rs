//! The join token's format, shared by the vault (which issues and checks it) and the agent
//! (which pins the vault's CA by it): `HUSHTKN-1-<CA fingerprint: 64 hex>-<secret>`.

pub const PREFIX: &str = "HUSHTKN-1-";

/// Splits a join token into (CA fingerprint, secret), or `None` if it is malformed.
pub fn split(token: &str) -> Option<(&str, &str)> {
    let rest = token.trim().strip_prefix(PREFIX)?;
    let (fingerprint, secret) = rest.split_once('-')?;
    let well_formed =
        fingerprint.len() == 64 && fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) && secret.len() >= 20;
    well_formed.then_some((fingerprint, secret))
}

pub fn format(fingerprint: &str, secret: &str) -> String {
    format!("{PREFIX}{fingerprint}-{secret}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let fp = "a".repeat(64);
        let token = format(&fp, "abcdefghijklmnopqrstuvwxy");
        assert_eq!(split(&token), Some((fp.as_str(), "abcdefghijklmnopqrstuvwxy")));
        assert_eq!(split("HUSHTKN-1-short-abc"), None);
        assert_eq!(split("garbage"), None);
    }
}
