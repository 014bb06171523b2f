//! Typed key codecs, one function per row kind. Keys are fixed-width
//! tuples of raw ids and big-endian integers, so RocksDB's byte order is
//! the tuples' order and `(conversation, seq)` scans in seq order. Keys hold
//! only opaque ids and numbers (the MANIFEST keeps each file's smallest and
//! largest key), never usernames or content; a username is found through
//! its digest.

use ephemera_actors::ids::{ConvId, Id, MsgId, UserId};
use ephemera_actors::store::Deadline;
use ring::digest;

/// `accounts`: user id.
pub fn account(user: UserId) -> [u8; 16] {
    user.0
}

/// `usernames`: the first 16 bytes of SHA-256 of the (lower-case) username.
pub fn username(name: &str) -> [u8; 16] {
    digest16(b"ephemera/username/v1\0", name.as_bytes())
}

/// `tokens`: SHA-256 of the bearer token; the token itself is never stored.
pub fn token(token: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// `conversations` and `sequences`: conversation id.
pub fn conversation(conv: ConvId) -> [u8; 16] {
    conv.0
}

/// `memberships`: (user, conversation): a user's conversations in one scan.
pub fn membership(user: UserId, conv: ConvId) -> [u8; 32] {
    pair(user, conv)
}

/// `read_states`: (conversation, user).
pub fn read_state(conv: ConvId, user: UserId) -> [u8; 32] {
    pair(conv, user)
}

/// `messages` and `tombstones`: (conversation, seq).
pub fn message(msg: MsgId) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&msg.conv.0);
    k[16..].copy_from_slice(&msg.seq.to_be_bytes());
    k
}

/// `views`: (conversation, seq, user): who opened a message.
pub fn view(msg: MsgId, user: UserId) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..24].copy_from_slice(&message(msg));
    k[24..].copy_from_slice(&user.0);
    k
}

/// `inbox`: (user, cursor).
pub fn inbox(user: UserId, cursor: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&user.0);
    k[16..].copy_from_slice(&cursor.to_be_bytes());
    k
}

/// Decodes the cursor of an `inbox` key.
pub fn decode_inbox_cursor(k: &[u8]) -> Option<u64> {
    (k.len() == 24).then(|| u64_at(k, 16))
}

/// `dedup`: (user, first 16 bytes of SHA-256 of the client_msg_id).
pub fn dedup(user: UserId, client_msg_id: &str) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(&user.0);
    k[16..].copy_from_slice(&digest16(b"ephemera/dedup/v1\0", client_msg_id.as_bytes()));
    k
}

/// `deadlines`: (at, conversation, seq): the whole index in time order.
pub fn deadline(d: Deadline) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&d.at.to_be_bytes());
    k[8..24].copy_from_slice(&d.msg.conv.0);
    k[24..].copy_from_slice(&d.msg.seq.to_be_bytes());
    k
}

/// `cursors`: user id.
pub fn cursor(user: UserId) -> [u8; 16] {
    user.0
}

/// `conversation_deadlines`: (conversation, at, seq): one conversation's
/// deadlines in time order, so an actor that (re)starts arms only its own.
pub fn conversation_deadline(d: Deadline) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(&d.msg.conv.0);
    k[16..24].copy_from_slice(&d.at.to_be_bytes());
    k[24..].copy_from_slice(&d.msg.seq.to_be_bytes());
    k
}

/// Decodes a `conversation_deadlines` key.
pub fn decode_conversation_deadline(k: &[u8]) -> Option<Deadline> {
    if k.len() != 32 {
        return None;
    }
    Some(Deadline {
        at: u64_at(k, 16),
        msg: MsgId {
            conv: id_at(k, 0),
            seq: u64_at(k, 24),
        },
    })
}

/// Decodes a `deadlines` key.
pub fn decode_deadline(k: &[u8]) -> Option<Deadline> {
    if k.len() != 32 {
        return None;
    }
    Some(Deadline {
        at: u64_at(k, 0),
        msg: MsgId {
            conv: id_at(k, 8),
            seq: u64_at(k, 24),
        },
    })
}

fn pair(a: Id, b: Id) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(&a.0);
    k[16..].copy_from_slice(&b.0);
    k
}

/// The id at byte `at` of a key.
pub fn id_at(k: &[u8], at: usize) -> Id {
    let mut b = [0u8; 16];
    b.copy_from_slice(&k[at..at + 16]);
    Id(b)
}

fn u64_at(k: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&k[at..at + 8]);
    u64::from_be_bytes(b)
}

fn digest16(tag: &[u8], data: &[u8]) -> [u8; 16] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(tag);
    ctx.update(data);
    let mut out = [0u8; 16];
    out.copy_from_slice(&ctx.finish().as_ref()[..16]);
    out
}

/// The body of the `keys` fuzz target (`fuzz/fuzz_targets/keys.rs`) and
/// of its stable smoke test: the decoders take any bytes without
/// panicking, accept exactly the keys the encoders make, and encoding
/// keeps the order of the typed tuples.
#[cfg(any(test, fuzzing))]
pub fn fuzz_check(data: &[u8]) {
    // Decoders on arbitrary bytes: `Some` only for their width, and then
    // the key is exactly the encoding of what was decoded.
    match decode_inbox_cursor(data) {
        Some(c) => assert_eq!(inbox(id_at(data, 0), c)[..], data[..]),
        None => assert_ne!(data.len(), 24),
    }
    match decode_deadline(data) {
        Some(d) => assert_eq!(deadline(d)[..], data[..]),
        None => assert_ne!(data.len(), 32),
    }
    match decode_conversation_deadline(data) {
        Some(d) => assert_eq!(conversation_deadline(d)[..], data[..]),
        None => assert_ne!(data.len(), 32),
    }
    // Typed values from the input (zero-padded), encoded and decoded.
    let mut raw = [0u8; 80];
    for (o, b) in raw.iter_mut().zip(data) {
        *o = *b;
    }
    let u64_of = |at: usize| u64_at(&raw, at);
    let (a, b) = (id_at(&raw, 0), id_at(&raw, 16));
    let d1 = Deadline {
        at: u64_of(32),
        msg: MsgId {
            conv: a,
            seq: u64_of(40),
        },
    };
    let d2 = Deadline {
        at: u64_of(48),
        msg: MsgId {
            conv: b,
            seq: u64_of(56),
        },
    };
    assert_eq!(decode_deadline(&deadline(d1)), Some(d1));
    assert_eq!(
        decode_conversation_deadline(&conversation_deadline(d1)),
        Some(d1)
    );
    assert_eq!(decode_inbox_cursor(&inbox(a, d1.at)), Some(d1.at));
    assert_eq!(id_at(&message(d1.msg), 0), a);
    // RocksDB's byte order is the tuples' order: time first for
    // `deadlines`, conversation first for the others.
    assert_eq!(deadline(d1).cmp(&deadline(d2)), d1.cmp(&d2));
    assert_eq!(message(d1.msg).cmp(&message(d2.msg)), d1.msg.cmp(&d2.msg));
    assert_eq!(
        conversation_deadline(d1).cmp(&conversation_deadline(d2)),
        (a, d1.at, d1.msg.seq).cmp(&(b, d2.at, d2.msg.seq))
    );
    assert_eq!(
        inbox(a, d1.at).cmp(&inbox(b, d2.at)),
        (a, d1.at).cmp(&(b, d2.at))
    );
    assert_eq!(
        view(d1.msg, b).cmp(&view(d2.msg, a)),
        (d1.msg, b).cmp(&(d2.msg, a))
    );
    assert_eq!(membership(a, b)[..16], a.0);
    assert_eq!(read_state(a, b)[16..], b.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz target's body over its seeds (each key kind, the wrong
    /// widths around them) and thousands of xorshift mutations.
    #[test]
    fn fuzz_target_body_holds_on_seeds_and_mutations() {
        let d = Deadline {
            at: 0x0a0b,
            msg: MsgId { conv: A, seq: 3 },
        };
        let seeds: Vec<Vec<u8>> = vec![
            inbox(B, 7).to_vec(),
            deadline(d).to_vec(),
            conversation_deadline(d).to_vec(),
            view(d.msg, B).to_vec(),
            message(d.msg).to_vec(),
            vec![0xff; 80],
            vec![0; 23],
            vec![0; 33],
            vec![],
        ];
        crate::store::tests::byte_mutations(&seeds, 20_000, 0x2545_f491_4f6c_dd1du64, fuzz_check);
    }

    const A: Id = Id([0xaa; 16]);
    const B: Id = Id([0xbb; 16]);

    #[test]
    fn message_key_is_conversation_then_big_endian_seq() {
        let k = message(MsgId {
            conv: A,
            seq: 0x0102,
        });
        let mut want = vec![0xaa; 16];
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(k.to_vec(), want);
        // seq 256 sorts after seq 255 bytewise, as it must.
        assert!(message(MsgId { conv: A, seq: 255 }) < message(MsgId { conv: A, seq: 256 }));
    }

    #[test]
    fn view_key_is_message_then_user() {
        let k = view(MsgId { conv: A, seq: 2 }, B);
        assert_eq!(&k[..16], &[0xaa; 16]);
        assert_eq!(&k[16..24], &[0, 0, 0, 0, 0, 0, 0, 2]);
        assert_eq!(&k[24..], &[0xbb; 16]);
    }

    #[test]
    fn inbox_key_is_user_then_cursor() {
        let k = inbox(B, 7);
        let mut want = vec![0xbb; 16];
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(k.to_vec(), want);
        assert_eq!(decode_inbox_cursor(&k), Some(7));
    }

    #[test]
    fn cursor_key_is_the_user_id() {
        assert_eq!(cursor(B), [0xbb; 16]);
    }

    #[test]
    fn deadline_key_is_time_first() {
        let d = Deadline {
            at: 0x0a0b,
            msg: MsgId { conv: A, seq: 3 },
        };
        let k = deadline(d);
        assert_eq!(&k[..8], &[0, 0, 0, 0, 0, 0, 0x0a, 0x0b]);
        assert_eq!(&k[8..24], &[0xaa; 16]);
        assert_eq!(&k[24..], &[0, 0, 0, 0, 0, 0, 0, 3]);
        assert_eq!(decode_deadline(&k), Some(d));
        let c = conversation_deadline(d);
        assert_eq!(&c[..16], &[0xaa; 16]);
        assert_eq!(&c[16..24], &[0, 0, 0, 0, 0, 0, 0x0a, 0x0b]);
        assert_eq!(decode_conversation_deadline(&c), Some(d));
        let later = Deadline {
            at: 0x0a0c,
            msg: MsgId {
                conv: Id([0; 16]),
                seq: 0,
            },
        };
        assert!(deadline(d) < deadline(later));
    }

    #[test]
    fn pair_keys_and_digests() {
        let k = membership(A, B);
        assert_eq!(&k[..16], &[0xaa; 16]);
        assert_eq!(&k[16..], &[0xbb; 16]);
        assert_eq!(read_state(B, A)[..16], [0xbb; 16]);
        // Usernames and client_msg_ids never appear in keys, only digests.
        assert_ne!(username("alice"), username("alicf"));
        assert!(!dedup(A, "hello-canary").windows(5).any(|w| w == b"hello"));
        assert_eq!(token("t").len(), 32);
    }
}
