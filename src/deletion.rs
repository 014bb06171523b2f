//! Measuring physical deletion, from what is on disk: how much expired or
//! deleted content a RocksDB instance still holds and since when, and the
//! auditor's `ephemera verify-deletion`, which applies the same census to
//! a data directory (while the server runs, or stopped) and gives a
//! verdict. Only counts, ages and column-family names are ever printed:
//! never a key, a value or a file's bytes.
//!
//! What counts as still present:
//! * a row whose expiry header has passed: the read path hides it, but
//!   its bytes stay in a table file (or the WAL) until a compaction runs
//!   it through the filter;
//! * a deletion marker (a burn, a destroyed key): the row it deletes may
//!   still be in an older file, or beside it in the WAL, until a
//!   compaction to the bottom level drops both;
//! * a write-ahead log file with content: it keeps whole what was written
//!   until every column family with data in it has flushed.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};
use rocksdb::{Options, ReadOptions, DB};
use serde::Serialize;

use crate::store::{filter, StoreError};

/// What one column family holds that deletion has not yet reached.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FamilyCensus {
    /// The family's name.
    pub name: String,
    /// Rows whose expiry header had passed when counted.
    pub expired_rows: u64,
    /// The earliest expiry header among the rows present (expired or not):
    /// from then on, something in this family is expired and on disk.
    pub earliest_expiry: Option<u64>,
    /// Table files holding deletion markers.
    pub tombstone_files: u64,
    /// Deletions still in memtables (and so in the WAL, beside what they
    /// delete).
    pub unflushed_deletions: u64,
}

impl FamilyCensus {
    /// Whether a compaction of this family at `now` would remove anything:
    /// an expired row or a deletion marker.
    pub fn needs_compaction(&self, now: u64) -> bool {
        self.earliest_expiry.is_some_and(|e| e <= now)
            || self.tombstone_files > 0
            || self.unflushed_deletions > 0
    }
}

/// A RocksDB instance's census at one moment.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DbCensus {
    /// When it was taken (Unix ms).
    pub at: u64,
    /// Rows read.
    pub rows: u64,
    /// Per column family.
    pub families: Vec<FamilyCensus>,
    /// When the oldest table file holding deletion markers was written
    /// (Unix ms): what it deletes was deleted before that.
    pub oldest_tombstone_file: Option<u64>,
    /// Write-ahead log files with content.
    pub wal_files: u64,
    /// When the oldest of them was created (Unix ms; its last write where
    /// the file system keeps no creation time).
    pub oldest_wal: Option<u64>,
}

impl DbCensus {
    /// Rows whose expiry had passed when counted.
    pub fn expired_rows(&self) -> u64 {
        self.families.iter().map(|f| f.expired_rows).sum()
    }

    /// The earliest expiry among the rows present.
    pub fn earliest_expiry(&self) -> Option<u64> {
        self.families.iter().filter_map(|f| f.earliest_expiry).min()
    }

    /// Deletion markers: in table files, and not yet flushed.
    pub fn deletions(&self) -> (u64, u64) {
        self.families.iter().fold((0, 0), |(t, u), f| {
            (t + f.tombstone_files, u + f.unflushed_deletions)
        })
    }

    /// How long, at `now`, the oldest expired row counted here has been
    /// expired (0 if none): a row present at the census whose expiry has
    /// passed since is on disk until the next compaction of its family.
    pub fn expired_age_ms(&self, now: u64) -> u64 {
        self.earliest_expiry().map_or(0, |e| now.saturating_sub(e))
    }

    /// How long, at `now`, the oldest deletion counted here has waited for
    /// its bytes to go. Unflushed deletions are no older than
    /// `unflushed_since` (the last flush of every family, where known; else
    /// the oldest WAL's creation).
    pub fn deletion_age_ms(&self, now: u64, unflushed_since: Option<u64>) -> u64 {
        let files = self
            .oldest_tombstone_file
            .map_or(0, |t| now.saturating_sub(t));
        let (_, unflushed) = self.deletions();
        let memtables = match unflushed_since.or(self.oldest_wal) {
            Some(t) if unflushed > 0 => now.saturating_sub(t),
            _ => 0,
        };
        files.max(memtables)
    }

    /// How long, at `now`, the oldest WAL file with content has lived.
    pub fn wal_age_ms(&self, now: u64) -> u64 {
        self.oldest_wal.map_or(0, |t| now.saturating_sub(t))
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A file's creation time (Unix ms), or its last write where the file
/// system keeps none; `None` if it is gone.
fn born(path: &Path) -> Option<u64> {
    let meta = std::fs::metadata(path).ok()?;
    meta.created()
        .or_else(|_| meta.modified())
        .ok()
        .map(unix_ms)
}

/// Takes the census of `db` (whose files are in `dir`) at `now`. Rows are
/// read in the families `families` names and judged by their expiry header
/// when `expiring(name)`; deletion markers are counted in every family.
pub fn census(
    db: &DB,
    dir: &Path,
    families: &[&str],
    expiring: impl Fn(&str) -> bool,
    now: u64,
) -> Result<DbCensus, StoreError> {
    let mut out = DbCensus {
        at: now,
        ..DbCensus::default()
    };
    for name in families {
        let cf = if *name == rocksdb::DEFAULT_COLUMN_FAMILY_NAME {
            None
        } else {
            Some(db.cf_handle(name).ok_or(StoreError::NotOpen("census"))?)
        };
        let mut fam = FamilyCensus {
            name: (*name).to_owned(),
            ..FamilyCensus::default()
        };
        let mut ro = ReadOptions::default();
        // A census reads everything once: it must not evict what serves.
        ro.fill_cache(false);
        let mut it = match cf {
            Some(cf) => db.raw_iterator_cf_opt(cf, ro),
            None => db.raw_iterator_opt(ro),
        };
        it.seek_to_first();
        while it.valid() {
            out.rows += 1;
            if expiring(name) {
                if let Some((exp, _)) = it.value().and_then(filter::split) {
                    if exp != u64::MAX {
                        if exp <= now {
                            fam.expired_rows += 1;
                        }
                        fam.earliest_expiry = Some(fam.earliest_expiry.map_or(exp, |e| e.min(exp)));
                    }
                }
            }
            it.next();
        }
        it.status()?;
        let prop = |p: &str| -> Result<u64, rocksdb::Error> {
            Ok(match cf {
                Some(cf) => db.property_int_value_cf(cf, p)?,
                None => db.property_int_value(p)?,
            }
            .unwrap_or(0))
        };
        fam.unflushed_deletions = prop("rocksdb.num-deletes-active-mem-table")?
            + prop("rocksdb.num-deletes-imm-mem-tables")?;
        out.families.push(fam);
    }
    for file in db.live_files()? {
        if file.num_deletions == 0 {
            continue;
        }
        if let Some(fam) = out
            .families
            .iter_mut()
            .find(|f| f.name == file.column_family_name)
        {
            fam.tombstone_files += 1;
        }
        // A file compacted away since the listing no longer holds anything.
        if let Some(t) = born(&dir.join(file.name.trim_start_matches('/'))) {
            out.oldest_tombstone_file = Some(out.oldest_tombstone_file.map_or(t, |o| o.min(t)));
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        let is_wal = path.extension().is_some_and(|e| e == "log");
        let has_content = entry.metadata().is_ok_and(|m| m.len() > 0);
        if is_wal && has_content {
            out.wal_files += 1;
            if let Some(t) = born(&path) {
                out.oldest_wal = Some(out.oldest_wal.map_or(t, |o| o.min(t)));
            }
        }
    }
    Ok(out)
}

/// Removes a directory when dropped (a secondary instance's scratch files).
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A scratch directory for a secondary instance, removed when dropped.
pub fn scratch(purpose: &str) -> anyhow::Result<RemoveOnDrop> {
    let dir = std::env::temp_dir().join(format!(
        "ephemera-{purpose}-{}-{}",
        std::process::id(),
        ephemera_actors::store::now_ms()
    ));
    std::fs::create_dir(&dir).context("creating a scratch directory")?;
    Ok(RemoveOnDrop(dir))
}

/// Opens the RocksDB instance in `dir` as a secondary over `families`: no
/// lock is taken, so it works beside a running server, and it sees
/// everything the server had written when it opened (its WAL included).
/// Every table file is held open (`max_open_files = -1`), so the server's
/// compactions cannot pull a file from under a scan.
///
/// A flush by the server while the instance opens can delete a WAL after
/// the secondary read the MANIFEST and before it read that WAL: what the
/// WAL held is then in a table file the secondary does not know yet. So
/// the secondary catches up with the primary (the MANIFEST's new edits and
/// the new WALs) once open. Without this a backup taken during the sweep's
/// flush missed rows (`tests/backup.rs` failed about 1 run in 5).
pub fn open_secondary(dir: &Path, scratch: &Path, families: &[&str]) -> anyhow::Result<DB> {
    let mut opts = Options::default();
    opts.set_max_open_files(-1);
    let mut last = None;
    // The server may delete a WAL or table file between the listing and
    // the opening: try again on a fresh listing.
    for _ in 0..3 {
        let opened = DB::open_cf_as_secondary(&opts, dir, scratch, families.iter().copied())
            .and_then(|db| db.try_catch_up_with_primary().map(|()| db));
        match opened {
            Ok(db) => return Ok(db),
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow!(
        "opening the RocksDB instance in {}: {}",
        dir.display(),
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// What `verify-deletion` found.
#[derive(Debug, Default, Serialize)]
pub struct Verdict {
    /// Nothing expired or deleted is still present beyond the grace.
    pub clean: bool,
    /// Why not, a line each (counts and ages only).
    pub findings: Vec<String>,
    /// The lines of the report.
    pub report: Vec<String>,
}

fn secs(ms: u64) -> u64 {
    ms / 1000
}

/// Judges one instance's census: what is present past `grace_ms`.
fn judge(
    what: &str,
    c: &DbCensus,
    now: u64,
    grace_ms: u64,
    findings: &mut Vec<String>,
    report: &mut Vec<String>,
) {
    let (tomb_files, unflushed) = c.deletions();
    let expired_age = c.expired_age_ms(now);
    let deletion_age = c.deletion_age_ms(now, None);
    report.push(format!(
        "{what}: {} rows; {} expired rows still present (the oldest expired {} s ago); \
         deletion markers in {tomb_files} table files and {unflushed} unflushed (the oldest {} s old); \
         {} WAL files with content",
        c.rows,
        c.expired_rows(),
        secs(expired_age),
        secs(deletion_age),
        c.wal_files,
    ));
    if c.expired_rows() > 0 && expired_age > grace_ms {
        let by_family: Vec<String> = c
            .families
            .iter()
            .filter(|f| f.expired_rows > 0)
            .map(|f| format!("{} {}", f.name, f.expired_rows))
            .collect();
        findings.push(format!(
            "{what}: {} expired rows still present, the oldest expired {} s ago ({})",
            c.expired_rows(),
            secs(expired_age),
            by_family.join(", ")
        ));
    }
    if (tomb_files > 0 || unflushed > 0) && deletion_age > grace_ms {
        findings.push(format!(
            "{what}: deleted rows may still be present: deletion markers in {tomb_files} \
             table files and {unflushed} unflushed, the oldest {} s old",
            secs(deletion_age)
        ));
    }
}

/// The auditor's check of `data_dir`: the main database, the key store and
/// the embedded blob store. Content that ended less than `grace` ago is
/// reported but tolerated (the server's deletion window is such a grace);
/// with no grace, anything expired and still present fails the check.
/// Quarantined content, the sanctioned exception, is reported apart.
pub fn verify(data_dir: &Path, grace: Duration) -> anyhow::Result<Verdict> {
    let now = ephemera_actors::store::now_ms();
    let grace_ms = grace.as_millis() as u64;
    let mut v = Verdict::default();
    let db_dir = data_dir.join("db");
    if !db_dir.join("CURRENT").is_file() {
        anyhow::bail!("no database in {}", db_dir.display());
    }
    let families: Vec<&str> = crate::store::Cf::ALL.iter().map(|c| c.name()).collect();
    let s = scratch("verify-db")?;
    let db = open_secondary(&db_dir, &s.0, &families)?;
    let main = crate::store::census_of(&db, now).context("reading the database")?;
    judge(
        "main database",
        &main,
        now,
        grace_ms,
        &mut v.findings,
        &mut v.report,
    );

    let keys_dir = data_dir.join("keys");
    if keys_dir.join("CURRENT").is_file() {
        let s = scratch("verify-keys")?;
        let default = [rocksdb::DEFAULT_COLUMN_FAMILY_NAME];
        let keys = open_secondary(&keys_dir, &s.0, &default)?;
        let c =
            census(&keys, &keys_dir, &default, |_| true, now).context("reading the key store")?;
        judge(
            "key store",
            &c,
            now,
            grace_ms,
            &mut v.findings,
            &mut v.report,
        );
    } else {
        v.report.push("key store: none".into());
    }

    blobs(data_dir, &db, now, grace_ms, &mut v)?;

    let quarantine_dir = data_dir.join("quarantine");
    if quarantine_dir.join("CURRENT").is_file() {
        let q = crate::quarantine::QuarantineStore::open_read_only(&quarantine_dir)
            .and_then(|q| q.census())
            .context("reading the quarantine store")?;
        v.report.push(format!(
            "quarantine (the sanctioned exception, not judged here): {} open cases, {} cases \
             holding content ({} closed under a hold), {} blob copies, {} destroyed cases",
            q.open_cases,
            q.cases_holding_content,
            q.closed_holding_content,
            q.blobs_held,
            q.destroyed_cases
        ));
    } else {
        v.report.push("quarantine: none".into());
    }
    v.clean = v.findings.is_empty();
    Ok(v)
}

/// The embedded blob store: every media object must have a media record
/// whose life is not over (or ended less than the grace ago); an object
/// without one is an orphan, tolerated only while younger than the grace.
fn blobs(data_dir: &Path, db: &DB, now: u64, grace_ms: u64, v: &mut Verdict) -> anyhow::Result<()> {
    let root = data_dir.join("blobs");
    let Ok(buckets) = std::fs::read_dir(&root) else {
        v.report
            .push("blob store: none (media in external S3 is not checked here)".into());
        return Ok(());
    };
    let media = db
        .cf_handle(crate::store::Cf::Media.name())
        .ok_or_else(|| anyhow!("the media column family is not open"))?;
    let (mut objects, mut past_life, mut orphans, mut quarantined) = (0u64, 0u64, 0u64, 0u64);
    let mut oldest_ms = 0u64;
    for bucket in buckets.flatten() {
        let Ok(files) = std::fs::read_dir(bucket.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            // The embedded store names an object's file by its key, `/`
            // written `+`.
            let key = name.replace('+', "/");
            if key.starts_with(crate::media::service::QUARANTINE_PREFIX) {
                quarantined += 1;
                continue;
            }
            let Some(id) = crate::media::service::media_id(&key) else {
                continue;
            };
            objects += 1;
            let rec = db.get_cf(media, id.0)?;
            let until = rec
                .as_deref()
                .and_then(filter::split)
                .and_then(|(_, p)| serde_json::from_slice::<crate::store::MediaRecord>(p).ok())
                .map(|r| r.until);
            let ended = match until {
                Some(u) if u > now => continue,
                Some(u) => {
                    past_life += 1;
                    u
                }
                None => {
                    orphans += 1;
                    born(&f.path()).unwrap_or(now)
                }
            };
            oldest_ms = oldest_ms.max(now.saturating_sub(ended));
        }
    }
    v.report.push(format!(
        "blob store: {objects} media objects; {past_life} past their life and {orphans} orphaned \
         (the oldest {} s over); {quarantined} quarantined copies (the sanctioned exception)",
        secs(oldest_ms)
    ));
    if past_life + orphans > 0 && oldest_ms > grace_ms {
        v.findings.push(format!(
            "blob store: {past_life} objects past their life and {orphans} orphaned, the oldest {} s over",
            secs(oldest_ms)
        ));
    }
    Ok(())
}
