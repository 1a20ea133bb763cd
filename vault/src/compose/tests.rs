//! Parser tests over the corpus in `tests/compose/`: each directory is one case, with its
//! compose files, an optional `args` (`-f FILE`... `-p NAME`; default `-f compose.yaml`), an
//! optional `env` (the process environment, `KEY=VALUE` lines; `HOME` is always set) and either
//! `expected.yaml` (the `hush compose config` output, with the case directory written `$CASE`)
//! or `expected-error` (the exact message, with the case directory removed from paths).
//! `HUSH_BLESS=1` writes missing or differing `expected.yaml` files.

use super::*;
use std::path::Path;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/compose").canonicalize().expect("corpus directory")
}

fn run_case(dir: &Path) -> Result<Loaded, ComposeError> {
    let args = std::fs::read_to_string(dir.join("args")).unwrap_or_else(|_| "-f compose.yaml".into());
    let mut tokens = args.split_whitespace();
    let mut options = LoadOptions { files: Vec::new(), project: None };
    while let Some(flag) = tokens.next() {
        let value = tokens.next().expect("flag value");
        match flag {
            "-f" => options.files.push(dir.join(value)),
            "-p" => options.project = Some(value.to_string()),
            other => panic!("unknown flag {other} in {}", dir.display()),
        }
    }
    if options.files.is_empty() {
        options.files.push(dir.join("compose.yaml"));
    }
    let mut env = vec![("HOME".to_string(), "/home/test".to_string())];
    let text = std::fs::read_to_string(dir.join("env")).unwrap_or_default();
    env.extend(text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())));
    load(&options, env)
}

fn cases(sub: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(corpus().join(sub))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n != "bad"))
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty());
    dirs
}

#[test]
fn compose_corpus_good_files_resolve_as_expected() {
    let bless = std::env::var_os("HUSH_BLESS").is_some();
    let mut failures = Vec::new();
    for dir in cases("") {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let loaded = match run_case(&dir) {
            Ok(loaded) => loaded,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let text = serde_saphyr::to_string(&loaded.project.to_json()).unwrap();
        let text = text.replace(&dir.display().to_string(), "$CASE");
        let expected_path = dir.join("expected.yaml");
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if text != expected {
            if bless {
                std::fs::write(&expected_path, &text).unwrap();
            } else {
                failures.push(format!("{name}: got\n{text}\nexpected\n{expected}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn compose_corpus_bad_files_fail_with_their_messages() {
    let mut failures = Vec::new();
    for dir in cases("bad") {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let expected = std::fs::read_to_string(dir.join("expected-error")).unwrap_or_default();
        match run_case(&dir) {
            Ok(_) => failures.push(format!("{name}: loaded, expected {expected:?}")),
            Err(e) => {
                let got = e.to_string().replace(&format!("{}/", dir.display()), "");
                if got != expected.trim_end() {
                    failures.push(format!("{name}:\n  got      {got}\n  expected {}", expected.trim_end()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn compose_values_are_read_but_never_shown() {
    let dir = corpus().join("interpolation");
    let loaded = run_case(&dir).unwrap();
    assert_eq!(loaded.values.get(crate::model::Kind::Secret, "db").unwrap().expose_secret(), b"from-file");
    assert_eq!(loaded.values.get(crate::model::Kind::Secret, "token").unwrap().expose_secret(), b"tok-123");
    let shown = serde_json::to_string(&loaded.project.to_json()).unwrap();
    assert!(!shown.contains("from-file") && !shown.contains("tok-123"), "{shown}");
    assert!(!format!("{loaded:?}").contains("tok-123"));
}

#[test]
fn compose_project_names_are_normalised_from_the_directory() {
    assert_eq!(resolve::normalize_project_name("My App.v2"), "myappv2");
    assert_eq!(resolve::normalize_project_name("__Web-1"), "web-1");
    assert_eq!(resolve::normalize_project_name("..."), "");
}

#[test]
fn compose_unset_variables_warn() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("compose.yaml");
    std::fs::write(&file, "services:\n  web:\n    image: x:${NOPE}\n").unwrap();
    let loaded = load(&LoadOptions { files: vec![file], project: Some("p".into()) }, []).unwrap();
    assert_eq!(loaded.warnings, ["the NOPE variable is not set, defaulting to a blank string"]);
}
