//! Runs every `console` block of docs/SEMANTICS.md against a fresh vault and agent, so the
//! document users read is the behaviour they get.

use hush_tests::{DEADLINE, TestAgent, TestVault, bin};
use std::process::Command;
use std::time::{Duration, Instant};

struct Step {
    command: String,
    expected: Vec<String>,
    line: usize,
}

/// `$ command` lines with the output lines under them, from every console block.
fn steps(doc: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut in_console = false;
    for (index, line) in doc.lines().enumerate() {
        if line.starts_with("```") {
            in_console = line == "```console";
            continue;
        }
        if !in_console {
            continue;
        }
        match line.strip_prefix("$ ") {
            Some(command) => steps.push(Step { command: command.to_string(), expected: Vec::new(), line: index + 1 }),
            None => steps.last_mut().expect("output follows a command").expected.push(line.to_string()),
        }
    }
    steps
}

#[test]
fn semantics_doc_holds() {
    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/SEMANTICS.md");
    let doc = std::fs::read_to_string(doc_path).expect("docs/SEMANTICS.md");
    let steps = steps(&doc);
    assert!(steps.len() > 20, "the document lost its examples");
    let vault = TestVault::start_new();
    let agent = TestAgent::join(&vault);
    let path = format!("{}:{}", bin("hush").parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    for step in steps {
        let deadline = Instant::now() + if step.command.starts_with("hush audit") { DEADLINE } else { Duration::ZERO };
        loop {
            let output = Command::new("sh")
                .args(["-c", &step.command])
                .env("PATH", &path)
                .env("HUSH_VAULT", &vault.addr)
                .env("HUSH_TLS_DIR", vault.admin_dir())
                .env("HUSH_AGENT_SOCKET", agent.socket())
                .output()
                .expect("sh runs");
            let printed =
                String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
            let lines: Vec<&str> = printed.lines().collect();
            let is_error = lines.first().is_some_and(|l| l.starts_with("error: "));
            let matches = lines == step.expected && output.status.success() != is_error;
            if matches {
                break;
            }
            if Instant::now() >= deadline {
                panic!(
                    "docs/SEMANTICS.md line {}: `{}`\nexpected ({}):\n{}\ngot ({}):\n{}",
                    step.line,
                    step.command,
                    if is_error { "failure" } else { "success" },
                    step.expected.join("\n"),
                    output.status,
                    printed
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
