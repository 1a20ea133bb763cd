//! Vault addresses as users write them (`host:port`, `[v6]:port`, a bare host): shared by the
//! CLI, the vault's certificate names and the agent, which must agree on the host part.

/// `host:port`, `[v6]:port` or a bare host (IPv6 included) → the host.
pub fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_handles_ports_and_ipv6() {
        assert_eq!(host_of("vault.example:7443"), "vault.example");
        assert_eq!(host_of("10.0.0.1"), "10.0.0.1");
        assert_eq!(host_of("[::1]:7443"), "::1");
        assert_eq!(host_of("::1"), "::1");
    }
}
