//! A push webhook receiver of the tests' own (PROTOCOL 9), on a loopback
//! port: the requests it got, in order, and a timed text to send with.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ephemera_load::client::{timed_text, Target};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::{new_cid, TestSocket, TestUser};

/// How long a push may take to arrive (retries included).
pub const ARRIVAL: Duration = Duration::from_secs(10);

/// One request the receiver got.
pub struct Request {
    /// The request line and headers, as sent.
    pub head: String,
    /// The body, as sent.
    pub body: Vec<u8>,
}

impl Request {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a push body is JSON")
    }
}

/// The receiver: its URL, what it got, and how many requests it answers
/// `500` before it answers `200`.
pub struct Hook {
    /// Where it listens.
    pub url: String,
    got: mpsc::UnboundedReceiver<Request>,
}

impl Hook {
    /// A receiver on a loopback port that refuses its first `failures`
    /// requests with `500`.
    pub async fn start(failures: usize) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (tx, got) = mpsc::unbounded_channel();
        let left = Arc::new(AtomicUsize::new(failures));
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (tx, left) = (tx.clone(), Arc::clone(&left));
                tokio::spawn(async move {
                    let (read, mut write) = socket.into_split();
                    let mut read = BufReader::new(read);
                    // Requests on one connection, until it closes.
                    loop {
                        let mut head = String::new();
                        loop {
                            let mut line = String::new();
                            if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            head.push_str(&line);
                        }
                        let mut request = Request { head, body: vec![] };
                        let length: usize = request
                            .header("content-length")
                            .map_or(0, |v| v.parse().expect("a numeric Content-Length"));
                        request.body = vec![0; length];
                        if read.read_exact(&mut request.body).await.is_err() {
                            return;
                        }
                        let fail = left
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok();
                        let status = if fail {
                            "500 Internal Server Error"
                        } else {
                            "200 OK"
                        };
                        let _ = tx.send(request);
                        let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                        if write.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Hook { url, got }
    }

    /// The next request, within [`ARRIVAL`].
    pub async fn next(&mut self) -> Request {
        tokio::time::timeout(ARRIVAL, self.got.recv())
            .await
            .expect("a push within the time allowed")
            .expect("the receiver runs")
    }

    /// Panics if a request arrives within `quiet`.
    pub async fn assert_none(&mut self, quiet: Duration) {
        if let Ok(Some(r)) = tokio::time::timeout(quiet, self.got.recv()).await {
            panic!("no push expected, got {}", String::from_utf8_lossy(&r.body));
        }
    }
}

/// A timed text from `socket` to `to`: its ack.
pub async fn send_text(socket: &mut TestSocket, to: &TestUser, body: &str) -> Value {
    let frame = timed_text(&new_cid("push"), Target::User(&to.user_id), body, 600);
    socket.send_ok(frame).await
}
