//! Compiles `proto/*.proto` with protox (pure Rust), so building needs no system `protoc`.

/// Messages that carry plaintext: no derived `Debug` (src/redact.rs gives a redacting one).
const VALUE_MESSAGES: &[&str] = &[
    "hush.v1.CreateRequest",
    "hush.v1.InspectResponse",
    "hush.v1.RotateRequest",
    "hush.v1.UnlockRequest",
    "hush.v1.RotateKeyResponse",
    "hush.v1.AssignedValue",
    "hush.v1.JoinRequest",
    "hush.v1.JoinTokenResponse",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/hush.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().skip_debug(VALUE_MESSAGES.iter().copied()).compile_fds(descriptors)?;
    Ok(())
}
