//! The `hush` binary's command tree, as users discover it through `--help`.
//! (Being an integration test, this also makes `cargo test --workspace` build the `hush`
//! binary that the end-to-end tests in `tests/` drive.)

use std::process::Command;

fn help(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_hush")).args(args).arg("--help").output().unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn help_lists_the_documented_commands() {
    let top = help(&[]);
    for command in ["vault", "secret", "config", "dev"] {
        assert!(top.contains(command), "hush --help lacks {command}");
    }
    for kind in ["secret", "config"] {
        let sub = help(&[kind]);
        for command in ["create", "ls", "inspect", "rm", "rotate"] {
            assert!(sub.contains(command), "hush {kind} --help lacks {command}");
        }
    }
    let vault = help(&["vault"]);
    for command in ["init", "serve", "unlock", "rotate-key"] {
        assert!(vault.contains(command), "hush vault --help lacks {command}");
    }
}
