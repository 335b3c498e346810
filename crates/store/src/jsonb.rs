//! Serde values encoded as SQLite's JSONB, the binary form of JSON that
//! SQLite's JSON functions read without parsing (`doc/jsonb.md` in SQLite's
//! sources; a stable format since 3.45). The SQLite store binds its write
//! procedures' parameter documents in this form: the one writer thread then
//! no longer turns JSON text into JSONB for every call (6% of its time in
//! S3), and strings come out of `->>` as they went in, with nothing to
//! unescape (most of another 6%). The same values as [`serde_json`] writes:
//! what the procedures read does not depend on the encoding.
//!
//! The encoding. Every element is a header and a payload. The header's first
//! byte holds the element's type in its low four bits and, in its high four,
//! the payload's size (0 to 11) or how many bytes after it hold the size
//! (12, 13, 14, 15: one, two, four, eight, big-endian). Numbers are their
//! JSON text; strings their UTF-8, typed TEXT when no character would need
//! escaping in JSON or SQL and TEXTRAW otherwise (SQLite escapes those only
//! if it renders the value as JSON text); an array holds its elements, an
//! object its keys and values in turn. A container's size is known only
//! once it is written, so it gets a four-byte size, filled in at its end
//! (SQLite accepts a header longer than needed).

use serde::Serialize;
use serde::ser;

use crate::{Error, Result};

/// `value` as a JSONB document, as SQLite's `jsonb()` would make it of
/// `serde_json::to_string(value)` (numbers and strings typed as described in
/// the module's documentation).
pub(crate) fn to_jsonb<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    value
        .serialize(&mut Encoder { out: &mut out })
        .map_err(|e| Error::Database(format!("cannot encode JSONB: {}", e.0)))?;
    Ok(out)
}

/// Element types (the low four bits of a header's first byte).
const NULL: u8 = 0;
const TRUE: u8 = 1;
const FALSE: u8 = 2;
const INT: u8 = 3;
const FLOAT: u8 = 5;
/// A string none of whose characters needs escaping.
const TEXT: u8 = 7;
/// A string with characters that need escaping in JSON text, unescaped.
const TEXTRAW: u8 = 10;
const ARRAY: u8 = 11;
const OBJECT: u8 = 12;

/// The high four bits of a header followed by a four-byte size.
const SIZE_IN_4_BYTES: u8 = 14 << 4;

/// An encoding failure: a value JSON cannot hold (a map key that is not a
/// string or a number, a payload over 4 GiB).
#[derive(Debug)]
struct EncodeError(String);

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EncodeError {}

impl ser::Error for EncodeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        EncodeError(msg.to_string())
    }
}

/// Whether SQLite's JSON functions may copy `s` into JSON text as it is: no
/// control character, `"`, `'` or `\` (SQLite's `jsonIsOk` table).
fn needs_no_escape(s: &str) -> bool {
    s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\'' && b != b'\\')
}

/// Appends elements to `out`.
struct Encoder<'a> {
    out: &'a mut Vec<u8>,
}

impl Encoder<'_> {
    /// An element of `kind` whose payload is `payload`, with the shortest
    /// header.
    fn element(&mut self, kind: u8, payload: &[u8]) -> std::result::Result<(), EncodeError> {
        let n = payload.len();
        if n <= 11 {
            self.out.push(((n as u8) << 4) | kind);
        } else if let Ok(n) = u8::try_from(n) {
            self.out.extend_from_slice(&[(12 << 4) | kind, n]);
        } else if let Ok(n) = u16::try_from(n) {
            self.out.push((13 << 4) | kind);
            self.out.extend_from_slice(&n.to_be_bytes());
        } else if let Ok(n) = u32::try_from(n) {
            self.out.push(SIZE_IN_4_BYTES | kind);
            self.out.extend_from_slice(&n.to_be_bytes());
        } else {
            return Err(EncodeError(format!("a JSON value of {n} bytes")));
        }
        self.out.extend_from_slice(payload);
        Ok(())
    }

    fn string(&mut self, s: &str) -> std::result::Result<(), EncodeError> {
        let kind = if needs_no_escape(s) { TEXT } else { TEXTRAW };
        self.element(kind, s.as_bytes())
    }

    /// The header of a container whose payload follows; its size is filled
    /// in by [`Container::end`].
    fn open(&mut self, kind: u8) -> Container<'_> {
        let header = self.out.len();
        self.out
            .extend_from_slice(&[SIZE_IN_4_BYTES | kind, 0, 0, 0, 0]);
        Container {
            enc: Encoder {
                out: &mut *self.out,
            },
            header,
        }
    }
}

/// An array or object being written.
struct Container<'a> {
    enc: Encoder<'a>,
    /// Where its header starts.
    header: usize,
}

impl Container<'_> {
    fn end(self) -> std::result::Result<(), EncodeError> {
        let size = self.enc.out.len() - self.header - 5;
        let size = u32::try_from(size)
            .map_err(|_| EncodeError(format!("a JSON container of {size} bytes")))?;
        self.enc.out[self.header + 1..self.header + 5].copy_from_slice(&size.to_be_bytes());
        Ok(())
    }

    fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> std::result::Result<(), EncodeError> {
        value.serialize(&mut Encoder {
            out: &mut *self.enc.out,
        })
    }

    fn key<T: Serialize + ?Sized>(&mut self, key: &T) -> std::result::Result<(), EncodeError> {
        key.serialize(KeyEncoder(&mut self.enc))
    }
}

macro_rules! integers {
    ($($method:ident: $t:ty),+ $(,)?) => {
        $(fn $method(self, v: $t) -> std::result::Result<(), EncodeError> {
            self.element(INT, itoa::Buffer::new().format(v).as_bytes())
        })+
    };
}

impl<'a, 'b> ser::Serializer for &'a mut Encoder<'b> {
    type Ok = ();
    type Error = EncodeError;
    type SerializeSeq = Container<'a>;
    type SerializeTuple = Container<'a>;
    type SerializeTupleStruct = Container<'a>;
    type SerializeTupleVariant = Variant<'a>;
    type SerializeMap = Container<'a>;
    type SerializeStruct = Container<'a>;
    type SerializeStructVariant = Variant<'a>;

    fn serialize_bool(self, v: bool) -> std::result::Result<(), EncodeError> {
        self.element(if v { TRUE } else { FALSE }, &[])
    }

    integers!(
        serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_i128: i128, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
        serialize_u64: u64, serialize_u128: u128,
    );

    fn serialize_f32(self, v: f32) -> std::result::Result<(), EncodeError> {
        if v.is_finite() {
            self.element(FLOAT, ryu::Buffer::new().format_finite(v).as_bytes())
        } else {
            // As serde_json: JSON has no NaN or infinity.
            self.serialize_unit()
        }
    }

    fn serialize_f64(self, v: f64) -> std::result::Result<(), EncodeError> {
        if v.is_finite() {
            self.element(FLOAT, ryu::Buffer::new().format_finite(v).as_bytes())
        } else {
            self.serialize_unit()
        }
    }

    fn serialize_char(self, v: char) -> std::result::Result<(), EncodeError> {
        self.string(v.encode_utf8(&mut [0; 4]))
    }

    fn serialize_str(self, v: &str) -> std::result::Result<(), EncodeError> {
        self.string(v)
    }

    fn serialize_bytes(self, v: &[u8]) -> std::result::Result<(), EncodeError> {
        // As serde_json: an array of numbers.
        let mut seq = self.open(ARRAY);
        for b in v {
            seq.value(b)?;
        }
        seq.end()
    }

    fn serialize_none(self) -> std::result::Result<(), EncodeError> {
        self.serialize_unit()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> std::result::Result<(), EncodeError> {
        v.serialize(self)
    }

    fn serialize_unit(self) -> std::result::Result<(), EncodeError> {
        self.element(NULL, &[])
    }

    fn serialize_unit_struct(self, _: &'static str) -> std::result::Result<(), EncodeError> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> std::result::Result<(), EncodeError> {
        self.string(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> std::result::Result<(), EncodeError> {
        v.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> std::result::Result<(), EncodeError> {
        let mut object = self.open(OBJECT);
        object.enc.string(variant)?;
        object.value(v)?;
        object.end()
    }

    fn serialize_seq(self, _: Option<usize>) -> std::result::Result<Container<'a>, EncodeError> {
        Ok(self.open(ARRAY))
    }

    fn serialize_tuple(self, _: usize) -> std::result::Result<Container<'a>, EncodeError> {
        Ok(self.open(ARRAY))
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Container<'a>, EncodeError> {
        Ok(self.open(ARRAY))
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> std::result::Result<Variant<'a>, EncodeError> {
        Variant::open(self, variant, ARRAY)
    }

    fn serialize_map(self, _: Option<usize>) -> std::result::Result<Container<'a>, EncodeError> {
        Ok(self.open(OBJECT))
    }

    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Container<'a>, EncodeError> {
        Ok(self.open(OBJECT))
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> std::result::Result<Variant<'a>, EncodeError> {
        Variant::open(self, variant, OBJECT)
    }
}

/// The serde traits of an array: each element a value of the container.
macro_rules! array {
    ($($trait:ident::$method:ident),+ $(,)?) => {
        $(impl ser::$trait for Container<'_> {
            type Ok = ();
            type Error = EncodeError;

            fn $method<T: Serialize + ?Sized>(
                &mut self,
                v: &T,
            ) -> std::result::Result<(), EncodeError> {
                self.value(v)
            }

            fn end(self) -> std::result::Result<(), EncodeError> {
                Container::end(self)
            }
        })+
    };
}

array!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
);

impl ser::SerializeMap for Container<'_> {
    type Ok = ();
    type Error = EncodeError;

    fn serialize_key<T: Serialize + ?Sized>(
        &mut self,
        key: &T,
    ) -> std::result::Result<(), EncodeError> {
        self.key(key)
    }

    fn serialize_value<T: Serialize + ?Sized>(
        &mut self,
        v: &T,
    ) -> std::result::Result<(), EncodeError> {
        self.value(v)
    }

    fn end(self) -> std::result::Result<(), EncodeError> {
        Container::end(self)
    }
}

impl ser::SerializeStruct for Container<'_> {
    type Ok = ();
    type Error = EncodeError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> std::result::Result<(), EncodeError> {
        self.enc.string(key)?;
        self.value(v)
    }

    fn end(self) -> std::result::Result<(), EncodeError> {
        Container::end(self)
    }
}

/// An enum variant with fields: `{variant: [fields]}` or `{variant: {fields}}`,
/// as serde_json writes them.
struct Variant<'a> {
    /// The outer object.
    outer: Container<'a>,
    /// Where the inner container's header starts.
    inner: usize,
}

impl<'a> Variant<'a> {
    fn open(
        enc: &'a mut Encoder<'_>,
        variant: &str,
        kind: u8,
    ) -> std::result::Result<Variant<'a>, EncodeError> {
        let mut outer = enc.open(OBJECT);
        outer.enc.string(variant)?;
        let inner = outer.enc.out.len();
        outer
            .enc
            .out
            .extend_from_slice(&[SIZE_IN_4_BYTES | kind, 0, 0, 0, 0]);
        Ok(Variant { outer, inner })
    }

    fn end(self) -> std::result::Result<(), EncodeError> {
        let inner = Container {
            enc: Encoder {
                out: &mut *self.outer.enc.out,
            },
            header: self.inner,
        };
        inner.end()?;
        self.outer.end()
    }
}

impl ser::SerializeTupleVariant for Variant<'_> {
    type Ok = ();
    type Error = EncodeError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        v: &T,
    ) -> std::result::Result<(), EncodeError> {
        self.outer.value(v)
    }

    fn end(self) -> std::result::Result<(), EncodeError> {
        Variant::end(self)
    }
}

impl ser::SerializeStructVariant for Variant<'_> {
    type Ok = ();
    type Error = EncodeError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> std::result::Result<(), EncodeError> {
        self.outer.enc.string(key)?;
        self.outer.value(v)
    }

    fn end(self) -> std::result::Result<(), EncodeError> {
        Variant::end(self)
    }
}

/// Writes an object's key: a string, or a number or boolean as its text
/// (as serde_json writes map keys); nothing else has a JSON key form.
struct KeyEncoder<'a, 'b>(&'a mut Encoder<'b>);

impl KeyEncoder<'_, '_> {
    fn refuse(what: &str) -> EncodeError {
        EncodeError(format!(
            "a map key must be a string or a number, not {what}"
        ))
    }
}

macro_rules! integer_keys {
    ($($method:ident: $t:ty),+ $(,)?) => {
        $(fn $method(self, v: $t) -> std::result::Result<(), EncodeError> {
            self.0.string(itoa::Buffer::new().format(v))
        })+
    };
}

impl ser::Serializer for KeyEncoder<'_, '_> {
    type Ok = ();
    type Error = EncodeError;
    type SerializeSeq = ser::Impossible<(), EncodeError>;
    type SerializeTuple = ser::Impossible<(), EncodeError>;
    type SerializeTupleStruct = ser::Impossible<(), EncodeError>;
    type SerializeTupleVariant = ser::Impossible<(), EncodeError>;
    type SerializeMap = ser::Impossible<(), EncodeError>;
    type SerializeStruct = ser::Impossible<(), EncodeError>;
    type SerializeStructVariant = ser::Impossible<(), EncodeError>;

    fn serialize_bool(self, v: bool) -> std::result::Result<(), EncodeError> {
        self.0.string(if v { "true" } else { "false" })
    }

    integer_keys!(
        serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_i128: i128, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
        serialize_u64: u64, serialize_u128: u128,
    );

    fn serialize_f32(self, v: f32) -> std::result::Result<(), EncodeError> {
        self.serialize_f64(f64::from(v))
    }

    fn serialize_f64(self, v: f64) -> std::result::Result<(), EncodeError> {
        if v.is_finite() {
            self.0.string(ryu::Buffer::new().format_finite(v))
        } else {
            Err(Self::refuse("a number that is not finite"))
        }
    }

    fn serialize_char(self, v: char) -> std::result::Result<(), EncodeError> {
        self.0.string(v.encode_utf8(&mut [0; 4]))
    }

    fn serialize_str(self, v: &str) -> std::result::Result<(), EncodeError> {
        self.0.string(v)
    }

    fn serialize_bytes(self, _: &[u8]) -> std::result::Result<(), EncodeError> {
        Err(Self::refuse("bytes"))
    }

    fn serialize_none(self) -> std::result::Result<(), EncodeError> {
        Err(Self::refuse("null"))
    }

    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> std::result::Result<(), EncodeError> {
        v.serialize(self)
    }

    fn serialize_unit(self) -> std::result::Result<(), EncodeError> {
        Err(Self::refuse("null"))
    }

    fn serialize_unit_struct(self, _: &'static str) -> std::result::Result<(), EncodeError> {
        Err(Self::refuse("null"))
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> std::result::Result<(), EncodeError> {
        self.0.string(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> std::result::Result<(), EncodeError> {
        v.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> std::result::Result<(), EncodeError> {
        Err(Self::refuse("an enum variant with a value"))
    }

    fn serialize_seq(
        self,
        _: Option<usize>,
    ) -> std::result::Result<Self::SerializeSeq, EncodeError> {
        Err(Self::refuse("an array"))
    }

    fn serialize_tuple(self, _: usize) -> std::result::Result<Self::SerializeTuple, EncodeError> {
        Err(Self::refuse("an array"))
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeTupleStruct, EncodeError> {
        Err(Self::refuse("an array"))
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeTupleVariant, EncodeError> {
        Err(Self::refuse("an enum variant with fields"))
    }

    fn serialize_map(
        self,
        _: Option<usize>,
    ) -> std::result::Result<Self::SerializeMap, EncodeError> {
        Err(Self::refuse("an object"))
    }

    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeStruct, EncodeError> {
        Err(Self::refuse("an object"))
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeStructVariant, EncodeError> {
        Err(Self::refuse("an enum variant with fields"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sqlx::{Connection, Row, SqliteConnection};

    /// What SQLite makes of `blob`: whether it is strictly valid JSONB, and
    /// its JSON text.
    async fn read_back(conn: &mut SqliteConnection, blob: &[u8]) -> (bool, String) {
        let row = sqlx::query("SELECT json_valid(?1, 8) AS valid, json(?1) AS text")
            .bind(blob)
            .fetch_one(conn)
            .await
            .expect("SQLite reads the document");
        (row.get("valid"), row.get("text"))
    }

    #[tokio::test]
    async fn sqlite_reads_the_values_serde_json_writes() {
        let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        let long = "line \"one\"\n\tline 'two' \\ é ✓ ".repeat(40);
        let values = [
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(-17),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(0.5),
            json!(-1.25e-7),
            json!(1e300),
            json!(""),
            json!("plain text"),
            json!(long),
            json!("\u{1}\u{1f}"),
            json!([]),
            json!({}),
            json!([1, "two", [3.5, null], {"four": false}]),
            json!({"a": {"b": {"c": [long.clone(), 12]}}, "d": "x".repeat(300)}),
            json!((0..70_000).map(|i| i % 10).collect::<Vec<_>>()),
        ];
        for value in values {
            let blob = to_jsonb(&value).unwrap();
            let (valid, text) = read_back(&mut conn, &blob).await;
            assert!(valid, "strictly valid JSONB for {value}");
            let back: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(back, value, "SQLite's JSON text of the document");
        }
    }

    #[tokio::test]
    async fn strings_come_out_of_the_arrow_operator_as_they_went_in() {
        #[derive(Serialize)]
        struct Doc<'a> {
            plain: &'a str,
            quoted: &'a str,
            data: String,
            n: i64,
            cost: f64,
            missing: Option<&'a str>,
            nested: (&'a str, u32),
        }
        let data = serde_json::to_string(&json!({"text": "a \"b\"\nc"})).unwrap();
        let doc = Doc {
            plain: "run-1",
            quoted: "it's \\ \"here\"\n",
            data: data.clone(),
            n: -3,
            cost: 0.125,
            missing: None,
            nested: ("inner", 7),
        };
        let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        let row = sqlx::query(
            "SELECT ?1 ->> 'plain' AS plain, ?1 ->> 'quoted' AS quoted, ?1 ->> 'data' AS data,
                    ?1 ->> 'n' AS n, ?1 ->> 'cost' AS cost, ?1 ->> 'missing' IS NULL AS missing,
                    ?1 ->> '$.nested[0]' AS inner, ?1 ->> '$.nested[1]' AS seven,
                    typeof(?1 ->> 'n') AS n_type, typeof(?1 ->> 'cost') AS cost_type",
        )
        .bind(to_jsonb(&doc).unwrap())
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(row.get::<String, _>("plain"), "run-1");
        assert_eq!(row.get::<String, _>("quoted"), "it's \\ \"here\"\n");
        assert_eq!(row.get::<String, _>("data"), data);
        assert_eq!(row.get::<i64, _>("n"), -3);
        assert_eq!(row.get::<f64, _>("cost"), 0.125);
        assert!(row.get::<bool, _>("missing"));
        assert_eq!(row.get::<String, _>("inner"), "inner");
        assert_eq!(row.get::<i64, _>("seven"), 7);
        assert_eq!(row.get::<String, _>("n_type"), "integer");
        assert_eq!(row.get::<String, _>("cost_type"), "real");
    }

    #[test]
    fn enums_flattened_structs_and_map_keys_take_serde_json_shapes() {
        #[derive(Serialize)]
        enum E {
            Unit,
            New(u8),
            Tuple(u8, &'static str),
            Struct { a: bool },
        }
        #[derive(Serialize)]
        struct Outer {
            id: &'static str,
            #[serde(flatten)]
            inner: Inner,
        }
        #[derive(Serialize)]
        struct Inner {
            k: u8,
        }
        let map: std::collections::BTreeMap<u32, &str> = [(1, "one"), (22, "two")].into();
        // The shapes, compared through a decoding of the test's own: what
        // SQLite makes of them is the test above.
        let value = (
            [E::Unit, E::New(1), E::Tuple(2, "t"), E::Struct { a: true }],
            Outer {
                id: "x",
                inner: Inner { k: 3 },
            },
            map,
        );
        assert_eq!(
            decode(&to_jsonb(&value).unwrap()),
            serde_json::to_value(&value).unwrap()
        );
    }

    #[test]
    fn a_map_key_json_cannot_hold_is_refused() {
        let map: std::collections::BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let err = to_jsonb(&map).unwrap_err().to_string();
        assert!(
            err.contains("map key must be a string or a number"),
            "{err}"
        );
    }

    #[test]
    fn strings_are_typed_by_whether_they_need_escaping() {
        assert_eq!(to_jsonb("ab").unwrap(), [0x27, b'a', b'b']);
        assert_eq!(to_jsonb("a'").unwrap(), [0x2a, b'a', b'\'']);
        assert_eq!(to_jsonb("\n").unwrap(), [0x1a, b'\n']);
        let twelve = "x".repeat(12);
        assert_eq!(to_jsonb(&twelve).unwrap()[..2], [0xc7, 12]);
        let big = "x".repeat(300);
        assert_eq!(to_jsonb(&big).unwrap()[..3], [0xd7, 0x01, 0x2c]);
        assert_eq!(to_jsonb(&[1u8]).unwrap(), [0xeb, 0, 0, 0, 2, 0x13, b'1']);
    }

    /// A JSONB element back as a JSON value (the shapes this encoder writes).
    fn decode(blob: &[u8]) -> serde_json::Value {
        let (value, used) = element(blob);
        assert_eq!(used, blob.len(), "one element fills the document");
        value
    }

    fn element(b: &[u8]) -> (serde_json::Value, usize) {
        let (kind, code) = (b[0] & 0x0f, usize::from(b[0] >> 4));
        let (header, size) = match code {
            0..=11 => (1, code),
            12 => (2, usize::from(b[1])),
            13 => (3, usize::from(u16::from_be_bytes([b[1], b[2]]))),
            14 => (5, u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize),
            _ => panic!("an eight-byte size"),
        };
        let payload = &b[header..header + size];
        let text = || std::str::from_utf8(payload).unwrap().to_string();
        let value = match kind {
            NULL => serde_json::Value::Null,
            TRUE => json!(true),
            FALSE => json!(false),
            INT | FLOAT => serde_json::from_str(&text()).unwrap(),
            TEXT | TEXTRAW => json!(text()),
            ARRAY | OBJECT => {
                let mut items = Vec::new();
                let mut at = 0;
                while at < payload.len() {
                    let (v, n) = element(&payload[at..]);
                    items.push(v);
                    at += n;
                }
                if kind == ARRAY {
                    serde_json::Value::Array(items)
                } else {
                    let mut map = serde_json::Map::new();
                    for pair in items.chunks(2) {
                        map.insert(pair[0].as_str().unwrap().to_string(), pair[1].clone());
                    }
                    serde_json::Value::Object(map)
                }
            }
            other => panic!("element type {other}"),
        };
        (value, header + size)
    }
}
