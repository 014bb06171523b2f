//! Opaque identifiers: 16 random bytes rendered as 32 lower-case hex digits.
//!
//! Keys in storage are built from the raw bytes, so every id has a fixed
//! width and tuples of ids sort the way their bytes do.

use std::fmt;

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 128-bit opaque identifier of a user, device, conversation or story.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub [u8; 16]);

/// Identifies a user account.
pub type UserId = Id;
/// Identifies one logged-in device (one login is one device).
pub type DeviceId = Id;
/// Identifies a conversation, direct or group.
pub type ConvId = Id;

/// Fills `buf` from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) {
    // The system RNG only fails when the OS has no entropy source at all,
    // in which case no id, token or key can be made safely: stop loudly.
    SystemRandom::new()
        .fill(buf)
        .expect("the operating system's random source is unavailable");
}

impl Id {
    /// A fresh random id.
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        random_bytes(&mut b);
        Id(b)
    }

    /// The id of the direct conversation between two users: the same
    /// whichever of them asks, and never equal to a random group id in
    /// practice (it is a hash with its own domain tag).
    pub fn direct(a: UserId, b: UserId) -> ConvId {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"ephemera/direct/v1\0");
        ctx.update(&lo.0);
        ctx.update(&hi.0);
        let d = ctx.finish();
        let mut out = [0u8; 16];
        out.copy_from_slice(&d.as_ref()[..16]);
        Id(out)
    }

    /// Parses 32 hex digits; anything else is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut out = [0u8; 16];
        decode_hex(s, &mut out).then_some(Id(out))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Id::parse(&s).ok_or_else(|| serde::de::Error::custom("not an id"))
    }
}

/// A message is named by its conversation and its `seq` there, so a
/// `msg_id` alone routes a frame to the conversation that owns it.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId {
    /// The conversation the message belongs to.
    pub conv: ConvId,
    /// Its position in that conversation.
    pub seq: u64,
}

impl MsgId {
    /// Parses the 48-hex-digit form produced by `Display`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut raw = [0u8; 24];
        if !decode_hex(s, &mut raw) {
            return None;
        }
        let mut conv = [0u8; 16];
        conv.copy_from_slice(&raw[..16]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&raw[16..]);
        Some(MsgId {
            conv: Id(conv),
            seq: u64::from_be_bytes(seq),
        })
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.conv.0)?;
        write_hex(f, &self.seq.to_be_bytes())
    }
}

impl fmt::Debug for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for MsgId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MsgId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        MsgId::parse(&s).ok_or_else(|| serde::de::Error::custom("not a msg_id"))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    let mut buf = [0u8; 64];
    for (i, b) in bytes.iter().enumerate() {
        buf[2 * i] = HEX[(b >> 4) as usize];
        buf[2 * i + 1] = HEX[(b & 15) as usize];
    }
    // Only ASCII hex digits were written.
    f.write_str(std::str::from_utf8(&buf[..bytes.len() * 2]).expect("hex is ascii"))
}

/// Lower-case hex of arbitrary bytes (tokens, digests).
pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

fn decode_hex(s: &str, out: &mut [u8]) -> bool {
    let b = s.as_bytes();
    if b.len() != out.len() * 2 {
        return false;
    }
    fn nib(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    for (i, o) in out.iter_mut().enumerate() {
        match (nib(b[2 * i]), nib(b[2 * i + 1])) {
            (Some(h), Some(l)) => *o = (h << 4) | l,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_round_trips_through_hex() {
        let id = Id::random();
        assert_eq!(Id::parse(&id.to_string()), Some(id));
        assert_eq!(Id::parse("zz"), None);
        assert_eq!(
            Id::parse(&"A".repeat(32)),
            None,
            "upper case is not canonical"
        );
    }

    #[test]
    fn msg_id_carries_conversation_and_seq() {
        let m = MsgId {
            conv: Id([7; 16]),
            seq: 258,
        };
        let s = m.to_string();
        assert_eq!(s.len(), 48);
        assert!(s.ends_with("0000000000000102"));
        assert_eq!(MsgId::parse(&s), Some(m));
    }

    #[test]
    fn direct_id_is_symmetric() {
        let (a, b) = (Id::random(), Id::random());
        assert_eq!(Id::direct(a, b), Id::direct(b, a));
        assert_ne!(Id::direct(a, b), Id::direct(a, a));
    }
}
