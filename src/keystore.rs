//! The key store: a separate, small RocksDB instance that holds every data
//! key (message-body keys, one per expiry bucket, and media keys). Content
//! at rest elsewhere is ciphertext under these keys, so destroying a key
//! destroys every copy of what it sealed. A purge pass deletes keys whose
//! life is over, then flushes and compacts the whole instance, so a
//! destroyed key's bytes leave the memtable, the WAL and the SST files.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ephemera_actors::ids::random_bytes;
use ephemera_actors::store::now_ms;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use rocksdb::{
    BottommostLevelCompaction, CompactOptions, FlushOptions, IteratorMode, Options, WriteOptions,
    DB,
};

use crate::store::filter;
use crate::store::StoreError;

/// Width of a body-key bucket: a message expiring at `t` is sealed under
/// the key of the bucket ending at the first multiple of this at or after
/// `t`, which is destroyed once that end passes. So a body's key outlives
/// the body by at most this, plus one purge interval.
pub const BUCKET_MS: u64 = 30_000;

const BODY: u8 = b'b';
const MEDIA: u8 = b'm';

/// Data keys, and sealing with them.
pub struct KeyStore {
    db: DB,
    /// Body keys by bucket end, expanded for AES (the key schedule is built
    /// once per bucket, not per message), kept in memory while alive
    /// (dropped at purge).
    bodies: Mutex<HashMap<u64, Arc<LessSafeKey>>>,
    /// Where nonces come from.
    nonces: Mutex<NoncePool>,
}

fn body_key(bucket_end: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = BODY;
    k[1..].copy_from_slice(&bucket_end.to_be_bytes());
    k
}

fn media_key(id: &[u8; 16]) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = MEDIA;
    k[1..].copy_from_slice(id);
    k
}

/// The end of the bucket a message expiring at `expires_at` belongs to.
pub fn bucket_of(expires_at: u64) -> u64 {
    expires_at.div_ceil(BUCKET_MS).saturating_mul(BUCKET_MS)
}

/// Nonces drawn from the OS's random source a block at a time: a fresh
/// random nonce per sealed body without a `getrandom` call per message.
/// Each byte is handed out once.
struct NoncePool {
    block: [u8; NONCE_LEN * 256],
    used: usize,
}

impl NoncePool {
    fn new() -> Self {
        NoncePool {
            block: [0; NONCE_LEN * 256],
            used: NONCE_LEN * 256,
        }
    }

    fn next(&mut self) -> [u8; NONCE_LEN] {
        if self.used + NONCE_LEN > self.block.len() {
            random_bytes(&mut self.block);
            self.used = 0;
        }
        let mut nonce = [0u8; NONCE_LEN];
        let taken = &mut self.block[self.used..self.used + NONCE_LEN];
        nonce.copy_from_slice(taken);
        taken.fill(0);
        self.used += NONCE_LEN;
        nonce
    }
}

/// An AES-256-GCM key ready to seal and open with.
pub(crate) fn aead(key: &[u8; 32]) -> LessSafeKey {
    // A 32-byte key is always a valid AES-256 key.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte AES-256 key"))
}

impl KeyStore {
    /// Opens (or creates) the key store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_recycle_log_file_num(0);
        opts.set_wal_ttl_seconds(0);
        opts.set_wal_size_limit_mb(0);
        opts.set_keep_log_file_num(2);
        opts.set_compaction_filter(filter::NAME, filter::filter);
        opts.set_max_open_files(crate::fds::KEYSTORE_OPEN_FILES);
        Ok(KeyStore {
            db: DB::open(&opts, dir)?,
            bodies: Mutex::new(HashMap::new()),
            nonces: Mutex::new(NoncePool::new()),
        })
    }

    fn synced() -> WriteOptions {
        // A key must be on disk before anything sealed with it is: a crash
        // must never leave ciphertext whose key was lost.
        let mut w = WriteOptions::default();
        w.set_sync(true);
        w
    }

    /// The body key of the bucket ending at `end`, created if needed.
    fn body_key_for(&self, end: u64) -> Result<Arc<LessSafeKey>, StoreError> {
        let mut cache = self.bodies.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = cache.get(&end) {
            return Ok(Arc::clone(k));
        }
        let key = match self.db.get(body_key(end))? {
            Some(v) => match filter::split(&v) {
                Some((_, k)) if k.len() == 32 => k.try_into().expect("checked length"),
                _ => return Err(StoreError::Corrupt("keys")),
            },
            None => {
                let mut k = [0u8; 32];
                random_bytes(&mut k);
                self.db
                    .put_opt(body_key(end), filter::with_expiry(end, &k), &Self::synced())?;
                k
            }
        };
        let key = Arc::new(aead(&key));
        cache.insert(end, Arc::clone(&key));
        Ok(key)
    }

    /// Seals a message body under the key of its expiry bucket, bound to
    /// `aad` (the message's storage key). Output: bucket end (8 bytes),
    /// nonce (12), ciphertext and tag.
    pub fn seal_body(
        &self,
        expires_at: u64,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let end = bucket_of(expires_at);
        let key = self.body_key_for(end)?;
        let nonce = self.nonces.lock().unwrap_or_else(|p| p.into_inner()).next();
        let mut out = Vec::with_capacity(8 + NONCE_LEN + plaintext.len() + 16);
        out.extend_from_slice(&end.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[8 + NONCE_LEN..],
            )
            .map_err(|_| StoreError::Corrupt("seal"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens a sealed body; `None` once its key is destroyed (or it was
    /// tampered with).
    pub fn open_body(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 8 + NONCE_LEN + 16 {
            return None;
        }
        let end = u64::from_be_bytes(sealed[..8].try_into().ok()?);
        if end <= now_ms() {
            return None;
        }
        let key = {
            let cache = self.bodies.lock().unwrap_or_else(|p| p.into_inner());
            cache.get(&end).cloned()
        };
        let key = match key {
            Some(k) => k,
            None => {
                let v = self.db.get(body_key(end)).ok()??;
                let (_, k) = filter::split(&v)?;
                Arc::new(aead(k.try_into().ok()?))
            }
        };
        let nonce = Nonce::try_assume_unique_for_key(&sealed[8..8 + NONCE_LEN]).ok()?;
        let mut buf = sealed[8 + NONCE_LEN..].to_vec();
        let plain = key.open_in_place(nonce, Aad::from(aad), &mut buf).ok()?;
        Some(plain.to_vec())
    }

    /// Stores a media data key that lives until `until`.
    pub fn put_media_key(
        &self,
        id: &[u8; 16],
        key: &[u8; 32],
        until: u64,
    ) -> Result<(), StoreError> {
        self.db.put_opt(
            media_key(id),
            filter::with_expiry(until, key),
            &Self::synced(),
        )?;
        Ok(())
    }

    /// A live media data key.
    pub fn media_key(&self, id: &[u8; 16]) -> Result<Option<[u8; 32]>, StoreError> {
        let Some(v) = self.db.get(media_key(id))? else {
            return Ok(None);
        };
        match filter::split(&v) {
            Some((exp, k)) if exp > now_ms() && k.len() == 32 => {
                Ok(Some(k.try_into().expect("checked length")))
            }
            Some(_) => Ok(None),
            None => Err(StoreError::Corrupt("keys")),
        }
    }

    /// Seals a short text (a highlight's caption) under the live data key
    /// of media `id`, bound to `aad` (the id of the row that carries it):
    /// nonce (12 bytes), ciphertext and tag. Destroying the media's key
    /// destroys the text with it. `Ok(None)` when the key is gone.
    pub fn seal_with_media_key(
        &self,
        id: &[u8; 16],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(key) = self.media_key(id)? else {
            return Ok(None);
        };
        let nonce = self.nonces.lock().unwrap_or_else(|p| p.into_inner()).next();
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + 16);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = aead(&key)
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[NONCE_LEN..],
            )
            .map_err(|_| StoreError::Corrupt("seal"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(Some(out))
    }

    /// Opens what [`KeyStore::seal_with_media_key`] sealed; `None` once the
    /// media's key is destroyed (or its life is over), for another `aad`,
    /// or if it was tampered with or cannot be read.
    pub fn open_with_media_key(&self, id: &[u8; 16], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN + 16 {
            return None;
        }
        let key = self.media_key(id).ok()??;
        let nonce = Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN]).ok()?;
        let mut buf = sealed[NONCE_LEN..].to_vec();
        let plain = aead(&key)
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }

    /// Changes when a media key dies (never beyond what it was made for:
    /// a key already gone stays gone).
    pub fn set_media_until(&self, id: &[u8; 16], until: u64) -> Result<(), StoreError> {
        let Some(key) = self.media_key(id)? else {
            return Ok(());
        };
        self.put_media_key(id, &key, until)
    }

    /// Destroys a media key now (its bytes leave disk at the next purge).
    pub fn destroy_media_key(&self, id: &[u8; 16]) -> Result<(), StoreError> {
        self.db.delete_opt(media_key(id), &Self::synced())?;
        Ok(())
    }

    /// One purge pass: deletes every key whose life is over, then flushes
    /// and compacts everything so no file keeps a destroyed key. Returns
    /// how many keys it destroyed.
    pub fn purge(&self) -> Result<usize, StoreError> {
        let now = now_ms();
        self.bodies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|end, _| *end > now);
        let mut dead = Vec::new();
        for item in self.db.iterator(IteratorMode::Start) {
            let (k, v) = item?;
            if filter::split(&v).is_none_or(|(exp, _)| exp <= now) {
                dead.push(k);
            }
        }
        for k in &dead {
            self.db.delete(k)?;
        }
        self.db.flush_opt(&FlushOptions::default())?;
        self.db.flush_wal(true)?;
        let mut co = CompactOptions::default();
        co.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        self.db.compact_range_opt(None::<&[u8]>, None::<&[u8]>, &co);
        Ok(dead.len())
    }

    /// The key store's census (see [`crate::deletion`]): every key's
    /// value begins with the end of its life, so a key past it still here
    /// is a key not yet shredded.
    pub fn census(&self, now: u64) -> Result<crate::deletion::DbCensus, StoreError> {
        let default = [rocksdb::DEFAULT_COLUMN_FAMILY_NAME];
        crate::deletion::census(&self.db, self.db.path(), &default, |_| true, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_up() {
        assert_eq!(bucket_of(1), BUCKET_MS);
        assert_eq!(bucket_of(BUCKET_MS), BUCKET_MS);
        assert_eq!(bucket_of(BUCKET_MS + 1), 2 * BUCKET_MS);
    }

    #[test]
    fn nonces_never_repeat_across_refills() {
        let mut pool = NoncePool::new();
        let n = 256 * 4 + 7;
        let seen: std::collections::HashSet<[u8; NONCE_LEN]> =
            (0..n).map(|_| pool.next()).collect();
        assert_eq!(seen.len(), n, "every nonce is fresh");
        assert!(!seen.contains(&[0u8; NONCE_LEN]), "no wiped bytes reused");
    }

    #[test]
    fn one_body_sealed_twice_differs_and_both_open() {
        let dir = tempfile::tempdir().unwrap();
        let ks = KeyStore::open(dir.path()).unwrap();
        let exp = now_ms() + 60_000;
        let a = ks.seal_body(exp, b"row", b"same body").unwrap();
        let b = ks.seal_body(exp, b"row", b"same body").unwrap();
        assert_ne!(a[8..8 + NONCE_LEN], b[8..8 + NONCE_LEN], "fresh nonces");
        assert_ne!(a, b);
        assert_eq!(ks.open_body(b"row", &a).unwrap(), b"same body");
        assert_eq!(ks.open_body(b"row", &b).unwrap(), b"same body");
        assert!(ks.open_body(b"other row", &a).is_none(), "bound to its row");
    }

    #[test]
    fn texts_sealed_under_a_media_key_die_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let ks = KeyStore::open(dir.path()).unwrap();
        let media = [7u8; 16];
        let mut key = [0u8; 32];
        random_bytes(&mut key);
        assert_eq!(
            ks.seal_with_media_key(&media, b"hl-1", b"x").unwrap(),
            None,
            "no key, nothing sealed"
        );
        ks.put_media_key(&media, &key, u64::MAX).unwrap();

        let a = ks
            .seal_with_media_key(&media, b"hl-1", b"caption canary")
            .unwrap()
            .unwrap();
        let b = ks
            .seal_with_media_key(&media, b"hl-1", b"caption canary")
            .unwrap()
            .unwrap();
        assert_eq!(a.len(), NONCE_LEN + b"caption canary".len() + 16);
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN], "fresh nonces");
        assert!(!a.windows(6).any(|w| w == b"canary"), "ciphertext hides it");
        assert_eq!(
            ks.open_with_media_key(&media, b"hl-1", &a).as_deref(),
            Some(&b"caption canary"[..])
        );
        assert_eq!(
            ks.open_with_media_key(&media, b"hl-1", &b).as_deref(),
            Some(&b"caption canary"[..])
        );
        assert_eq!(
            ks.open_with_media_key(&media, b"hl-2", &a),
            None,
            "bound to its row"
        );
        assert_eq!(
            ks.open_with_media_key(&[8u8; 16], b"hl-1", &a),
            None,
            "another media's key"
        );
        let mut tampered = a.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(ks.open_with_media_key(&media, b"hl-1", &tampered), None);
        assert_eq!(
            ks.open_with_media_key(&media, b"hl-1", &a[..NONCE_LEN + 15]),
            None
        );
        // The sealed form is the media file's: nonce || ciphertext || tag.
        let nonce = Nonce::try_assume_unique_for_key(&a[..NONCE_LEN]).unwrap();
        let mut buf = a[NONCE_LEN..].to_vec();
        let plain = aead(&key)
            .open_in_place(nonce, Aad::from(b"hl-1"), &mut buf)
            .unwrap();
        assert_eq!(plain, b"caption canary");

        ks.destroy_media_key(&media).unwrap();
        assert_eq!(
            ks.open_with_media_key(&media, b"hl-1", &a),
            None,
            "shredded with its key"
        );
        assert_eq!(ks.seal_with_media_key(&media, b"hl-1", b"x").unwrap(), None);

        // A key whose life is over opens nothing either, before any purge.
        ks.put_media_key(&media, &key, now_ms() + 60_000).unwrap();
        assert!(ks.open_with_media_key(&media, b"hl-1", &a).is_some());
        ks.set_media_until(&media, now_ms() - 1).unwrap();
        assert_eq!(ks.open_with_media_key(&media, b"hl-1", &a), None);
    }

    #[test]
    fn sealed_bodies_open_until_their_key_is_purged() {
        let dir = tempfile::tempdir().unwrap();
        let ks = KeyStore::open(dir.path()).unwrap();
        let live = now_ms() + 600_000;
        let s = ks.seal_body(live, b"aad", b"canary-plaintext").unwrap();
        assert!(
            !s.windows(6).any(|w| w == b"canary"),
            "ciphertext hides the plaintext"
        );
        assert_eq!(
            ks.open_body(b"aad", &s).as_deref(),
            Some(&b"canary-plaintext"[..])
        );
        assert_eq!(ks.open_body(b"other", &s), None, "bound to its row");

        // A body whose bucket already ended: its key is created expired,
        // and after a purge no file holds it.
        let past = now_ms() - 2 * BUCKET_MS;
        let s = ks.seal_body(past, b"aad", b"gone").unwrap();
        let stored = ks.db.get(body_key(bucket_of(past))).unwrap().unwrap();
        let key = filter::split(&stored).unwrap().1.to_vec();
        assert_eq!(key.len(), 32);
        assert_eq!(
            ks.open_body(b"aad", &s),
            None,
            "an ended bucket never opens"
        );
        assert!(ks.purge().unwrap() >= 1);
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
            assert!(
                !bytes.windows(32).any(|w| w == key.as_slice()),
                "destroyed key left in a file"
            );
        }
    }
}
