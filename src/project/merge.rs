//! Merging raw trees with compose's override rules (multiple `-f` files and `extends`).
//!
//! Takes two raw `tree` nodes, base and override; gives the merged node. Rules (compose-go
//! `override` package): mappings merge key by key, scalars are replaced, `command`,
//! `entrypoint` and `healthcheck.test` are replaced, key/value attributes (`environment`,
//! `labels`, `sysctls`, `build.args`…) merge by key whatever form each side uses, `ports`
//! are appended then de-duplicated, `volumes` merge by container target, `secrets`/`configs`
//! by target, `depends_on`/`networks` by name, other lists are appended and de-duplicated.
//! A `!reset` node removes the attribute, an `!override` node replaces it wholesale.
//! Neighbours: `load` (file order), `extends` (base service under local service).

use super::tree::{Key, MergeTag, Node, Value};

/// Merge two whole compose documents (top level).
pub fn merge_documents(base: Node, over: Node) -> Node {
    merge_with(base, over, &|parent, key| top_rule(parent, key))
}

/// Merge two service definitions (used by `extends` and by document merging).
pub fn merge_services(base: Node, over: Node) -> Node {
    merge_with(base, over, &|parent, key| service_rule(parent, key))
}

/// Remove `!reset` attributes and forget `!override` tags once merging is over.
pub fn strip_tags(node: &mut Node) {
    node.tag = MergeTag::None;
    match &mut node.value {
        Value::Map(entries) => {
            entries.retain(|(_, v)| v.tag != MergeTag::Reset);
            for (_, v) in entries.iter_mut() {
                strip_tags(v);
            }
        }
        Value::Seq(items) => {
            items.retain(|v| v.tag != MergeTag::Reset);
            for v in items.iter_mut() {
                strip_tags(v);
            }
        }
        _ => {}
    }
}

/// How the value under a key merges. `parent` is the rule context of the enclosing mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Deep-merge mappings; the str is the context for nested keys.
    Map(&'static str),
    /// Replace wholesale.
    Replace,
    /// Normalise `KEY=VAL` lists and maps to maps, merge by key.
    KeyValue,
    /// Append then remove duplicates.
    AppendUnique,
    /// Service `volumes`: by container target.
    ByTarget,
    /// Service `secrets`/`configs`: by source/target.
    BySource,
    /// `depends_on`, service `networks`: list or map → map, merge by name.
    NamedMap(&'static str),
    /// `build`: a string means `{context: …}`.
    Build,
    /// `logging`: options merge only when the driver agrees.
    Logging,
}

type RuleFn = dyn Fn(&str, &str) -> Rule;

fn top_rule(parent: &str, key: &str) -> Rule {
    match (parent, key) {
        ("top", "services") => Rule::Map("services"),
        ("top", "networks" | "volumes" | "secrets" | "configs" | "models") => {
            Rule::Map("resources")
        }
        ("top", "include") => Rule::AppendUnique,
        ("top", _) => Rule::Map("generic"),
        ("services", _) => Rule::Map("service"),
        ("resources", _) => Rule::Map("resource"),
        ("resource", "labels" | "driver_opts") => Rule::KeyValue,
        ("resource", "ipam") => Rule::Map("generic"),
        _ => service_rule(parent, key),
    }
}

fn service_rule(parent: &str, key: &str) -> Rule {
    match (parent, key) {
        ("service", "command" | "entrypoint") => Rule::Replace,
        (
            "service",
            "environment" | "labels" | "annotations" | "sysctls" | "storage_opt" | "driver_opts",
        ) => Rule::KeyValue,
        (
            "service",
            "ports" | "dns" | "dns_search" | "dns_opt" | "tmpfs" | "env_file" | "cap_add"
            | "cap_drop" | "expose" | "links" | "profiles" | "security_opt" | "group_add"
            | "volumes_from" | "extra_hosts" | "external_links",
        ) => Rule::AppendUnique,
        ("service", "volumes" | "devices") => Rule::ByTarget,
        ("service", "secrets" | "configs") => Rule::BySource,
        ("service", "depends_on") => Rule::NamedMap("depends_on"),
        ("service", "networks") => Rule::NamedMap("service_network"),
        ("service", "build") => Rule::Build,
        ("service", "logging") => Rule::Logging,
        ("service", "healthcheck") => Rule::Map("healthcheck"),
        ("healthcheck", "test") => Rule::Replace,
        ("service", "deploy") => Rule::Map("deploy"),
        ("deploy", "labels") => Rule::KeyValue,
        ("build", "args" | "labels" | "additional_contexts") => Rule::KeyValue,
        ("service", "ulimits") => Rule::Map("ulimits"),
        ("ulimits", _) => Rule::Replace,
        ("service_network", "aliases") => Rule::AppendUnique,
        ("service", "extends") => Rule::Replace,
        _ => Rule::Map("generic"),
    }
}

fn merge_with(base: Node, over: Node, rules: &RuleFn) -> Node {
    merge_map(base, over, "top", rules)
}

fn merge_map(base: Node, over: Node, ctx: &str, rules: &RuleFn) -> Node {
    let Value::Map(mut entries) = base.value else {
        return over;
    };
    let Value::Map(over_entries) = over.value else {
        return Node {
            value: over.value,
            mark: over.mark,
            tag: over.tag,
        };
    };
    for (k, v) in over_entries {
        let pos = entries.iter().position(|(ek, _)| ek.name == k.name);
        match (pos, v.tag) {
            (Some(i), MergeTag::Reset) => {
                entries.remove(i);
            }
            (None, MergeTag::Reset) => {}
            (Some(i), MergeTag::Override) => {
                let mut v = v;
                v.tag = MergeTag::None;
                entries[i].1 = v;
            }
            (Some(i), _) => {
                let old =
                    std::mem::replace(&mut entries[i].1, Node::new(Value::Null, v.mark.clone()));
                entries[i].1 = merge_value(old, v, rules(ctx, &k.name), rules);
            }
            (None, _) => entries.push((k, v)),
        }
    }
    Node {
        value: Value::Map(entries),
        mark: base.mark,
        tag: base.tag,
    }
}

fn merge_value(base: Node, over: Node, rule: Rule, rules: &RuleFn) -> Node {
    if over.is_null() || base.is_null() {
        // `key:` with no value in an override leaves the base alone (compose-go ignores nulls
        // in overrides); a null base is simply replaced.
        return if over.is_null() { base } else { over };
    }
    match rule {
        Rule::Replace => over,
        Rule::Map(ctx) => match (&base.value, &over.value) {
            (Value::Map(_), Value::Map(_)) => merge_map(base, over, ctx, rules),
            (Value::Seq(_), Value::Seq(_)) => append_unique(base, over),
            _ => over,
        },
        Rule::KeyValue => match (to_key_value_map(&base), to_key_value_map(&over)) {
            (Some(b), Some(o)) => merge_map(b, o, "generic", rules),
            _ => over,
        },
        Rule::AppendUnique => match (as_seq(base), as_seq(over)) {
            (
                b @ Node {
                    value: Value::Seq(_),
                    ..
                },
                o @ Node {
                    value: Value::Seq(_),
                    ..
                },
            ) => append_unique(b, o),
            (_, o) => o,
        },
        Rule::ByTarget => merge_keyed(base, over, volume_target),
        Rule::BySource => merge_keyed(base, over, secret_key),
        Rule::NamedMap(ctx) => match (to_named_map(&base), to_named_map(&over)) {
            (Some(b), Some(o)) => merge_map(b, o, ctx, rules),
            _ => over,
        },
        Rule::Build => {
            let b = build_map(base);
            let o = build_map(over);
            merge_map(b, o, "build", rules)
        }
        Rule::Logging => {
            let driver = |n: &Node| n.get("driver").and_then(Node::scalar_text);
            match (driver(&base), driver(&over)) {
                (Some(a), Some(b)) if a != b => over,
                _ => merge_map(base, over, "generic", rules),
            }
        }
    }
}

/// A scalar where a list is allowed (`dns: 1.1.1.1`) is a one-item list.
fn as_seq(n: Node) -> Node {
    match n.value {
        Value::Str(_) | Value::Int(_) => {
            let mark = n.mark.clone();
            Node {
                value: Value::Seq(vec![n]),
                mark,
                tag: MergeTag::None,
            }
        }
        _ => n,
    }
}

fn append_unique(base: Node, over: Node) -> Node {
    let Node {
        value: base_value,
        mark,
        ..
    } = base;
    let Node {
        value: over_value,
        mark: over_mark,
        tag: over_tag,
    } = over;
    match (base_value, over_value) {
        (Value::Seq(mut items), Value::Seq(more)) => {
            for item in more {
                if item.tag == MergeTag::Reset {
                    continue;
                }
                if !items.iter().any(|i| same(i, &item)) {
                    items.push(item);
                }
            }
            Node {
                value: Value::Seq(items),
                mark,
                tag: MergeTag::None,
            }
        }
        // Not two lists: the override wins.
        (_, value) => Node {
            value,
            mark: over_mark,
            tag: over_tag,
        },
    }
}

fn merge_keyed(base: Node, over: Node, key_of: fn(&Node) -> Option<String>) -> Node {
    let (mut items, more) = match (base.value, over.value) {
        (Value::Seq(items), Value::Seq(more)) => (items, more),
        // Not two lists: the override wins.
        (_, value) => {
            return Node {
                value,
                mark: over.mark,
                tag: over.tag,
            }
        }
    };
    for item in more {
        let key = key_of(&item);
        match key.and_then(|k| {
            items
                .iter()
                .position(|i| key_of(i).as_deref() == Some(k.as_str()))
        }) {
            Some(pos) => items[pos] = item,
            None => items.push(item),
        }
    }
    Node {
        value: Value::Seq(items),
        mark: base.mark,
        tag: MergeTag::None,
    }
}

/// Container path of a service volume, short (`src:dst[:mode]`) or long form.
pub fn volume_target(n: &Node) -> Option<String> {
    match &n.value {
        Value::Str(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            match parts.len() {
                1 => Some(parts[0].to_string()),
                _ => Some(parts[1].to_string()),
            }
        }
        Value::Map(_) => n.get("target").and_then(Node::scalar_text),
        _ => None,
    }
}

fn secret_key(n: &Node) -> Option<String> {
    match &n.value {
        Value::Str(s) => Some(s.clone()),
        Value::Map(_) => n
            .get("target")
            .or_else(|| n.get("source"))
            .and_then(Node::scalar_text),
        _ => None,
    }
}

/// `["A=1", "B"]` → `{A: "1", B: null}`; maps are returned as they are.
pub fn to_key_value_map(n: &Node) -> Option<Node> {
    match &n.value {
        Value::Map(_) => Some(n.clone()),
        Value::Seq(items) => {
            let mut entries: Vec<(Key, Node)> = Vec::new();
            for item in items {
                let text = item.as_str()?;
                let (k, v) = match text.split_once('=') {
                    Some((k, v)) => (k, Node::new(Value::Str(v.to_string()), item.mark.clone())),
                    None => (text, Node::new(Value::Null, item.mark.clone())),
                };
                let key = Key {
                    name: k.to_string(),
                    mark: item.mark.clone(),
                };
                match entries.iter_mut().find(|(ek, _)| ek.name == k) {
                    Some(slot) => slot.1 = v,
                    None => entries.push((key, v)),
                }
            }
            Some(Node {
                value: Value::Map(entries),
                mark: n.mark.clone(),
                tag: n.tag,
            })
        }
        _ => None,
    }
}

/// `[a, b]` → `{a: null, b: null}`; maps are returned as they are.
pub fn to_named_map(n: &Node) -> Option<Node> {
    match &n.value {
        Value::Map(_) => Some(n.clone()),
        Value::Seq(items) => {
            let mut entries = Vec::new();
            for item in items {
                let name = item.scalar_text()?;
                if !entries.iter().any(|(k, _): &(Key, Node)| k.name == name) {
                    entries.push((
                        Key {
                            name,
                            mark: item.mark.clone(),
                        },
                        Node::new(Value::Null, item.mark.clone()),
                    ));
                }
            }
            Some(Node {
                value: Value::Map(entries),
                mark: n.mark.clone(),
                tag: n.tag,
            })
        }
        _ => None,
    }
}

fn build_map(n: Node) -> Node {
    match n.value {
        Value::Str(_) => {
            let mark = n.mark.clone();
            Node::new(
                Value::Map(vec![(
                    Key {
                        name: "context".into(),
                        mark: mark.clone(),
                    },
                    n,
                )]),
                mark,
            )
        }
        _ => n,
    }
}

/// Structural equality that ignores marks and tags.
pub fn same(a: &Node, b: &Node) -> bool {
    match (&a.value, &b.value) {
        (Value::Seq(x), Value::Seq(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.iter().any(|(k2, v2)| k.name == k2.name && same(v, v2)))
        }
        (x, y) => x == y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::tree::parse;
    use std::path::Path;

    fn doc(text: &str) -> Node {
        parse(text, Path::new("t.yaml")).unwrap().remove(0)
    }

    fn merged(a: &str, b: &str) -> Node {
        let mut n = merge_documents(doc(a), doc(b));
        strip_tags(&mut n);
        n
    }

    fn assert_same(a: &Node, expected: &str) {
        let e = doc(expected);
        assert!(same(a, &e), "got {a:#?}\nexpected {expected}");
    }

    #[test]
    fn scalars_replace_and_maps_merge() {
        let m = merged(
            "services: {web: {image: a, restart: always}}",
            "services: {web: {image: b}, db: {image: c}}",
        );
        assert_same(
            &m,
            "services: {web: {image: b, restart: always}, db: {image: c}}",
        );
    }

    #[test]
    fn command_is_replaced_and_environment_merges_by_key() {
        let m = merged(
            "services: {s: {command: [a, b], environment: [A=1, B=2]}}",
            "services: {s: {command: [c], environment: {B: '3', C: '4'}}}",
        );
        assert_same(
            &m,
            "services: {s: {command: [c], environment: {A: '1', B: '3', C: '4'}}}",
        );
    }

    #[test]
    fn ports_dedupe_and_volumes_by_target() {
        let m = merged(
            "services: {s: {ports: ['80:80', '443:443'], volumes: ['./a:/data', 'v:/v']}}",
            "services: {s: {ports: ['80:80', '8080:8080'], volumes: ['./b:/data:ro']}}",
        );
        assert_same(&m, "services: {s: {ports: ['80:80', '443:443', '8080:8080'], volumes: ['./b:/data:ro', 'v:/v']}}");
    }

    #[test]
    fn reset_and_override() {
        let m = merged(
            "services: {s: {ports: ['80:80'], labels: {a: '1'}, environment: {A: '1'}}}",
            "services: {s: {ports: !reset [], labels: !override {b: '2'}, environment: {A: !reset null}}}",
        );
        assert_same(&m, "services: {s: {labels: {b: '2'}, environment: {}}}");
    }

    #[test]
    fn depends_on_short_and_long_forms_merge() {
        let m = merged(
            "services: {s: {depends_on: [db]}}",
            "services: {s: {depends_on: {db: {condition: service_healthy}, cache: {condition: service_started}}}}",
        );
        assert_same(
            &m,
            "services: {s: {depends_on: {db: {condition: service_healthy}, cache: {condition: service_started}}}}",
        );
    }

    #[test]
    fn logging_driver_change_replaces() {
        let m = merged(
            "services: {s: {logging: {driver: json-file, options: {a: '1'}}}}",
            "services: {s: {logging: {driver: syslog}}}",
        );
        assert_same(&m, "services: {s: {logging: {driver: syslog}}}");
        let m = merged(
            "services: {s: {logging: {driver: json-file, options: {a: '1'}}}}",
            "services: {s: {logging: {options: {b: '2'}}}}",
        );
        assert_same(
            &m,
            "services: {s: {logging: {driver: json-file, options: {a: '1', b: '2'}}}}",
        );
    }
}
