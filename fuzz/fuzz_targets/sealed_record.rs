//! What the vault reads back from its store and data dir: object records (JSON), sealed values
//! and sealed files. Altered bytes must be refused, never accepted and never a panic.
#![no_main]

use hush_vault::crypto::{self, Key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<hush_vault::model::ObjectRecord>(data);
    let key = Key::from_bytes(&[7u8; 32]).expect("32 bytes");
    // A random key never opens attacker bytes (forging a tag is the only way).
    assert!(crypto::open(&key, b"hush/v1/secret/x/1", data).is_err());
    // Bytes sealed under the key open only unchanged.
    let sealed = crypto::seal(&key, b"aad", data);
    assert_eq!(crypto::open(&key, b"aad", &sealed).expect("sealed here").expose_secret(), data);
});
