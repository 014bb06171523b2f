//! JSON Schema checks for socket frames and HTTP answers.
//!
//! Every frame a test sends must match `schema/frames/client/<type>.json` and
//! every frame it receives `schema/frames/server/<type>.json`; every HTTP
//! answer it receives must be documented, status and body, by
//! `schema/openapi.json` (or `schema/admin-openapi.json` for the admin
//! listener). So the tests keep the server and `schema/` in agreement.
//! Compiled validators are cached for the whole test binary.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ephemera_load::client::Exchange;
use serde_json::{json, Value};

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
    let compiled = Arc::new(compile(&path));
    cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(key, Arc::clone(&compiled));
    compiled
}

/// The schema in the file at `path`, compiled; panics if it is missing or
/// does not compile.
fn compile(path: &Path) -> jsonschema::Validator {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("no schema at {}: {err}", path.display()));
    let schema: Value = serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("{} is not JSON: {err}", path.display()));
    jsonschema::options()
        .with_base_uri(format!("file://{}", path.display()))
        .with_retriever(SchemaDirRetriever)
        .build(&schema)
        .unwrap_or_else(|err| panic!("{} does not compile: {err}", path.display()))
}

/// Panic, listing every validation error, unless `document` matches the
/// schema in `schema/<file>` (such as `push.json`, what the push webhook
/// receives).
pub fn assert_document(file: &str, document: &Value) {
    let errors: Vec<String> = compile(&schema_root().join(file))
        .iter_errors(document)
        .map(|err| format!("{err} (at {})", err.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{file}: the document does not match its schema:\n  {}\ndocument: {document}",
        errors.join("\n  ")
    );
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

// ---------------------------------------------------------------------------
// HTTP answers against the OpenAPI documents
// ---------------------------------------------------------------------------

/// An OpenAPI document of `schema/`, one per listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    /// The public listener: `schema/openapi.json`.
    Public,
    /// The admin listener: `schema/admin-openapi.json`.
    Admin,
}

impl Api {
    /// The document's file name under `schema/`.
    fn file(self) -> &'static str {
        match self {
            Api::Public => "openapi.json",
            Api::Admin => "admin-openapi.json",
        }
    }

    /// The URI the document is registered under, so `$ref`s can point into
    /// it (`.invalid`: nothing is ever fetched from there).
    fn base_uri(self) -> String {
        format!("https://ephemera.invalid/schema/{}", self.file())
    }

    /// The parsed document, read once per test binary.
    fn document(self) -> &'static Value {
        static PUBLIC: OnceLock<Value> = OnceLock::new();
        static ADMIN: OnceLock<Value> = OnceLock::new();
        let cell = match self {
            Api::Public => &PUBLIC,
            Api::Admin => &ADMIN,
        };
        cell.get_or_init(|| {
            let path = schema_root().join(self.file());
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
            serde_json::from_str(&text)
                .unwrap_or_else(|err| panic!("{} is not JSON: {err}", path.display()))
        })
    }
}

/// Panic, listing every problem, unless `schema/openapi.json` documents
/// this answer of the public listener: its status for that path and method,
/// and its body.
pub fn assert_http_response(exchange: &Exchange<'_>) {
    assert_api_response(Api::Public, exchange);
}

/// Like [`assert_http_response`], for the admin listener and
/// `schema/admin-openapi.json`.
pub fn assert_admin_http_response(exchange: &Exchange<'_>) {
    assert_api_response(Api::Admin, exchange);
}

/// Panic, listing every problem, unless `api` documents `exchange`.
pub fn assert_api_response(api: Api, exchange: &Exchange<'_>) {
    if let Err(errors) = check_http_response(api, exchange) {
        let body = match exchange.body {
            Some(json) => json.to_string(),
            None => format!("<{} bytes, not JSON>", exchange.body_len),
        };
        panic!(
            "HTTP answer {} to {} {} does not match {}:\n  {}\nbody: {body}",
            exchange.status,
            exchange.method,
            exchange.path,
            api.file(),
            errors.join("\n  ")
        );
    }
}

/// The problems of `exchange` against `api`: an undocumented path, method
/// or status, a body where none is documented, no JSON body where one is,
/// or a body that breaks the documented schema.
pub fn check_http_response(api: Api, exchange: &Exchange<'_>) -> Result<(), Vec<String>> {
    let doc = api.document();
    let file = api.file();
    let method = exchange.method.to_ascii_lowercase();
    let template = path_template(doc, exchange.path)
        .ok_or_else(|| vec![format!("no path of {file} matches {}", exchange.path)])?;
    let operation_pointer = format!("/paths/{}/{method}", escape_token(template));
    let responses = doc
        .pointer(&format!("{operation_pointer}/responses"))
        .and_then(Value::as_object)
        .ok_or_else(|| {
            vec![format!(
                "{file} documents no {} {template}",
                exchange.method
            )]
        })?;

    // OpenAPI's order: the exact status, then its range (`4XX`), then
    // `default`. A status none of them covers is a bug in the server or in
    // the document, never something to let through.
    let status = exchange.status.to_string();
    let range = format!("{}XX", exchange.status / 100);
    let Some(key) = [status.as_str(), range.as_str(), "default"]
        .into_iter()
        .find(|key| responses.contains_key(*key))
    else {
        let documented: Vec<&str> = responses.keys().map(String::as_str).collect();
        return Err(vec![format!(
            "status {status} is not documented for {} {template} (documented: {})",
            exchange.method,
            documented.join(", ")
        )]);
    };
    let response_pointer = resolve_local_refs(
        doc,
        format!("{operation_pointer}/responses/{}", escape_token(key)),
    )
    .map_err(|err| vec![format!("{file}: {err}")])?;
    let content = doc
        .pointer(&format!("{response_pointer}/content"))
        .and_then(Value::as_object)
        .filter(|content| !content.is_empty());

    let Some(content) = content else {
        // No content documented: the answer must have no body at all.
        return if exchange.body_len == 0 {
            Ok(())
        } else {
            Err(vec![format!(
                "{file} documents no body for {status} of {} {template}, got {} bytes",
                exchange.method, exchange.body_len
            )])
        };
    };
    if !content.contains_key("application/json") {
        // Only JSON bodies are checked (e.g. `/metrics` is text); such an
        // answer must still have a body.
        return if exchange.body_len > 0 {
            Ok(())
        } else {
            Err(vec![format!(
                "{file} documents a body for {status} of {} {template}, got none",
                exchange.method
            )])
        };
    }
    let Some(body) = exchange.body else {
        return Err(vec![format!(
            "{file} documents a JSON body for {status} of {} {template}, got {}",
            exchange.method,
            if exchange.body_len == 0 {
                "an empty body".to_owned()
            } else {
                format!("{} bytes that are not JSON", exchange.body_len)
            }
        )]);
    };
    let schema_pointer = format!("{response_pointer}/content/application~1json/schema");
    if doc.pointer(&schema_pointer).is_none() {
        // JSON content without a schema allows any JSON.
        return Ok(());
    }
    let errors: Vec<String> = http_validator(api, &schema_pointer)
        .iter_errors(body)
        .map(|err| format!("{err} (at {})", err.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The key of `doc.paths` that `path` (a concrete path, without query
/// string) matches: literal segments must be equal, `{param}` segments
/// match any non-empty segment. When several match, the one with the most
/// literal segments wins (`/stories/tray` before `/stories/{story_id}`), as
/// OpenAPI says concrete paths match before templated ones.
fn path_template<'a>(doc: &'a Value, path: &str) -> Option<&'a str> {
    let segments: Vec<&str> = path.split('/').collect();
    doc.get("paths")?
        .as_object()?
        .keys()
        .filter_map(|template| {
            let parts: Vec<&str> = template.split('/').collect();
            if parts.len() != segments.len() {
                return None;
            }
            let mut literals = 0;
            for (part, segment) in parts.iter().zip(&segments) {
                if part.starts_with('{') && part.ends_with('}') {
                    if segment.is_empty() {
                        return None;
                    }
                } else if part == segment {
                    literals += 1;
                } else {
                    return None;
                }
            }
            Some((literals, template.as_str()))
        })
        .max_by_key(|(literals, _)| *literals)
        .map(|(_, template)| template)
}

/// Follow `$ref`s from the object at `pointer` (a JSON pointer into `doc`)
/// until one is not a reference, returning its pointer. Only references
/// into the same document (`#/...`) are supported, which is all that the
/// Response Objects of `schema/` use.
fn resolve_local_refs(doc: &Value, mut pointer: String) -> Result<String, String> {
    // A bound instead of cycle detection: a chain this long is a cycle.
    for _ in 0..16 {
        let target = doc
            .pointer(&pointer)
            .ok_or_else(|| format!("{pointer} points nowhere"))?;
        let Some(reference) = target.get("$ref") else {
            return Ok(pointer);
        };
        let reference = reference
            .as_str()
            .ok_or_else(|| format!("$ref at {pointer} is not a string"))?;
        pointer = reference
            .strip_prefix('#')
            .filter(|local| !local.contains('%'))
            .ok_or_else(|| format!("$ref {reference:?} at {pointer} is not a plain local one"))?
            .to_owned();
    }
    Err(format!("$ref chain from {pointer} is too long"))
}

/// `token` escaped as one JSON pointer reference token (RFC 6901).
fn escape_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// `pointer` percent-encoded for a URI fragment (RFC 3986: `{`, `}`, `%`
/// and the like are not allowed there as they are).
fn fragment_of(pointer: &str) -> String {
    let mut out = String::with_capacity(pointer.len());
    for byte in pointer.bytes() {
        let allowed = byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?".contains(&byte);
        if allowed {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Compiled response-body validators by document and schema pointer.
type HttpCache = Mutex<HashMap<(Api, String), Arc<jsonschema::Validator>>>;

/// The process-wide response-body validator cache.
static HTTP_VALIDATORS: OnceLock<HttpCache> = OnceLock::new();

/// The compiled schema at `pointer` of `api`'s document, compiling it on
/// first use. The whole document is registered as a resource, so `$ref`s
/// inside the schema (`#/components/schemas/...`) resolve into it.
fn http_validator(api: Api, pointer: &str) -> Arc<jsonschema::Validator> {
    let cache = HTTP_VALIDATORS.get_or_init(Default::default);
    let key = (api, pointer.to_owned());
    if let Some(found) = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(&key)
    {
        return Arc::clone(found);
    }
    // Compile outside the lock, as for frames.
    let draft = jsonschema::Draft::Draft202012;
    let registry = jsonschema::Registry::new()
        .draft(draft)
        .add(api.base_uri(), draft.create_resource_ref(api.document()))
        .and_then(|builder| builder.prepare())
        .unwrap_or_else(|err| panic!("{} cannot be registered: {err}", api.file()));
    let root = json!({ "$ref": format!("{}#{}", api.base_uri(), fragment_of(pointer)) });
    let compiled = jsonschema::options()
        .with_draft(draft)
        .with_registry(&registry)
        .offline()
        .build(&root)
        .unwrap_or_else(|err| panic!("{} at {pointer} does not compile: {err}", api.file()));
    let compiled = Arc::new(compiled);
    cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(key, Arc::clone(&compiled));
    compiled
}
