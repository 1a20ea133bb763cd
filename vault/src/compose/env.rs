//! The variables compose files are interpolated from: the process environment, then a `.env`
//! file beside the first compose file (the environment wins, as compose does).
//!
//! `.env` syntax (compose's, minus its own interpolation): `KEY=VALUE` lines, optional `export `
//! prefix, `#` comments and blank lines; `'single'` quotes are literal, `"double"` quotes read
//! `\n`, `\t`, `\"`, `\\`; an unquoted value is trimmed and ends at ` #`.

use super::ComposeError;
use std::collections::BTreeMap;
use std::path::Path;

/// Variables by name.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    vars: BTreeMap<String, String>,
}

impl Environment {
    /// `process` first; `.env` in `dir` (if present) fills only what `process` lacks.
    pub fn load(process: impl IntoIterator<Item = (String, String)>, dir: &Path) -> Result<Self, ComposeError> {
        let mut vars: BTreeMap<String, String> = process.into_iter().collect();
        let path = dir.join(".env");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for (key, value) in parse_dotenv(&path, &text)? {
                    vars.entry(key).or_insert(value);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ComposeError::in_file(&path, format!("cannot read: {e}"))),
        }
        Ok(Self { vars })
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self { vars: pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }
}

/// Parses a `.env` file into pairs, in order.
pub fn parse_dotenv(path: &Path, text: &str) -> Result<Vec<(String, String)>, ComposeError> {
    let mut pairs = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
        let bad = |why: &str| ComposeError::in_file(path, format!("line {}: {why}", number + 1));
        let (key, raw) = line.split_once('=').ok_or_else(|| bad("expected KEY=VALUE"))?;
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
            return Err(bad(&format!("invalid variable name {key:?}")));
        }
        let raw = raw.trim();
        let value = if let Some(rest) = raw.strip_prefix('\'') {
            rest.split_once('\'').ok_or_else(|| bad("unterminated single quote"))?.0.to_string()
        } else if let Some(rest) = raw.strip_prefix('"') {
            unescape_double(rest).ok_or_else(|| bad("unterminated double quote"))?
        } else {
            raw.split_once(" #").map_or(raw, |(v, _)| v).trim_end().to_string()
        };
        pairs.push((key.to_string(), value));
    }
    Ok(pairs)
}

/// The body of a double-quoted value up to its closing quote, escapes applied.
fn unescape_double(rest: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_syntax() {
        let text = "# comment\n\nA=1\nexport B = two words  # note\nC='lit $X #x'\nD=\"a\\nb \\\"q\\\"\"\nE=\n";
        let pairs = parse_dotenv(Path::new(".env"), text).unwrap();
        let expected = [("A", "1"), ("B", "two words"), ("C", "lit $X #x"), ("D", "a\nb \"q\""), ("E", "")];
        assert_eq!(pairs, expected.map(|(k, v)| (k.to_string(), v.to_string())));
        let err = parse_dotenv(Path::new(".env"), "A=1\nnonsense\n").unwrap_err();
        assert_eq!(err.to_string(), ".env: line 2: expected KEY=VALUE");
    }

    #[test]
    fn environment_wins_over_dotenv() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".env"), "A=from-file\nB=from-file\n").unwrap();
        let env = Environment::load([("A".to_string(), "from-env".to_string())], dir.path()).unwrap();
        assert_eq!(env.get("A"), Some("from-env"));
        assert_eq!(env.get("B"), Some("from-file"));
        assert_eq!(env.get("C"), None);
    }
}
