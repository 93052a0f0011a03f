//! Top-level protobuf surgery without decoding.
//!
//! Decoding a whole `ServerToAgent` with prost and re-encoding it would drop
//! fields this crate's proto does not know (a newer server's additions) and
//! cost a full copy each way. These helpers walk only the top level and copy
//! the untouched fields byte for byte.

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

/// The input is not a well-formed protobuf; `offset` is where it breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed {
    pub offset: usize,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed protobuf at byte {}", self.offset)
    }
}

impl std::error::Error for Malformed {}

/// The varint at `buf[*pos..]` (prost's decoder), advancing `pos` past it.
fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut rest = buf.get(*pos..)?;
    let value = prost::encoding::decode_varint(&mut rest).ok()?;
    *pos = buf.len() - rest.len();
    Some(value)
}

/// Iterates the top-level fields of an encoded message.
pub fn fields(buf: &[u8]) -> Fields<'_> {
    Fields { buf, pos: 0, failed: false }
}

/// See [`fields`].
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
        let start = self.pos;
        let out = self.parse(start);
        if out.is_err() {
            self.failed = true;
        }
        Some(out)
    }
}

impl<'a> Fields<'a> {
    fn parse(&mut self, start: usize) -> Result<Field<'a>, Malformed> {
        let buf = self.buf;
        let bad = Malformed { offset: start };
        let mut pos = start;
        let key = varint(buf, &mut pos).ok_or(bad)?;
        let number = u32::try_from(key >> 3).map_err(|_| bad)?;
        if number == 0 {
            return Err(bad);
        }
        let take = |pos: &mut usize, n: usize| -> Result<&'a [u8], Malformed> {
            let end = pos.checked_add(n).ok_or(bad)?;
            let s = buf.get(*pos..end).ok_or(bad)?;
            *pos = end;
            Ok(s)
        };
        let value = match key & 7 {
            0 => Value::Varint(varint(buf, &mut pos).ok_or(bad)?),
            1 => Value::Fixed64(u64::from_le_bytes(take(&mut pos, 8)?.try_into().map_err(|_| bad)?)),
            2 => {
                let len = usize::try_from(varint(buf, &mut pos).ok_or(bad)?).map_err(|_| bad)?;
                Value::Bytes(take(&mut pos, len)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(take(&mut pos, 4)?.try_into().map_err(|_| bad)?)),
            _ => return Err(bad),
        };
        self.pos = pos;
        Ok(Field { number, value, raw: &buf[start..pos] })
    }
}

/// Appends a varint.
pub fn put_varint(out: &mut Vec<u8>, v: u64) {
    prost::encoding::encode_varint(v, out);
}

/// Appends a length-delimited field.
pub fn put_bytes_field(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    put_varint(out, (u64::from(number) << 3) | 2);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
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

/// A copy of `buf` whose length-delimited field `number` is `payload`: the
/// first occurrence is replaced in place, later ones (which protobuf would
/// merge into it) are dropped. Appended if absent.
pub fn replace_field(buf: &[u8], number: u32, payload: &[u8]) -> Result<Vec<u8>, Malformed> {
    let mut out = Vec::with_capacity(buf.len() + payload.len());
    let mut done = false;
    for f in fields(buf) {
        let f = f?;
        if f.number != number {
            out.extend_from_slice(f.raw);
        } else if !done {
            put_bytes_field(&mut out, number, payload);
            done = true;
        }
    }
    if !done {
        put_bytes_field(&mut out, number, payload);
    }
    Ok(out)
}

/// Rewrites every occurrence of the length-delimited field `number` with
/// `f`, copying everything else byte for byte. `f` answers `None` to keep a
/// value as it is; the result is `None` when nothing changed (so the caller
/// can forward the original untouched).
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
mod tests {
    use super::*;

    // 1: "ab", 2: varint 300, 5: "xyz", 5: "w"
    const MSG: &[u8] = &[0x0a, 2, b'a', b'b', 0x10, 0xac, 0x02, 0x2a, 3, b'x', b'y', b'z', 0x2a, 1, b'w'];

    #[test]
    fn rewrites_only_what_changes() {
        // Field 5 twice: the first is rewritten, the second kept.
        let out = rewrite_field(MSG, 5, |v| Ok((v == b"xyz").then(|| b"Q".to_vec()))).unwrap().unwrap();
        assert_eq!(out, [0x0a, 2, b'a', b'b', 0x10, 0xac, 0x02, 0x2a, 1, b'Q', 0x2a, 1, b'w']);
        assert_eq!(rewrite_field(MSG, 5, |_| Ok(None)).unwrap(), None);
        assert_eq!(rewrite_field(MSG, 9, |_| Ok(Some(vec![]))).unwrap(), None);
        // Nested: field 1 of the embedded message in field 5.
        let outer = [0x2a, 4, 0x0a, 2, b'h', b'i', 0x10, 1];
        let out = rewrite_field(&outer, 5, |inner| rewrite_field(inner, 1, |_| Ok(Some(b"bye".to_vec())))).unwrap();
        assert_eq!(out.unwrap(), [0x2a, 5, 0x0a, 3, b'b', b'y', b'e', 0x10, 1]);
        // A varint where bytes were expected, or a broken buffer.
        assert!(rewrite_field(MSG, 2, |_| Ok(None)).is_err());
        assert!(rewrite_field(&[0x2a, 9], 5, |_| Ok(None)).is_err());
    }

    #[test]
    fn iterates_and_edits() {
        let nums: Vec<u32> = fields(MSG).map(|f| f.unwrap().number).collect();
        assert_eq!(nums, [1, 2, 5, 5]);
        assert_eq!(without_fields(MSG, &[5]).unwrap(), &MSG[..7]);
        let r = replace_field(MSG, 5, b"Q").unwrap();
        assert_eq!(r, [&MSG[..7], &[0x2a, 1, b'Q']].concat());
        let r = replace_field(&MSG[..7], 5, b"Q").unwrap();
        assert_eq!(r, [&MSG[..7], &[0x2a, 1, b'Q']].concat());
        assert!(without_fields(&[0x0a, 9, 1], &[]).is_err());
    }
}
