//! Where the generator connects, and how: a [`Target`] per `--url`, and
//! [`connect`], which opens a device socket from an optional local source
//! address (`TcpSocket::bind` before `connect`, then the WebSocket handshake
//! over that stream) with buffers sized for many connections.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

use crate::client::Http;

/// A device socket.
pub type Ws = WebSocketStream<TcpStream>;

/// How long a TCP connect plus handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// One server the run drives.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port`, as given.
    pub base: String,
    /// `ws://host:port/api/v1/ws`.
    pub ws_url: String,
    /// The address the socket connects to.
    pub addr: SocketAddr,
    /// HTTP client for accounts and media.
    pub http: Http,
}

impl Target {
    /// Resolve `base` (`http://host:port[/]`).
    pub async fn resolve(base: &str) -> Result<Target> {
        let rest = base
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("only http:// URLs are supported"))?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let addr = tokio::net::lookup_host(authority)
            .await
            .with_context(|| format!("resolving {authority}"))?
            .next()
            .ok_or_else(|| anyhow!("{authority} resolves to no address"))?;
        Ok(Target {
            base: base.trim_end_matches('/').to_owned(),
            ws_url: format!("ws://{authority}/api/v1/ws"),
            addr,
            http: Http::new(base)?,
        })
    }
}

/// Socket buffers for a load run: frames are small and the generator may
/// hold tens of thousands of sockets, so the eagerly allocated read buffer
/// is kept small; writes are batched by the caller (feed, then flush).
pub fn busy_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(16 * 1024)
}

/// Socket buffers for idle mode: as small as the handshake allows.
pub fn idle_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(2048)
        .write_buffer_size(0)
}

/// Open `target`'s socket as the device holding `token`, from local
/// address `source` if given. Errors name the failure, never the token.
pub async fn connect(
    target: &Target,
    token: &str,
    source: Option<IpAddr>,
    config: WebSocketConfig,
) -> Result<Ws> {
    connect_with(target, token, source, config, None).await
}

/// [`connect`], with the kernel's receive buffer set to `recv_buffer`
/// bytes before the handshake (a small one makes a socket that stops
/// reading push back on the server at once).
pub async fn connect_with(
    target: &Target,
    token: &str,
    source: Option<IpAddr>,
    config: WebSocketConfig,
    recv_buffer: Option<u32>,
) -> Result<Ws> {
    let attempt = async {
        let socket = match target.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| anyhow!("socket: {e}"))?;
        if let Some(size) = recv_buffer {
            socket
                .set_recv_buffer_size(size)
                .map_err(|e| anyhow!("receive buffer: {}", e.kind()))?;
        }
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| anyhow!("bind {ip}: {e}"))?;
        }
        let stream = socket
            .connect(target.addr)
            .await
            .map_err(|e| anyhow!("connect: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| anyhow!("nodelay: {}", e.kind()))?;
        let mut request = target
            .ws_url
            .as_str()
            .into_client_request()
            .map_err(|_| anyhow!("invalid websocket url"))?;
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| anyhow!("token is not a valid header value"))?;
        request.headers_mut().insert(AUTHORIZATION, value);
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(|e| anyhow!("handshake: {}", describe(&e)))?;
        Ok::<Ws, anyhow::Error>(ws)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| anyhow!("connect timed out"))?
}

/// A WebSocket error without payloads or URLs.
fn describe(err: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error as E;
    match err {
        E::Io(io) => format!("io error ({})", io.kind()),
        E::Http(response) => format!("HTTP {}", response.status()),
        E::Url(_) => "bad url".to_owned(),
        other => other.to_string(),
    }
}

/// A short, stable reason for a connect failure, for counting.
pub fn failure_reason(err: &anyhow::Error) -> String {
    let text = err.to_string();
    // Drop OS error numbers and addresses so equal causes count together.
    let text = text.split(" (os error").next().unwrap_or(&text);
    text.chars().take(80).collect()
}
