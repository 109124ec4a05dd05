//! A JSON writer for payloads: the same text as serde_json's compact
//! serializer, with strings checked for escapes eight bytes at a time.
//!
//! serde_json looks at each byte of a string in turn to find the ones it
//! must escape; a payload's strings rarely hold any, and for a 64-character
//! field that scan was most of the encoding. Numbers are written by
//! serde_json's own formatter, so they read exactly as before. What this
//! writer does not handle — a map key that is not a string, serde_json's
//! private types (`RawValue`, arbitrary-precision numbers), an error raised
//! by the value — it refuses, and the caller encodes with serde_json instead,
//! which gives the same text or the same error as ever.

use serde::Serialize;
use serde::ser::{self, Impossible};
use serde_json::ser::{CharEscape, CompactFormatter, Formatter};

/// Writes `value` as compact JSON to `out`; `Err` when the value needs
/// serde_json itself (`out` then holds a part of it, to be cleared).
pub(crate) fn write<T: ?Sized + Serialize>(out: &mut Vec<u8>, value: &T) -> Result<(), Refused> {
    value.serialize(Writer { out })
}

/// This writer leaves the value to serde_json.
#[derive(Debug)]
pub(crate) struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("left to serde_json")
    }
}

impl std::error::Error for Refused {}

impl ser::Error for Refused {
    fn custom<T: std::fmt::Display>(_msg: T) -> Self {
        Refused
    }
}

/// One in every byte of a word.
const ONES: u64 = 0x0101_0101_0101_0101;
/// The high bit of every byte of a word.
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether JSON leaves `text` as it is: no control character, quote or
/// backslash (what serde_json escapes). Eight bytes at a time (SWAR).
pub(crate) fn plain(text: &[u8]) -> bool {
    // Each test is exact for the word as a whole: the borrow that can
    // corrupt the bytes above a match only does so once one has matched.
    fn plain8(x: u64) -> bool {
        let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
        let control = x.wrapping_sub(0x20 * ONES) & !x & HIGHS;
        let quote = zero(x ^ (u64::from(b'"') * ONES));
        let backslash = zero(x ^ (u64::from(b'\\') * ONES));
        control | quote | backslash == 0
    }
    if text.len() < 8 {
        return text.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\');
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&text[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let mut at = 0;
    while at + 8 < text.len() {
        if !plain8(word(at)) {
            return false;
        }
        at += 8;
    }
    // The last eight bytes, overlapping the word before if need be.
    plain8(word(text.len() - 8))
}

/// A JSON string, escaped as serde_json escapes it.
pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.push(b'"');
    if plain(bytes) {
        out.extend_from_slice(bytes);
    } else {
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let escape = match b {
                b'"' => CharEscape::Quote,
                b'\\' => CharEscape::ReverseSolidus,
                0x08 => CharEscape::Backspace,
                0x0c => CharEscape::FormFeed,
                b'\n' => CharEscape::LineFeed,
                b'\r' => CharEscape::CarriageReturn,
                b'\t' => CharEscape::Tab,
                0..0x20 => CharEscape::AsciiControl(b),
                _ => continue,
            };
            out.extend_from_slice(&bytes[start..i]);
            // Writing to a Vec cannot fail.
            let _ = CompactFormatter.write_char_escape(out, escape);
            start = i + 1;
        }
        out.extend_from_slice(&bytes[start..]);
    }
    out.push(b'"');
}

/// Names serde_json gives its own types, which it serializes specially.
fn private(name: &str) -> bool {
    name.starts_with("$serde_json::private::")
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

/// A number through serde_json's formatter (writing to a Vec cannot fail).
macro_rules! number {
    ($($method:ident($ty:ty) => $write:ident;)*) => {
        $(
            fn $method(self, v: $ty) -> Result<(), Refused> {
                let _ = CompactFormatter.$write(self.out, v);
                Ok(())
            }
        )*
    };
}

impl<'a> ser::Serializer for Writer<'a> {
    type Ok = ();
    type Error = Refused;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    number! {
        serialize_i8(i8) => write_i8;
        serialize_i16(i16) => write_i16;
        serialize_i32(i32) => write_i32;
        serialize_i64(i64) => write_i64;
        serialize_i128(i128) => write_i128;
        serialize_u8(u8) => write_u8;
        serialize_u16(u16) => write_u16;
        serialize_u32(u32) => write_u32;
        serialize_u64(u64) => write_u64;
        serialize_u128(u128) => write_u128;
    }

    fn serialize_bool(self, v: bool) -> Result<(), Refused> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }

    // Not finite: null, as serde_json writes it.
    fn serialize_f32(self, v: f32) -> Result<(), Refused> {
        if v.is_finite() {
            let _ = CompactFormatter.write_f32(self.out, v);
        } else {
            self.out.extend_from_slice(b"null");
        }
        Ok(())
    }

    fn serialize_f64(self, v: f64) -> Result<(), Refused> {
        if v.is_finite() {
            let _ = CompactFormatter.write_f64(self.out, v);
        } else {
            self.out.extend_from_slice(b"null");
        }
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), Refused> {
        string(self.out, v.encode_utf8(&mut [0u8; 4]));
        Ok(())
    }

    fn serialize_str(self, v: &str) -> Result<(), Refused> {
        string(self.out, v);
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), Refused> {
        let _ = CompactFormatter.write_byte_array(self.out, v);
        Ok(())
    }

    fn serialize_none(self) -> Result<(), Refused> {
        self.serialize_unit()
    }

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), Refused> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Refused> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Refused> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Refused> {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<(), Refused> {
        if private(name) {
            return Err(Refused);
        }
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Refused> {
        self.out.push(b'{');
        string(self.out, variant);
        self.out.push(b':');
        value.serialize(Writer {
            out: &mut *self.out,
        })?;
        self.out.push(b'}');
        Ok(())
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Compound<'a>, Refused> {
        self.out.push(b'[');
        Ok(Compound::new(self.out, len == Some(0), b"]"))
    }

    fn serialize_tuple(self, len: usize) -> Result<Compound<'a>, Refused> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Compound<'a>, Refused> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Compound<'a>, Refused> {
        self.out.push(b'{');
        string(self.out, variant);
        self.out.extend_from_slice(b":[");
        Ok(Compound::new(self.out, len == 0, b"]}"))
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Compound<'a>, Refused> {
        self.out.push(b'{');
        Ok(Compound::new(self.out, len == Some(0), b"}"))
    }

    fn serialize_struct(self, name: &'static str, len: usize) -> Result<Compound<'a>, Refused> {
        if private(name) {
            return Err(Refused);
        }
        self.serialize_map(Some(len))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Compound<'a>, Refused> {
        self.out.push(b'{');
        string(self.out, variant);
        self.out.extend_from_slice(b":{");
        Ok(Compound::new(self.out, len == 0, b"}}"))
    }
}

/// An array or object being written. serde_json closes one declared empty
/// at once, and writes nothing more for it.
struct Compound<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    empty: bool,
    close: &'static [u8],
}

impl<'a> Compound<'a> {
    fn new(out: &'a mut Vec<u8>, empty: bool, close: &'static [u8]) -> Self {
        if empty {
            out.extend_from_slice(close);
        }
        Compound {
            out,
            first: true,
            empty,
            close,
        }
    }

    fn separate(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
    }

    fn value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Refused> {
        value.serialize(Writer {
            out: &mut *self.out,
        })
    }

    fn field<T: ?Sized + Serialize>(&mut self, key: &str, value: &T) -> Result<(), Refused> {
        self.separate();
        string(self.out, key);
        self.out.push(b':');
        self.value(value)
    }

    fn end(self) -> Result<(), Refused> {
        if !self.empty {
            self.out.extend_from_slice(self.close);
        }
        Ok(())
    }
}

impl ser::SerializeSeq for Compound<'_> {
    type Ok = ();
    type Error = Refused;

    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Refused> {
        self.separate();
        self.value(value)
    }

    fn end(self) -> Result<(), Refused> {
        Compound::end(self)
    }
}

impl ser::SerializeTuple for Compound<'_> {
    type Ok = ();
    type Error = Refused;

    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Refused> {
        ser::SerializeSeq::serialize_element(self, value)
    }

    fn end(self) -> Result<(), Refused> {
        Compound::end(self)
    }
}

impl ser::SerializeTupleStruct for Compound<'_> {
    type Ok = ();
    type Error = Refused;

    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Refused> {
        ser::SerializeSeq::serialize_element(self, value)
    }

    fn end(self) -> Result<(), Refused> {
        Compound::end(self)
    }
}

impl ser::SerializeTupleVariant for Compound<'_> {
    type Ok = ();
    type Error = Refused;

    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Refused> {
        ser::SerializeSeq::serialize_element(self, value)
    }

    fn end(self) -> Result<(), Refused> {
        Compound::end(self)
    }
}

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = Refused;

    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), Refused> {
        self.separate();
        key.serialize(Key {
            out: &mut *self.out,
        })?;
        self.out.push(b':');
        Ok(())
    }

    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Refused> {
        self.value(value)
    }

    fn end(self) -> Result<(), Refused> {
        Compound::end(self)
    }
}

impl ser::SerializeStruct for Compound<'_> {
    type Ok = ();
    type Error = Refused;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Refused> {
        self.field(key, value)
    }

    fn end(self) -> Result<(), Refused> {
        Compound::end(self)
    }
}

impl ser::SerializeStructVariant for Compound<'_> {
    type Ok = ();
    type Error = Refused;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Refused> {
        self.field(key, value)
    }

    fn end(self) -> Result<(), Refused> {
        Compound::end(self)
    }
}

/// A map key: text as text; anything else (serde_json quotes numbers and
/// booleans, and refuses the rest) is left to serde_json.
struct Key<'a> {
    out: &'a mut Vec<u8>,
}

macro_rules! refuse {
    ($($method:ident($($ty:ty),*);)*) => {
        $(
            fn $method(self, $(_: $ty),*) -> Result<(), Refused> {
                Err(Refused)
            }
        )*
    };
}

impl ser::Serializer for Key<'_> {
    type Ok = ();
    type Error = Refused;
    type SerializeSeq = Impossible<(), Refused>;
    type SerializeTuple = Impossible<(), Refused>;
    type SerializeTupleStruct = Impossible<(), Refused>;
    type SerializeTupleVariant = Impossible<(), Refused>;
    type SerializeMap = Impossible<(), Refused>;
    type SerializeStruct = Impossible<(), Refused>;
    type SerializeStructVariant = Impossible<(), Refused>;

    fn serialize_str(self, v: &str) -> Result<(), Refused> {
        string(self.out, v);
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), Refused> {
        string(self.out, v.encode_utf8(&mut [0u8; 4]));
        Ok(())
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Refused> {
        string(self.out, variant);
        Ok(())
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<(), Refused> {
        if private(name) {
            return Err(Refused);
        }
        value.serialize(self)
    }

    refuse! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_i128(i128);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_u128(u128);
        serialize_f32(f32);
        serialize_f64(f64);
        serialize_bytes(&[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(&'static str);
    }

    fn serialize_some<T: ?Sized + Serialize>(self, _value: &T) -> Result<(), Refused> {
        Err(Refused)
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<(), Refused> {
        Err(Refused)
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, Refused> {
        Err(Refused)
    }

    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Refused> {
        Err(Refused)
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, Refused> {
        Err(Refused)
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Refused> {
        Err(Refused)
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Refused> {
        Err(Refused)
    }

    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, Refused> {
        Err(Refused)
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Refused> {
        Err(Refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The writer's text, or `None` where it leaves the value to serde_json.
    fn ours<T: Serialize>(value: &T) -> Option<String> {
        let mut out = Vec::new();
        write(&mut out, value).ok()?;
        Some(String::from_utf8(out).unwrap())
    }

    fn same<T: Serialize + std::fmt::Debug>(value: &T) {
        let theirs = serde_json::to_string(value).unwrap();
        assert_eq!(ours(value).as_deref(), Some(theirs.as_str()), "{value:?}");
    }

    #[derive(Serialize, Debug)]
    struct Unit;

    #[derive(Serialize, Debug)]
    struct Newtype(u32);

    #[derive(Serialize, Debug)]
    struct Tuple(i8, String);

    #[derive(Serialize, Debug)]
    struct Empty {}

    #[derive(Serialize, Debug)]
    enum Variant {
        Unit,
        Newtype(Vec<u8>),
        Tuple(u8, bool),
        EmptyTuple(),
        Struct { a: Option<u8>, b: char },
        EmptyStruct {},
    }

    #[derive(Serialize, Debug)]
    struct Everything {
        text: String,
        unicode: String,
        escapes: String,
        b: bool,
        i: (i8, i16, i32, i64, i128),
        u: (u8, u16, u32, u64, u128),
        f: (f32, f64, f64, f64, f64, f32),
        c: char,
        opt: (Option<String>, Option<u8>),
        unit: (),
        unit_struct: Unit,
        newtype: Newtype,
        tuple: Tuple,
        empty: Empty,
        empty_vec: Vec<u8>,
        nested: Vec<Vec<Option<bool>>>,
        variants: Vec<Variant>,
        map: BTreeMap<String, Vec<Variant>>,
        empty_map: BTreeMap<String, u8>,
        #[serde(with = "serde_bytes_like")]
        bytes: Vec<u8>,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u8>,
        #[serde(flatten)]
        flat: BTreeMap<String, String>,
    }

    /// Bytes through `serialize_bytes`.
    mod serde_bytes_like {
        pub(super) fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }
    }

    #[test]
    fn writes_what_serde_json_writes() {
        let all_bytes: String = (0u8..0x80).map(char::from).collect();
        let value = Everything {
            text: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
            unicode: "caf\u{e9} \u{1f600} \u{2028} \u{7f}".into(),
            escapes: format!("{all_bytes} \"quoted\" back\\slash\n"),
            b: true,
            i: (-8, -16, i32::MIN, i64::MIN, i128::MIN),
            u: (8, 16, u32::MAX, u64::MAX, u128::MAX),
            f: (1.5, -0.0, 1e300, f64::NAN, f64::INFINITY, f32::NEG_INFINITY),
            c: '"',
            opt: (None, Some(3)),
            unit: (),
            unit_struct: Unit,
            newtype: Newtype(7),
            tuple: Tuple(-1, "t".into()),
            empty: Empty {},
            empty_vec: vec![],
            nested: vec![vec![], vec![None, Some(false)]],
            variants: vec![
                Variant::Unit,
                Variant::Newtype(vec![1, 2]),
                Variant::Tuple(1, false),
                Variant::EmptyTuple(),
                Variant::Struct { a: None, b: '\n' },
                Variant::EmptyStruct {},
            ],
            map: BTreeMap::from([("k\"ey".into(), vec![Variant::Unit]), ("".into(), vec![])]),
            empty_map: BTreeMap::new(),
            bytes: vec![0, 1, 255],
            skipped: None,
            flat: BTreeMap::from([("extra".into(), "x".into())]),
        };
        same(&value);
        same(&"plain");
        same(&all_bytes);
        for len in 0..=20 {
            for pos in 0..len {
                for b in ['\0', '\u{1f}', '"', '\\', '\u{7f}', '\u{e9}'] {
                    let mut s: Vec<char> = vec!['x'; len];
                    s[pos] = b;
                    same(&s.into_iter().collect::<String>());
                }
            }
        }
    }

    #[test]
    fn leaves_to_serde_json_what_it_does_not_write() {
        // Map keys that are not text: serde_json quotes them, or refuses.
        assert_eq!(ours(&BTreeMap::from([(1, 2)])), None);
        assert_eq!(ours(&BTreeMap::from([(true, 2)])), None);
        assert_eq!(ours(&BTreeMap::from([((1, 2), 3)])), None);
        // serde_json's own value types come through as they are.
        same(&serde_json::json!({"a": [1, 2.5, null, "x"], "b": {"c": true}}));
        // An error raised by the value itself.
        struct Fails;
        impl Serialize for Fails {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(ser::Error::custom("no"))
            }
        }
        assert_eq!(ours(&Fails), None);
    }

    #[test]
    fn plain_text_is_told_from_text_json_escapes() {
        let escaped = |t: &[u8]| t.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
        let mut cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"payment".to_vec(),
            b"bench.s1".to_vec(),
            "caf\u{e9} \u{1f600}".as_bytes().to_vec(),
            b"\x7f\x20~".to_vec(),
        ];
        // Every byte that matters, at every position of words and tails.
        for len in 1..=17 {
            for pos in 0..len {
                for b in [
                    0x00, 0x01, 0x1f, 0x20, 0x21, b'"', 0x23, b'\\', 0x5b, 0x5d, 0x7f, 0x80, 0xff,
                ] {
                    let mut t = vec![b'x'; len];
                    t[pos] = b;
                    cases.push(t);
                }
            }
        }
        for t in cases {
            assert_eq!(plain(&t), !escaped(&t), "{t:?}");
        }
    }
}
