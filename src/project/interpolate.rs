//! Variable interpolation: `$VAR`, `${VAR}`, `${VAR:-d}`, `${VAR-d}`, `${VAR:?e}`, `${VAR?e}`,
//! `${VAR:+a}`, `${VAR+a}`, nesting in the default/message, and `$$` as a literal `$`.
//!
//! Takes a string (or a raw `tree` node) and a lookup over the interpolation environment;
//! gives the substituted text. Used by `dotenv` for values and by `load` on every string
//! value of every file (keys are never interpolated, as in compose-go). An unset variable
//! becomes empty and is reported once through [`Interpolator::unset`].

use std::collections::{BTreeMap, BTreeSet};

use super::error::{self, At, LoadError};
use super::tree::{Mark, Node, Value};

/// Why a template could not be substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// `${` with a body that is not `NAME[op[word]]`, or no closing brace.
    Invalid,
    /// `${VAR:?msg}` / `${VAR?msg}` with VAR missing.
    Required { var: String, message: String },
}

/// Substitute every variable of `text`. `lookup` returns `None` for an unset variable;
/// `on_unset` is called with the name of every unset variable used without a default.
pub fn substitute(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    on_unset: &mut dyn FnMut(&str),
) -> Result<String, TemplateError> {
    if !text.contains('$') {
        return Ok(text.to_string());
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let Some(rel) = text[i..].find('$') else {
            out.push_str(&text[i..]);
            break;
        };
        out.push_str(&text[i..i + rel]);
        i += rel;
        // bytes[i] == '$'
        match bytes.get(i + 1) {
            Some(b'$') => {
                out.push('$');
                i += 2;
            }
            Some(b'{') => {
                let end = closing_brace(text, i + 2).ok_or(TemplateError::Invalid)?;
                let body = &text[i + 2..end];
                out.push_str(&braced(body, lookup, on_unset)?);
                i = end + 1;
            }
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                let start = i + 1;
                let mut j = start;
                while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
                    j += 1;
                }
                let name = &text[start..j];
                match lookup(name) {
                    Some(v) => out.push_str(&v),
                    None => on_unset(name),
                }
                i = j;
            }
            // `$1`, `$ `, a trailing `$`: left as is, like compose-go.
            _ => {
                out.push('$');
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Index of the `}` closing a `${` whose body starts at `from`, honouring nested `${…}`.
fn closing_brace(text: &str, from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' => {
                if depth == 0 {
                    return Some(i);
                }
                depth -= 1;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn braced(
    body: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    on_unset: &mut dyn FnMut(&str),
) -> Result<String, TemplateError> {
    let name_len = body
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    let name = &body[..name_len];
    if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
        return Err(TemplateError::Invalid);
    }
    let rest = &body[name_len..];
    let value = lookup(name);
    let (op, word) = if let Some(w) = rest.strip_prefix(":-") {
        (":-", w)
    } else if let Some(w) = rest.strip_prefix(":?") {
        (":?", w)
    } else if let Some(w) = rest.strip_prefix(":+") {
        (":+", w)
    } else if let Some(w) = rest.strip_prefix('-') {
        ("-", w)
    } else if let Some(w) = rest.strip_prefix('?') {
        ("?", w)
    } else if let Some(w) = rest.strip_prefix('+') {
        ("+", w)
    } else if rest.is_empty() {
        ("", "")
    } else {
        return Err(TemplateError::Invalid);
    };
    let set = value.is_some();
    let non_empty = value.as_deref().is_some_and(|v| !v.is_empty());
    // The word is only substituted when it is used, so an unused default never warns.
    let word_value = |on_unset: &mut dyn FnMut(&str)| substitute(word, lookup, on_unset);
    match op {
        "" => match value {
            Some(v) => Ok(v),
            None => {
                on_unset(name);
                Ok(String::new())
            }
        },
        ":-" if !non_empty => word_value(on_unset),
        "-" if !set => word_value(on_unset),
        ":?" if !non_empty => Err(TemplateError::Required {
            var: name.to_string(),
            message: word_value(on_unset)?,
        }),
        "?" if !set => Err(TemplateError::Required {
            var: name.to_string(),
            message: word_value(on_unset)?,
        }),
        ":+" => {
            if non_empty {
                word_value(on_unset)
            } else {
                Ok(String::new())
            }
        }
        "+" => {
            if set {
                word_value(on_unset)
            } else {
                Ok(String::new())
            }
        }
        _ => Ok(value.unwrap_or_default()),
    }
}

/// Interpolates whole trees against one environment, warning once per unset variable.
pub struct Interpolator<'a> {
    pub env: &'a BTreeMap<String, String>,
    pub unset: BTreeSet<String>,
}

impl<'a> Interpolator<'a> {
    pub fn new(env: &'a BTreeMap<String, String>) -> Self {
        Interpolator {
            env,
            unset: BTreeSet::new(),
        }
    }

    pub fn string(&mut self, text: &str, mark: &Mark, path: &str) -> Result<String, LoadError> {
        let env = self.env;
        let lookup = |name: &str| env.get(name).cloned();
        let unset = &mut self.unset;
        let mut on_unset = |name: &str| {
            if unset.insert(name.to_string()) {
                tracing::warn!(
                    variable = name,
                    "the {name} variable is not set, defaulting to a blank string"
                );
            }
        };
        substitute(text, &lookup, &mut on_unset).map_err(|e| match e {
            TemplateError::Invalid => LoadError::InvalidTemplate {
                at: At::new(mark, path),
                template: text.to_string(),
            },
            TemplateError::Required { var, message } => LoadError::RequiredVariable {
                at: At::new(mark, path),
                var,
                message,
            },
        })
    }

    /// Substitute every string value below `node` (keys are left alone).
    pub fn tree(&mut self, node: &mut Node, path: &str) -> Result<(), LoadError> {
        match &mut node.value {
            Value::Str(s) => {
                if s.contains('$') {
                    let text = std::mem::take(s);
                    let out = self.string(&text, &node.mark, path)?;
                    node.value = Value::Str(out);
                }
                Ok(())
            }
            Value::Seq(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.tree(item, &error::index(path, i))?;
                }
                Ok(())
            }
            Value::Map(entries) => {
                for (k, v) in entries.iter_mut() {
                    self.tree(v, &error::child(path, &k.name))?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Result<(String, Vec<String>), TemplateError> {
        let env: BTreeMap<String, String> = [("SET", "v"), ("EMPTY", ""), ("B", "bee")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = |n: &str| env.get(n).cloned();
        let mut unset = Vec::new();
        let out = substitute(text, &lookup, &mut |n: &str| unset.push(n.to_string()))?;
        Ok((out, unset))
    }

    fn ok(text: &str) -> String {
        run(text).unwrap().0
    }

    #[test]
    fn plain_forms() {
        assert_eq!(ok("a $SET b ${SET}c"), "a v b vc");
        assert_eq!(ok("$$SET and $$"), "$SET and $");
        assert_eq!(ok("cost $5 and $ and end$"), "cost $5 and $ and end$");
        assert_eq!(
            run("x${NOPE}y$NOPE").unwrap(),
            ("xy".into(), vec!["NOPE".into(), "NOPE".into()])
        );
    }

    #[test]
    fn defaults_and_alternatives() {
        assert_eq!(ok("${NOPE:-d}|${EMPTY:-d}|${SET:-d}"), "d|d|v");
        assert_eq!(ok("${NOPE-d}|${EMPTY-d}|${SET-d}"), "d||v");
        assert_eq!(ok("${NOPE:+a}|${EMPTY:+a}|${SET:+a}"), "||a");
        assert_eq!(ok("${NOPE+a}|${EMPTY+a}|${SET+a}"), "|a|a");
    }

    #[test]
    fn nesting() {
        assert_eq!(ok("${NOPE:-${B}}"), "bee");
        assert_eq!(ok("${NOPE:-${NADA:-x${SET}y}}"), "xvy");
        assert_eq!(ok("${NOPE:-a}}"), "a}");
        // An unused default is not evaluated, so it does not warn.
        assert_eq!(run("${SET:-$NOPE}").unwrap().1, Vec::<String>::new());
    }

    #[test]
    fn required() {
        assert_eq!(
            run("${NOPE:?say ${B}}"),
            Err(TemplateError::Required {
                var: "NOPE".into(),
                message: "say bee".into()
            })
        );
        assert_eq!(
            run("${EMPTY:?m}"),
            Err(TemplateError::Required {
                var: "EMPTY".into(),
                message: "m".into()
            })
        );
        assert_eq!(ok("${EMPTY?m}"), "");
        assert!(matches!(
            run("${NOPE?m}"),
            Err(TemplateError::Required { .. })
        ));
    }

    #[test]
    fn trees_interpolate_values_not_keys_and_record_unset_once() {
        let env: BTreeMap<String, String> =
            [("TAG".to_string(), "1".to_string())].into_iter().collect();
        let text = "services:\n  ${TAG}:\n    image: app:${TAG}\n    command: [$NOPE, '${NOPE}']\n";
        let mut doc = crate::project::tree::parse(text, std::path::Path::new("t.yaml"))
            .unwrap()
            .remove(0);
        let mut interp = Interpolator::new(&env);
        interp.tree(&mut doc, "").unwrap();
        let svc = doc
            .get("services")
            .and_then(|s| s.get("${TAG}"))
            .expect("keys are left alone");
        assert_eq!(svc.get("image").and_then(Node::as_str), Some("app:1"));
        assert_eq!(interp.unset.iter().collect::<Vec<_>>(), vec!["NOPE"]);
    }

    #[test]
    fn required_errors_name_file_and_path() {
        let env = BTreeMap::new();
        let text = "services:\n  db:\n    environment:\n      - PASS=${PASS:?set it}\n";
        let mut doc = crate::project::tree::parse(text, std::path::Path::new("c.yaml"))
            .unwrap()
            .remove(0);
        let err = Interpolator::new(&env).tree(&mut doc, "").unwrap_err();
        assert_eq!(
            err.to_string(),
            "c.yaml:4:9: services.db.environment[0]: required variable `PASS` is missing a value: set it"
        );
    }

    #[test]
    fn invalid_templates() {
        assert_eq!(run("${"), Err(TemplateError::Invalid));
        assert_eq!(run("${}"), Err(TemplateError::Invalid));
        assert_eq!(run("${1A}"), Err(TemplateError::Invalid));
        assert_eq!(run("${A/b/c}"), Err(TemplateError::Invalid));
    }
}
