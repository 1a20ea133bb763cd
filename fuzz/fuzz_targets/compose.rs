//! The compose parser on arbitrary text (YAML, interpolation, the model): an error or a model,
//! never a panic or a hang.
#![no_main]

use hush_vault::compose::env::Environment;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|text: &str| {
    let dir = Path::new("/nonexistent-hush-fuzz");
    let env = Environment::load([("PORT".to_string(), "8080".to_string())], dir).expect("no .env to read");
    let _ = hush_vault::compose::parse::parse_str(&dir.join("compose.yaml"), text, &env);
});
