//! Typed key codecs, one function per row kind. Keys are fixed-width
//! tuples of raw ids and big-endian integers, so RocksDB's byte order is
//! the tuples' order and `(conversation, seq)` scans in seq order. Keys hold
//! only opaque ids and numbers (the MANIFEST keeps each file's smallest and
//! largest key), never usernames or content; a username is found through
//! its digest.

use ephemera_actors::ids::{ConvId, Id, MsgId, UserId};
use ephemera_actors::store::{Deadline, StoryDeadline, StoryId};
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

/// `reactions`: (conversation, seq, user): a message's reactions in one
/// scan, so they go with it in one range.
pub fn reaction(msg: MsgId, user: UserId) -> [u8; 40] {
    view(msg, user)
}

/// `device_keys`: (user, device): a user's devices' public keys in one scan.
pub fn device_keys(user: UserId, device: Id) -> [u8; 32] {
    pair(user, device)
}

/// `prekeys`: (user, device, key_id): a device's one-time prekeys, lowest
/// id first.
pub fn prekey(user: UserId, device: Id, key_id: u32) -> [u8; 36] {
    let mut k = [0u8; 36];
    k[..32].copy_from_slice(&pair(user, device));
    k[32..].copy_from_slice(&key_id.to_be_bytes());
    k
}

/// Decodes the key id of a `prekeys` key.
pub fn decode_prekey_id(k: &[u8]) -> Option<u32> {
    let id: [u8; 4] = k.get(32..)?.try_into().ok()?;
    (k.len() == 36).then(|| u32::from_be_bytes(id))
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

/// `follows`: (follower, author): whom a user follows, in one scan.
pub fn follow(follower: UserId, author: UserId) -> [u8; 32] {
    pair(follower, author)
}

/// `followers`: (author, follower): an author's followers, in one scan.
pub fn follower(author: UserId, follower: UserId) -> [u8; 32] {
    pair(author, follower)
}

/// `follow_counts`: user id.
pub fn follow_counts(user: UserId) -> [u8; 16] {
    user.0
}

/// `close_friends`: (owner, friend): a user's close-friends list.
pub fn close_friend(owner: UserId, friend: UserId) -> [u8; 32] {
    pair(owner, friend)
}

/// `stories` and `story_fanout`: story id.
pub fn story(story: StoryId) -> [u8; 16] {
    story.0
}

/// `author_stories` and `broadcasts`: (author, posted_at, story): an
/// author's stories, oldest first.
pub fn author_story(author: UserId, posted_at: u64, story: StoryId) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..16].copy_from_slice(&author.0);
    k[16..24].copy_from_slice(&posted_at.to_be_bytes());
    k[24..].copy_from_slice(&story.0);
    k
}

/// Decodes an `author_stories` (or `broadcasts`) key: (author, posted_at, story).
pub fn decode_author_story(k: &[u8]) -> Option<(UserId, u64, StoryId)> {
    (k.len() == 40).then(|| (id_at(k, 0), u64_at(k, 16), id_at(k, 24)))
}

/// `tray_refs`: (viewer, author, story): one scan reads a viewer's tray,
/// grouped by author.
pub fn tray_ref(viewer: UserId, author: UserId, story: StoryId) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..16].copy_from_slice(&viewer.0);
    k[16..32].copy_from_slice(&author.0);
    k[32..].copy_from_slice(&story.0);
    k
}

/// Decodes a `tray_refs` key: (viewer, author, story).
pub fn decode_tray_ref(k: &[u8]) -> Option<(UserId, UserId, StoryId)> {
    (k.len() == 48).then(|| (id_at(k, 0), id_at(k, 16), id_at(k, 32)))
}

/// `story_views`: (story, viewer): a story's viewers in one scan.
pub fn story_view(story: StoryId, viewer: UserId) -> [u8; 32] {
    pair(story, viewer)
}

/// `viewed`: (viewer, story): the stories a user opened, in one scan.
pub fn viewed(viewer: UserId, story: StoryId) -> [u8; 32] {
    pair(viewer, story)
}

/// `story_deadlines`: (at, story): stories' ends in time order.
pub fn story_deadline(d: StoryDeadline) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&d.at.to_be_bytes());
    k[8..].copy_from_slice(&d.story.0);
    k
}

/// Decodes a `story_deadlines` key.
pub fn decode_story_deadline(k: &[u8]) -> Option<StoryDeadline> {
    (k.len() == 24).then(|| StoryDeadline {
        at: u64_at(k, 0),
        story: id_at(k, 8),
    })
}

/// `highlights`: highlight id.
pub fn highlight(id: Id) -> [u8; 16] {
    id.0
}

/// `author_highlights`: (author, created_at, highlight): an author's
/// highlights, oldest first.
pub fn author_highlight(author: UserId, created_at: u64, id: Id) -> [u8; 40] {
    author_story(author, created_at, id)
}

/// The first key after every key that starts with `prefix` (for range
/// deletes of a prefix): `None` if there is none (all `0xff`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
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
    match decode_author_story(data) {
        Some((a, at, s)) => assert_eq!(author_story(a, at, s)[..], data[..]),
        None => assert_ne!(data.len(), 40),
    }
    match decode_tray_ref(data) {
        Some((v, a, s)) => assert_eq!(tray_ref(v, a, s)[..], data[..]),
        None => assert_ne!(data.len(), 48),
    }
    match decode_story_deadline(data) {
        Some(d) => assert_eq!(story_deadline(d)[..], data[..]),
        None => assert_ne!(data.len(), 24),
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
    fn reaction_key_is_message_then_user() {
        let k = reaction(
            MsgId {
                conv: A,
                seq: 0x0102,
            },
            B,
        );
        let mut want = vec![0xaa; 16];
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 2]);
        want.extend_from_slice(&[0xbb; 16]);
        assert_eq!(k.to_vec(), want);
        // A message's reactions are the keys under its message key.
        assert_eq!(
            k[..24],
            message(MsgId {
                conv: A,
                seq: 0x0102
            })
        );
    }

    #[test]
    fn key_directory_keys_are_byte_exact() {
        let mut want = vec![0xaa; 16];
        want.extend_from_slice(&[0xbb; 16]);
        assert_eq!(device_keys(A, B).to_vec(), want);
        want.extend_from_slice(&[0, 0, 1, 2]);
        let k = prekey(A, B, 0x0102);
        assert_eq!(k.to_vec(), want);
        assert_eq!(decode_prekey_id(&k), Some(0x0102));
        assert_eq!(decode_prekey_id(&k[..35]), None);
        // A device's pool scans lowest id first.
        assert!(prekey(A, B, 255) < prekey(A, B, 256));
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

    const C: Id = Id([0xcc; 16]);

    #[test]
    fn social_graph_keys_are_pairs_of_ids() {
        // follows: follower first; followers: author first; both 32 bytes.
        let mut want = vec![0xaa; 16];
        want.extend_from_slice(&[0xbb; 16]);
        assert_eq!(follow(A, B).to_vec(), want);
        assert_eq!(follower(A, B).to_vec(), want);
        assert_eq!(close_friend(A, B).to_vec(), want);
        assert_eq!(follow(B, A)[..16], [0xbb; 16]);
        assert_eq!(follow_counts(C), [0xcc; 16]);
    }

    #[test]
    fn story_keys_are_byte_exact() {
        assert_eq!(story(C), [0xcc; 16]);
        let k = author_story(A, 0x0102, C);
        let mut want = vec![0xaa; 16];
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 2]);
        want.extend_from_slice(&[0xcc; 16]);
        assert_eq!(k.to_vec(), want);
        assert_eq!(decode_author_story(&k), Some((A, 0x0102, C)));
        assert_eq!(decode_author_story(&k[..39]), None);
        // An author's stories scan oldest first.
        assert!(author_story(A, 255, C) < author_story(A, 256, B));
        let t = tray_ref(A, B, C);
        let mut want = vec![0xaa; 16];
        want.extend_from_slice(&[0xbb; 16]);
        want.extend_from_slice(&[0xcc; 16]);
        assert_eq!(t.to_vec(), want);
        assert_eq!(decode_tray_ref(&t), Some((A, B, C)));
        let v = story_view(C, A);
        assert_eq!(&v[..16], &[0xcc; 16]);
        assert_eq!(&v[16..], &[0xaa; 16]);
        let by = viewed(A, C);
        assert_eq!(&by[..16], &[0xaa; 16]);
        assert_eq!(&by[16..], &[0xcc; 16]);
        let d = StoryDeadline {
            at: 0x0a0b,
            story: C,
        };
        let dk = story_deadline(d);
        assert_eq!(&dk[..8], &[0, 0, 0, 0, 0, 0, 0x0a, 0x0b]);
        assert_eq!(&dk[8..], &[0xcc; 16]);
        assert_eq!(decode_story_deadline(&dk), Some(d));
        assert!(
            story_deadline(d)
                < story_deadline(StoryDeadline {
                    at: 0x0a0c,
                    story: A
                })
        );
        assert_eq!(highlight(B), [0xbb; 16]);
        assert_eq!(author_highlight(A, 7, B)[16..24], [0, 0, 0, 0, 0, 0, 0, 7]);
    }

    #[test]
    fn prefix_ends_bound_a_prefix() {
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        let p = &tray_ref(A, B, C)[..32];
        let end = prefix_end(p).unwrap();
        assert!(tray_ref(A, B, Id([0xff; 16])).as_slice() < end.as_slice());
        assert!(tray_ref(A, Id([0xbc; 16]), Id([0; 16])).as_slice() >= end.as_slice());
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
