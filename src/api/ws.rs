//! `GET /api/v1/ws`: authenticates the token (header, or `?token=` for
//! browsers) and upgrades to a `Session` actor. A bad token still gets the
//! upgrade and then close code 4401, which a browser can read (it cannot
//! read the status of a refused upgrade).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use actix::{Actor, ActorContext, StreamHandler};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use ephemera_actors::outbox::Abort;
use ephemera_actors::session::Session;
use serde::Deserialize;

use super::error::ApiError;
use super::{authenticate, bearer, AppState};

/// Mounts the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws", web::get().to(upgrade));
}

#[derive(Deserialize)]
struct TokenQuery {
    #[serde(default)]
    token: Option<String>,
}

async fn upgrade(
    state: web::Data<AppState>,
    req: HttpRequest,
    stream: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let token = match bearer(&req) {
        Some(t) => Some(t.to_owned()),
        None => web::Query::<TokenQuery>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.into_inner().token),
    };
    let authed = match token {
        Some(t) => match authenticate(&state, t).await {
            Ok(a) => Some(a),
            Err(ApiError::Unauthorized(_)) => None,
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let max = state.config.max_frame_bytes;
    let peer = super::login_limits::address_key(req.peer_addr().map(|a| a.ip()));
    let Some(slot) = state
        .sockets
        .take(peer, state.config.max_sockets_per_address)
    else {
        return Err(ApiError::RateLimited {
            message: "too many sockets from this address",
            retry_after_secs: 1,
        }
        .into());
    };
    match authed {
        Some(a) => {
            cap_send_buffer(&req);
            let session = Session::new(Arc::clone(&state.dir), a.user, a.device, abort(&req))
                .token_expires_at(a.expires_at)
                .holding(Box::new(slot));
            ws::WsResponseBuilder::new(session, &req, stream)
                .frame_size(max)
                .start()
        }
        None => ws::WsResponseBuilder::new(Refuse(slot), &req, stream)
            .frame_size(max)
            .start(),
    }
    // Not a WebSocket handshake: the error envelope, like every answer.
    .map_err(|_| ApiError::BadRequest("a WebSocket upgrade request is required").into())
}

/// Open sockets per client address (an IPv6 address by its /64), against
/// `max_sockets_per_address`: a flood of connections from one address is
/// refused (429) before it costs a session each.
#[derive(Default)]
pub struct SocketsPerAddress(
    Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
);

/// One open socket's place in [`SocketsPerAddress`], given back on drop.
struct SocketSlot {
    counts: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    key: std::net::IpAddr,
}

impl SocketsPerAddress {
    /// A place for one more socket from `key`, unless it holds `max` already.
    fn take(&self, key: std::net::IpAddr, max: usize) -> Option<SocketSlot> {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SocketSlot {
            counts: Arc::clone(&self.0),
            key,
        })
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// The descriptor of a connection's TCP socket, noted when it is accepted.
#[derive(Clone, Copy)]
struct ConnFd(RawFd);

/// Notes each accepted connection's socket (for [`abort`]); passed to
/// `HttpServer::on_connect`.
pub fn note_socket(conn: &dyn std::any::Any, ext: &mut actix_web::dev::Extensions) {
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        ext.insert(ConnFd(tcp.as_raw_fd()));
    }
}

/// The kernel send buffer of a WebSocket connection. Linux grows a TCP
/// socket's send buffer on its own up to `tcp_wmem`'s maximum (4 MiB here),
/// and a client that stops reading leaves that much of its frames in the
/// kernel, outside every bound of ours: 1,000 such clients pinned 1.3 GB.
/// Frames are small and a healthy client reads them at once, so a fixed
/// buffer (the kernel doubles it for its bookkeeping) costs them nothing,
/// and it makes a stalled socket back up into its outbox, which closes it.
/// Plain HTTP (media downloads) keeps the kernel's autotuning.
const WS_SEND_BUFFER: libc::c_int = 64 * 1024;

/// Fixes this request's connection's send buffer at [`WS_SEND_BUFFER`].
fn cap_send_buffer(req: &HttpRequest) {
    let Some(ConnFd(fd)) = req.conn_data::<ConnFd>().copied() else {
        return;
    };
    let size = WS_SEND_BUFFER;
    // SAFETY: `fd` is this live connection's socket (we are serving a
    // request on it); setsockopt reads `size` for its length and changes
    // only the socket's buffer limit.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!("could not set the socket's send buffer");
    }
}

/// What cuts this request's connection: a shutdown of its TCP socket, used
/// on a socket that stopped reading (the HTTP layer then sees the
/// connection end and drops the session with everything queued for it).
///
/// It holds the descriptor's number, not a duplicate of the descriptor: a
/// duplicate per socket doubled the server's descriptors, and with the
/// container's limit of 20,000 the server stopped accepting (EMFILE) at
/// about 10,000 sockets. A number can be reused once the connection
/// closes, so the cut checks first that the number still names the same
/// socket: its inode, which no two live sockets share (the kernel numbers
/// them from a 32-bit counter, so a reuse takes 2^32 new inodes first).
/// The check and the shutdown cannot race with the close either: the cut
/// runs on the session's own thread ([`SessionLink::arbiter`]), which is
/// the thread that serves the connection and the only one that closes it,
/// and only while the session lives ([`Outbox::finish`] drops it when the
/// session stops: the HTTP layer drops the response body, and the session
/// with it, before the socket).
///
/// [`SessionLink::arbiter`]: ephemera_actors::session::SessionLink
/// [`Outbox::finish`]: ephemera_actors::outbox::Outbox::finish
fn abort(req: &HttpRequest) -> Option<Abort> {
    let ConnFd(fd) = req.conn_data::<ConnFd>().copied()?;
    cut(fd)
}

/// [`abort`] for the socket open as `fd` now.
fn cut(fd: RawFd) -> Option<Abort> {
    let inode = socket_inode(fd)?;
    Some(Box::new(move || {
        if socket_inode(fd) != Some(inode) {
            return; // closed meanwhile: the number is someone else's now
        }
        // SAFETY: `fd` is open and is still this connection's socket
        // (checked just above, on the only thread that could close it);
        // shutdown takes no memory.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }))
}

/// The inode of the socket open as `fd`, if `fd` is open.
fn socket_inode(fd: RawFd) -> Option<u64> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a `struct stat` to the pointer we pass (ours,
    // of the right size) and reads nothing else of ours; on a closed
    // descriptor it fails without writing.
    let rc = unsafe { libc::fstat(fd, st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: fstat succeeded, so it filled `st`.
    let st = unsafe { st.assume_init() };
    (st.st_mode & libc::S_IFMT == libc::S_IFSOCK).then_some(st.st_ino)
}

/// A socket whose token failed: closed with 4401 as soon as it opens.
struct Refuse(#[allow(dead_code)] SocketSlot);

impl Actor for Refuse {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::Other(4401),
            description: Some("unauthorized".into()),
        }));
        ctx.stop();
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Refuse {
    fn handle(&mut self, _: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use super::*;

    #[test]
    fn cut_shuts_the_connection_down() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let cut = cut(server.as_raw_fd()).expect("an open socket");
        cut();
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).unwrap(), 0, "the client sees the end");
    }

    #[test]
    fn cut_never_reaches_a_socket_that_reused_the_number() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _first_client = TcpStream::connect(addr).unwrap();
        let (first, _) = listener.accept().unwrap();
        let fd = first.as_raw_fd();
        let cut = cut(fd).expect("an open socket");
        drop(first);
        // The lowest free number is the one just closed: the next socket
        // takes it (unless another test's thread took it meanwhile).
        let mut second = TcpStream::connect(addr).unwrap();
        let reused = second.as_raw_fd() == fd;
        let (mut second_peer, _) = listener.accept().unwrap();
        cut();
        second
            .write_all(b"x")
            .expect("the new connection still writes");
        let mut buf = [0u8; 1];
        assert_eq!(
            second_peer.read(&mut buf).unwrap(),
            1,
            "the new connection is untouched (number reused: {reused})"
        );
    }
}
