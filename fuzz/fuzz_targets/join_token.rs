//! The join token parser: any text either splits into a 64-hex fingerprint and a secret that
//! format back to the same token, or is refused; it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Some((fingerprint, secret)) = hush_proto::token::split(text) {
        assert_eq!(fingerprint.len(), 64);
        assert!(fingerprint.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(hush_proto::token::split(&hush_proto::token::format(fingerprint, secret)), Some((fingerprint, secret)));
    }
});
