//! The protobuf wire format, top level only: read, write and edit fields
//! without decoding the message or copying the fields left alone.
//!
//! Decoding a whole message and re-encoding it would drop the fields a
//! schema does not know (a newer peer's additions) and copy everything twice.
//! These functions walk the top level and copy untouched fields byte for
//! byte. Shared by opamp-gateway and its policy SDK (`opamp-policy`).
//!
//! ```
//! use opamp_wire::{last, set_field, Value};
//!
//! let msg = [0x08, 0x96, 0x01, 0x12, 2, b'h', b'i']; // 1: 150, 2: "hi"
//! assert_eq!(last(&msg, 1), Some(Value::Varint(150)));
//! let edited = set_field(&msg, 2, Some(Value::Bytes(b"yo"))).unwrap();
//! assert_eq!(edited, [0x08, 0x96, 0x01, 0x12, 2, b'y', b'o']);
//! ```

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;

/// A field value as found on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

/// One top-level field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub number: u32,
    pub value: Value<'a>,
    /// The whole field as encoded: tag, length (if any) and value.
    pub raw: &'a [u8],
}

/// The input is not a well-formed protobuf, or a field has an unexpected
/// wire type; `offset` is where that field starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed {
    pub offset: usize,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed protobuf at byte {}", self.offset)
    }
}

impl core::error::Error for Malformed {}

/// The varint at `buf[*pos..]`, advancing `pos` past it. Accepts what prost
/// accepts: at most 10 bytes, the 10th no more than 1.
fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let rest = buf.get(*pos..)?;
    // Tags and small values: one byte.
    if let Some(&b) = rest.first().filter(|&&b| b < 0x80) {
        *pos += 1;
        return Some(u64::from(b));
    }
    let mut value = 0;
    for (i, &b) in rest.iter().take(10).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            if i == 9 && b > 1 {
                return None;
            }
            *pos += i + 1;
            return Some(value);
        }
    }
    None
}

/// The `N` bytes at `buf[*pos..]`, advancing `pos` past them.
fn fixed<const N: usize>(buf: &[u8], pos: &mut usize) -> Option<[u8; N]> {
    let bytes = buf.get(*pos..)?.first_chunk::<N>()?;
    *pos += N;
    Some(*bytes)
}

/// Iterates the top-level fields of an encoded message. After an `Err`, it
/// yields nothing more.
pub fn fields(buf: &[u8]) -> Fields<'_> {
    Fields { buf, pos: 0, failed: false }
}

/// See [`fields`].
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let out = self.parse();
        self.failed = out.is_err();
        Some(out)
    }
}

impl core::iter::FusedIterator for Fields<'_> {}

impl<'a> Fields<'a> {
    /// Groups (wire types 3/4) are refused, as is field number 0.
    fn parse(&mut self) -> Result<Field<'a>, Malformed> {
        let buf = self.buf;
        let start = self.pos;
        let bad = Malformed { offset: start };
        let mut pos = start;
        let key = varint(buf, &mut pos).ok_or(bad)?;
        let number = u32::try_from(key >> 3).map_err(|_| bad)?;
        if number == 0 {
            return Err(bad);
        }
        let value = match key & 7 {
            0 => Value::Varint(varint(buf, &mut pos).ok_or(bad)?),
            1 => Value::Fixed64(u64::from_le_bytes(fixed(buf, &mut pos).ok_or(bad)?)),
            2 => {
                let len = usize::try_from(varint(buf, &mut pos).ok_or(bad)?).map_err(|_| bad)?;
                let end = pos.checked_add(len).ok_or(bad)?;
                let b = buf.get(pos..end).ok_or(bad)?;
                pos = end;
                Value::Bytes(b)
            }
            5 => Value::Fixed32(u32::from_le_bytes(fixed(buf, &mut pos).ok_or(bad)?)),
            _ => return Err(bad),
        };
        self.pos = pos;
        Ok(Field { number, value, raw: &buf[start..pos] })
    }
}

/// Calls `each(number, value)` for every top-level field of `buf`; stops
/// early when `each` returns `false`. On a malformed message, `each` has seen
/// the fields before the damage.
pub fn walk<'a>(buf: &'a [u8], mut each: impl FnMut(u32, Value<'a>) -> bool) -> Result<(), Malformed> {
    for f in fields(buf) {
        let f = f?;
        if !each(f.number, f.value) {
            break;
        }
    }
    Ok(())
}

/// The last occurrence of field `number` (the one protobuf keeps for a
/// scalar). On a malformed message, what was found before the damage.
pub fn last(buf: &[u8], number: u32) -> Option<Value<'_>> {
    fields(buf).map_while(Result::ok).filter(|f| f.number == number).last().map(|f| f.value)
}

/// Appends a varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends field `number` holding `value`, in `value`'s wire type.
pub fn put_field(out: &mut Vec<u8>, number: u32, value: Value<'_>) {
    let tag = |wire_type: u64| (u64::from(number) << 3) | wire_type;
    match value {
        Value::Varint(v) => {
            put_varint(out, tag(0));
            put_varint(out, v);
        }
        Value::Fixed64(v) => {
            put_varint(out, tag(1));
            out.extend_from_slice(&v.to_le_bytes());
        }
        Value::Bytes(b) => {
            put_varint(out, tag(2));
            put_varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
        Value::Fixed32(v) => {
            put_varint(out, tag(5));
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// Appends a length-delimited field: `put_field` with [`Value::Bytes`].
pub fn put_bytes_field(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    put_field(out, number, Value::Bytes(payload));
}

/// A copy of `buf` with field `number` set to `value` where its first
/// occurrence was (appended if absent; later occurrences, which protobuf
/// would merge in, are dropped), or removed everywhere when `value` is
/// `None`. Every other field is copied byte for byte.
pub fn set_field(buf: &[u8], number: u32, value: Option<Value<'_>>) -> Result<Vec<u8>, Malformed> {
    let extra = match value {
        Some(Value::Bytes(b)) => b.len(),
        _ => 0,
    };
    let mut out = Vec::with_capacity(buf.len() + extra + 16);
    let mut pending = value;
    for f in fields(buf) {
        let f = f?;
        if f.number != number {
            out.extend_from_slice(f.raw);
        } else if let Some(v) = pending.take() {
            put_field(&mut out, number, v);
        }
    }
    if let Some(v) = pending {
        put_field(&mut out, number, v);
    }
    Ok(out)
}

/// A copy of `buf` whose length-delimited field `number` is `payload`
/// ([`set_field`] with [`Value::Bytes`]).
pub fn replace_field(buf: &[u8], number: u32, payload: &[u8]) -> Result<Vec<u8>, Malformed> {
    set_field(buf, number, Some(Value::Bytes(payload)))
}

/// A copy of `buf` without the top-level fields in `numbers`.
pub fn without_fields(buf: &[u8], numbers: &[u32]) -> Result<Vec<u8>, Malformed> {
    let mut out = Vec::with_capacity(buf.len());
    for f in fields(buf) {
        let f = f?;
        if !numbers.contains(&f.number) {
            out.extend_from_slice(f.raw);
        }
    }
    Ok(out)
}

/// Rewrites every occurrence of the length-delimited field `number` with
/// `f`, copying everything else byte for byte. `f` answers `None` to keep a
/// value as it is; the result is `None` when nothing changed (so the caller
/// can forward the original untouched). A field `number` that is not
/// length-delimited is [`Malformed`].
///
/// Nest it to reach into embedded messages without decoding them: only the
/// bytes on the path to a changed value are rebuilt.
pub fn rewrite_field(
    buf: &[u8],
    number: u32,
    mut f: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>, Malformed>,
) -> Result<Option<Vec<u8>>, Malformed> {
    let mut out: Option<Vec<u8>> = None;
    let mut at = 0; // `buf[..at]` is in `out` (once it exists)
    for field in fields(buf) {
        let field = field?;
        let start = at;
        at += field.raw.len();
        if field.number != number {
            if let Some(out) = out.as_mut() {
                out.extend_from_slice(field.raw);
            }
            continue;
        }
        let Value::Bytes(value) = field.value else {
            return Err(Malformed { offset: start });
        };
        match f(value)? {
            Some(new) => {
                let out = out.get_or_insert_with(|| {
                    let mut o = Vec::with_capacity(buf.len() + new.len());
                    o.extend_from_slice(&buf[..start]);
                    o
                });
                put_bytes_field(out, number, &new);
            }
            None => {
                if let Some(out) = out.as_mut() {
                    out.extend_from_slice(field.raw);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
