//! The raw YAML tree every loading phase works on, with a source mark on every node.
//!
//! Takes the text of one compose file; gives one [`Node`] per YAML document with anchors,
//! aliases and merge keys (`<<`) resolved, keys stringified, plain scalars typed with the
//! YAML 1.2 core schema (as go-yaml v3 does for compose-go), and the compose tags `!reset` /
//! `!override` recorded on the node. Neighbours: `interpolate`, `merge`, `extends` rewrite
//! this tree; `decode` turns it into the typed model.
//!
//! Why `yaml-rust2` rather than `serde_yaml_ng`: every load error must name file, line and
//! column, and those marks are lost once serde_yaml_ng builds its `Value`. yaml-rust2 exposes
//! a marked event stream (`MarkedEventReceiver`), so the tree carries its marks itself and
//! they survive interpolation, merging and `extends` without a side table.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use yaml_rust2::parser::{Event, Parser, Tag as YamlTag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::error::LoadError;

/// Where a node came from: file, 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub file: Arc<PathBuf>,
    pub line: usize,
    pub col: usize,
}

impl Mark {
    pub fn new(file: &Arc<PathBuf>, line: usize, col: usize) -> Self {
        Mark {
            file: Arc::clone(file),
            line,
            col,
        }
    }

    /// A mark for nodes the loader synthesises (defaults), pointing at the file start.
    pub fn synthetic(file: &Arc<PathBuf>) -> Self {
        Mark::new(file, 1, 1)
    }
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// The compose merge tags (`!reset`, `!override`), which steer `merge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeTag {
    None,
    Reset,
    Override,
}

/// A mapping key with its own mark (unknown-key errors point at the key).
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub mark: Mark,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub mark: Mark,
    pub tag: MergeTag,
}

impl Node {
    pub fn new(value: Value, mark: Mark) -> Self {
        Node {
            value,
            mark,
            tag: MergeTag::None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        match &mut self.value {
            Value::Map(entries) => entries
                .iter_mut()
                .find(|(k, _)| k.name == key)
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Insert or replace `key` in a mapping node (no-op on other kinds).
    pub fn set(&mut self, key: &str, value: Node) {
        if let Value::Map(entries) = &mut self.value {
            if let Some(slot) = entries.iter_mut().find(|(k, _)| k.name == key) {
                slot.1 = value;
            } else {
                let mark = value.mark.clone();
                entries.push((
                    Key {
                        name: key.to_string(),
                        mark,
                    },
                    value,
                ));
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<Node> {
        if let Value::Map(entries) = &mut self.value {
            if let Some(i) = entries.iter().position(|(k, _)| k.name == key) {
                return Some(entries.remove(i).1);
            }
        }
        None
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The scalar as text (numbers and booleans stringified), as compose does for values
    /// of string-typed fields such as environment entries.
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(x) => Some(x.to_string()),
            _ => None,
        }
    }

    pub fn empty_map(mark: Mark) -> Node {
        Node::new(Value::Map(Vec::new()), mark)
    }
}

/// Parse the text of one file into its documents (an empty file gives one null document).
pub fn parse(text: &str, file: &Path) -> Result<Vec<Node>, LoadError> {
    let file = Arc::new(file.to_path_buf());
    let scan_error = |e: yaml_rust2::ScanError| LoadError::Syntax {
        file: (*file).clone(),
        line: e.marker().line(),
        col: e.marker().col() + 1,
        message: e.info().to_string(),
    };
    // Pull events one by one rather than `Parser::load`, which recurses per nesting level:
    // the depth limit is enforced here, before anything recursive sees the document.
    let mut parser = Parser::new_from_str(text);
    let mut events = Vec::new();
    let mut depth = 0usize;
    loop {
        let (ev, mark) = parser.next_token().map_err(scan_error)?;
        match ev {
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(LoadError::Syntax {
                        file: (*file).clone(),
                        line: mark.line(),
                        col: mark.col() + 1,
                        message: format!("nesting deeper than {MAX_DEPTH} levels"),
                    });
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            _ => {}
        }
        let end = matches!(ev, Event::StreamEnd);
        events.push((ev, mark));
        if end {
            break;
        }
    }
    let mut builder = Builder {
        file,
        events: events.into_iter(),
        anchors: HashMap::new(),
        budget: ALIAS_BUDGET,
    };
    builder.documents()
}

/// Deepest nesting accepted: the phases recurse over the tree, so a hostile file must not
/// be able to exhaust the stack.
const MAX_DEPTH: usize = 64;
/// Nodes that aliases may copy in one file, against "billion laughs" alias bombs.
const ALIAS_BUDGET: usize = 1_000_000;

struct Builder {
    file: Arc<PathBuf>,
    events: std::vec::IntoIter<(Event, Marker)>,
    anchors: HashMap<usize, Node>,
    budget: usize,
}

fn size(n: &Node) -> usize {
    match &n.value {
        Value::Seq(items) => 1 + items.iter().map(size).sum::<usize>(),
        Value::Map(entries) => 1 + entries.iter().map(|(_, v)| size(v)).sum::<usize>(),
        _ => 1,
    }
}

impl Builder {
    fn mark(&self, m: &Marker) -> Mark {
        // yaml-rust2 reports 1-based lines and 0-based columns.
        Mark::new(&self.file, m.line(), m.col() + 1)
    }

    fn syntax(&self, mark: &Mark, message: impl Into<String>) -> LoadError {
        LoadError::Syntax {
            file: (*self.file).clone(),
            line: mark.line,
            col: mark.col,
            message: message.into(),
        }
    }

    fn documents(&mut self) -> Result<Vec<Node>, LoadError> {
        let mut docs = Vec::new();
        while let Some((ev, m)) = self.events.next() {
            match ev {
                Event::DocumentStart => {
                    let (ev, m) = self.events.next().unwrap_or((Event::StreamEnd, m));
                    let node = match ev {
                        Event::DocumentEnd => Node::new(Value::Null, self.mark(&m)),
                        other => {
                            let node = self.node(other, &m)?;
                            // Consume the DocumentEnd that follows.
                            self.events.next();
                            node
                        }
                    };
                    docs.push(node);
                }
                Event::StreamEnd => break,
                _ => {}
            }
        }
        if docs.is_empty() {
            docs.push(Node::new(Value::Null, Mark::new(&self.file, 1, 1)));
        }
        Ok(docs)
    }

    fn next_event(&mut self) -> Result<(Event, Marker), LoadError> {
        match self.events.next() {
            Some(e) => Ok(e),
            None => Err(self.syntax(&Mark::new(&self.file, 1, 1), "unexpected end of document")),
        }
    }

    fn node(&mut self, ev: Event, m: &Marker) -> Result<Node, LoadError> {
        let mark = self.mark(m);
        self.node_inner(ev, mark)
    }

    fn node_inner(&mut self, ev: Event, mark: Mark) -> Result<Node, LoadError> {
        match ev {
            Event::Alias(id) => match self.anchors.get(&id) {
                Some(n) => {
                    let cost = size(n);
                    if cost > self.budget {
                        return Err(self.syntax(&mark, "aliases expand to too many nodes"));
                    }
                    self.budget -= cost;
                    Ok(n.clone())
                }
                None => Err(self.syntax(&mark, "alias to an unknown anchor")),
            },
            Event::Scalar(text, style, anchor, tag) => {
                let tag_kind = self.merge_tag(&tag, &mark)?;
                let value =
                    scalar(&text, style, tag.as_ref()).map_err(|e| self.syntax(&mark, e))?;
                let node = Node {
                    value,
                    mark,
                    tag: tag_kind,
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::SequenceStart(anchor, tag) => {
                let tag_kind = self.merge_tag(&tag, &mark)?;
                let mut items = Vec::new();
                let mut mark = mark;
                loop {
                    let (ev, m) = self.next_event()?;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    if items.is_empty() {
                        mark = earlier(mark, self.mark(&m));
                    }
                    items.push(self.node(ev, &m)?);
                }
                let node = Node {
                    value: Value::Seq(items),
                    mark,
                    tag: tag_kind,
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::MappingStart(anchor, tag) => {
                let tag_kind = self.merge_tag(&tag, &mark)?;
                let mut entries: Vec<(Key, Node)> = Vec::new();
                let mut merged: Vec<(Key, Node)> = Vec::new();
                let mut mark = mark;
                let mut first = true;
                loop {
                    let (ev, km) = self.next_event()?;
                    if matches!(ev, Event::MappingEnd) {
                        break;
                    }
                    if first {
                        mark = earlier(mark, self.mark(&km));
                        first = false;
                    }
                    let key_node = self.node(ev, &km)?;
                    let key_name = match key_node.scalar_text() {
                        Some(s) => s,
                        None if key_node.is_null() => "null".to_string(),
                        None => {
                            return Err(self.syntax(&key_node.mark, "mapping keys must be scalars"))
                        }
                    };
                    let (vev, vm) = self.next_event()?;
                    let value = self.node(vev, &vm)?;
                    let key = Key {
                        name: key_name,
                        mark: key_node.mark.clone(),
                    };
                    if key.name == "<<" && matches!(key_node.value, Value::Str(_)) {
                        // YAML merge key: earlier sources win over later ones, explicit keys
                        // win over all (https://yaml.org/type/merge.html).
                        let sources = match value.value {
                            Value::Map(_) => vec![value],
                            Value::Seq(items) => items,
                            _ => {
                                return Err(self.syntax(
                                    &key.mark,
                                    "merge key `<<` needs a mapping or a list of mappings",
                                ))
                            }
                        };
                        for src in sources {
                            match src.value {
                                Value::Map(src_entries) => {
                                    for (k, v) in src_entries {
                                        if !merged.iter().any(|(mk, _)| mk.name == k.name) {
                                            merged.push((k, v));
                                        }
                                    }
                                }
                                _ => {
                                    return Err(self.syntax(
                                        &src.mark,
                                        "merge key `<<` needs a mapping or a list of mappings",
                                    ))
                                }
                            }
                        }
                        continue;
                    }
                    if entries.iter().any(|(k, _)| k.name == key.name) {
                        return Err(LoadError::DuplicateKey {
                            file: (*self.file).clone(),
                            line: key.mark.line,
                            col: key.mark.col,
                            key: key.name,
                        });
                    }
                    entries.push((key, value));
                }
                for (k, v) in merged {
                    if !entries.iter().any(|(ek, _)| ek.name == k.name) {
                        entries.push((k, v));
                    }
                }
                let node = Node {
                    value: Value::Map(entries),
                    mark,
                    tag: tag_kind,
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            _ => Err(self.syntax(&mark, "unexpected yaml event")),
        }
    }

    fn remember(&mut self, anchor: usize, node: &Node) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
    }

    fn merge_tag(&self, tag: &Option<YamlTag>, mark: &Mark) -> Result<MergeTag, LoadError> {
        match tag {
            None => Ok(MergeTag::None),
            Some(t) if t.handle == "!" && t.suffix == "reset" => Ok(MergeTag::Reset),
            Some(t) if t.handle == "!" && t.suffix == "override" => Ok(MergeTag::Override),
            // Standard `!!str`, `!!int`… are handled by the scalar resolver.
            Some(t) if t.handle == "!!" || t.handle == "tag:yaml.org,2002:" => Ok(MergeTag::None),
            Some(t) => Err(self.syntax(mark, format!("unknown tag `{}{}`", t.handle, t.suffix))),
        }
    }
}

/// yaml-rust2 marks a block collection where its first entry's value starts; errors about
/// the collection read better at its first key or item, which comes earlier in the file.
fn earlier(a: Mark, b: Mark) -> Mark {
    if (b.line, b.col) < (a.line, a.col) {
        b
    } else {
        a
    }
}

/// Resolve a scalar with the YAML 1.2 core schema; quoted scalars are always strings.
fn scalar(text: &str, style: TScalarStyle, tag: Option<&YamlTag>) -> Result<Value, String> {
    if let Some(t) = tag {
        if t.handle == "!!" || t.handle == "tag:yaml.org,2002:" {
            return match t.suffix.as_str() {
                "str" => Ok(Value::Str(text.to_string())),
                "int" => text
                    .parse()
                    .map(Value::Int)
                    .map_err(|_| format!("`{text}` is not an integer")),
                "float" => text
                    .parse()
                    .map(Value::Float)
                    .map_err(|_| format!("`{text}` is not a number")),
                "bool" => match text {
                    "true" | "True" | "TRUE" => Ok(Value::Bool(true)),
                    "false" | "False" | "FALSE" => Ok(Value::Bool(false)),
                    _ => Err(format!("`{text}` is not a boolean")),
                },
                "null" => Ok(Value::Null),
                other => Err(format!("unsupported tag `!!{other}`")),
            };
        }
    }
    if style != TScalarStyle::Plain {
        return Ok(Value::Str(text.to_string()));
    }
    Ok(plain_scalar(text))
}

fn plain_scalar(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = text.parse::<i64>() {
            return Value::Int(i);
        }
    }
    if let Some(hex) = text.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return Value::Int(i);
        }
    }
    if let Some(oct) = text.strip_prefix("0o") {
        if let Ok(i) = i64::from_str_radix(oct, 8) {
            return Value::Int(i);
        }
    }
    if is_core_float(text) {
        if let Ok(x) = text.parse::<f64>() {
            return Value::Float(x);
        }
    }
    Value::Str(text.to_string())
}

/// `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?` from the YAML 1.2 core schema.
fn is_core_float(text: &str) -> bool {
    let s = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((a, b)) => {
            !(a.is_empty() && b.is_empty())
                && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())
        }
        None => !mantissa.is_empty() && mantissa.bytes().all(|c| c.is_ascii_digit()),
    };
    let exp_ok = match exp {
        None => true,
        Some(e) => {
            let e = e.strip_prefix(['-', '+']).unwrap_or(e);
            !e.is_empty() && e.bytes().all(|c| c.is_ascii_digit())
        }
    };
    mantissa_ok && exp_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Node {
        parse(text, Path::new("t.yaml")).unwrap().remove(0)
    }

    #[test]
    fn scalars_follow_the_core_schema() {
        let n = one("a: 1\nb: '1'\nc: true\nd: yes\ne: 1.5\nf: ~\ng: 80:80\nh: 0x1f\n");
        assert_eq!(n.get("a").unwrap().value, Value::Int(1));
        assert_eq!(n.get("b").unwrap().value, Value::Str("1".into()));
        assert_eq!(n.get("c").unwrap().value, Value::Bool(true));
        assert_eq!(n.get("d").unwrap().value, Value::Str("yes".into()));
        assert_eq!(n.get("e").unwrap().value, Value::Float(1.5));
        assert_eq!(n.get("f").unwrap().value, Value::Null);
        assert_eq!(n.get("g").unwrap().value, Value::Str("80:80".into()));
        assert_eq!(n.get("h").unwrap().value, Value::Int(31));
    }

    #[test]
    fn marks_are_one_based() {
        let n = one("services:\n  web:\n    image: x\n");
        let web = n.get("services").unwrap().get("web").unwrap();
        let (k, v) = match &web.value {
            Value::Map(e) => (&e[0].0, &e[0].1),
            _ => panic!(),
        };
        assert_eq!((k.mark.line, k.mark.col), (3, 5));
        assert_eq!((v.mark.line, v.mark.col), (3, 12));
        assert_eq!((web.mark.line, web.mark.col), (3, 5));
        let n = one("a:\n  - x\n  - y\nb: {c: 1}\n");
        assert_eq!(
            (n.get("a").unwrap().mark.line, n.get("a").unwrap().mark.col),
            (2, 3)
        );
        assert_eq!(
            (n.get("b").unwrap().mark.line, n.get("b").unwrap().mark.col),
            (4, 4)
        );
    }

    #[test]
    fn merge_keys_and_aliases() {
        let n = one("x: &d {a: 1, b: 2}\ny: &e {c: 3}\nz:\n  <<: [*d, *e]\n  b: 9\n");
        let z = n.get("z").unwrap();
        assert_eq!(z.get("a").unwrap().value, Value::Int(1));
        assert_eq!(z.get("b").unwrap().value, Value::Int(9));
        assert_eq!(z.get("c").unwrap().value, Value::Int(3));
    }

    #[test]
    fn tags_are_recorded() {
        let n = one("a: !reset []\nb: !override {x: 1}\nc: !!str 12\n");
        assert_eq!(n.get("a").unwrap().tag, MergeTag::Reset);
        assert_eq!(n.get("b").unwrap().tag, MergeTag::Override);
        assert_eq!(n.get("c").unwrap().value, Value::Str("12".into()));
    }

    #[test]
    fn hostile_nesting_and_alias_bombs_are_errors() {
        // Flow nesting is refused by the scanner, block nesting by our own limit.
        let deep = "[".repeat(1000) + &"]".repeat(1000);
        assert!(parse(&deep, Path::new("t.yaml")).is_err());
        let block: String = (0..5000)
            .map(|i| format!("{}k:\n", " ".repeat(i)))
            .collect();
        assert!(parse(&block, Path::new("t.yaml"))
            .unwrap_err()
            .to_string()
            .contains("nesting deeper"));
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..8 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("b{}", i - 1)
            };
            bomb.push_str(&format!("b{i}: &b{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        assert!(parse(&bomb, Path::new("t.yaml"))
            .unwrap_err()
            .to_string()
            .contains("too many nodes"));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let e = parse("a: 1\na: 2\n", Path::new("t.yaml")).unwrap_err();
        assert_eq!(e.to_string(), "t.yaml:2:1: duplicate key `a`");
    }
}
