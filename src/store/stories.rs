//! Stories and the social graph on RocksDB: the rows' forms, and the reads
//! that are not one point lookup (the tray, an author's stories).
//!
//! A tray is built from one viewer's rows only: whom they follow (one
//! scan), their close friends (one scan), their tray references (one
//! scan), the stories they opened (one scan of `viewed`), plus the
//! stories of followed authors that were not fanned out (the `broadcasts`
//! family, small: only authors over the fanout limit post there). Both paths give a story the same [`TrayRef`], so the tray
//! cannot tell them apart.

use std::collections::{HashMap, HashSet};

use ephemera_actors::ids::{Id, UserId};
use ephemera_actors::store::{now_ms, Audience, Millis, StoryId, StoryRecord, TrayRef};
use rocksdb::{Direction, IteratorMode};
use serde::{Deserialize, Serialize};

use super::{filter, keys, Cf, RocksStore, Step, StoreError};

/// A story row: the record without its caption, and the caption sealed
/// under its expiry bucket's key (base64), as message bodies are.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoryRow {
    #[serde(flatten)]
    pub meta: StoryRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
}

/// The byte an audience is stored as.
pub(crate) fn audience_byte(a: Audience) -> u8 {
    match a {
        Audience::Everyone => 0,
        Audience::CloseFriends => 1,
    }
}

fn audience_of(b: u8) -> Result<Audience, StoreError> {
    match b {
        0 => Ok(Audience::Everyone),
        1 => Ok(Audience::CloseFriends),
        _ => Err(StoreError::Corrupt("audience")),
    }
}

/// How long a tray reference's row outlives its story: the story's end
/// reads the references to learn whom to tell (`story_gone`), and must find
/// them even when it runs late (a server that was down at `expires_at`).
/// Trays filter on the story's own `expires_at`, kept in the value; the end
/// deletes the rows.
pub(crate) const TRAY_GRACE_MS: Millis = 86_400_000;

/// A tray reference's value: posted_at, expires_at, audience, and whether
/// the viewer was told of the story (`story_posted`), so only they hear of
/// its end.
pub(crate) fn tray_value(r: &TrayRef, told: bool) -> [u8; 18] {
    let mut v = [0u8; 18];
    v[..8].copy_from_slice(&r.posted_at.to_be_bytes());
    v[8..16].copy_from_slice(&r.expires_at.to_be_bytes());
    v[16] = audience_byte(r.audience);
    v[17] = told as u8;
    v
}

/// (posted_at, expires_at, audience, told) of a tray reference's value.
fn decode_tray_value(p: &[u8]) -> Result<(Millis, Millis, Audience, bool), StoreError> {
    if p.len() != 18 {
        return Err(StoreError::Corrupt("tray_refs"));
    }
    let at = |i: usize| u64::from_be_bytes(p[i..i + 8].try_into().expect("8 bytes"));
    Ok((at(0), at(8), audience_of(p[16])?, p[17] == 1))
}

/// The two counts of a `follow_counts` row: (followers, following).
pub(crate) fn decode_counts(p: &[u8]) -> Result<(u64, u64), StoreError> {
    match p {
        [a @ .., _, _, _, _, _, _, _, _] if a.len() == 8 => Ok((
            u64::from_be_bytes(a.try_into().expect("8 bytes")),
            u64::from_be_bytes(p[8..].try_into().expect("8 bytes")),
        )),
        _ => Err(StoreError::Corrupt("follow_counts")),
    }
}

/// One author's entry in a tray (PROTOCOL 5), before the username is added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrayEntry {
    /// The author.
    pub author: UserId,
    /// Whether the viewer has not seen at least one of the stories.
    pub has_unviewed: bool,
    /// How many live stories the viewer may see.
    pub story_count: usize,
    /// The newest `posted_at` among them.
    pub latest_at: Millis,
    /// Whether the author is in the viewer's close-friends list.
    pub close_friend: bool,
}

/// Sorts tray entries in PROTOCOL 5's order: unviewed first, close friends
/// before others, newest first (then by author id, so the order is total).
pub fn order_tray(entries: &mut [TrayEntry]) {
    entries.sort_by(|a, b| {
        b.has_unviewed
            .cmp(&a.has_unviewed)
            .then(b.close_friend.cmp(&a.close_friend))
            .then(b.latest_at.cmp(&a.latest_at))
            .then(a.author.cmp(&b.author))
    });
}

/// A story of an author as a viewer lists it.
#[derive(Clone, Debug)]
pub struct ListedStory {
    /// The story.
    pub story: StoryId,
    /// When it was posted.
    pub posted_at: Millis,
    /// When it ends.
    pub expires_at: Millis,
    /// Whether the viewer has opened it.
    pub viewed: bool,
}

impl RocksStore {
    /// The second ids of every key in `cf` that starts with `first`.
    fn ids_under(&self, cf: Cf, first: UserId) -> Result<Vec<Id>, StoreError> {
        let mut out = Vec::new();
        let from = keys::follow(first, Id([0; 16]));
        self.scan_prefix(cf, &from, 16, usize::MAX, |k, _| {
            out.push(keys::id_at(k, 16));
            Ok(Step::Take)
        })?;
        Ok(out)
    }

    /// Whether a row exists (and has not expired).
    fn exists(&self, cf: Cf, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.get_live(cf, key)?.is_some())
    }

    /// (followers, following) of a user.
    pub fn follow_counts(&self, user: UserId) -> Result<(u64, u64), StoreError> {
        match self.get_live(Cf::FollowCounts, &keys::follow_counts(user))? {
            Some(p) => decode_counts(&p),
            None => Ok((0, 0)),
        }
    }

    /// Whether `friend` is in `owner`'s close-friends list.
    pub fn close_friend(&self, owner: UserId, friend: UserId) -> Result<bool, StoreError> {
        self.exists(Cf::CloseFriends, &keys::close_friend(owner, friend))
    }

    /// Whether a story exists and has not ended.
    pub fn story_live(&self, story: StoryId) -> Result<bool, StoreError> {
        self.exists(Cf::Stories, &keys::story(story))
    }

    /// Whether `viewer` has opened the story.
    pub fn viewed(&self, story: StoryId, viewer: UserId) -> Result<bool, StoreError> {
        self.exists(Cf::Viewed, &keys::viewed(viewer, story))
    }

    /// Whether `viewer` may see a story of `author` with `audience` now.
    fn may_see(
        &self,
        viewer: UserId,
        author: UserId,
        audience: Audience,
    ) -> Result<bool, StoreError> {
        Ok(viewer == author
            || audience == Audience::Everyone
            || self.close_friend(author, viewer)?)
    }

    /// Decodes a story row and opens its caption; `None` for the caption
    /// once its key is destroyed.
    pub(crate) fn decode_story(
        &self,
        key: &[u8],
        payload: &[u8],
    ) -> Result<StoryRecord, StoreError> {
        let row: StoryRow =
            serde_json::from_slice(payload).map_err(|_| StoreError::Corrupt("stories"))?;
        let mut story = row.meta;
        if let Some(sealed) = row.sealed {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(sealed)
                .map_err(|_| StoreError::Corrupt("stories"))?;
            story.caption = self
                .keys
                .open_body(key, &bytes)
                .and_then(|plain| String::from_utf8(plain).ok());
        }
        Ok(story)
    }

    /// The live stories of `author`, oldest first, as rows of an
    /// author-ordered family (`author_stories` or `broadcasts`).
    fn author_refs(&self, cf: Cf, author: UserId, now: Millis) -> Result<Vec<TrayRef>, StoreError> {
        let mut out = Vec::new();
        let from = keys::author_story(author, 0, Id([0; 16]));
        self.scan_prefix(cf, &from, 16, usize::MAX, |k, v| {
            let (exp, p) = filter::split(v).ok_or(StoreError::Corrupt(cf.name()))?;
            let (author, posted_at, story) =
                keys::decode_author_story(k).ok_or(StoreError::Corrupt(cf.name()))?;
            if exp > now {
                let audience = audience_of(*p.first().ok_or(StoreError::Corrupt(cf.name()))?)?;
                out.push(TrayRef {
                    author,
                    story,
                    posted_at,
                    expires_at: exp,
                    audience,
                });
            }
            Ok(Step::Take)
        })?;
        Ok(out)
    }

    /// The live stories of `author` that `viewer` may see, oldest first.
    pub fn stories_of(
        &self,
        author: UserId,
        viewer: UserId,
    ) -> Result<Vec<ListedStory>, StoreError> {
        let now = now_ms();
        let refs = self.author_refs(Cf::AuthorStories, author, now)?;
        let mut out = Vec::with_capacity(refs.len());
        let mut close = None;
        for r in refs {
            if r.audience == Audience::CloseFriends && viewer != author {
                let is = match close {
                    Some(is) => is,
                    None => *close.insert(self.close_friend(author, viewer)?),
                };
                if !is {
                    continue;
                }
            }
            out.push(ListedStory {
                story: r.story,
                posted_at: r.posted_at,
                expires_at: r.expires_at,
                viewed: self.viewed(r.story, viewer)?,
            });
        }
        Ok(out)
    }

    /// The live stories of `author` that were fanned out, to put in a new
    /// follower's tray.
    pub fn fanned_out_stories(&self, author: UserId) -> Result<Vec<TrayRef>, StoreError> {
        let now = now_ms();
        let broadcast: HashSet<StoryId> = self
            .author_refs(Cf::Broadcasts, author, now)?
            .into_iter()
            .map(|r| r.story)
            .collect();
        let mut refs = self.author_refs(Cf::AuthorStories, author, now)?;
        refs.retain(|r| !broadcast.contains(&r.story));
        Ok(refs)
    }

    /// `viewer`'s tray, in PROTOCOL 5's order: one entry per followed
    /// author with a live story the viewer may see now.
    pub fn tray(&self, viewer: UserId) -> Result<Vec<TrayEntry>, StoreError> {
        let now = now_ms();
        let following: HashSet<UserId> = self.ids_under(Cf::Follows, viewer)?.into_iter().collect();
        if following.is_empty() {
            return Ok(Vec::new());
        }
        let mine: HashSet<UserId> = self
            .ids_under(Cf::CloseFriends, viewer)?
            .into_iter()
            .collect();
        // What the viewer opened, in one scan (rows expire with their story).
        let mut seen: HashSet<StoryId> = HashSet::new();
        let from = keys::viewed(viewer, Id([0; 16]));
        self.scan_prefix(Cf::Viewed, &from, 16, usize::MAX, |k, v| {
            if filter::split(v).is_some_and(|(exp, _)| exp > now) {
                seen.insert(keys::id_at(k, 16));
            }
            Ok(Step::Take)
        })?;
        // Pushed references (one scan of the viewer's rows) ...
        let mut refs: Vec<TrayRef> = Vec::new();
        let from = keys::tray_ref(viewer, Id([0; 16]), Id([0; 16]));
        self.scan_prefix(Cf::TrayRefs, &from, 16, usize::MAX, |k, v| {
            let (_, p) = filter::split(v).ok_or(StoreError::Corrupt("tray_refs"))?;
            let (_, author, story) =
                keys::decode_tray_ref(k).ok_or(StoreError::Corrupt("tray_refs"))?;
            let (posted_at, expires_at, audience, _) = decode_tray_value(p)?;
            if expires_at > now && following.contains(&author) {
                refs.push(TrayRef {
                    author,
                    story,
                    posted_at,
                    expires_at,
                    audience,
                });
            }
            Ok(Step::Take)
        })?;
        // ... and the stories that were not pushed, merged in here.
        for item in self
            .db
            .iterator_cf(self.cf(Cf::Broadcasts), IteratorMode::Start)
        {
            let (k, v) = item?;
            let (author, posted_at, story) =
                keys::decode_author_story(&k).ok_or(StoreError::Corrupt("broadcasts"))?;
            let (exp, p) = filter::split(&v).ok_or(StoreError::Corrupt("broadcasts"))?;
            if exp > now && following.contains(&author) {
                let audience = audience_of(*p.first().ok_or(StoreError::Corrupt("broadcasts"))?)?;
                refs.push(TrayRef {
                    author,
                    story,
                    posted_at,
                    expires_at: exp,
                    audience,
                });
            }
        }
        let mut seen_story = HashSet::with_capacity(refs.len());
        let mut may_see: HashMap<UserId, bool> = HashMap::new();
        let mut entries: HashMap<UserId, TrayEntry> = HashMap::new();
        for r in refs {
            if !seen_story.insert(r.story) {
                continue;
            }
            if r.audience == Audience::CloseFriends {
                let ok = match may_see.get(&r.author) {
                    Some(ok) => *ok,
                    None => {
                        let ok = self.may_see(viewer, r.author, r.audience)?;
                        may_see.insert(r.author, ok);
                        ok
                    }
                };
                if !ok {
                    continue;
                }
            }
            let viewed = seen.contains(&r.story);
            let e = entries.entry(r.author).or_insert(TrayEntry {
                author: r.author,
                has_unviewed: false,
                story_count: 0,
                latest_at: 0,
                close_friend: mine.contains(&r.author),
            });
            e.story_count += 1;
            e.has_unviewed |= !viewed;
            e.latest_at = e.latest_at.max(r.posted_at);
        }
        let mut out: Vec<TrayEntry> = entries.into_values().collect();
        order_tray(&mut out);
        Ok(out)
    }

    /// A user's username, cached (usernames never change).
    pub fn username(&self, user: UserId) -> Result<Option<std::sync::Arc<str>>, StoreError> {
        if let Some(n) = self
            .names
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&user)
        {
            return Ok(Some(n.clone()));
        }
        let Some(acc) = self.account(user)? else {
            return Ok(None);
        };
        let name: std::sync::Arc<str> = acc.username.into();
        let mut names = self.names.write().unwrap_or_else(|p| p.into_inner());
        if names.len() >= NAMES_CACHED {
            names.clear();
        }
        names.insert(user, name.clone());
        Ok(Some(name))
    }

    /// The tray references of `viewer` for `author`'s story: whether there
    /// is one, and whether the viewer was told of the story.
    pub(crate) fn tray_ref_told(
        &self,
        viewer: UserId,
        author: UserId,
        story: StoryId,
    ) -> Result<Option<bool>, StoreError> {
        // Whether or not the story has ended: this is how its end learns
        // whom to tell (the row outlives the story by `TRAY_GRACE_MS`).
        let k = keys::tray_ref(viewer, author, story);
        match self.db.get_pinned_cf(self.cf(Cf::TrayRefs), k)? {
            Some(v) => {
                let (_, p) = filter::split(&v).ok_or(StoreError::Corrupt("tray_refs"))?;
                Ok(Some(decode_tray_value(p)?.3))
            }
            None => Ok(None),
        }
    }

    /// The scan of `story_deadlines` up to `until`.
    pub(crate) fn scan_story_deadlines(
        &self,
        until: Millis,
        limit: usize,
    ) -> Result<Vec<ephemera_actors::store::StoryDeadline>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(Cf::StoryDeadlines),
            IteratorMode::From(&[], Direction::Forward),
        ) {
            let (k, _) = item?;
            let d =
                keys::decode_story_deadline(&k).ok_or(StoreError::Corrupt("story_deadlines"))?;
            if d.at > until || out.len() >= limit {
                break;
            }
            out.push(d);
        }
        Ok(out)
    }
}

/// A highlight: the author's own copy of a story's media, under a data key
/// of its own, kept until the author deletes it. Its caption is sealed
/// under that key, so destroying the key shreds both.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HighlightRecord {
    /// Its id.
    pub id: Id,
    /// The story it was made from.
    pub story_id: StoryId,
    /// Whose it is.
    pub author: UserId,
    /// When it was made.
    pub created_at: Millis,
    /// The copy.
    pub media: ephemera_actors::store::MediaRef,
    /// The caption, sealed under the copy's key (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_caption: Option<String>,
}

impl RocksStore {
    /// Stores a highlight, and binds its media copy to it.
    pub fn put_highlight(&self, h: &HighlightRecord) -> Result<(), StoreError> {
        let mut b = rocksdb::WriteBatch::default();
        b.put_cf(
            self.cf(Cf::Highlights),
            keys::highlight(h.id),
            filter::with_expiry(u64::MAX, &super::json(h)),
        );
        b.put_cf(
            self.cf(Cf::AuthorHighlights),
            keys::author_highlight(h.author, h.created_at, h.id),
            filter::with_expiry(u64::MAX, &[]),
        );
        if let Some(mut rec) = self.media(h.media.id)? {
            rec.story = Some(h.id);
            b.put_cf(
                self.cf(Cf::Media),
                h.media.id.0,
                filter::with_expiry(u64::MAX, &super::json(&rec)),
            );
        }
        self.db.write_opt(b, &self.write_opts)?;
        Ok(())
    }

    /// A highlight.
    pub fn highlight(&self, id: Id) -> Result<Option<HighlightRecord>, StoreError> {
        self.get_json(Cf::Highlights, &keys::highlight(id))
    }

    /// An author's highlights, oldest first.
    pub fn highlights_of(&self, author: UserId) -> Result<Vec<HighlightRecord>, StoreError> {
        let mut ids = Vec::new();
        let from = keys::author_highlight(author, 0, Id([0; 16]));
        self.scan_prefix(Cf::AuthorHighlights, &from, 16, usize::MAX, |k, _| {
            ids.push(keys::id_at(k, 24));
            Ok(Step::Take)
        })?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(h) = self.highlight(id)? {
                out.push(h);
            }
        }
        Ok(out)
    }

    /// Removes a highlight's rows (its media is shredded by the caller).
    pub fn delete_highlight(&self, h: &HighlightRecord) -> Result<(), StoreError> {
        let mut b = rocksdb::WriteBatch::default();
        b.delete_cf(self.cf(Cf::Highlights), keys::highlight(h.id));
        b.delete_cf(
            self.cf(Cf::AuthorHighlights),
            keys::author_highlight(h.author, h.created_at, h.id),
        );
        self.db.write_opt(b, &self.write_opts)?;
        Ok(())
    }
}

/// Usernames kept in memory for trays; past this the cache starts over.
const NAMES_CACHED: usize = 200_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8, unviewed: bool, close: bool, latest: u64) -> TrayEntry {
        TrayEntry {
            author: Id([n; 16]),
            has_unviewed: unviewed,
            story_count: 1,
            latest_at: latest,
            close_friend: close,
        }
    }

    #[test]
    fn trays_order_unviewed_then_close_friends_then_newest() {
        let mut t = vec![
            entry(1, false, true, 900),
            entry(2, true, false, 100),
            entry(3, true, true, 50),
            entry(4, true, false, 300),
            entry(5, false, false, 1_000),
            entry(6, true, false, 300),
        ];
        order_tray(&mut t);
        let order: Vec<u8> = t.iter().map(|e| e.author.0[0]).collect();
        assert_eq!(order, [3, 4, 6, 2, 1, 5]);
    }

    #[test]
    fn tray_values_round_trip() {
        let r = TrayRef {
            author: Id([1; 16]),
            story: Id([2; 16]),
            posted_at: 0x0102_0304,
            expires_at: 9,
            audience: Audience::CloseFriends,
        };
        let v = tray_value(&r, true);
        assert_eq!(&v[..8], &0x0102_0304u64.to_be_bytes());
        assert_eq!(&v[8..16], &9u64.to_be_bytes());
        assert_eq!(v[16..], [1, 1]);
        assert_eq!(
            decode_tray_value(&v).unwrap(),
            (0x0102_0304, 9, Audience::CloseFriends, true)
        );
        assert!(decode_tray_value(&v[..17]).is_err());
        let told_not = tray_value(
            &TrayRef {
                audience: Audience::Everyone,
                ..r
            },
            false,
        );
        assert_eq!(told_not[16..], [0, 0]);
        let mut counts = [0u8; 16];
        counts[7] = 3;
        counts[15] = 4;
        assert_eq!(decode_counts(&counts).unwrap(), (3, 4));
        assert!(decode_counts(&counts[..15]).is_err());
    }
}
