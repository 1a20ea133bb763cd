//! `hush`: parses arguments and hands over to the library.

/// Every freed block is zeroed before it is reused or returned, so plaintext that passed
/// through a buffer (a decoded message, a grown vector) does not linger in freed memory.
#[global_allocator]
static ALLOC: zeroizing_alloc::ZeroAlloc<std::alloc::System> = zeroizing_alloc::ZeroAlloc(std::alloc::System);

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = hush_vault::cli::Cli::parse();
    // One crypto provider for rustls, chosen explicitly (two in the tree would panic).
    let _ = rustls::crypto::ring::default_provider().install_default();
    hush_vault::logging::init();
    let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
    match runtime.block_on(hush_vault::cli::run(cli)) {
        Ok(code) => code,
        // A reader that stopped reading (`hush secret ls | head -1`) is not an error: exit
        // quietly, as other command-line tools do.
        Err(e) if hush_vault::cli::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
