//! A YAML document as a tree of nodes that each know their line and column.
//!
//! The loader does not deserialize straight into the model: serde's derive
//! stops at the first problem, and a topology author wants every problem at
//! once. So the YAML is read into this schema-less tree (with serde-saphyr,
//! which reports positions and does not panic), and `load.rs` walks it,
//! collecting one diagnostic per problem.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use crate::diagnostic::Pos;

/// One YAML node and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub(crate) kind: Kind,
    pub(crate) pos: Pos,
}

/// What a node holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys in document order; duplicates are kept so the loader can report them.
    Map(Vec<(Node, Node)>),
}

impl Kind {
    /// The YAML type's name, for "expected a mapping, found a string".
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Kind::Null => "nothing (null)",
            Kind::Bool(_) => "a boolean",
            Kind::Int(_) => "a number",
            Kind::Float(_) => "a number",
            Kind::Str(_) => "a string",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Kind>::deserialize(deserializer)?;
        Ok(Node {
            kind: spanned.value,
            pos: pos(spanned.referenced.line(), spanned.referenced.column()),
        })
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(KindVisitor)
    }
}

struct KindVisitor;

impl<'de> Visitor<'de> for KindVisitor {
    type Value = Kind;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Kind, E> {
        Ok(Kind::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Kind, E> {
        Ok(Kind::Int(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Kind, E> {
        Ok(Kind::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Kind, E> {
        Ok(Kind::Int(v.into()))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Kind, E> {
        Ok(i128::try_from(v).map_or(Kind::Float(v as f64), Kind::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Kind, E> {
        Ok(Kind::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Kind, E> {
        Ok(Kind::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Kind, E> {
        Ok(Kind::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Kind, E> {
        Ok(Kind::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_none<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
        Kind::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
        Kind::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Kind::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Node>()? {
            let value = map.next_value::<Node>()?;
            entries.push((key, value));
        }
        Ok(Kind::Map(entries))
    }
}

/// A YAML syntax error, with its position when the parser knows it.
#[derive(Debug)]
pub(crate) struct SyntaxError {
    pub(crate) message: String,
    pub(crate) pos: Pos,
}

/// A position from the parser's 64-bit line and column (saturating: a file
/// with four billion lines is not a topology anyone reads).
fn pos(line: u64, column: u64) -> Pos {
    Pos::new(
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
    )
}

/// Deepest nesting accepted; deeper input is a `yaml-syntax` error.
const MAX_DEPTH: usize = 24;

/// Parses one YAML document into a tree. An empty document is `Null`.
pub(crate) fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut budget = serde_saphyr::Budget::default();
    {
        // A topology nests at most 8 deep (services → service → on → reaction
        // → emit → one_of → list → name). Each level costs tens of kilobytes
        // of stack in a debug build, so the parser's default of 64 could
        // overflow a 2 MiB thread; 24 leaves room and still stops hostile input.
        budget.max_depth = MAX_DEPTH;
    }
    let options = serde_saphyr::options! {
        budget: Some(budget),
        // Repeated keys reach the tree, so the loader reports each one with
        // its position and goes on, instead of the parser stopping at the first.
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
        with_snippet: false,
        // YAML 1.2 booleans only: under YAML 1.1 the key `on` (a reaction
        // list) would read as `true`, and `no`/`yes` as booleans.
        strict_booleans: true,
        // Leading zeros (`007`) stay strings instead of becoming octal.
        legacy_octal_numbers: false,
    };
    match serde_saphyr::from_str_with_options::<Option<Node>>(text, options) {
        Ok(Some(node)) => Ok(node),
        Ok(None) => Ok(Node {
            kind: Kind::Null,
            pos: Pos::new(1, 1),
        }),
        Err(err) => {
            let pos = err
                .location()
                .map_or(Pos::new(1, 1), |l| pos(l.line(), l.column()));
            Err(SyntaxError {
                message: err.to_string(),
                pos,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_keys_values_and_items() {
        let node = parse("a: 1\nb:\n  - x\n  - {y: 5s}\nc:\n").unwrap();
        println!("{node:#?}");
        let Kind::Map(entries) = &node.kind else {
            panic!("{node:?}")
        };
        assert_eq!(entries[0].0.pos, Pos::new(1, 1));
        assert_eq!(entries[0].1.pos, Pos::new(1, 4));
        assert_eq!(entries[1].0.pos, Pos::new(2, 1));
        let Kind::Seq(items) = &entries[1].1.kind else {
            panic!()
        };
        assert_eq!(items[0].pos, Pos::new(3, 5));
        assert_eq!(items[1].pos, Pos::new(4, 5));
        assert_eq!(entries[2].1.kind, Kind::Null);
    }

    #[test]
    fn on_and_yes_are_strings_not_booleans() {
        let node = parse("on: yes\noff: true\n").unwrap();
        let Kind::Map(entries) = &node.kind else {
            panic!()
        };
        assert_eq!(entries[0].0.kind, Kind::Str("on".into()));
        assert_eq!(entries[0].1.kind, Kind::Str("yes".into()));
        assert_eq!(entries[1].1.kind, Kind::Bool(true));
    }

    #[test]
    fn duplicate_keys_reach_the_tree() {
        let node = parse("a: 1\na: 2\n").unwrap();
        let Kind::Map(entries) = &node.kind else {
            panic!()
        };
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].0.pos, Pos::new(2, 1));
    }

    #[test]
    fn nesting_is_bounded_before_the_stack_is() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let err = parse(&deep).unwrap_err();
        assert_eq!(err.pos.line, 1, "{err:?}");
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        println!("{err:?}");
        assert!(err.pos.line >= 1);
    }
}
