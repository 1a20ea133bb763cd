//! The service SPEC strings (`--secret`/`--config`: NAME or source=,target=,uid=,gid=,mode=) and
//! modes: an error or a reference whose target is valid, never a panic.
#![no_main]

use hush_vault::model::Kind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    for kind in [Kind::Secret, Kind::Config] {
        if let Ok(reference) = hush_vault::spec::parse_reference(kind, text) {
            assert!(hush_vault::spec::validate_target(&reference.target).is_ok(), "{reference:?}");
            assert!(reference.mode <= 0o7777);
        }
    }
    let _ = hush_vault::spec::parse_mode(text);
});
