//! Physical deletion checks on the embedded store: a data key's bytes in no
//! file of the data directory, and a blob's file gone.
//!
//! Used for messages' media (`tests/media.rs`) and for stories and their
//! highlights (`tests/stories.rs`; a highlight's key is not an
//! [`Upload`]'s, it is minted by the server).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ephemera_load::crypto;
use serde_json::Value;

use super::media::Upload;
use super::{now_ms, scan_files, str_of, Server};

/// How long after a media key's death its bytes may still be in a file of
/// the data directory, and its blob in object storage: a purge pass and a
/// sweep (5 s each) with room for a slow machine.
pub const SHRED_WINDOW_MS: i64 = 15_000;

/// A data key in both forms a file could hold it in.
#[derive(Debug, Clone)]
pub struct DataKey {
    /// The 32 raw bytes.
    pub raw: [u8; 32],
    /// The standard base64 text, as the API sends it.
    pub b64: String,
}

impl DataKey {
    /// The key an upload was minted with.
    pub fn of_upload(upload: &Upload) -> DataKey {
        DataKey {
            raw: upload.data_key,
            b64: upload.data_key_b64.clone(),
        }
    }

    /// The key of a `media` object of the API.
    pub fn of_media(media: &Value) -> DataKey {
        let b64 = str_of(media, "data_key").to_owned();
        let raw = crypto::data_key(&b64)
            .unwrap_or_else(|err| panic!("data_key must be base64 of 32 bytes: {err:#}"));
        DataKey { raw, b64 }
    }
}

/// The embedded store's file for the object a presigned URL of it names:
/// `<data>/blobs/<bucket>/<key with '/' as '+'>`.
pub fn blob_file_of_url(server: &Server, url: &str) -> PathBuf {
    let without_query = url.split('?').next().unwrap_or(url);
    let at = without_query
        .find("/blobs/")
        .unwrap_or_else(|| panic!("not a URL of the embedded store: {url}"));
    let rest = &without_query[at + "/blobs/".len()..];
    let (bucket, key) = rest
        .split_once('/')
        .unwrap_or_else(|| panic!("embedded-store URL without bucket and key: {url}"));
    server
        .data_dir()
        .join("blobs")
        .join(bucket)
        .join(key.replace('/', "+"))
}

/// Every file under `dir` holding the key's raw bytes or its base64 text,
/// and every file scanned.
pub fn files_holding_key(dir: &Path, key: &DataKey) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let raw = scan_files(dir, "", &key.raw);
    let text = scan_files(dir, "", key.b64.as_bytes());
    let mut holding: Vec<PathBuf> = raw
        .iter()
        .chain(text.iter())
        .filter(|(_, found)| *found)
        .map(|(p, _)| p.clone())
        .collect();
    holding.sort();
    holding.dedup();
    let scanned = raw.into_iter().map(|(p, _)| p).collect();
    (holding, scanned)
}

/// Poll (at most until `deadline_ms`) until `key` is in no file of the data
/// directory and `blob_file` is gone.
pub async fn wait_until_shredded(
    server: &Server,
    key: &DataKey,
    blob_file: &Path,
    deadline_ms: i64,
    what: &str,
) {
    let data_dir = server.data_dir();
    loop {
        let (holding, scanned) = files_holding_key(data_dir, key);
        let blob_there = blob_file.exists();
        if holding.is_empty() && !blob_there {
            // The scan must have looked where keys and records live.
            for sub in ["keys", "db"] {
                let n = scanned
                    .iter()
                    .filter(|p| p.starts_with(data_dir.join(sub)))
                    .count();
                assert!(
                    n > 0,
                    "{what}: the scan found no file under {sub}/ (scanned: {scanned:?})"
                );
            }
            return;
        }
        if now_ms() > deadline_ms {
            panic!(
                "{what}: past the shredding window ({SHRED_WINDOW_MS} ms), the key's bytes \
                 are still in {holding:?} and the blob file {} {}",
                blob_file.display(),
                if blob_there {
                    "still exists"
                } else {
                    "is gone"
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Poll up to 3 s until some file under `data_dir/keys` holds the key's
/// raw bytes: proof the scan can see a live key.
pub async fn assert_key_on_disk(server: &Server, key: &DataKey, what: &str) {
    let keys = server.data_dir().join("keys");
    let deadline = now_ms() + 3000;
    loop {
        let found = scan_files(&keys, "", &key.raw)
            .into_iter()
            .any(|(_, found)| found);
        if found {
            return;
        }
        if now_ms() > deadline {
            let all: Vec<PathBuf> = scan_files(server.data_dir(), "", &key.raw)
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            panic!(
                "{what}: a live data key's bytes must be in some file under {} (else the \
                 shredding scan proves nothing); files under the data dir: {all:?}",
                keys.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The server's logs never carry the data key.
pub fn assert_key_not_logged(server: &Server, key: &DataKey) {
    assert!(
        !server.logs().contains(&key.b64),
        "the server logged a data key"
    );
}
