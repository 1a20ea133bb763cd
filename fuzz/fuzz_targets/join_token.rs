//! The join token parser: any text either parses into a 64-hex fingerprint, a secret and (for
//! version 2) at most 16 valid replica addresses that format back to the same token, or is
//! refused; it never panics.
#![no_main]

use hush_proto::token;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Some(parsed) = token::parse(text) {
        assert_eq!(parsed.fingerprint.len(), 64);
        assert!(parsed.fingerprint.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(parsed.vaults.len() <= token::MAX_VAULTS);
        assert!(parsed.vaults.iter().all(|v| token::valid_addr(v)));
        let vaults: Vec<String> = parsed.vaults.iter().map(|v| v.to_string()).collect();
        let again = if vaults.is_empty() {
            token::format(parsed.fingerprint, parsed.secret)
        } else {
            token::format_with_vaults(parsed.fingerprint, parsed.secret, &vaults)
        };
        assert_eq!(token::parse(&again), Some(parsed));
    }
});
