//! YAML as the manifests are written: every document of a file as JSON, with the position of
//! each of its nodes, so that a finding names the line and column of the field it concerns.
//!
//! Kubernetes objects are JSON, so a document becomes a [`serde_json::Value`]. Beside it,
//! [`Spans`] holds the place of every node in the same shape, and [`Spans::locate`] finds the
//! field a [`Path`] names: a path from [`serde_path_to_error`] (where a typed object failed)
//! or from [`serde_ignored`] (a field the type does not know).
//!
//! Reading is YAML 1.2 (`yes`, `on` and `y` are strings; `0755` and `1_000` stay strings, as
//! serde_yaml read them, rather than becoming numbers a reader may not have meant), through
//! serde-saphyr, which reads the whole stream with a real parser: document markers inside a
//! block scalar are text, and tabs used for indentation are a syntax error at the tab.
//! Anchors and aliases are expanded (an alias's nodes are placed at the alias); scalar keys are
//! written as JSON strings as Kubernetes does (`1: x` is `"1": x`); what JSON cannot hold is
//! refused with its position: a sequence or mapping as a key, a tag other than YAML's own, a
//! non-finite number, a key that appears twice.
//!
//! [`to_string`] writes YAML (the CLI's `-o yaml`, `ambientctl install`'s manifests) with the
//! same crate, quoting strings that YAML 1.1 readers such as kubectl would take for another
//! type.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use serde_saphyr::{Location, MessageFormatter, Spanned};

/// A place in a file: 1-based line, and 1-based column counted in characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    /// `None` for serde-saphyr's "unknown" location (line 0).
    fn from_location(l: Location) -> Option<Self> {
        let line = usize::try_from(l.line()).ok().filter(|&l| l > 0)?;
        let column = usize::try_from(l.column()).unwrap_or(usize::MAX);
        Some(Position { line, column })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One step from a node to a child.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// Where a node is in a document, from its root: `spec.ports[1].name`.
///
/// Written with dots between keys and brackets around indexes; a key that holds a dot, a
/// or a bracket (label names such as `istio.io/use-waypoint`) is written quoted in
/// brackets: `metadata.labels["istio.io/use-waypoint"]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Path(Vec<Segment>);

impl Path {
    /// The document itself.
    pub fn root() -> Self {
        Path::default()
    }

    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.0.push(Segment::Key(key.into()));
        self
    }

    pub fn index(mut self, index: usize) -> Self {
        self.0.push(Segment::Index(index));
        self
    }

    /// Whether the path starts with these keys.
    pub fn starts_with_keys(&self, keys: &[&str]) -> bool {
        keys.len() <= self.0.len()
            && keys
                .iter()
                .zip(&self.0)
                .all(|(k, s)| matches!(s, Segment::Key(key) if key == k))
    }

    /// Reads the written form (see [`Path`]); `None` if it is malformed.
    pub fn parse(text: &str) -> Option<Self> {
        let mut path = Path::root();
        let mut rest = text;
        while !rest.is_empty() {
            if let Some(inner) = rest.strip_prefix('[') {
                let (segment, after) = bracketed(inner)?;
                path.0.push(segment);
                rest = after;
            } else {
                let rest_key = rest.strip_prefix('.').unwrap_or(rest);
                let end = rest_key.find(['.', '[']).unwrap_or(rest_key.len());
                if end == 0 {
                    return None;
                }
                path.0.push(Segment::Key(rest_key[..end].to_string()));
                rest = &rest_key[end..];
            }
        }
        Some(path)
    }
}

/// One `[...]` segment (after its `[`) and the text after it.
fn bracketed(inner: &str) -> Option<(Segment, &str)> {
    if let Some(quoted) = inner.strip_prefix('"') {
        // A JSON string: it ends at the first quote no backslash escapes (the key may hold
        // `"]` itself).
        let mut escaped = false;
        let (end, _) = quoted.char_indices().find(|&(_, c)| {
            let closing = c == '"' && !escaped;
            escaped = c == '\\' && !escaped;
            closing
        })?;
        let after = quoted[end + 1..].strip_prefix(']')?;
        let key = serde_json::from_str(&format!("\"{}\"", &quoted[..end])).ok()?;
        return Some((Segment::Key(key), after));
    }
    let end = inner.find(']')?;
    let index = inner[..end].parse().ok()?;
    Some((Segment::Index(index), &inner[end + 1..]))
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str(".");
        }
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Index(index) => write!(f, "[{index}]")?,
                Segment::Key(key) if key.is_empty() || key.contains(['.', '[', ']']) => {
                    write!(f, "[{}]", Value::from(key.as_str()))?
                }
                Segment::Key(key) if i == 0 => f.write_str(key)?,
                Segment::Key(key) => write!(f, ".{key}")?,
            }
        }
        Ok(())
    }
}

/// Where a typed deserialization failed. Its enum segments are the keys that named the
/// variant; an unknown segment (serde buffered the content) ends the path there.
impl From<&serde_path_to_error::Path> for Path {
    fn from(path: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment as S;
        let mut out = Path::root();
        for segment in path {
            out.0.push(match segment {
                S::Seq { index } => Segment::Index(*index),
                S::Map { key } => Segment::Key(key.clone()),
                S::Enum { variant } => Segment::Key(variant.clone()),
                S::Unknown => break,
            });
        }
        out
    }
}

/// A field a type ignored. Options and newtypes are steps of the type, not of the document.
impl From<&serde_ignored::Path<'_>> for Path {
    fn from(path: &serde_ignored::Path<'_>) -> Self {
        use serde_ignored::Path as P;
        match path {
            P::Root => Path::root(),
            P::Seq { parent, index } => Path::from(*parent).index(*index),
            P::Map { parent, key } => Path::from(*parent).key(key.clone()),
            P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
                Path::from(*parent)
            }
        }
    }
}

/// The positions of a value's nodes, in the value's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spans {
    at: Position,
    children: Children,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Children {
    Scalar,
    Sequence(Vec<Spans>),
    /// Each entry's key position and its value's spans.
    Mapping(BTreeMap<String, (Position, Spans)>),
}

impl Spans {
    /// Where the node starts (for a block mapping, its first key).
    pub fn at(&self) -> Position {
        self.at
    }

    /// The spans of a sequence's item.
    pub fn item(&self, index: usize) -> Option<&Spans> {
        match &self.children {
            Children::Sequence(items) => items.get(index),
            _ => None,
        }
    }

    /// A mapping entry: where its key is, and its value's spans.
    pub fn entry(&self, key: &str) -> Option<(Position, &Spans)> {
        match &self.children {
            Children::Mapping(entries) => entries.get(key).map(|(at, spans)| (*at, spans)),
            _ => None,
        }
    }

    /// Where the field `path` names is: the key of a mapping entry, a sequence's item, the
    /// node itself for the root. A path that leaves the document (a field that is missing,
    /// or a step serde could not name) stops at the deepest node it reached, so a finding
    /// always points somewhere near its cause.
    pub fn locate(&self, path: &Path) -> Position {
        let mut node = self;
        let mut at = self.at;
        for segment in path.segments() {
            let next = match segment {
                Segment::Key(key) => node.entry(key),
                Segment::Index(index) => node.item(*index).map(|s| (s.at, s)),
            };
            let Some((position, child)) = next else {
                break;
            };
            at = position;
            node = child;
        }
        at
    }
}

/// One document of a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub value: Value,
    pub spans: Spans,
}

/// Why a file is not YAML that JSON can hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    pub message: String,
    /// Where the parser stopped, when it knows.
    pub position: Option<Position>,
}

/// Why a value could not be written as YAML.
#[derive(Debug, thiserror::Error)]
#[error("cannot write YAML: {0}")]
pub struct WriteError(#[from] serde_saphyr::SerializeError);

/// Reads every document of a YAML (or JSON) stream. Empty and null documents are left out.
/// A syntax error anywhere fails the whole stream: what follows it cannot be trusted.
pub fn parse(text: &str) -> Result<Vec<Document>, SyntaxError> {
    let documents: Vec<Spanned<Node>> =
        serde_saphyr::from_multiple_with_options(text, read_options()).map_err(syntax_error)?;
    Ok(documents
        .into_iter()
        .map(|d| {
            let (value, spans) = split(d);
            Document { value, spans }
        })
        .filter(|d| !d.value.is_null())
        .collect())
}

/// Writes `value` as one YAML document. Multi-line strings are literal blocks (certificates
/// stay readable); single-line strings are never folded, whatever their length.
pub fn to_string<T: Serialize>(value: &T) -> Result<String, WriteError> {
    let options = serde_saphyr::ser_options! {
        folded_wrap_chars: usize::MAX,
    };
    Ok(serde_saphyr::to_string_with_options(value, options)?)
}

/// YAML 1.2 scalars; serde_yaml's readings of numbers YAML 1.1 and 1.2 disagree on; tags
/// JSON has no room for refused; plain messages (the position is reported on its own).
fn read_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        reject_unsupported_tags: true,
        with_snippet: false,
    }
}

fn syntax_error(e: serde_saphyr::Error) -> SyntaxError {
    SyntaxError {
        message: serde_saphyr::UserMessageFormatter
            .format_message(&e)
            .into_owned(),
        position: e.location().and_then(Position::from_location),
    }
}

/// A node's value, and its spans placed where it is used (an alias's nodes at the alias).
/// serde-saphyr leaves a location unknown only for content serde buffers (untagged enums,
/// flattened fields), which `Node` never asks for; line 0 would show such a slip.
fn split(node: Spanned<Node>) -> (Value, Spans) {
    let unknown = Position { line: 0, column: 0 };
    let at = Position::from_location(node.referenced).unwrap_or(unknown);
    let Node { value, children } = node.value;
    (value, Spans { at, children })
}

/// A node as read: its JSON value and its children's positions.
struct Node {
    value: Value,
    children: Children,
}

impl Node {
    fn scalar(value: Value) -> Self {
        Node {
            value,
            children: Children::Scalar,
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML node")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::scalar(Value::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::scalar(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::scalar(Value::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::scalar(Value::from(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::scalar(Value::from(v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Number::from_f64(v)
            .map(|n| Node::scalar(Value::Number(n)))
            .ok_or_else(|| E::custom(format!("{v} is not a number JSON can hold")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::scalar(Value::String(v.to_string())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::scalar(Value::String(v)))
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
        Err(E::custom(
            "binary data (!!binary) cannot be a JSON value; write it as a base64 string",
        ))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut values = Vec::new();
        let mut spans = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            let (value, item_spans) = split(item);
            values.push(value);
            spans.push(item_spans);
        }
        Ok(Node {
            value: Value::Array(values),
            children: Children::Sequence(spans),
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut values = Map::new();
        let mut entries = BTreeMap::new();
        while let Some(key) = map.next_key::<Spanned<Key>>()? {
            let key_at = Position::from_location(key.referenced);
            let (value, spans) = split(map.next_value::<Spanned<Node>>()?);
            let key = key.value.0;
            if values.contains_key(&key) {
                // `1` and `"1"` are different YAML keys but one JSON key.
                return Err(de::Error::custom(format!("the key `{key}` appears twice")));
            }
            values.insert(key.clone(), value);
            entries.insert(key, (key_at.unwrap_or(spans.at), spans));
        }
        Ok(Node {
            value: Value::Object(values),
            children: Children::Mapping(entries),
        })
    }
}

/// A mapping key as JSON writes it: scalars as their text, collections refused.
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(KeyVisitor)
    }
}

struct KeyVisitor;

impl KeyVisitor {
    fn collection<E: de::Error>() -> E {
        E::custom("a mapping key must be a string (a sequence or mapping cannot be a JSON key)")
    }
}

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Key, E> {
        Ok(Key("null".into()))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Key, E> {
        Ok(Key(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Key, E> {
        Ok(Key(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key, E> {
        Ok(Key(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Key, E> {
        Ok(Key(v.to_string()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(Key(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Key, E> {
        Ok(Key(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Key, A::Error> {
        Err(Self::collection())
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Key, A::Error> {
        Err(Self::collection())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(line: usize, column: usize) -> Position {
        Position { line, column }
    }

    fn path(text: &str) -> Path {
        Path::parse(text).expect("a path")
    }

    #[test]
    fn documents_values_and_positions() {
        let text =
            "# a comment\na: 1\nb:\n  - x\n  - {c: true, d: null}\n---\n---\nnull\n---\n[1, 2.5]\n";
        let docs = parse(text).unwrap();
        assert_eq!(docs.len(), 2, "empty and null documents are left out");
        assert_eq!(
            docs[0].value,
            json!({"a": 1, "b": ["x", {"c": true, "d": null}]})
        );
        assert_eq!(docs[0].spans.at(), at(2, 1));
        assert_eq!(docs[0].spans.locate(&path("a")), at(2, 1));
        assert_eq!(docs[0].spans.locate(&path("b[1]")), at(5, 5));
        assert_eq!(docs[0].spans.locate(&path("b[1].d")), at(5, 15));
        assert_eq!(docs[1].value, json!([1, 2.5]));
        assert_eq!(docs[1].spans.locate(&path("[1]")), at(10, 5));
    }

    #[test]
    fn a_path_that_leaves_the_document_stops_at_the_deepest_node() {
        let docs = parse("spec:\n  ports:\n  - port: 80\n").unwrap();
        let spans = &docs[0].spans;
        assert_eq!(spans.locate(&path("spec.ports[0].name")), at(3, 5));
        assert_eq!(spans.locate(&path("spec.ports[3]")), at(2, 3));
        assert_eq!(spans.locate(&Path::root()), at(1, 1));
    }

    #[test]
    fn scalars_are_yaml_1_2() {
        let docs = parse(
            "a: yes\nb: on\nc: 0755\nd: 1_000\ne: ~\nf: \"80\"\ng: 0x1F\nh: 1e3\ni: True\nn: 1\n",
        )
        .unwrap();
        assert_eq!(
            docs[0].value,
            json!({"a": "yes", "b": "on", "c": "0755", "d": "1_000", "e": null, "f": "80",
                   "g": 31, "h": 1000.0, "i": true, "n": 1})
        );
    }

    #[test]
    fn anchors_expand_and_scalar_keys_become_strings() {
        let docs = parse("base: &b {x: 1}\ncopy: *b\nkeys: {1: a, true: b, 2.5: c}\n").unwrap();
        assert_eq!(
            docs[0].value,
            json!({"base": {"x": 1}, "copy": {"x": 1}, "keys": {"1": "a", "true": "b", "2.5": "c"}})
        );
        assert_eq!(
            docs[0].spans.locate(&path("copy.x")),
            at(2, 7),
            "an alias's nodes are at the alias"
        );
    }

    #[test]
    fn what_json_cannot_hold_is_refused_with_its_position() {
        for (text, line, needle) in [
            ("a: 1\n? [x]\n: 2\n", 2, "mapping key must be a string"),
            ("a: !custom 1\n", 1, "!custom"),
            ("a: .nan\n", 1, ".nan"),
            ("a: 1\na: 2\n", 2, "`a`"),
            ("a: {1: x, \"1\": y}\n", 1, "appears twice"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.message.contains(needle), "{text:?}: {e}");
            assert_eq!(e.position.map(|p| p.line), Some(line), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_block_scalar_may_hold_a_document_marker() {
        let docs = parse("data:\n  script: |\n    one\n    ---\n    two\n").unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].value["data"]["script"], "one\n---\ntwo\n");
    }

    #[test]
    fn tab_indentation_is_a_syntax_error_at_the_tab() {
        let e = parse("a: 1\n---\nmetadata:\n\tname: x\n").unwrap_err();
        assert!(e.message.contains("tabs"), "{e}");
        // The parser stops just after the tab.
        assert_eq!(e.position, Some(at(4, 2)), "{e}");
    }

    #[test]
    fn paths_are_written_and_read_back() {
        let p = Path::root()
            .key("metadata")
            .key("labels")
            .key("istio.io/use-waypoint");
        assert_eq!(p.to_string(), r#"metadata.labels["istio.io/use-waypoint"]"#);
        assert_eq!(Path::parse(&p.to_string()), Some(p));
        let p = Path::root().key("spec").key("ports").index(1).key("name");
        assert_eq!(p.to_string(), "spec.ports[1].name");
        assert_eq!(Path::parse("spec.ports[1].name"), Some(p));
        assert_eq!(Path::root().to_string(), ".");
        assert_eq!(Path::parse("a..b"), None);
        assert_eq!(Path::parse("a[x]"), None);
    }

    /// Found by fuzz/fuzz_targets/manifests.rs: a key holding `"]` (written escaped) was cut
    /// at it, so its path did not read back.
    #[test]
    fn keys_holding_quotes_and_brackets_read_back() {
        for key in [r#"a"]b.c"#, r#"x\"]"#, "[]", r#"""#, ""] {
            let p = Path::root().key("spec").key(key).index(2);
            assert_eq!(Path::parse(&p.to_string()), Some(p.clone()), "{p}");
        }
        assert_eq!(Path::parse(r#"a["b"#), None);
        assert_eq!(Path::parse(r#"a["b"x"#), None);
    }

    #[test]
    fn written_yaml_reads_back_and_quotes_what_kubectl_would_misread() {
        let value = json!({
            "apiVersion": "v1",
            "data": {"yes": "on", "pem": "-----BEGIN-----\nabc\n-----END-----\n", "n": "0755",
                     "long": "word ".repeat(40)},
            "list": [{"name": "a", "port": 80}],
        });
        let text = to_string(&value).unwrap();
        assert!(text.contains("\"on\""), "{text}");
        assert!(text.contains("pem: |"), "{text}");
        assert!(text.contains("list:\n- name: a\n  port: 80\n"), "{text}");
        assert!(!text.contains(">"), "single lines are not folded: {text}");
        assert_eq!(parse(&text).unwrap()[0].value, value);
    }
}
