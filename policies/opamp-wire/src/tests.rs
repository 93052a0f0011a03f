use super::*;
use alloc::vec;
use alloc::vec::Vec;

// 1: "ab", 2: varint 300, 5: "xyz", 5: "w"
const MSG: &[u8] = &[0x0a, 2, b'a', b'b', 0x10, 0xac, 0x02, 0x2a, 3, b'x', b'y', b'z', 0x2a, 1, b'w'];

fn all(buf: &[u8]) -> Vec<(u32, Value<'_>)> {
    let mut seen = Vec::new();
    walk(buf, |n, v| {
        seen.push((n, v));
        true
    })
    .unwrap();
    seen
}

#[test]
fn walks_each_wire_type_and_stops_early() {
    // field 1 varint 150, field 2 bytes "hi", field 3 fixed32, field 4 fixed64
    let buf = [0x08, 0x96, 0x01, 0x12, 0x02, b'h', b'i', 0x1d, 1, 0, 0, 0, 0x21, 2, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(
        all(&buf),
        [(1, Value::Varint(150)), (2, Value::Bytes(b"hi")), (3, Value::Fixed32(1)), (4, Value::Fixed64(2))]
    );
    let mut count = 0;
    walk(&buf, |_, _| {
        count += 1;
        false
    })
    .unwrap();
    assert_eq!(count, 1);
    assert_eq!(last(&buf, 2), Some(Value::Bytes(b"hi")));
    assert_eq!(last(MSG, 5), Some(Value::Bytes(b"w")), "the last occurrence");
}

#[test]
fn refuses_what_is_not_protobuf() {
    let err = |buf: &[u8]| walk(buf, |_, _| true).unwrap_err().offset;
    assert_eq!(err(&[0x0b]), 0, "groups are refused");
    assert_eq!(err(&[0x0c]), 0, "group ends too");
    assert_eq!(err(&[0x00]), 0, "field number 0");
    assert_eq!(err(&[0x12, 0x05, 1]), 0, "length past the end");
    assert_eq!(err(&[0x08]), 0, "value missing");
    assert_eq!(err(&[0x08, 1, 0x0d, 1, 2]), 2, "fixed32 cut short, after a good field");
    assert_eq!(err(&[0x09, 1, 2, 3]), 0, "fixed64 cut short");
    assert_eq!(err(&[0x08, 0x80]), 0, "varint cut short");
    // A tag beyond u32 field numbers.
    assert_eq!(err(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 0]), 0);
    // The fields before the damage are seen, and `last` still finds them.
    let mut seen = 0;
    assert!(walk(&[0x08, 1, 0x0b], |_, _| {
        seen += 1;
        true
    })
    .is_err());
    assert_eq!(seen, 1);
    assert_eq!(last(&[0x08, 1, 0x0b], 1), Some(Value::Varint(1)));
    let mut it = fields(&[0x0b, 0x08, 1]);
    assert!(matches!(it.next(), Some(Err(Malformed { offset: 0 }))));
    assert_eq!(it.next(), None, "nothing after an error");
}

#[test]
fn varints_as_prost_reads_them() {
    let read = |b: &[u8]| {
        let mut pos = 0;
        varint(b, &mut pos).map(|v| (v, pos))
    };
    assert_eq!(read(&[0]), Some((0, 1)));
    assert_eq!(read(&[0xac, 0x02]), Some((300, 2)));
    assert_eq!(read(&[0x80, 0x00]), Some((0, 2)), "overlong but accepted");
    let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
    assert_eq!(read(&max), Some((u64::MAX, 10)));
    assert_eq!(read(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]), None, "past u64");
    assert_eq!(read(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]), None, "11 bytes");
    assert_eq!(read(&[0x80]), None);
    for v in [0, 1, 127, 128, 300, 1 << 35, 1 << 63, u64::MAX] {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        assert_eq!(read(&out), Some((v, out.len())));
    }
}

#[test]
fn sets_and_removes_fields_keeping_the_rest() {
    // 1: varint 7, 5: "ab", 2: "x", 5: "cd"
    let buf = [0x08, 7, 0x2a, 2, b'a', b'b', 0x12, 1, b'x', 0x2a, 2, b'c', b'd'];
    assert_eq!(
        set_field(&buf, 5, Some(Value::Bytes(b"Z"))).unwrap(),
        [0x08, 7, 0x2a, 1, b'Z', 0x12, 1, b'x'],
        "first occurrence replaced in place, the later one dropped"
    );
    assert_eq!(set_field(&buf, 5, None).unwrap(), [0x08, 7, 0x12, 1, b'x']);
    assert_eq!(set_field(&buf, 9, None).unwrap(), buf, "removing an absent field changes nothing");
    assert_eq!(set_field(&buf, 3, Some(Value::Varint(300))).unwrap()[buf.len()..], [0x18, 0xac, 0x02]);
    assert_eq!(set_field(&buf, 4, Some(Value::Fixed32(1))).unwrap()[buf.len()..], [0x25, 1, 0, 0, 0]);
    assert_eq!(set_field(&buf, 4, Some(Value::Fixed64(1))).unwrap()[buf.len()..], [0x21, 1, 0, 0, 0, 0, 0, 0, 0]);
    assert!(set_field(&[0x2a, 9], 5, None).is_err());
}

#[test]
fn iterates_and_edits() {
    let nums: Vec<u32> = fields(MSG).map(|f| f.unwrap().number).collect();
    assert_eq!(nums, [1, 2, 5, 5]);
    let raws: Vec<&[u8]> = fields(MSG).map(|f| f.unwrap().raw).collect();
    assert_eq!(raws.concat(), MSG);
    assert_eq!(without_fields(MSG, &[5]).unwrap(), &MSG[..7]);
    let r = replace_field(MSG, 5, b"Q").unwrap();
    assert_eq!(r, [&MSG[..7], &[0x2a, 1, b'Q']].concat());
    let r = replace_field(&MSG[..7], 5, b"Q").unwrap();
    assert_eq!(r, [&MSG[..7], &[0x2a, 1, b'Q']].concat());
    assert!(without_fields(&[0x0a, 9, 1], &[]).is_err());
    let mut out = Vec::new();
    put_bytes_field(&mut out, 5, b"w");
    assert_eq!(out, MSG[12..]);
}

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
    // A varint where bytes were expected (at its own offset), or a broken buffer.
    assert_eq!(rewrite_field(MSG, 2, |_| Ok(None)), Err(Malformed { offset: 4 }));
    assert!(rewrite_field(&[0x2a, 9], 5, |_| Ok(None)).is_err());
}

/// xorshift64: reproducible inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A small field number mostly (so fields repeat), the largest sometimes.
    fn number(&mut self) -> u32 {
        if self.below(8) == 0 {
            (1 << 29) - 1
        } else {
            1 + self.below(6) as u32
        }
    }

    fn value<'a>(&mut self, pool: &'a [u8]) -> Value<'a> {
        let scalar = self.next() >> self.below(64);
        match self.below(4) {
            0 => Value::Varint(scalar),
            1 => Value::Fixed64(scalar),
            2 => Value::Fixed32(scalar as u32),
            _ => Value::Bytes(&pool[..self.below(pool.len() as u64 + 1) as usize]),
        }
    }
}

#[test]
fn random_messages_round_trip_and_edit() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let pool: Vec<u8> = (0..300).map(|i| i as u8).collect();
    for _ in 0..2000 {
        let written: Vec<(u32, Value<'_>)> = (0..rng.below(8)).map(|_| (rng.number(), rng.value(&pool))).collect();
        let mut buf = Vec::new();
        for &(n, v) in &written {
            put_field(&mut buf, n, v);
        }
        assert_eq!(all(&buf), written, "what put_field writes walks back");

        let (number, value) = (rng.number(), rng.value(&pool));
        fn others(b: &[u8], number: u32) -> Vec<(u32, Value<'_>)> {
            all(b).into_iter().filter(|&(n, _)| n != number).collect()
        }
        let set = set_field(&buf, number, Some(value)).unwrap();
        assert_eq!(last(&set, number), Some(value));
        assert_eq!(all(&set).iter().filter(|&&(n, _)| n == number).count(), 1);
        assert_eq!(others(&set, number), others(&buf, number), "every other field kept, in order");
        let removed = set_field(&buf, number, None).unwrap();
        assert_eq!(removed, without_fields(&buf, &[number]).unwrap());
        assert_eq!(last(&removed, number), None);
        assert_eq!(others(&removed, number), others(&buf, number));
        if let Value::Bytes(b) = value {
            assert_eq!(replace_field(&buf, number, b).unwrap(), set);
        }
    }
}

#[test]
fn random_bytes_never_panic_and_raw_fields_tile_the_input() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..5000 {
        let buf: Vec<u8> = (0..rng.below(24)).map(|_| rng.next() as u8).collect();
        let mut end = 0;
        let mut result = Ok(());
        for f in fields(&buf) {
            match f {
                Ok(f) => {
                    assert_eq!(&buf[end..end + f.raw.len()], f.raw);
                    end += f.raw.len();
                }
                Err(e) => result = Err(e),
            }
        }
        match result {
            Ok(()) => assert_eq!(end, buf.len()),
            Err(e) => assert_eq!(e.offset, end, "the error is where the good fields stop"),
        }
        assert_eq!(walk(&buf, |_, _| true), result);
        assert_eq!(without_fields(&buf, &[]).map_err(|_| ()), result.map(|()| buf.clone()).map_err(|_| ()));
        assert_eq!(set_field(&buf, 1, None).is_ok(), result.is_ok());
        let _ = rewrite_field(&buf, 1, |_| Ok(Some(vec![1])));
    }
}
