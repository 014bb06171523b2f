//! `ephemera backup` and `ephemera restore`: backups without content.
//!
//! A backup holds what a lost disk should not cost the users: their
//! accounts (the password hash is an account's credential, so a restored
//! account logs in with its password), the social graph, conversation
//! membership with the counters that must never go backwards, and the
//! resolved settings without secrets. It never holds a message, story,
//! highlight or media row, a data key, a blob or a login token: those are
//! what Ephemera promises to destroy, and a backup that kept them would
//! be a side channel (DESIGN: "no side channels"). Which column family is
//! which is one explicit list each, [`BACKED_UP`] and [`NEVER_BACKED_UP`];
//! a test makes every new column family land in one of them.
//!
//! The file: the line `EPHEMERA-BACKUP 1\n`, then records
//! `(name: u8 length + bytes, key: u32 BE length + bytes, value: u32 BE
//! length + bytes)`: first the settings (name [`SETTINGS`], empty key,
//! JSON value), then rows (name = column family, key and value as
//! stored, expiry header included); then a zero byte (the end) and the
//! SHA-256 of every byte before it, which `restore` checks before it
//! writes anything.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use ring::digest;
use rocksdb::{IteratorMode, WriteBatch};

use crate::config::Config;
use crate::store::{filter, open_db, Cf};

/// The column families a backup holds.
pub const BACKED_UP: [Cf; 11] = [
    // Accounts: username, PBKDF2 salt and hash. The hash is a
    // credential, not content: without it no restored user could log in.
    Cf::Accounts,
    Cf::Usernames,
    // The social graph, both twins and the exact counts.
    Cf::Follows,
    Cf::Followers,
    Cf::FollowCounts,
    Cf::CloseFriends,
    // Conversation membership (members, kind, a group's name) ...
    Cf::Conversations,
    Cf::Memberships,
    // ... and the counters that must not go backwards after a restore:
    // seqs, per-user cursors, and how far each member read (a seq).
    Cf::Sequences,
    Cf::Cursors,
    Cf::ReadStates,
];

/// The column families a backup never holds.
pub const NEVER_BACKED_UP: [Cf; 23] = [
    // Login tokens are secrets: restored users log in again.
    Cf::Tokens,
    // Message content and everything about single messages: bodies,
    // burns, who opened what, the events referring to them, send dedup,
    // and their deadlines (which would wake conversations for messages
    // that are not there).
    Cf::Messages,
    Cf::Tombstones,
    Cf::Views,
    Cf::Inbox,
    // Cluster mode: inbox events on their way to Redis.
    Cf::Outbound,
    Cf::Dedup,
    Cf::Deadlines,
    Cf::ConversationDeadlines,
    // Media records: their blobs and keys are not backed up either.
    Cf::Media,
    // Stories, their indexes, tray references, views and fanout state.
    Cf::Stories,
    Cf::AuthorStories,
    Cf::Broadcasts,
    Cf::TrayRefs,
    Cf::StoryViews,
    Cf::Viewed,
    Cf::StoryDeadlines,
    Cf::StoryFanout,
    // Highlights are kept stories: content.
    Cf::Highlights,
    Cf::AuthorHighlights,
    // Reactions are content of messages.
    Cf::Reactions,
    // Devices' public keys: restored users log in again, as new devices
    // with keys of their own.
    Cf::DeviceKeys,
    Cf::Prekeys,
];

/// The settings leave these out: they are secrets.
pub const SECRETS_LEFT_OUT: [&str; 3] = ["admin_token", "s3_secret_access_key", "turn_secret"];

/// The first bytes of a backup file: the format and its version.
const MAGIC: &[u8] = b"EPHEMERA-BACKUP 1\n";

/// The record name of the settings (no column family starts with `@`).
const SETTINGS: &str = "@settings";

/// Where `restore` writes the settings it found, inside the data directory.
pub const SETTINGS_FILE: &str = "settings-from-backup.json";

/// Bounds on one record, so a damaged length cannot ask for gigabytes.
const MAX_KEY: usize = 1 << 10;
const MAX_VALUE: usize = 16 << 20;

/// Rows written to the new database per batch.
const RESTORE_BATCH: usize = 10_000;

/// What a backup or restore moved: rows per column family.
#[derive(Debug, Default)]
pub struct Summary(pub BTreeMap<&'static str, u64>);

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rows: Vec<String> = self.0.iter().map(|(cf, n)| format!("{cf} {n}")).collect();
        write!(
            f,
            "{} rows ({})",
            self.0.values().sum::<u64>(),
            rows.join(", ")
        )
    }
}

/// A writer or reader that hashes every byte passing through it.
struct Hashing<T> {
    inner: T,
    sha: digest::Context,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Self {
        Hashing {
            inner,
            sha: digest::Context::new(&digest::SHA256),
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
}

fn put_record(w: &mut impl Write, name: &str, key: &[u8], value: &[u8]) -> std::io::Result<()> {
    // Names are ours (column family names, `@settings`): short ASCII;
    // keys and values are bounded on write as on read.
    debug_assert!(!name.is_empty() && name.len() < 256);
    if key.len() > MAX_KEY || value.len() > MAX_VALUE {
        return Err(std::io::Error::other("a row larger than a backup record"));
    }
    w.write_all(&[name.len() as u8])?;
    w.write_all(name.as_bytes())?;
    w.write_all(&(key.len() as u32).to_be_bytes())?;
    w.write_all(key)?;
    w.write_all(&(value.len() as u32).to_be_bytes())?;
    w.write_all(value)
}

/// Writes a backup of `cfg.data_dir` to `out` (through `out.partial`,
/// renamed when complete; mode 0600: it holds password hashes).
pub fn backup(cfg: &Config, out: &Path) -> anyhow::Result<Summary> {
    let db_dir = cfg.data_dir.join("db");
    if !db_dir.join("CURRENT").is_file() {
        bail!("no database in {}", db_dir.display());
    }
    let scratch = crate::deletion::scratch("backup")?;
    // Content column families are not opened.
    let families: Vec<&str> = BACKED_UP.iter().map(|cf| cf.name()).collect();
    let db = crate::deletion::open_secondary(&db_dir, &scratch.0, &families)?;

    let settings = serde_json::json!({
        "settings": cfg,
        "secrets_left_out": SECRETS_LEFT_OUT,
        "backed_up_at": ephemera_actors::store::now_ms(),
    });
    let partial = out.with_extension("partial");
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .with_context(|| format!("creating {}", partial.display()))?
    };
    let mut w = Hashing::new(BufWriter::new(file));
    w.write_all(MAGIC)?;
    put_record(&mut w, SETTINGS, &[], settings.to_string().as_bytes())?;
    let now = ephemera_actors::store::now_ms();
    let mut summary = Summary::default();
    for cf in BACKED_UP {
        let handle = db
            .cf_handle(cf.name())
            .ok_or_else(|| anyhow!("the database has no column family {}", cf.name()))?;
        let count = summary.0.entry(cf.name()).or_default();
        for item in db.iterator_cf(handle, IteratorMode::Start) {
            let (k, v) = item.with_context(|| format!("reading {}", cf.name()))?;
            // A row past its expiry is already gone for every reader.
            if filter::split(&v).is_some_and(|(exp, _)| exp <= now) {
                continue;
            }
            put_record(&mut w, cf.name(), &k, &v)?;
            *count += 1;
        }
    }
    w.write_all(&[0])?;
    let sum = w.sha.finish();
    let mut inner = w.inner;
    inner.write_all(sum.as_ref())?;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&partial, out)
        .with_context(|| format!("renaming {} to {}", partial.display(), out.display()))?;
    Ok(summary)
}

/// One record of a backup file.
enum Record {
    /// The settings' JSON.
    Settings(Vec<u8>),
    /// A row of a backed-up column family, as stored.
    Row {
        cf: Cf,
        key: Vec<u8>,
        value: Vec<u8>,
    },
}

fn read_len(r: &mut impl Read, max: usize, what: &str) -> anyhow::Result<Vec<u8>> {
    let mut n = [0u8; 4];
    r.read_exact(&mut n).context("the backup is truncated")?;
    let n = u32::from_be_bytes(n) as usize;
    if n > max {
        bail!("the backup is damaged: a {what} of {n} bytes");
    }
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf).context("the backup is truncated")?;
    Ok(buf)
}

/// Reads the backup at `path`, handing each record to `each`, and checks
/// its format, its column families (backed-up ones only) and its
/// checksum; any fault is an error.
fn read_backup(
    path: &Path,
    mut each: impl FnMut(Record) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut r = Hashing::new(BufReader::new(file));
    let mut magic = [0u8; MAGIC.len()];
    r.read_exact(&mut magic)
        .context("not an ephemera backup (too short)")?;
    if magic != MAGIC {
        bail!("not an ephemera backup of a version this build reads (format 1)");
    }
    loop {
        let mut n = [0u8; 1];
        r.read_exact(&mut n).context("the backup is truncated")?;
        if n[0] == 0 {
            break;
        }
        let mut name = vec![0u8; n[0] as usize];
        r.read_exact(&mut name).context("the backup is truncated")?;
        let key = read_len(&mut r, MAX_KEY, "key")?;
        let value = read_len(&mut r, MAX_VALUE, "value")?;
        let record = if name == SETTINGS.as_bytes() {
            Record::Settings(value)
        } else {
            let cf = BACKED_UP
                .into_iter()
                .find(|cf| cf.name().as_bytes() == name)
                .ok_or_else(|| {
                    let why = if NEVER_BACKED_UP
                        .iter()
                        .any(|cf| cf.name().as_bytes() == name)
                    {
                        "which backups never hold"
                    } else {
                        "which this build does not know"
                    };
                    anyhow!(
                        "the backup holds rows of {:?}, {why}: refused",
                        String::from_utf8_lossy(&name)
                    )
                })?;
            Record::Row { cf, key, value }
        };
        each(record)?;
    }
    let expected = r.sha.finish();
    let mut inner = r.inner;
    let mut sum = [0u8; 32];
    inner
        .read_exact(&mut sum)
        .context("the backup is truncated (no checksum)")?;
    if sum[..] != *expected.as_ref() {
        bail!("the backup's SHA-256 does not match: the file is damaged");
    }
    if inner.read(&mut [0u8; 1])? != 0 {
        bail!("the backup is damaged: bytes after its checksum");
    }
    Ok(())
}

/// Whether `dir` is absent or an empty directory.
fn is_empty_dir(dir: &Path) -> anyhow::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

/// Restores the backup `from` into `data_dir`, which must be empty (or
/// absent): a restore never merges into live data. The file is checked
/// whole (format, column families, checksum) before anything is written.
/// The settings go to `data_dir/settings-from-backup.json` for the
/// operator to compare with their configuration.
pub fn restore(data_dir: &Path, from: &Path) -> anyhow::Result<Summary> {
    if !is_empty_dir(data_dir)? {
        bail!(
            "{} is not empty: restore writes only into an empty data directory",
            data_dir.display()
        );
    }
    read_backup(from, |_| Ok(()))?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    // The server sets its own deletion window when it opens the database.
    let db = open_db(&data_dir.join("db"), 3_600).context("creating the database")?;
    let mut summary = Summary::default();
    let mut batch = WriteBatch::default();
    let mut settings = None;
    read_backup(from, |record| {
        match record {
            Record::Settings(json) => settings = Some(json),
            Record::Row { cf, key, value } => {
                let handle = db
                    .cf_handle(cf.name())
                    .ok_or_else(|| anyhow!("no column family {}", cf.name()))?;
                batch.put_cf(handle, key, value);
                *summary.0.entry(cf.name()).or_default() += 1;
                if batch.len() >= RESTORE_BATCH {
                    db.write(std::mem::take(&mut batch))?;
                }
            }
        }
        Ok(())
    })?;
    db.write(batch)?;
    let handles: Vec<_> = Cf::ALL
        .iter()
        .filter_map(|cf| db.cf_handle(cf.name()))
        .collect();
    db.flush_cfs_opt(&handles, &rocksdb::FlushOptions::default())?;
    db.flush_wal(true)?;
    drop(handles);
    drop(db);
    if let Some(json) = settings {
        std::fs::write(data_dir.join(SETTINGS_FILE), json)
            .context("writing the settings from the backup")?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    #[test]
    fn every_column_family_is_classified_once() {
        for cf in Cf::ALL {
            let n = BACKED_UP.iter().filter(|c| **c == cf).count()
                + NEVER_BACKED_UP.iter().filter(|c| **c == cf).count();
            assert_eq!(
                n, 1,
                "{cf:?} must be in exactly one of BACKED_UP and NEVER_BACKED_UP"
            );
        }
        assert_eq!(BACKED_UP.len() + NEVER_BACKED_UP.len(), Cf::ALL.len());
    }

    fn config(data_dir: &Path) -> Config {
        Config::resolve(
            Settings {
                data_dir: Some(data_dir.to_path_buf()),
                admin_token: Some("admin-secret-canary".into()),
                turn_urls: Some(vec!["turn:127.0.0.1:3478".into()]),
                turn_secret: Some("turn-secret-canary".into()),
                ..Settings::default()
            },
            None,
        )
        .unwrap()
    }

    fn rows(db: &rocksdb::DB, cf: Cf) -> Vec<(Vec<u8>, Vec<u8>)> {
        db.iterator_cf(db.cf_handle(cf.name()).unwrap(), IteratorMode::Start)
            .map(|i| {
                let (k, v) = i.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    }

    /// Rows in every column family of a database held open (as by a
    /// running server), some only in its WAL: the backup holds the live
    /// rows of the backed-up families and nothing else, restores into an
    /// empty directory only, and a damaged file is refused.
    #[test]
    fn backs_up_the_allow_list_beside_an_open_database_and_restores_it() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let primary = open_db(&data.join("db"), 3_600).unwrap();
        let live = filter::with_expiry(u64::MAX, b"row");
        let expired = filter::with_expiry(1, b"old");
        for cf in Cf::ALL {
            let h = primary.cf_handle(cf.name()).unwrap();
            primary.put_cf(h, b"live-key", &live).unwrap();
            primary.put_cf(h, b"expired-key", &expired).unwrap();
        }
        primary
            .flush_cf(primary.cf_handle(Cf::Accounts.name()).unwrap())
            .unwrap();
        // Written after the flush: only in the WAL and the memtable.
        let h = primary.cf_handle(Cf::Follows.name()).unwrap();
        primary.put_cf(h, b"late-key", &live).unwrap();

        let out = tmp.path().join("backup.bin");
        let summary = backup(&config(&data), &out).unwrap();
        assert_eq!(summary.0["accounts"], 1);
        assert_eq!(summary.0["follows"], 2);
        let bytes = std::fs::read(&out).unwrap();
        assert!(bytes.starts_with(MAGIC));
        assert!(!bytes.windows(19).any(|w| w == b"admin-secret-canary"));
        assert!(!bytes.windows(18).any(|w| w == b"turn-secret-canary"));

        let target = tmp.path().join("restored");
        restore(&target, &out).unwrap();
        let restored = open_db(&target.join("db"), 3_600).unwrap();
        for cf in Cf::ALL {
            let got = rows(&restored, cf);
            if BACKED_UP.contains(&cf) {
                let mut want = vec![(b"live-key".to_vec(), live.clone())];
                if cf == Cf::Follows {
                    want.insert(0, (b"late-key".to_vec(), live.clone()));
                }
                assert_eq!(got, want, "{cf:?}");
            } else {
                assert!(got.is_empty(), "{cf:?} must not be restored");
            }
        }
        drop(restored);
        let settings = std::fs::read_to_string(target.join(SETTINGS_FILE)).unwrap();
        assert!(settings.contains("\"max_body_bytes\":16384"), "{settings}");
        assert!(!settings.contains("admin-secret-canary"));
        assert!(!settings.contains("turn-secret-canary"));

        let err = restore(&target, &out).unwrap_err().to_string();
        assert!(err.contains("not empty"), "{err}");
        let mut damaged = bytes.clone();
        let at = damaged.len() / 2;
        damaged[at] ^= 1;
        std::fs::write(&out, &damaged).unwrap();
        assert!(restore(&tmp.path().join("other"), &out).is_err());
        assert!(!tmp.path().join("other").exists(), "nothing written");
        std::fs::write(&out, &bytes[..bytes.len() - 1]).unwrap();
        assert!(restore(&tmp.path().join("other"), &out).is_err());
    }
}
