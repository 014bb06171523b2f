//! `ephemera quarantine-backup` and `ephemera quarantine-restore`: the
//! quarantine must survive the loss of a machine, unlike everything else.
//!
//! The backup is one file (mode 0600: it holds reported content, sealed,
//! with the keys that open it): a header line, then records
//! `kind (u8) | name length (u32 BE) | name | value length (u64 BE) | value`,
//! then a record of kind 0. Kinds 1 to 4 are the rows of the column
//! families of [`QCf::ALL`] in that order (name = row key); kind 5 is a
//! blob copy of the embedded blob store (name = `<bucket>/<case_id>`).
//!
//! The backup reads the instance read-only, so it works while the server
//! runs (it sees every synced write: cases, keys and log entries are all
//! written synced). Only the blob copies of cases still holding content
//! are written. With an external S3 the blob copies are not in the data
//! directory: the bucket's `quarantine/` prefix is backed up by the
//! bucket's own means (the summary says how many were not found).

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ephemera_actors::ids::Id;
use rocksdb::{IteratorMode, WriteBatch, WriteOptions};

use super::{cf, open_db, BlobState, CaseRecord, QCf, QuarantineStore};
use crate::media::service::QUARANTINE_PREFIX;

const HEADER: &[u8] = b"EPHEMERA-QUARANTINE-BACKUP v1\n";
const END: u8 = 0;
const BLOB: u8 = 5;
/// Longest name a record may have (a row key or `<bucket>/<case_id>`).
const MAX_NAME: u32 = 1_024;
/// Largest value a record may have (a blob: at most 100 MiB).
const MAX_VALUE: u64 = crate::media::service::MAX_MEDIA_BYTES;

/// The file name of a quarantine blob in the embedded store's bucket
/// directory (the store maps `/` in a key to `+`).
fn blob_file(case: Id) -> String {
    format!("{QUARANTINE_PREFIX}{case}").replace('/', "+")
}

fn record(out: &mut impl Write, kind: u8, name: &[u8], value: &[u8]) -> std::io::Result<()> {
    out.write_all(&[kind])?;
    out.write_all(&(name.len() as u32).to_be_bytes())?;
    out.write_all(name)?;
    out.write_all(&(value.len() as u64).to_be_bytes())?;
    out.write_all(value)
}

/// The bucket directories of the embedded blob store in `data_dir`.
fn bucket_dirs(data_dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(data_dir.join("blobs"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// Writes the backup of `data_dir`'s quarantine to `out`; returns a
/// summary of what it holds (counts only).
pub fn backup(data_dir: &Path, out: &Path) -> anyhow::Result<String> {
    let dir = data_dir.join("quarantine");
    if !dir.join("CURRENT").exists() {
        bail!("no quarantine store in {}", data_dir.display());
    }
    let store =
        QuarantineStore::open_read_only(&dir).context("opening the quarantine store read-only")?;
    let db = &store.db;
    let tmp = out.with_extension("partial");
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?
    };
    let mut w = BufWriter::new(file);
    w.write_all(HEADER)?;
    let mut counts = [0usize; 4];
    let mut held = Vec::new();
    for (i, c) in QCf::ALL.iter().enumerate() {
        for item in db.iterator_cf(cf(db, *c), IteratorMode::Start) {
            let (k, v) = item.context("reading the quarantine store")?;
            if *c == QCf::Cases {
                let rec: CaseRecord =
                    serde_json::from_slice(&v).context("an undecodable case row")?;
                if rec.sealed.is_some() && rec.blob == BlobState::Held {
                    held.push(rec.case_id);
                }
            }
            record(&mut w, i as u8 + 1, &k, &v)?;
            counts[i] += 1;
        }
    }
    let buckets = bucket_dirs(data_dir);
    let (mut blobs, mut elsewhere) = (0usize, 0usize);
    for case in held {
        let found = buckets.iter().find_map(|b| {
            let path = b.join(blob_file(case));
            let bucket = b.file_name()?.to_str()?.to_owned();
            fs::read(&path).ok().map(|bytes| (bucket, bytes))
        });
        match found {
            Some((bucket, bytes)) => {
                record(&mut w, BLOB, format!("{bucket}/{case}").as_bytes(), &bytes)?;
                blobs += 1;
            }
            None => elsewhere += 1,
        }
    }
    w.write_all(&[END])?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(format!(
        "{} cases, {} case keys, {} access-log entries, {} moderators, {} blob copies{}",
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        blobs,
        if elsewhere > 0 {
            format!("; {elsewhere} blob copies not in the embedded store (external S3: back up its quarantine/ prefix)")
        } else {
            String::new()
        }
    ))
}

fn read_exact_vec(r: &mut impl Read, n: usize) -> anyhow::Result<Vec<u8>> {
    let mut v = vec![0u8; n];
    r.read_exact(&mut v).context("a truncated backup")?;
    Ok(v)
}

/// Restores the backup `from` into `data_dir`, whose quarantine store must
/// be absent or empty; returns a summary (counts only).
pub fn restore(data_dir: &Path, from: &Path) -> anyhow::Result<String> {
    let mut r =
        BufReader::new(File::open(from).with_context(|| format!("opening {}", from.display()))?);
    if read_exact_vec(&mut r, HEADER.len())? != HEADER {
        bail!("{} is not a quarantine backup", from.display());
    }
    let dir = data_dir.join("quarantine");
    fs::create_dir_all(&dir)?;
    let db = open_db(&dir).context("opening the quarantine store")?;
    for c in QCf::ALL {
        if db
            .iterator_cf(cf(&db, c), IteratorMode::Start)
            .next()
            .is_some()
        {
            bail!(
                "the quarantine store in {} is not empty",
                data_dir.display()
            );
        }
    }
    let mut batch = WriteBatch::default();
    let mut counts = [0usize; 5];
    loop {
        let kind = read_exact_vec(&mut r, 1)?[0];
        if kind == END {
            break;
        }
        let nlen = u32::from_be_bytes(read_exact_vec(&mut r, 4)?.try_into().expect("4 bytes"));
        if nlen > MAX_NAME {
            bail!("a damaged backup (name too long)");
        }
        let name = read_exact_vec(&mut r, nlen as usize)?;
        let vlen = u64::from_be_bytes(read_exact_vec(&mut r, 8)?.try_into().expect("8 bytes"));
        if vlen > MAX_VALUE {
            bail!("a damaged backup (value too large)");
        }
        let value = read_exact_vec(&mut r, vlen as usize)?;
        match kind {
            1..=4 => {
                batch.put_cf(cf(&db, QCf::ALL[kind as usize - 1]), &name, &value);
            }
            BLOB => {
                let name = std::str::from_utf8(&name).context("a damaged backup")?;
                let (bucket, case) = name.split_once('/').context("a damaged backup")?;
                let case = Id::parse(case).context("a damaged backup")?;
                let bucket_ok = !bucket.is_empty()
                    && bucket
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
                    && bucket != "."
                    && bucket != "..";
                if !bucket_ok {
                    bail!("a damaged backup (bucket name)");
                }
                let bdir = data_dir.join("blobs").join(bucket);
                fs::create_dir_all(&bdir)?;
                let path = bdir.join(blob_file(case));
                let mut f = File::create(&path)?;
                f.write_all(&value)?;
                f.sync_all()?;
            }
            _ => bail!("a damaged backup (unknown record)"),
        }
        counts[(kind - 1) as usize] += 1;
    }
    let mut w = WriteOptions::default();
    w.set_sync(true);
    db.write_opt(batch, &w)?;
    db.flush()?;
    Ok(format!(
        "{} cases, {} case keys, {} access-log entries, {} moderators, {} blob copies",
        counts[0], counts[1], counts[2], counts[3], counts[4]
    ))
}

#[cfg(test)]
mod tests {
    use super::super::{Action, CaseKind, CaseStatus, Content, QuarantineStore};
    use super::*;

    #[test]
    fn a_backup_restores_cases_keys_log_moderators_and_blobs() {
        let src = tempfile::tempdir().unwrap();
        let case_id = {
            let q = QuarantineStore::open(&src.path().join("quarantine")).unwrap();
            let now = ephemera_actors::store::now_ms();
            let rec = q
                .create(
                    CaseRecord {
                        case_id: Id::random(),
                        kind: CaseKind::Story,
                        subject: "s".into(),
                        reason: "r".into(),
                        reported_by: Id::random(),
                        reported_at: now,
                        author: Id::random(),
                        retain_until: now + 60_000,
                        hold_until: None,
                        status: CaseStatus::Open,
                        media: Some(super::super::QuarantinedMedia {
                            content_type: "image/jpeg".into(),
                            bytes: 40,
                        }),
                        blob: BlobState::Held,
                        sealed: None,
                        destroyed_at: None,
                    },
                    &Content {
                        caption: Some("cap".into()),
                        ..Content::default()
                    },
                )
                .unwrap();
            q.set_moderator(Id::random(), true).unwrap();
            q.log(Id::random(), Some(rec.case_id), Action::Read)
                .unwrap();
            rec.case_id
        };
        let bucket = src.path().join("blobs").join("media");
        fs::create_dir_all(&bucket).unwrap();
        fs::write(bucket.join(blob_file(case_id)), [9u8; 40]).unwrap();

        let file = src.path().join("q.backup");
        let summary = backup(src.path(), &file).unwrap();
        assert!(
            summary.contains("1 cases") && summary.contains("1 blob copies"),
            "{summary}"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let dst = tempfile::tempdir().unwrap();
        restore(dst.path(), &file).unwrap();
        assert!(
            restore(dst.path(), &file).is_err(),
            "a non-empty store is refused"
        );
        // The census, read-only (as verify-deletion reads it).
        let census = QuarantineStore::open_read_only(&dst.path().join("quarantine"))
            .unwrap()
            .census()
            .unwrap();
        assert_eq!(
            (
                census.open_cases,
                census.cases_holding_content,
                census.blobs_held
            ),
            (1, 1, 1)
        );
        let q = QuarantineStore::open(&dst.path().join("quarantine")).unwrap();
        let rec = q.case(case_id).unwrap().unwrap();
        assert_eq!(
            q.content(&rec).unwrap().unwrap().caption.as_deref(),
            Some("cap")
        );
        assert_eq!(q.log_after(0, 10).unwrap().len(), 1);
        assert_eq!(q.log(Id::random(), None, Action::List).unwrap().seq, 2);
        assert_eq!(
            fs::read(dst.path().join("blobs/media").join(blob_file(case_id))).unwrap(),
            vec![9u8; 40]
        );
    }
}
