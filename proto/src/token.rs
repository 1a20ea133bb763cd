//! The join token's format, shared by the vault (which issues and checks it) and the agent
//! (which pins the vault's CA by it):
//!
//! - version 1: `HUSHTKN-1-<CA fingerprint: 64 hex>-<secret>`;
//! - version 2 (replicas on etcd): `HUSHTKN-2-<CA fingerprint>-<secret>-<HOST:PORT>[,<HOST:PORT>...]`,
//!   the replicas' advertised addresses, where an agent given no `--vault` connects.
//!
//! The addresses are hints, not trust: the agent still pins the CA by the fingerprint, so a
//! token whose list was altered can only send it to a server that fails the pin. Both versions
//! are read; a vault without replica addresses issues version 1.

pub const PREFIX: &str = "HUSHTKN-1-";
pub const PREFIX_V2: &str = "HUSHTKN-2-";
/// At most this many addresses in a token.
pub const MAX_VAULTS: usize = 16;
/// Longest address kept: with [`MAX_VAULTS`] a token stays under the 4 KiB an agent reads.
pub const MAX_ADDR: usize = 200;

/// A join token's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token<'a> {
    pub fingerprint: &'a str,
    pub secret: &'a str,
    /// Version 2: the vault replicas' addresses (`HOST:PORT`); empty for version 1.
    pub vaults: Vec<&'a str>,
}

fn well_formed(fingerprint: &str, secret: &str) -> bool {
    fingerprint.len() == 64 && fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) && secret.len() >= 20
}

/// Whether `addr` is a `HOST:PORT` a token may carry: a name, IPv4 or `[IPv6]`, and a port.
pub fn valid_addr(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else { return false };
    let host_ok = !host.is_empty()
        && (host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
            || (host.starts_with('[')
                && host.ends_with(']')
                && host.len() > 2
                && host[1..host.len() - 1].bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')));
    addr.len() <= MAX_ADDR && host_ok && port.parse::<u16>().is_ok_and(|p| p > 0)
}

/// Parses a join token of either version, or `None` if it is malformed.
pub fn parse(token: &str) -> Option<Token<'_>> {
    let token = token.trim();
    if let Some(rest) = token.strip_prefix(PREFIX) {
        let (fingerprint, secret) = rest.split_once('-')?;
        return well_formed(fingerprint, secret).then_some(Token { fingerprint, secret, vaults: Vec::new() });
    }
    let rest = token.strip_prefix(PREFIX_V2)?;
    let mut parts = rest.splitn(3, '-');
    let (fingerprint, secret, list) = (parts.next()?, parts.next()?, parts.next()?);
    let vaults: Vec<&str> = list.split(',').collect();
    let ok = well_formed(fingerprint, secret)
        && secret.bytes().all(|b| b.is_ascii_alphanumeric())
        && (1..=MAX_VAULTS).contains(&vaults.len())
        && vaults.iter().all(|v| valid_addr(v));
    ok.then_some(Token { fingerprint, secret, vaults })
}

/// Splits a join token into (CA fingerprint, secret), or `None` if it is malformed.
pub fn split(token: &str) -> Option<(&str, &str)> {
    parse(token).map(|t| (t.fingerprint, t.secret))
}

/// A version 1 token.
pub fn format(fingerprint: &str, secret: &str) -> String {
    format!("{PREFIX}{fingerprint}-{secret}")
}

/// A version 2 token carrying `vaults` (those [`valid_addr`] accepts, the first
/// [`MAX_VAULTS`]); version 1 when none is left.
pub fn format_with_vaults(fingerprint: &str, secret: &str, vaults: &[String]) -> String {
    let kept: Vec<&str> = vaults.iter().map(String::as_str).filter(|v| valid_addr(v)).take(MAX_VAULTS).collect();
    if kept.is_empty() {
        return format(fingerprint, secret);
    }
    format!("{PREFIX_V2}{fingerprint}-{secret}-{}", kept.join(","))
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

    #[test]
    fn version_2_carries_the_replicas() {
        let fp = "b".repeat(64);
        let vaults = ["a.example:7443".to_string(), "10.0.0.2:7443".into(), "[::1]:7443".into(), "bad host:1".into()];
        let token = format_with_vaults(&fp, "abcdefghijklmnopqrstuvwxy", &vaults);
        assert!(token.starts_with(PREFIX_V2), "{token}");
        let parsed = parse(&token).unwrap();
        assert_eq!(parsed.vaults, ["a.example:7443", "10.0.0.2:7443", "[::1]:7443"]);
        assert_eq!(split(&token), Some((fp.as_str(), "abcdefghijklmnopqrstuvwxy")));
        // No address left: version 1, which every agent reads.
        assert!(format_with_vaults(&fp, "abcdefghijklmnopqrstuvwxy", &[]).starts_with(PREFIX));
        for bad in ["x:0", "x", ":1", "[]:1", "a b:1", "x:70000"] {
            assert!(!valid_addr(bad), "{bad}");
            assert_eq!(parse(&format!("{PREFIX_V2}{fp}-abcdefghijklmnopqrstuvwxy-{bad}")), None, "{bad}");
        }
        let many = vec!["h:1"; MAX_VAULTS + 1].join(",");
        assert_eq!(parse(&format!("{PREFIX_V2}{fp}-abcdefghijklmnopqrstuvwxy-{many}")), None);
    }
}
