//! JSON Schema checks for socket frames.
//!
//! Every frame a test sends must match `schema/frames/client/<type>.json` and
//! every frame it receives `schema/frames/server/<type>.json`, so the tests
//! keep the server and `schema/` in agreement. Compiled validators are cached
//! for the whole test binary.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

/// Which way a frame travels, which picks the schema directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// Client to server: `schema/frames/client/`.
    Client,
    /// Server to client: `schema/frames/server/`.
    Server,
}

impl Side {
    /// The directory name under `schema/frames/`.
    fn dir(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dir())
    }
}

/// Panic unless `frame` is a valid server-to-client frame.
pub fn assert_server_frame(frame: &Value) {
    assert_frame(Side::Server, frame);
}

/// Panic unless `frame` is a valid client-to-server frame.
pub fn assert_client_frame(frame: &Value) {
    assert_frame(Side::Client, frame);
}

/// Panic, listing every validation error, unless `frame` matches the schema
/// of its `type` on `side`.
pub fn assert_frame(side: Side, frame: &Value) {
    if let Err(errors) = check_frame(side, frame) {
        panic!(
            "{side} frame does not match its schema:\n  {}\nframe: {frame}",
            errors.join("\n  ")
        );
    }
}

/// The validation errors of `frame` against the schema of its `type` on
/// `side`; a frame without a usable `type` or a missing schema file panics,
/// since both mean the schema set and the code disagree.
pub fn check_frame(side: Side, frame: &Value) -> Result<(), Vec<String>> {
    let ty = frame
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{side} frame without a string `type`: {frame}"));
    assert!(
        !ty.is_empty() && ty.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
        "{side} frame type {ty:?} is not a schema name: {frame}"
    );
    let validator = validator(side, ty);
    let errors: Vec<String> = validator
        .iter_errors(frame)
        .map(|err| format!("{err} (at {})", err.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// `schema/` of this package.
fn schema_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schema")
}

/// Compiled validators by side and frame type.
type Cache = Mutex<HashMap<(Side, String), Arc<jsonschema::Validator>>>;

/// The process-wide validator cache.
static VALIDATORS: OnceLock<Cache> = OnceLock::new();

/// The compiled schema for `ty` on `side`, compiling it on first use.
fn validator(side: Side, ty: &str) -> Arc<jsonschema::Validator> {
    let cache = VALIDATORS.get_or_init(Default::default);
    let key = (side, ty.to_owned());
    if let Some(found) = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(&key)
    {
        return Arc::clone(found);
    }
    // Compile outside the lock; two threads racing compile the same schema
    // twice, which is harmless.
    let path = schema_root()
        .join("frames")
        .join(side.dir())
        .join(format!("{ty}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| {
        panic!(
            "no schema for {side} frame type {ty:?} at {}: {err}",
            path.display()
        )
    });
    let schema: Value = serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("{} is not JSON: {err}", path.display()));
    let compiled = jsonschema::options()
        .with_base_uri(format!("file://{}", path.display()))
        .with_retriever(SchemaDirRetriever)
        .build(&schema)
        .unwrap_or_else(|err| panic!("{} does not compile: {err}", path.display()));
    let compiled = Arc::new(compiled);
    cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(key, Arc::clone(&compiled));
    compiled
}

/// Resolves `$ref`s to other files of `schema/`, whatever base URI or
/// `$id` the schema author chose: the URI's path is matched, longest suffix
/// first, against files under `schema/`. Nothing is fetched from a network.
struct SchemaDirRetriever;

impl jsonschema::Retrieve for SchemaDirRetriever {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let root = schema_root();
        let full = uri.as_str();
        let without_fragment = full.split(['#', '?']).next().unwrap_or(full);
        // Drop `scheme://authority` (or a bare `scheme:`), keep the path.
        let path = match without_fragment.find("://") {
            Some(at) => {
                let rest = &without_fragment[at + 3..];
                rest.find('/').map_or("", |slash| &rest[slash..])
            }
            None => without_fragment
                .split_once(':')
                .map_or(without_fragment, |(_, path)| path),
        };
        let direct = PathBuf::from(path);
        let mut candidates = Vec::new();
        if direct.starts_with(&root) {
            candidates.push(direct);
        }
        let parts: Vec<&str> = path
            .split('/')
            .filter(|part| !part.is_empty() && *part != "..")
            .collect();
        for start in 0..parts.len() {
            candidates.push(root.join(parts[start..].join("/")));
        }
        for candidate in candidates {
            if candidate.is_file() {
                let text = std::fs::read_to_string(&candidate)?;
                return Ok(serde_json::from_str(&text)?);
            }
        }
        Err(format!("schema {full} not found under {}", root.display()).into())
    }
}
