//! Compose's variable interpolation in string values: `$VAR`, `${VAR}`, `${VAR:-default}`,
//! `${VAR-default}`, `${VAR:?message}`, `${VAR?message}`, `${VAR:+replacement}`,
//! `${VAR+replacement}`, and `$$` for a literal `$`. Defaults and replacements may themselves
//! contain interpolations. An unset variable without a default becomes the empty string with a
//! warning, as compose does. Keys are never interpolated, and `x-` subtrees are skipped (they
//! are ignored anyway; anchors defined there were already copied where they are used).

use super::{ComposeError, Environment};
use serde_json::Value;
use std::path::Path;

/// Why a string could not be interpolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterpolationError {
    /// `${` without a valid closing form.
    Syntax(String),
    /// `${VAR:?message}` / `${VAR?message}` with VAR unset (or empty, for `:?`).
    Required { name: String, message: String },
}

impl std::fmt::Display for InterpolationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Syntax(text) => {
                write!(f, "invalid interpolation format in {text:?}: you may need to escape any $ with another $")
            }
            Self::Required { name, message } if message.is_empty() => {
                write!(f, "required variable {name} is missing a value")
            }
            Self::Required { name, message } => write!(f, "required variable {name} is missing a value: {message}"),
        }
    }
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Interpolates one string. Unset variables used without a default are pushed to `unset`.
pub fn interpolate(text: &str, env: &Environment, unset: &mut Vec<String>) -> Result<String, InterpolationError> {
    let syntax = || InterpolationError::Syntax(text.to_string());
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = matching_brace(body).ok_or_else(syntax)?;
            out.push_str(&braced(&body[..end], env, unset).map_err(|e| match e {
                InterpolationError::Syntax(_) => syntax(),
                other => other,
            })?);
            rest = &body[end + 1..];
        } else if after.starts_with(is_name_start) {
            let len = after.find(|c| !is_name_char(c)).unwrap_or(after.len());
            out.push_str(lookup(&after[..len], env, unset));
            rest = &after[len..];
        } else {
            // A lone `$` (e.g. `cost: 5$`) stays as it is, as compose leaves it.
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn lookup<'a>(name: &str, env: &'a Environment, unset: &mut Vec<String>) -> &'a str {
    env.get(name).unwrap_or_else(|| {
        unset.push(name.to_string());
        ""
    })
}

/// The index of the `}` closing a `${` whose body starts `body`, nested `${...}` skipped.
fn matching_brace(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// The inside of `${...}`.
fn braced(body: &str, env: &Environment, unset: &mut Vec<String>) -> Result<String, InterpolationError> {
    let name_len = body.find(|c| !is_name_char(c)).unwrap_or(body.len());
    let (name, op) = body.split_at(name_len);
    if name.is_empty() || !name.starts_with(is_name_start) {
        return Err(InterpolationError::Syntax(body.to_string()));
    }
    let value = env.get(name);
    let set_nonempty = value.is_some_and(|v| !v.is_empty());
    let (operator, argument) = match op {
        "" => return Ok(lookup(name, env, unset).to_string()),
        _ if op.starts_with(":-") || op.starts_with(":?") || op.starts_with(":+") => op.split_at(2),
        _ if op.starts_with('-') || op.starts_with('?') || op.starts_with('+') => op.split_at(1),
        _ => return Err(InterpolationError::Syntax(body.to_string())),
    };
    let mut nested = || interpolate(argument, env, unset);
    Ok(match operator {
        ":-" if set_nonempty => value.unwrap_or_default().to_string(),
        "-" if value.is_some() => value.unwrap_or_default().to_string(),
        ":-" | "-" => nested()?,
        ":+" if set_nonempty => nested()?,
        "+" if value.is_some() => nested()?,
        ":+" | "+" => String::new(),
        ":?" if set_nonempty => value.unwrap_or_default().to_string(),
        "?" if value.is_some() => value.unwrap_or_default().to_string(),
        _ => return Err(InterpolationError::Required { name: name.to_string(), message: nested()? }),
    })
}

/// Interpolates every string value of a parsed file in place. `path` is the YAML path of `value`.
pub fn interpolate_tree(
    value: &mut Value,
    env: &Environment,
    file: &Path,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<(), ComposeError> {
    match value {
        Value::String(text) => {
            let mut unset = Vec::new();
            *text = interpolate(text, env, &mut unset).map_err(|e| ComposeError::at(file, path, e.to_string()))?;
            warnings.extend(
                unset.into_iter().map(|name| format!("the {name} variable is not set, defaulting to a blank string")),
            );
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_tree(item, env, file, &format!("{path}[{i}]"), warnings)?;
            }
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut().filter(|(k, _)| !k.starts_with("x-")) {
                interpolate_tree(item, env, file, &super::parse::join(path, key), warnings)?;
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Result<String, InterpolationError> {
        let env = Environment::from_pairs([("A", "alpha"), ("EMPTY", ""), ("N", "7")]);
        interpolate(text, &env, &mut Vec::new())
    }

    #[test]
    fn forms() {
        assert_eq!(run("$A ${A} x${N}y").unwrap(), "alpha alpha x7y");
        assert_eq!(run("${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d}").unwrap(), "d d  d");
        assert_eq!(run("${A:+r} ${EMPTY:+r} ${EMPTY+r} ${UNSET+r}").unwrap(), "r  r ");
        assert_eq!(run("${UNSET:-${A}-${N:-0}}").unwrap(), "alpha-7");
        assert_eq!(run("$$A $${A} 5$ $").unwrap(), "$A ${A} 5$ $");
        assert_eq!(run("${A:?must} ${EMPTY?ok}").unwrap(), "alpha ");
    }

    #[test]
    fn required_and_syntax_errors() {
        assert_eq!(
            run("${UNSET:?set it}").unwrap_err().to_string(),
            "required variable UNSET is missing a value: set it"
        );
        assert_eq!(run("${EMPTY:?}").unwrap_err().to_string(), "required variable EMPTY is missing a value");
        assert!(run("${EMPTY?x}").is_ok());
        assert!(matches!(run("${A"), Err(InterpolationError::Syntax(_))));
        assert!(matches!(run("${}"), Err(InterpolationError::Syntax(_))));
        assert!(matches!(run("${A B}"), Err(InterpolationError::Syntax(_))));
        assert!(matches!(run("${1A}"), Err(InterpolationError::Syntax(_))));
    }

    #[test]
    fn unset_without_default_warns() {
        let mut unset = Vec::new();
        assert_eq!(interpolate("[$NOPE]", &Environment::default(), &mut unset).unwrap(), "[]");
        assert_eq!(unset, ["NOPE"]);
    }
}
