//! Shared helpers for the integration tests: start the real `ephemera`
//! binary on port 0 ([`Server`]), create users, and talk to the socket through
//! a wrapper that checks every frame against `schema/` ([`socket::TestSocket`]).
//! Every HTTP client they hand out checks every answer against the OpenAPI
//! documents of `schema/` ([`Server::http`]).
//!
//! # Layout
//!
//! * this file: [`Server`], user helpers, clocks, ids and frame field access.
//! * [`schema`]: JSON Schema validation of client and server frames and of
//!   HTTP answers.
//! * [`socket`]: [`socket::TestSocket`], a schema-checking socket with
//!   assertion helpers.
//! * [`media`]: uploads (mint, seal, `PUT`), blob requests and presigned
//!   URL surgery for forging bad ones.
//! * [`shred`]: a data key in no file of the data directory, a blob file
//!   gone (physical deletion on the embedded store).
//! * [`stories`]: the stories and social-graph calls (PROTOCOL 5).

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod cluster;
pub mod media;
pub mod push;
pub mod schema;
pub mod shred;
pub mod socket;
pub mod stories;

use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ephemera_load::client::{HistoryMessage, Http, Session};
use reqwest::Method;
use serde_json::Value;
use tempfile::TempDir;

#[allow(unused_imports)] // not every test binary opens sockets this way
pub use socket::TestSocket;

/// How long a server may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The password every test user gets (valid: 8..=128 chars).
pub const PASSWORD: &str = "correct horse battery staple";

/// A running `ephemera serve` child process with its own data directory.
///
/// Dropping it kills the process (SIGKILL) and removes its temp directory.
pub struct Server {
    /// The process, `None` after [`Server::kill9`].
    child: Option<Child>,
    /// Temp directory holding the stderr logs (and, for [`Server::start`],
    /// the data directory); removed on drop.
    root: TempDir,
    /// `--data-dir` of the server.
    data_dir: PathBuf,
    /// Flags beyond the standard ones, repeated on restart.
    extra_args: Vec<String>,
    /// Environment variables beyond the standard ones (such as
    /// `EPHEMERA_S3_SECRET_ACCESS_KEY`), repeated on restart.
    extra_env: Vec<(String, String)>,
    /// `EPHEMERA_ADMIN_TOKEN` of the process, the same across restarts.
    admin_token: String,
    /// `host:port` of the public listener of the current process.
    http_addr: String,
    /// `host:port` of the admin listener of the current process.
    admin_addr: String,
    /// How many processes have been started, numbering the log files.
    launches: usize,
    /// The process's descriptor limit (`RLIMIT_NOFILE`, soft and hard),
    /// when a test sets one.
    fd_limit: Option<u64>,
}

impl Server {
    /// Start a server on a fresh temp data directory, with `extra_args`
    /// after the standard flags.
    pub async fn start(extra_args: &[&str]) -> Server {
        let root = tempfile::Builder::new()
            .prefix("ephemera-test-")
            .tempdir()
            .expect("creating a temp dir for the server");
        let data_dir = root.path().join("data");
        Self::launch_new(root, data_dir, extra_args, &[]).await
    }

    /// [`Server::start`] with environment variables `extra_env` set for the
    /// process (and its restarts), for settings that are environment-only
    /// in practice, such as `EPHEMERA_S3_SECRET_ACCESS_KEY`.
    pub async fn start_with_env(extra_args: &[&str], extra_env: &[(&str, &str)]) -> Server {
        let root = tempfile::Builder::new()
            .prefix("ephemera-test-")
            .tempdir()
            .expect("creating a temp dir for the server");
        let data_dir = root.path().join("data");
        Self::launch_new(root, data_dir, extra_args, extra_env).await
    }

    /// [`Server::start`] as a process whose descriptor limit (soft and
    /// hard) is `limit`.
    pub async fn start_with_fd_limit(extra_args: &[&str], limit: u64) -> Server {
        let root = tempfile::Builder::new()
            .prefix("ephemera-test-")
            .tempdir()
            .expect("creating a temp dir for the server");
        let data_dir = root.path().join("data");
        Self::launch_limited(root, data_dir, extra_args, &[], Some(limit)).await
    }

    /// Start a server on an existing data directory the caller owns (logs
    /// still go to a fresh temp directory).
    pub async fn start_in(data_dir: &Path, extra_args: &[&str]) -> Server {
        let root = tempfile::Builder::new()
            .prefix("ephemera-test-logs-")
            .tempdir()
            .expect("creating a temp dir for the server logs");
        Self::launch_new(root, data_dir.to_path_buf(), extra_args, &[]).await
    }

    /// Build the handle and start the first process.
    async fn launch_new(
        root: TempDir,
        data_dir: PathBuf,
        extra_args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Server {
        Self::launch_limited(root, data_dir, extra_args, extra_env, None).await
    }

    /// [`Server::launch_new`], with a descriptor limit if `fd_limit`.
    async fn launch_limited(
        root: TempDir,
        data_dir: PathBuf,
        extra_args: &[&str],
        extra_env: &[(&str, &str)],
        fd_limit: Option<u64>,
    ) -> Server {
        std::fs::create_dir_all(&data_dir).expect("creating the data dir");
        let mut server = Server {
            child: None,
            root,
            data_dir,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            extra_env: extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            admin_token: random_hex(16),
            http_addr: String::new(),
            admin_addr: String::new(),
            launches: 0,
            fd_limit,
        };
        server.launch().await;
        server
    }

    /// Start the process with the same flags and data dir and wait for its
    /// ready line.
    async fn launch(&mut self) {
        assert!(self.child.is_none(), "a server process is already running");
        let log_path = self
            .root
            .path()
            .join(format!("server-{}.stderr.log", self.launches));
        self.launches += 1;
        let log = File::create(&log_path).expect("creating the server log file");

        let mut command = Command::new(env!("CARGO_BIN_EXE_ephemera"));
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&self.data_dir);
        // Cheap password hashing unless the test chose its own count.
        if !self.extra_args.iter().any(|a| a == "--pbkdf2-iterations") {
            command.args(["--pbkdf2-iterations", "1000"]);
        }
        command.args(&self.extra_args);
        // Only our flags configure the server, never the developer's shell.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("EPHEMERA_") {
                command.env_remove(&key);
            }
        }
        command
            .env("EPHEMERA_ADMIN_TOKEN", &self.admin_token)
            .env("RUST_LOG", "info")
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        if let Some(limit) = self.fd_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec the closure only calls
            // setrlimit, which is async-signal-safe, on its own struct.
            unsafe {
                command.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().expect("spawning the ephemera binary");
        let stdout = child.stdout.take().expect("stdout is piped");
        self.child = Some(child);

        // A plain thread reads stdout: it hands over the ready line, then
        // keeps draining so the server never blocks on a full pipe.
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<String>();
        std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.trim_start().starts_with("EPHEMERA_READY") {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(line);
                    }
                }
            }
        });

        let line = match tokio::time::timeout(READY_TIMEOUT, ready_rx).await {
            Ok(Ok(line)) => line,
            Ok(Err(_)) => {
                let status = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                panic!(
                    "server closed stdout before printing EPHEMERA_READY (exit: {status:?}); \
                     stderr tail:\n{}",
                    self.log_tail()
                );
            }
            Err(_) => panic!(
                "server printed no EPHEMERA_READY within {READY_TIMEOUT:?}; stderr tail:\n{}",
                self.log_tail()
            ),
        };
        let mut http = None;
        let mut admin = None;
        for word in line.split_whitespace() {
            if let Some(addr) = word.strip_prefix("http=") {
                http = Some(addr.to_owned());
            } else if let Some(addr) = word.strip_prefix("admin=") {
                admin = Some(addr.to_owned());
            }
        }
        self.http_addr = http.unwrap_or_else(|| panic!("ready line without http=: {line:?}"));
        self.admin_addr = admin.unwrap_or_else(|| panic!("ready line without admin=: {line:?}"));
    }

    /// `http://host:port` of the public listener.
    pub fn http_base(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// `ws://host:port/api/v1/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/api/v1/ws", self.http_addr)
    }

    /// `http://host:port` of the admin listener.
    pub fn admin_base(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// The admin bearer token the server was started with.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The server's `--data-dir`.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// An HTTP client for the public listener that asserts every answer
    /// against `schema/openapi.json`.
    pub fn http(&self) -> Http {
        Http::new(self.http_base())
            .expect("building an HTTP client")
            .with_observer(Arc::new(schema::assert_http_response))
    }

    /// [`Server::http`] whose connections leave from `local` (such as
    /// `127.0.0.2`), to act as another client address.
    pub fn http_from(&self, local: std::net::IpAddr) -> Http {
        Http::new_from(self.http_base(), local)
            .expect("building an HTTP client")
            .with_observer(Arc::new(schema::assert_http_response))
    }

    /// An HTTP client for the admin listener that asserts every answer
    /// against `schema/admin-openapi.json`.
    pub fn admin_http(&self) -> Http {
        Http::new(self.admin_base())
            .expect("building an HTTP client")
            .with_observer(Arc::new(schema::assert_admin_http_response))
    }

    /// Kill the process with SIGKILL (no shutdown, no flush) and reap it.
    pub fn kill9(&mut self) {
        let mut child = self
            .child
            .take()
            .expect("kill9 on a server that is not running");
        child.kill().expect("sending SIGKILL to the server");
        child.wait().expect("reaping the killed server");
    }

    /// `POST` to an admin path with the admin token; the status.
    pub async fn admin_post(&self, path: &str) -> u16 {
        self.admin_http()
            .raw(Method::POST, path, Some(&self.admin_token), None)
            .await
            .unwrap_or_else(|e| panic!("POST {path} on the admin listener: {e:#}"))
            .status
    }

    /// The text of `/metrics` (with the admin token).
    pub async fn metrics_text(&self) -> String {
        reqwest::Client::new()
            .get(format!("{}/metrics", self.admin_base()))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("the metrics text")
    }

    /// `GET /admin/deletion`: the deletion report (checked against the
    /// admin schema by the admin client).
    pub async fn deletion_report(&self) -> Value {
        let r = self
            .admin_http()
            .raw(
                Method::GET,
                "/admin/deletion",
                Some(&self.admin_token),
                None,
            )
            .await
            .expect("GET /admin/deletion");
        assert_eq!(r.status, 200, "GET /admin/deletion");
        r.json.expect("a JSON deletion report")
    }

    /// The value of one series of `/metrics` (`name` or `name{labels}`),
    /// 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .filter(|rest| rest.starts_with(' '))
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    /// The server's resident memory, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("reading /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status")
    }

    /// Send SIGTERM (graceful shutdown) and wait for the process to exit,
    /// at most `within`; returns its exit status.
    pub fn terminate(&mut self, within: std::time::Duration) -> std::process::ExitStatus {
        let mut child = self
            .child
            .take()
            .expect("terminate on a server that is not running");
        let pid = child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill -TERM failed");
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("polling the server") {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("the server did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Start the server again on the same data dir with the same flags
    /// (killing the running process first, if any). Addresses change.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.kill9();
        }
        self.launch().await;
    }

    /// `POST /admin/storage/compact`: flush and compact every column
    /// family; asserts `200 {"flushed":true,"compacted":true}`.
    pub async fn compact(&self) {
        let admin = self.admin_http();
        let response = admin
            .raw(
                Method::POST,
                "/admin/storage/compact",
                Some(&self.admin_token),
                None,
            )
            .await
            .expect("calling /admin/storage/compact");
        assert_eq!(
            response.status, 200,
            "compact must answer 200, got {response:?}"
        );
        let body = response.json.as_ref();
        assert_eq!(
            body.and_then(|b| b.get("flushed")),
            Some(&Value::Bool(true)),
            "compact must report flushed: {body:?}"
        );
        assert_eq!(
            body.and_then(|b| b.get("compacted")),
            Some(&Value::Bool(true)),
            "compact must report compacted: {body:?}"
        );
    }

    /// Everything the server processes wrote to stderr so far.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for n in 0..self.launches {
            let path = self.root.path().join(format!("server-{n}.stderr.log"));
            if let Ok(bytes) = std::fs::read(&path) {
                all.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
        all
    }

    /// The last few KiB of the logs, for panic messages.
    fn log_tail(&self) -> String {
        let logs = self.logs();
        let mut start = logs.len().saturating_sub(4096);
        while !logs.is_char_boundary(start) {
            start += 1;
        }
        logs[start..].to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Best effort: the process may already be gone.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Users
// ---------------------------------------------------------------------------

/// A registered account a test can log in as many times as it wants
/// devices.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// The (unique) username.
    pub username: String,
    /// The server's id for the account.
    pub user_id: String,
}

impl TestUser {
    /// Log in once more: a new device.
    pub async fn login(&self, http: &Http) -> Session {
        let session = http
            .login(&self.username, PASSWORD, Some("test-device"))
            .await
            .unwrap_or_else(|err| panic!("login of {} failed: {err:#}", self.username));
        assert_eq!(
            session.user_id, self.user_id,
            "login must answer the registered user_id"
        );
        session
    }
}

/// Register a user whose name starts with `name` (made unique).
pub async fn register_user(http: &Http, name: &str) -> TestUser {
    let username = unique_username(name);
    let account = http
        .register(&username, PASSWORD)
        .await
        .unwrap_or_else(|err| panic!("registering {username} failed: {err:#}"));
    assert_eq!(
        account.username, username,
        "register must echo the username"
    );
    TestUser {
        username,
        user_id: account.user_id,
    }
}

/// Register a user and log in once: `(user_id, session)`.
pub async fn register_and_login(http: &Http, name: &str) -> (String, Session) {
    let user = register_user(http, name).await;
    let session = user.login(http).await;
    (user.user_id, session)
}

/// A username matching `^[a-z0-9_]{3,32}$` that starts with (a cleaned
/// `name`) and is unique within this test process.
pub fn unique_username(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut prefix: String = name
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
        .take(14)
        .collect();
    if prefix.is_empty() {
        prefix.push('u');
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // At most 14 + 1 + 8 + 1 + 3 = 27 characters.
    format!("{prefix}_{}_{}", random_hex(4), n % 1000)
}

// ---------------------------------------------------------------------------
// Clocks, ids, fields
// ---------------------------------------------------------------------------

/// Local wall clock, Unix milliseconds (the server runs on the same host).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Sleep until the local clock reads `at_ms` (returns at once if past).
pub async fn sleep_until_ms(at_ms: i64) {
    let left = at_ms - now_ms();
    if left > 0 {
        tokio::time::sleep(Duration::from_millis(left as u64)).await;
    }
}

/// `bytes` random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    use ring::rand::SecureRandom as _;
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .expect("system randomness");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh `client_msg_id`.
pub fn new_cid(tag: &str) -> String {
    format!("{tag}-{}", random_hex(8))
}

/// An id (or token) shaped like `like` that is none of `taken`: one
/// alphanumeric character from the middle on is replaced by a digit. Used
/// for "unknown id" and "forged token" cases, so a server that checks syntax
/// still sees a well-formed value. The middle, not the end, because the last
/// character of unpadded base64 carries padding bits a lenient decoder
/// ignores; digits, because every common id alphabet (hex, UUID, ULID,
/// base32, base64) has them.
pub fn unknown_id_like(like: &str, taken: &[&str]) -> String {
    let chars: Vec<char> = like.chars().collect();
    assert!(!chars.is_empty(), "cannot derive an id from an empty one");
    let positions = (chars.len() / 2..chars.len())
        .chain(0..chars.len() / 2)
        .filter(|&i| chars[i].is_ascii_alphanumeric())
        .take(4);
    for position in positions {
        for digit in ['7', '3', '5', '1', '9', '0', '2', '4', '6', '8'] {
            let mut candidate = chars.clone();
            candidate[position] = digit;
            let candidate: String = candidate.into_iter().collect();
            if candidate != like && !taken.contains(&candidate.as_str()) {
                return candidate;
            }
        }
    }
    panic!("could not derive an unknown id from {like:?}");
}

/// `frame[key]` as a string, or a panic naming the frame.
pub fn str_of<'a>(frame: &'a Value, key: &str) -> &'a str {
    frame
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("frame has no string {key:?}: {frame}"))
}

/// `frame[key]` as an unsigned integer, or a panic naming the frame.
pub fn u64_of(frame: &Value, key: &str) -> u64 {
    frame
        .get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("frame has no unsigned integer {key:?}: {frame}"))
}

/// `frame[key]` as a signed integer, or a panic naming the frame.
pub fn i64_of(frame: &Value, key: &str) -> i64 {
    frame
        .get(key)
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("frame has no integer {key:?}: {frame}"))
}

/// Whether `frame` has `type == ty`.
pub fn is_type(frame: &Value, ty: &str) -> bool {
    frame.get("type").and_then(Value::as_str) == Some(ty)
}

/// Whether `frame` is of type `ty` and about message `msg_id`.
pub fn is_about(frame: &Value, ty: &str, msg_id: &str) -> bool {
    is_type(frame, ty) && frame.get("msg_id").and_then(Value::as_str) == Some(msg_id)
}

/// Every live message of a conversation as `session` sees it, paging
/// through `history` 50 at a time.
pub async fn full_history(
    http: &Http,
    session: &Session,
    conversation_id: &str,
) -> Vec<HistoryMessage> {
    let mut all: Vec<HistoryMessage> = Vec::new();
    let mut after = 0;
    loop {
        let page = http
            .history(session, conversation_id, after, 50)
            .await
            .unwrap_or_else(|err| panic!("history of {conversation_id} failed: {err:#}"));
        let Some(last) = page.last() else { break };
        assert!(
            last.seq > after,
            "history after_seq={after} returned seq {} (not after the cursor)",
            last.seq
        );
        after = last.seq;
        all.extend(page);
    }
    all
}

/// Every file under `dir` (recursively) whose name ends with `suffix`
/// (all files for `""`), paired with whether it contains `needle`.
pub fn scan_files(dir: &Path, suffix: &str, needle: &[u8]) -> Vec<(PathBuf, bool)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() && path.to_string_lossy().ends_with(suffix) {
                // A file may vanish under a running compaction; skip it.
                if let Ok(bytes) = std::fs::read(&path) {
                    let found = bytes.windows(needle.len()).any(|w| w == needle);
                    out.push((path, found));
                }
            }
        }
    }
    out
}
