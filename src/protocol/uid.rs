//! Agent instance uids.
//!
//! The spec says 16 bytes (a UUID, v7 recommended). Agents built before that
//! rule send a 26-character ULID string in the same field; we accept both and
//! route on the raw bytes, so the two never need converting. Any 26 bytes are
//! accepted, as the reference gateway does: the gateway only routes on the
//! uid, so insisting on valid Crockford base32 would refuse agents the server
//! itself accepts.

use std::fmt;

use bytes::Bytes;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UidError {
    #[error("instance_uid is missing")]
    Missing,
    #[error("instance_uid must be 16 bytes (UUID) or a 26-character ULID, got {0} bytes")]
    BadLength(usize),
}

/// A validated agent uid. Cheap to clone (shares the message's buffer).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceUid(Bytes);

impl InstanceUid {
    /// The same uid in a buffer of its own, to keep for a connection's life:
    /// a slice of the message would keep the whole message's buffer (the
    /// WebSocket's read buffer, a link's 16 KiB read) alive with it.
    pub fn detached(&self) -> Self {
        Self(Bytes::copy_from_slice(&self.0))
    }

    pub fn parse(raw: Option<Bytes>) -> Result<Self, UidError> {
        let raw = raw.ok_or(UidError::Missing)?;
        match raw.len() {
            0 => Err(UidError::Missing),
            16 | 26 => Ok(Self(raw)),
            n => Err(UidError::BadLength(n)),
        }
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// A 16-byte uid from a UUID (handy in tests and the simulator).
    pub fn from_uuid(u: uuid::Uuid) -> Self {
        Self(Bytes::copy_from_slice(u.as_bytes()))
    }
}

impl fmt::Display for InstanceUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.len() == 16 {
            let u = uuid::Uuid::from_slice(&self.0).map_err(|_| fmt::Error)?;
            write!(f, "{u}")
        } else {
            f.write_str(&String::from_utf8_lossy(&self.0))
        }
    }
}

impl fmt::Debug for InstanceUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceUid({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_uuid_and_ulid() {
        let u = InstanceUid::parse(Some(Bytes::from_static(&[9; 16]))).unwrap();
        assert_eq!(u.to_string(), "09090909-0909-0909-0909-090909090909");
        let l = InstanceUid::parse(Some(Bytes::from_static(b"01ARZ3NDEKTSV4RRFFQ69G5FAV"))).unwrap();
        assert_eq!(l.to_string(), "01ARZ3NDEKTSV4RRFFQ69G5FAV");
    }

    #[test]
    fn rejects_other_shapes() {
        assert_eq!(InstanceUid::parse(None), Err(UidError::Missing));
        assert_eq!(InstanceUid::parse(Some(Bytes::from_static(&[1; 5]))), Err(UidError::BadLength(5)));
        assert_eq!(InstanceUid::parse(Some(Bytes::from_static(&[1; 27]))), Err(UidError::BadLength(27)));
    }

    #[test]
    fn accepts_any_26_bytes_as_the_reference_does() {
        for raw in [&b"01ARZ3NDEKTSV4RRFFQ69G5FA!"[..], b"81ARZ3NDEKTSV4RRFFQ69G5FAV", &[0xff; 26]] {
            let u = InstanceUid::parse(Some(Bytes::copy_from_slice(raw))).unwrap();
            assert_eq!(u.as_bytes().len(), 26);
        }
    }
}
