//! `.env` / `--env-file` / service `env_file` parsing with docker compose's rules.
//!
//! Takes the text of an env file and a lookup for variables defined outside it; gives the
//! ordered `KEY → value` pairs. Rules (compose-go's dotenv): blank lines and `#` comments
//! skipped, optional `export ` prefix, UTF-8 BOM tolerated; unquoted values are trimmed, lose
//! a trailing ` #comment`, and are interpolated; `'single'` values are literal (may span
//! lines); `"double"` values understand `\n \t \r \\ \" \$`, are interpolated and may span
//! lines; `KEY=` is the empty string; a bare `KEY` takes its value from the lookup (or is
//! skipped). Neighbours: `interpolate` for `${…}`, `load` for precedence (shell env wins).

use std::collections::BTreeMap;
use std::path::Path;

use super::error::LoadError;
use super::interpolate::{self, TemplateError};

/// Parse `text` (the content of `path`). `outer` is consulted first for interpolation
/// (shell env wins), then the keys already parsed from this file.
pub fn parse(
    text: &str,
    path: &Path,
    outer: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, LoadError> {
    parse_with(text, path, outer, true)
}

/// Like [`parse`], with interpolation optional (`env_file` entries with `format: raw`).
pub fn parse_with(
    text: &str,
    path: &Path,
    outer: &dyn Fn(&str) -> Option<String>,
    interpolate_values: bool,
) -> Result<Vec<(String, String)>, LoadError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out: Vec<(String, String)> = Vec::new();
    let lines: Vec<&str> = text.split('\n').collect();
    let mut i = 0;
    let err = |line: usize, message: String| LoadError::EnvFile {
        path: path.to_path_buf(),
        line,
        message,
    };
    while i < lines.len() {
        let lineno = i + 1;
        let line = lines[i].trim_end_matches('\r');
        i += 1;
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let trimmed = trimmed
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(trimmed);
        let (key, rest) = match trimmed.find(['=', ':']) {
            Some(pos) if trimmed.as_bytes()[pos] == b'=' => {
                (trimmed[..pos].trim(), Some(&trimmed[pos + 1..]))
            }
            // `KEY: value` (YAML-ish) is accepted by compose-go's parser too.
            Some(pos) if trimmed[pos + 1..].starts_with(' ') || trimmed[pos + 1..].is_empty() => {
                (trimmed[..pos].trim(), Some(&trimmed[pos + 1..]))
            }
            _ => (trimmed.trim(), None),
        };
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(err(lineno, format!("invalid variable name `{key}`")));
        }
        let Some(rest) = rest else {
            // Bare `KEY`: inherit from the environment, or leave unset.
            if let Some(v) = outer(key) {
                out.push((key.to_string(), v));
            }
            continue;
        };
        let rest = rest.trim_start();
        let lookup = |name: &str| {
            outer(name).or_else(|| {
                out.iter()
                    .rev()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            })
        };
        let value = match rest.chars().next() {
            Some(q @ ('\'' | '"')) => {
                // Quoted, possibly over several lines: find the closing quote.
                let mut buf = rest[1..].to_string();
                let close = loop {
                    if let Some(pos) = closing_quote(&buf, q) {
                        break pos;
                    }
                    if i >= lines.len() {
                        return Err(err(
                            lineno,
                            format!("unterminated quoted value for `{key}`"),
                        ));
                    }
                    buf.push('\n');
                    buf.push_str(lines[i].trim_end_matches('\r'));
                    i += 1;
                };
                let after = buf[close + 1..].trim();
                if !after.is_empty() && !after.starts_with('#') {
                    return Err(err(
                        lineno,
                        format!("unexpected text after the quoted value of `{key}`"),
                    ));
                }
                let inner = &buf[..close];
                if q == '\'' || !interpolate_values {
                    // Single quotes and `format: raw` files keep the text exactly.
                    inner.to_string()
                } else {
                    let unescaped = unescape_double(inner);
                    if interpolate_values {
                        expand(&unescaped, &lookup).map_err(|e| err(lineno, e))?
                    } else {
                        unescaped
                    }
                }
            }
            _ => {
                let v = strip_inline_comment(rest).trim_end();
                if interpolate_values {
                    expand(v, &lookup).map_err(|e| err(lineno, e))?
                } else {
                    v.to_string()
                }
            }
        };
        out.push((key.to_string(), value));
    }
    Ok(out)
}

/// Merge parsed pairs into a map, later keys winning.
pub fn to_map(pairs: Vec<(String, String)>) -> BTreeMap<String, String> {
    pairs.into_iter().collect()
}

fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    // Unset variables inside env files become empty silently, like compose-go.
    interpolate::substitute(text, lookup, &mut |_| {}).map_err(|e| match e {
        TemplateError::Invalid => format!("invalid interpolation template \"{text}\""),
        TemplateError::Required { var, message } => {
            format!("required variable `{var}` is missing a value: {message}")
        }
    })
}

fn closing_quote(buf: &str, q: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in buf.char_indices() {
        if q == '"' && escaped {
            escaped = false;
            continue;
        }
        if q == '"' && c == '\\' {
            escaped = true;
            continue;
        }
        if c == q {
            return Some(i);
        }
    }
    None
}

fn unescape_double(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            // `\$` stays `$$` so interpolation yields a literal `$`.
            Some('$') => out.push_str("$$"),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// An unquoted value ends at ` #` (a `#` preceded by whitespace starts a comment).
fn strip_inline_comment(v: &str) -> &str {
    let bytes = v.as_bytes();
    for i in 0..bytes.len() {
        if bytes[i] == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &v[..i];
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Vec<(String, String)> {
        let outer = |n: &str| (n == "SHELL_VAR").then(|| "from-shell".to_string());
        parse(text, Path::new(".env"), &outer).unwrap()
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn basic_lines() {
        let text = "\u{feff}# comment\n\nA=1\nexport B = two words \nC=\nD=x # trailing\nE=x#not-comment\nSHELL_VAR\nMISSING\n";
        assert_eq!(
            p(text),
            kv(&[
                ("A", "1"),
                ("B", "two words"),
                ("C", ""),
                ("D", "x"),
                ("E", "x#not-comment"),
                ("SHELL_VAR", "from-shell")
            ])
        );
    }

    #[test]
    fn quotes_and_escapes() {
        let text = "S='lit $A \\n'\nD=\"a\\tb\\n\\\"q\\\" \\$A\"\nM=\"line1\nline2\"\nQ='x' # c\n";
        assert_eq!(
            p(text),
            kv(&[
                ("S", "lit $A \\n"),
                ("D", "a\tb\n\"q\" $A"),
                ("M", "line1\nline2"),
                ("Q", "x")
            ])
        );
    }

    #[test]
    fn interpolation_inside_values() {
        let text = "A=1\nB=${A}-$SHELL_VAR\nC=\"${NOPE:-dflt}\"\nD='${A}'\n";
        assert_eq!(
            p(text),
            kv(&[
                ("A", "1"),
                ("B", "1-from-shell"),
                ("C", "dflt"),
                ("D", "${A}")
            ])
        );
    }

    #[test]
    fn errors_name_the_line() {
        let outer = |_: &str| None;
        let e = parse("A=1\nB C=2\n", Path::new(".env"), &outer).unwrap_err();
        assert_eq!(e.to_string(), ".env:2: invalid variable name `B C`");
        let e = parse("A=\"open\n", Path::new(".env"), &outer).unwrap_err();
        assert_eq!(e.to_string(), ".env:1: unterminated quoted value for `A`");
    }
}
