//! Docker's `--format` for `ls` and `inspect`: `table` (the default table), `json`, or a Go
//! template (`'{{.Name}}'`, `'{{json .}}'`, `'table {{.ID}}\t{{.Name}}'`) run by the `gotmpl`
//! crate (a port of Go's text/template) with the functions Docker's CLI adds: `json`, `split`,
//! `join`, `title`, `lower`, `upper`, `pad`, `truncate`.
//!
//! As Docker: a template prints one line per item; a `table ` template gets a header row (each
//! field's column title) and columns aligned as Docker's tabwriter aligns them; `\t` and `\n`
//! written literally in the format become a tab and a newline; a field the data does not have is
//! an error.

use gotmpl::{MissingKey, Value, ValueFunc};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("invalid format template: {0}")]
    Invalid(String),
}

fn invalid(e: impl std::fmt::Display) -> TemplateError {
    TemplateError::Invalid(e.to_string())
}

/// What `--format` asked for.
#[derive(Debug)]
pub enum Format {
    /// Hush's own table (the default, or `--format table`).
    Table,
    /// Hush's JSON: one array, stable keys.
    Json,
    /// A Go template.
    Template(Template),
}

impl Format {
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        match text.trim() {
            "" | "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            _ => Ok(Format::Template(Template::parse(text)?)),
        }
    }
}

/// A parsed `--format` template.
pub struct Template {
    table: bool,
    template: gotmpl::Template,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template").field("table", &self.table).finish_non_exhaustive()
    }
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let (table, body) = match text.strip_prefix("table") {
            Some(rest) if rest.is_empty() || rest.starts_with(char::is_whitespace) => (true, rest),
            _ => (false, text),
        };
        let body = body.trim_matches(' ').replace(r"\t", "\t").replace(r"\n", "\n");
        let template = with_docker_functions(gotmpl::Template::new("").missing_key(MissingKey::Error))
            .parse(&call_label_methods(&body))
            .map_err(invalid)?;
        Ok(Self { table, template })
    }

    pub fn is_table(&self) -> bool {
        self.table
    }

    /// The template's output for one item (without the line break Docker adds).
    pub fn render(&self, data: &Value) -> Result<String, TemplateError> {
        self.template.execute_to_string(data).map_err(invalid)
    }

    /// One line per item; with `table`, a header line first (rendered over `headers`) and
    /// columns aligned as Docker's tabwriter (minimum width 10, padding 3).
    pub fn render_lines(&self, headers: &Value, items: &[Value]) -> Result<String, TemplateError> {
        let mut text = String::new();
        if self.table {
            text.push_str(&self.render(headers)?);
            text.push('\n');
        }
        for item in items {
            text.push_str(&self.render(item)?);
            text.push('\n');
        }
        if !self.table {
            return Ok(text);
        }
        use std::io::Write;
        // Go's tabwriter makes a column max(cell + padding, minwidth) wide; this one
        // max(cell, minwidth) + padding: minwidth 7 + padding 3 is Docker's 10 and 3.
        let mut aligned = tabwriter::TabWriter::new(Vec::new()).minwidth(7).padding(3);
        aligned.write_all(text.as_bytes()).map_err(invalid)?;
        let bytes = aligned.into_inner().map_err(invalid)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// Docker's `ls` contexts have a method `Label "KEY"`; Go templates call a method with
/// arguments directly, gotmpl only through `call`. Rewrites `.Label "KEY"` (in actions, not in
/// strings) to `call .Label "KEY"`, which means the same.
fn call_label_methods(template: &str) -> String {
    const METHOD: &str = ".Label";
    let mut out = String::with_capacity(template.len());
    let (mut in_action, mut quote): (bool, Option<char>) = (false, None);
    let mut rest = template;
    while let Some(c) = rest.chars().next() {
        if !in_action {
            if rest.starts_with("{{") {
                in_action = true;
                out.push_str("{{");
                rest = &rest[2..];
                continue;
            }
        } else if let Some(q) = quote {
            if c == '\\' && q == '"' && rest.len() > 1 {
                let escaped = rest[1..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&rest[..1 + escaped]);
                rest = &rest[1 + escaped..];
                continue;
            }
            if c == q {
                quote = None;
            }
        } else if rest.starts_with("}}") {
            in_action = false;
            out.push_str("}}");
            rest = &rest[2..];
            continue;
        } else if matches!(c, '"' | '`' | '\'') {
            quote = Some(c);
        } else if let Some(after) = rest.strip_prefix(METHOD) {
            let starts_term = out.chars().last().is_none_or(|p| p.is_whitespace() || matches!(p, '(' | '{' | '|'));
            let takes_argument = after.starts_with(char::is_whitespace) && after.trim_start().starts_with(['"', '`']);
            if starts_term && takes_argument {
                out.push_str("call ");
            }
            out.push_str(METHOD);
            rest = after;
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn string_arg<'a>(args: &'a [Value], index: usize, function: &str) -> gotmpl::Result<&'a str> {
    match args.get(index) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(gotmpl::TemplateError::Exec(format!("{function}: expected a string, got {other}"))),
        None => Err(gotmpl::TemplateError::Exec(format!("{function}: missing argument"))),
    }
}

fn int_arg(args: &[Value], index: usize, function: &str) -> gotmpl::Result<usize> {
    args.get(index)
        .and_then(Value::as_int)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| gotmpl::TemplateError::Exec(format!("{function}: expected a number")))
}

/// The functions Docker's CLI gives its templates (`cli/templates`), same names and meaning.
fn with_docker_functions(template: gotmpl::Template) -> gotmpl::Template {
    template
        .func("json", |args| {
            let value = args.first().map(to_json).unwrap_or(serde_json::Value::Null);
            Ok(Value::from(serde_json::to_string(&value).map_err(|e| gotmpl::TemplateError::Exec(e.to_string()))?))
        })
        .func("split", |args| {
            let (s, sep) = (string_arg(args, 0, "split")?, string_arg(args, 1, "split")?);
            Ok(Value::from(s.split(sep).map(Value::from).collect::<Vec<_>>()))
        })
        .func("join", |args| {
            let sep = string_arg(args, 1, "join")?;
            match args.first() {
                Some(Value::List(items)) => {
                    Ok(Value::from(items.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(sep)))
                }
                _ => Err(gotmpl::TemplateError::Exec("join: expected a list".into())),
            }
        })
        .func("lower", |args| Ok(Value::from(string_arg(args, 0, "lower")?.to_lowercase())))
        .func("upper", |args| Ok(Value::from(string_arg(args, 0, "upper")?.to_uppercase())))
        .func("title", |args| {
            let mut word_start = true;
            let titled = string_arg(args, 0, "title")?
                .chars()
                .map(|c| {
                    let out = if word_start { c.to_uppercase().next().unwrap_or(c) } else { c };
                    word_start = c.is_whitespace();
                    out
                })
                .collect::<String>();
            Ok(Value::from(titled))
        })
        .func("pad", |args| {
            let s = string_arg(args, 0, "pad")?;
            if s.is_empty() {
                return Ok(Value::from(""));
            }
            let (before, after) = (int_arg(args, 1, "pad")?, int_arg(args, 2, "pad")?);
            Ok(Value::from(format!("{}{s}{}", " ".repeat(before), " ".repeat(after))))
        })
        .func("truncate", |args| {
            let s = string_arg(args, 0, "truncate")?;
            let length = int_arg(args, 1, "truncate")?;
            Ok(Value::from(s.chars().take(length).collect::<String>()))
        })
}

/// Template data from JSON (inspect output): objects become maps, as Docker's inspect templates
/// see its JSON.
pub fn from_json(value: &serde_json::Value) -> Value {
    match value {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Value::Uint(u),
            (None, Some(i)) => Value::Int(i),
            _ => Value::Float(n.as_f64().unwrap_or_default()),
        },
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => Value::from(items.iter().map(from_json).collect::<Vec<_>>()),
        serde_json::Value::Object(map) => {
            Value::from(map.iter().map(|(k, v)| (k.clone(), from_json(v))).collect::<BTreeMap<String, Value>>())
        }
    }
}

/// What `{{json X}}` prints: map keys sorted (as Go's encoder sorts map keys), functions left out.
fn to_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Nil => serde_json::Value::Null,
        Value::Bool(b) => (*b).into(),
        Value::Int(i) => (*i).into(),
        Value::Uint(u) => (*u).into(),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into),
        Value::String(s) => s.as_ref().into(),
        Value::List(items) => items.iter().map(to_json).collect(),
        Value::Map(map) => {
            map.iter().filter(|(_, v)| !v.is_function()).map(|(k, v)| (k.to_string(), to_json(v))).collect()
        }
        _ => serde_json::Value::Null,
    }
}

/// One row of an `ls` template: its fields (name → value), plus Docker's `Label "KEY"` method
/// over `labels`.
pub fn row(fields: Vec<(&str, Value)>, labels: &BTreeMap<String, String>) -> Value {
    let labels = labels.clone();
    let label: ValueFunc =
        Arc::new(move |args| Ok(Value::from(labels.get(string_arg(args, 0, "Label")?).cloned().unwrap_or_default())));
    let mut map: BTreeMap<String, Value> = fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    map.insert("Label".into(), Value::Function(label));
    Value::from(map)
}

/// The header row of a `table` template: each field's column title; `Label "KEY"` titles its
/// column with the key's last dotted part (as Docker's `SubHeaderContext.Label`).
pub fn header(titles: &[(&str, &str)]) -> Value {
    let label: ValueFunc = Arc::new(|args| {
        let name = string_arg(args, 0, "Label")?;
        let last = name.rsplit('.').next().unwrap_or(name);
        Ok(Value::from(last.replace(['-', '_'], " ")))
    });
    let mut map: BTreeMap<String, Value> = titles.iter().map(|(k, v)| (k.to_string(), Value::from(*v))).collect();
    map.insert("Label".into(), Value::Function(label));
    Value::from(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_row(name: &str, labels: &[(&str, &str)]) -> Value {
        let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let joined = labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        row(vec![("ID", Value::from("abc")), ("Name", Value::from(name)), ("Labels", Value::from(joined))], &labels)
    }

    fn render(format: &str, data: &Value) -> String {
        Template::parse(format).unwrap().render(data).unwrap()
    }

    #[test]
    fn formats_are_table_json_or_templates() {
        assert!(matches!(Format::parse("table").unwrap(), Format::Table));
        assert!(matches!(Format::parse("json").unwrap(), Format::Json));
        assert!(matches!(Format::parse("{{.ID}}").unwrap(), Format::Template(t) if !t.is_table()));
        assert!(matches!(Format::parse("table {{.ID}}").unwrap(), Format::Template(t) if t.is_table()));
        // "tablex" is not the table keyword.
        assert!(matches!(Format::parse("tablex").unwrap(), Format::Template(t) if !t.is_table()));
    }

    #[test]
    fn fields_functions_and_label_method() {
        let data = secret_row("db", &[("env", "prod"), ("team", "a")]);
        assert_eq!(render("{{.Name}}", &data), "db");
        assert_eq!(render(r#"{{.Label "env"}}"#, &data), "prod");
        assert_eq!(render(r#"{{.Label "nope"}}"#, &data), "");
        assert_eq!(render(r#"{{.Label "env" | upper}}-{{ .Label "team" }}"#, &data), "PROD-a");
        assert_eq!(render(r#"{{if eq (.Label "env") "prod"}}P{{end}}"#, &data), "P");
        // Strings that look like the method are left alone.
        assert_eq!(render(r#"{{".Label \"x\""}}"#, &data), r#".Label "x""#);
        assert_eq!(render(".Label {{.Name}}", &data), ".Label db");
        assert_eq!(render("{{.Labels}}", &data), "env=prod,team=a");
        assert_eq!(render("{{upper .Name}} {{lower \"AB\"}} {{title \"hello world\"}}", &data), "DB ab Hello World");
        assert_eq!(render(r#"{{join (split "a,b,c" ",") "-"}}"#, &data), "a-b-c");
        assert_eq!(render(r#"[{{pad .Name 1 2}}][{{pad "" 1 2}}] {{truncate "abcdef" 3}}"#, &data), "[ db  ][] abc");
        assert_eq!(render(r"{{.ID}}\t{{.Name}}", &data), "abc\tdb");
        assert_eq!(render("{{json .}}", &data), r#"{"ID":"abc","Labels":"env=prod,team=a","Name":"db"}"#);
        assert_eq!(render(r#"{{json "<&>"}}"#, &data), r#""<&>""#);
    }

    #[test]
    fn inspect_data_is_the_json() {
        let json =
            serde_json::json!({"ID": "x", "Version": {"Index": 3}, "Spec": {"Name": "db", "Labels": {"env": "prod"}}});
        let data = from_json(&json);
        assert_eq!(render("{{.Version.Index}}", &data), "3");
        assert_eq!(render(r#"{{index .Spec.Labels "env"}}"#, &data), "prod");
        assert_eq!(render("{{range $k, $v := .Spec.Labels}}{{$k}}={{$v}};{{end}}", &data), "env=prod;");
        assert_eq!(render("{{json .Spec}}", &data), r#"{"Labels":{"env":"prod"},"Name":"db"}"#);
    }

    #[test]
    fn mistakes_are_errors() {
        let data = secret_row("db", &[]);
        let err = Template::parse("{{.Name").unwrap_err().to_string();
        assert!(err.starts_with("invalid format template: "), "{err}");
        let err = Template::parse("{{.Nope}}").unwrap().render(&data).unwrap_err().to_string();
        assert!(err.contains("Nope"), "{err}");
        assert!(Template::parse("{{nofunc .}}").and_then(|t| t.render(&data)).is_err());
    }

    #[test]
    fn tables_have_a_header_and_dockers_alignment() {
        let titles = header(&[("ID", "ID"), ("Name", "NAME"), ("Labels", "LABELS")]);
        let rows = [secret_row("db_password", &[]), secret_row("x", &[("env", "prod")])];
        let t = Template::parse(r"table {{.Name}}\t{{.Labels}}").unwrap();
        // Columns at least 10 wide, 3 spaces of padding: as `docker secret ls --format` prints them.
        assert_eq!(
            t.render_lines(&titles, &rows).unwrap(),
            "NAME          LABELS\ndb_password   \nx             env=prod\n"
        );
        let t = Template::parse(r"table {{.ID}}\t{{.Label `env`}}").unwrap();
        assert_eq!(t.render_lines(&titles, &rows[1..]).unwrap(), "ID        env\nabc       prod\n");
        let t = Template::parse("{{.Name}}").unwrap();
        assert_eq!(t.render_lines(&titles, &rows).unwrap(), "db_password\nx\n");
    }
}
