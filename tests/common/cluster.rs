//! A real Redis and several real nodes on loopback, for the cluster tests.
//!
//! Redis is Debian's `redis-server` (the test command installs it), on a
//! free port, with the AOF on and fsynced at every write, as the README
//! tells operators to run it; it can be killed and started again on the
//! same directory.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::Server;

/// A `redis-server` process of the test's own.
pub struct Redis {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
}

impl Redis {
    /// Starts one on a free loopback port and waits until it answers.
    pub async fn start() -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("ephemera-redis-")
            .tempdir()
            .expect("creating the Redis directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("finding a free port")
            .port();
        let mut redis = Redis {
            child: None,
            dir,
            port,
        };
        redis.launch().await;
        redis
    }

    async fn launch(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).expect("redis log");
        let child = Command::new(redis_server())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server (the test command installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.write_all(b"PING\r\n");
                let mut buf = [0u8; 16];
                s.set_read_timeout(Some(Duration::from_millis(500))).ok();
                if matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG")) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs one command with `redis-cli` (which comes with redis-server);
    /// its output lines.
    pub fn cli(&self, args: &[&str]) -> Vec<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("running redis-cli");
        assert!(out.status.success(), "redis-cli {args:?} failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Kills it (`SIGKILL`): what it fsynced to its AOF is all it keeps.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same directory and port.
    pub async fn restart(&mut self) {
        self.kill9();
        self.launch().await;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn redis_server() -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = PathBuf::from(dir).join("redis-server");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("redis-server")
}

/// The lease of the test nodes: short, so a killed node drops out fast.
pub const LEASE_MS: u64 = 2_000;

/// Starts node `node_id` of the cluster on `redis`, on a fresh data directory.
pub async fn start_node(redis: &Redis, node_id: &str, extra_args: &[&str]) -> Server {
    let lease = LEASE_MS.to_string();
    let mut args = vec!["--cluster-lease-ms", lease.as_str()];
    args.extend_from_slice(extra_args);
    Server::start_with_env(
        &args,
        &[
            ("EPHEMERA_REDIS_URL", redis.url().as_str()),
            ("EPHEMERA_NODE_ID", node_id),
        ],
    )
    .await
}

/// `GET /admin/cluster` of a node.
pub async fn cluster_view(node: &Server) -> Value {
    let r = node
        .admin_http()
        .raw(
            reqwest::Method::GET,
            "/admin/cluster",
            Some(node.admin_token()),
            None,
        )
        .await
        .expect("GET /admin/cluster");
    assert_eq!(r.status, 200, "GET /admin/cluster: {:?}", r.json);
    r.json.expect("the cluster view is JSON")
}

/// The ids of the members `view` shows live.
pub fn live_members(view: &Value) -> Vec<String> {
    view["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|m| m["live"] == true)
                .filter_map(|m| m["node_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `node` sees exactly `want` live (sorted), or panics with the view.
pub async fn await_live(node: &Server, want: &[&str], within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let view = cluster_view(node).await;
        let mut live = live_members(&view);
        live.sort();
        if live == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "the live set did not become {want:?} within {within:?}: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`start_node`] with environment variables of its own (secrets, which
/// the server takes from the environment only).
pub async fn start_node_with_env(
    redis: &Redis,
    node_id: &str,
    extra_args: &[&str],
    extra_env: &[(&str, &str)],
) -> Server {
    let lease = LEASE_MS.to_string();
    let mut args = vec!["--cluster-lease-ms", lease.as_str()];
    args.extend_from_slice(extra_args);
    let mut env = vec![
        ("EPHEMERA_REDIS_URL", redis.url()),
        ("EPHEMERA_NODE_ID", node_id.to_owned()),
    ];
    env.extend(extra_env.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_with_env(&args, &env).await
}

/// Waits until `redis-cli args` answers lines for which `holds` is true,
/// or panics with `what` and the last answer.
pub async fn await_redis(
    redis: &Redis,
    args: &[&str],
    what: &str,
    within: Duration,
    mut holds: impl FnMut(&[String]) -> bool,
) {
    let started = Instant::now();
    loop {
        let lines = redis.cli(args);
        if holds(&lines) {
            return;
        }
        assert!(
            started.elapsed() < within,
            "{what} not within {within:?}: {args:?} answers {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
