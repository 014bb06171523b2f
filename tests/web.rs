//! The web client and the operator console: served by the real binary,
//! driven in a real headless Chromium by Playwright (`tests/web/e2e.mjs`),
//! and the socket's AsyncAPI document checked against the frame schemas.
//!
//! The browser test needs `node`, `tests/web/node_modules` (`npm ci
//! --prefix tests/web`) and `/usr/bin/chromium` (or `CHROMIUM`);
//! `scripts/test.sh` installs them. Screenshots go to
//! `$CARGO_TARGET_DIR/screenshots/` (`target/screenshots/` without it).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::Server;
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read_json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Where the screenshots go: named in the README.
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    target.join("screenshots")
}

/// `schema/asyncapi.json` and `schema/frames/` cannot drift: every frame
/// file is the payload of exactly one message, every payload reference
/// names a file that exists, each message's `name` is its schema's `type`
/// const, client frames are what the server receives and server frames
/// what it sends, and every reference inside the document resolves.
#[test]
fn asyncapi_describes_every_frame_and_nothing_else() {
    let schema = root().join("schema");
    let doc = read_json(&schema.join("asyncapi.json"));
    assert_eq!(doc["asyncapi"], "3.0.0", "an AsyncAPI 3.0 document");

    // Every frame file on disk, as (direction, type) -> path.
    let mut files = BTreeMap::new();
    for dir in ["client", "server"] {
        for entry in std::fs::read_dir(schema.join("frames").join(dir)).expect("frames dir") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|e| e == "json") {
                let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
                files.insert((dir.to_owned(), stem), path);
            }
        }
    }
    assert!(files.len() >= 20, "the frame files were found: {files:?}");

    // Every message's payload reference, checked against its file.
    let messages = doc["components"]["messages"]
        .as_object()
        .expect("components.messages");
    let mut referenced = BTreeSet::new();
    for (key, message) in messages {
        let reference = message["payload"]["schema"]["$ref"]
            .as_str()
            .unwrap_or_else(|| panic!("message {key} has no payload.schema.$ref"));
        let rel = reference
            .strip_prefix("./frames/")
            .unwrap_or_else(|| panic!("message {key} refers outside frames/: {reference}"));
        let (dir, file) = rel
            .split_once('/')
            .unwrap_or_else(|| panic!("message {key}: {reference} is not frames/<dir>/<file>"));
        let stem = file
            .strip_suffix(".json")
            .unwrap_or_else(|| panic!("message {key}: {reference} is not a .json file"));
        let path = files
            .get(&(dir.to_owned(), stem.to_owned()))
            .unwrap_or_else(|| {
                panic!("message {key} refers to {reference}, which is no frame file")
            });
        assert!(
            referenced.insert((dir.to_owned(), stem.to_owned())),
            "{reference} is the payload of two messages"
        );
        let frame = read_json(path);
        let type_const = frame["properties"]["type"]["const"]
            .as_str()
            .unwrap_or_else(|| panic!("{} has no type const", path.display()));
        assert_eq!(
            message["name"], type_const,
            "message {key}: its name must be the type const of {reference}"
        );
        assert_eq!(type_const, stem, "{reference}: file name and type const");
    }
    let unreferenced: Vec<_> = files.keys().filter(|k| !referenced.contains(*k)).collect();
    assert!(
        unreferenced.is_empty(),
        "frame files no message refers to: {unreferenced:?}"
    );

    // Which side sends what: the document describes the server.
    let ops = doc["operations"].as_object().expect("operations");
    let mut by_action: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, op) in ops {
        let action = op["action"].as_str().expect("operation action").to_owned();
        assert_eq!(
            op["channel"]["$ref"], "#/channels/socket",
            "operation {name} is on the socket"
        );
        for m in op["messages"].as_array().expect("operation messages") {
            let r = m["$ref"].as_str().expect("message $ref");
            let channel_message = resolve(&doc, r);
            let target = channel_message["$ref"]
                .as_str()
                .expect("channel message $ref");
            let key = target
                .strip_prefix("#/components/messages/")
                .expect("a component message");
            let dir = messages[key]["payload"]["schema"]["$ref"]
                .as_str()
                .unwrap()
                .split('/')
                .nth(2)
                .unwrap()
                .to_owned();
            let expected = if dir == "client" { "receive" } else { "send" };
            assert_eq!(
                action, expected,
                "{key}: the server {expected}s {dir} frames"
            );
            assert!(
                by_action
                    .entry(action.clone())
                    .or_default()
                    .insert(key.to_owned()),
                "{key} twice in the operations"
            );
        }
    }
    let in_ops: BTreeSet<_> = by_action.values().flatten().cloned().collect();
    let all: BTreeSet<_> = messages.keys().cloned().collect();
    assert_eq!(in_ops, all, "every message is in exactly one operation");
    let channel: BTreeSet<_> = doc["channels"]["socket"]["messages"]
        .as_object()
        .expect("channel messages")
        .keys()
        .cloned()
        .collect();
    assert_eq!(channel, all, "the channel carries every message");
    assert_eq!(doc["channels"]["socket"]["address"], "/api/v1/ws");

    // The document is AsyncAPI 3.0 as the ecosystem checks it: valid
    // against the official JSON Schema of the spec (`@asyncapi/specs`,
    // pinned in tests/web/package-lock.json; its `without-$id` variant
    // resolves with no network).
    let spec_path =
        root().join("tests/web/node_modules/@asyncapi/specs/schemas/3.0.0-without-$id.json");
    assert!(
        spec_path.exists(),
        "{} is missing: run `npm ci --prefix tests/web` (scripts/test.sh does)",
        spec_path.display()
    );
    let spec = jsonschema::options()
        .build(&read_json(&spec_path))
        .expect("the AsyncAPI 3.0 schema compiles");
    let errors: Vec<String> = spec
        .iter_errors(&doc)
        .map(|e| format!("{e} (at {})", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "schema/asyncapi.json is not valid AsyncAPI 3.0:\n{}",
        errors.join("\n")
    );

    // Every local reference in the document resolves.
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    for r in refs.iter().filter(|r| r.starts_with('#')) {
        assert!(!resolve(&doc, r).is_null(), "{r} resolves to nothing");
    }
}

/// The value at a local JSON pointer reference (`#/a/b`), or null.
fn resolve<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let pointer = reference.strip_prefix('#').expect("a local reference");
    doc.pointer(pointer).unwrap_or(&Value::Null)
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                if k == "$ref" {
                    if let Some(s) = x.as_str() {
                        out.push(s.to_owned());
                    }
                }
                collect_refs(x, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// The pages are served from the binary with a same-origin CSP, need no
/// token to load, and the admin API behind them still does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_embedded_and_the_console_holds_no_secret() {
    let server = Server::start(&[]).await;
    let client = reqwest::Client::new();
    for (base, path, kind) in [
        (server.http_base(), "/", "text/html"),
        (server.http_base(), "/app.js", "text/javascript"),
        (server.http_base(), "/app.css", "text/css"),
        (server.admin_base(), "/console", "text/html"),
        (server.admin_base(), "/console.js", "text/javascript"),
    ] {
        let r = client
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("GET a page");
        assert_eq!(r.status(), 200, "GET {path}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with(kind), "{path}: content type {ct}");
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{path}: CSP {csp}"
        );
        let body = r.text().await.expect("page body");
        assert!(
            !body.contains(server.admin_token()),
            "{path} does not carry the admin token"
        );
    }
    // No page refers to another origin (the SVG namespace is a name, not a
    // fetch).
    for asset in [
        "index.html",
        "app.js",
        "console.html",
        "console.js",
        "app.css",
        "favicon.svg",
    ] {
        let text = std::fs::read_to_string(root().join("src/web/assets").join(asset)).unwrap();
        for (i, _) in text.match_indices("://") {
            let line = text[..i].rsplit('\n').next().unwrap_or("");
            let rest = &text[i..];
            assert!(
                rest.starts_with("://www.w3.org/2000/svg\"") || line.ends_with("${proto}"),
                "{asset} names another origin: {line}{}",
                &rest[..rest.len().min(60)]
            );
        }
    }
    let r = client
        .get(format!("{}/admin/actors", server.admin_base()))
        .send()
        .await
        .expect("GET /admin/actors");
    assert_eq!(r.status(), 401, "the admin API still wants the token");
    let r = client
        .get(format!("{}/", server.admin_base()))
        .send()
        .await
        .expect("GET / on the admin listener");
    assert_eq!(r.status(), 200, "/ leads to the console");
    assert!(r.url().path().ends_with("/console"));
}

/// The browser scenarios of issue 15, in one Chromium: two users in two
/// contexts plus a second tab of the recipient; a view-once photo opens
/// once and burns in both of the recipient's tabs; a 5-second message
/// disappears from every screen at its expiry; a story reaches the
/// follower's tray and the view shows in the author's viewer list; the
/// console restarts a conversation actor and the chat carries on. Then the
/// server's log holds none of the tokens or texts the browsers used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_client_and_console_in_chromium() {
    let web = root().join("tests/web");
    assert!(
        web.join("node_modules/playwright-core").is_dir(),
        "tests/web/node_modules is missing: run `npm ci --prefix tests/web` (scripts/test.sh does)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: apt-get install chromium (scripts/test.sh does)"
    );
    // Actors stay live through the whole run, so the console finds the
    // conversation to restart however slow the machine.
    let server = Server::start(&["--passivate-after-seconds", "600"]).await;
    let shots = screenshot_dir();
    std::fs::create_dir_all(&shots).expect("creating the screenshot dir");
    let scratch = tempfile::tempdir().expect("a temp dir");
    let secrets = scratch.path().join("secrets.txt");

    let out = tokio::task::spawn_blocking({
        let (web, shots, secrets) = (web.clone(), shots.clone(), secrets.clone());
        let (base, admin, token) = (
            server.http_base(),
            server.admin_base(),
            server.admin_token().to_owned(),
        );
        move || {
            Command::new("node")
                .arg(web.join("e2e.mjs"))
                .current_dir(&web)
                .env("EPHEMERA_URL", base)
                .env("EPHEMERA_ADMIN_URL", admin)
                .env("EPHEMERA_ADMIN_TOKEN", token)
                .env("SCREENSHOT_DIR", &shots)
                .env("SECRETS_FILE", &secrets)
                .env("CHROMIUM", chromium)
                .output()
                .expect("running node (is nodejs installed?)")
        }
    })
    .await
    .expect("the node task");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the browser scenarios failed ({}):\n{stdout}\n{stderr}\nserver log tail:\n{}",
        out.status,
        tail(&server.logs(), 40)
    );
    // The client handles exactly the server frames the AsyncAPI document
    // lists.
    let handled: BTreeSet<&str> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("handled: "))
        .expect("the client's handler list")
        .split(',')
        .collect();
    let doc = read_json(&root().join("schema/asyncapi.json"));
    let server_frames: BTreeSet<&str> = doc["components"]["messages"]
        .as_object()
        .expect("components.messages")
        .iter()
        .filter(|(k, _)| k.starts_with("server."))
        .map(|(_, m)| m["name"].as_str().expect("message name"))
        .collect();
    assert_eq!(
        handled, server_frames,
        "the web client's frame handlers and the AsyncAPI server messages"
    );
    let passed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("ok - ")).collect();
    assert_eq!(passed.len(), 10, "every scenario reported ok:\n{stdout}");
    assert!(stdout.contains("e2e: all scenarios passed"), "{stdout}");
    for name in [
        "01-sign-in",
        "03-view-once-open",
        "04-view-once-burned-other-tab",
        "06-story-tray",
        "08-my-story-viewers",
        "09-console",
    ] {
        let png = shots.join(format!("{name}.png"));
        let meta = std::fs::metadata(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
        assert!(meta.len() > 1000, "{} is a real screenshot", png.display());
    }

    // Tokens (they rode in `?token=` on every socket) and message texts
    // never reach the server's log.
    let secrets = std::fs::read_to_string(&secrets).expect("the secrets file");
    let secrets: Vec<&str> = secrets.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(secrets.len(), 10, "4 tokens and 6 texts: {}", secrets.len());
    let logs = server.logs();
    assert!(!logs.is_empty(), "the server logged something");
    for s in secrets {
        assert!(
            !logs.contains(s),
            "the server log holds a token or a message text"
        );
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
