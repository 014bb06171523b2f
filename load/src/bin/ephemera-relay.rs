//! `ephemera-relay`: a benchmark control, the cost of Ephemera's stack
//! without persistence.
//!
//! It runs on the server's own stack (actix 0.13, actix-web 4,
//! actix-web-actors 4; one actor per socket on `--workers` socket threads,
//! Nagle off, frames as serde-tagged JSON) and answers exactly the part of
//! the protocol (PROTOCOL.md §1, §3, and group creation of §6) that a plain
//! `ephemera-load` message run uses, in pairs or groups, and nothing more: no storage, no password hashing, no limits.
//! Whatever the server spends per message above this relay's figure is the
//! price of what the relay leaves out. `scripts/bench.sh` runs both at the
//! same offered rates and reports the ratio.
//!
//! What it answers:
//!
//! * `POST /api/v1/accounts` `{username, password}`: `201 {user_id,
//!   username}`, `409` if taken.
//! * `POST /api/v1/sessions` `{username, password, device_name?}`: `201
//!   {token, user_id, device_id, expires_at}`, `401` on a wrong password.
//!   Each login is a new device.
//! * `POST /api/v1/conversations` `{members, name?}` with a bearer token:
//!   `201 {conversation_id}`, a group of the caller and `members` (at most
//!   256 in all, as the server's default; `422` past it or for an unknown
//!   user id), for `ephemera-load --group-size`.
//! * `GET /api/v1/ws` with `Authorization: Bearer <token>` (`401`
//!   without a live token), text frames:
//!   * `send` of a `timed` text message, with `to` (a user id) or the
//!     `conversation_id` of a conversation the sender is in: a `message`
//!     frame to every device of every member except the sending one, then
//!     an `ack` to the sender. The 1:1 conversation id derives from the
//!     pair, `seq` counts per conversation and `cursor` per user (so the
//!     frame is rendered once per member: its cursor differs);
//!   * `ping`: `pong`;
//!   * any other frame: `error` (`bad_frame`, `not_found` or `invalid`,
//!     with `ref` when the frame had a `client_msg_id`).
//!
//! Left out on purpose: persistence, dedup of a resent `client_msg_id`,
//! `once` messages, media, receipts, typing, views, `sync`, group names,
//! listing, leaving and presence, history, logout, token expiry, and every
//! rate and size limit. Accounts,
//! tokens and conversations live in memory until the process ends. It
//! prints its address once when ready (`RELAY_READY http=ADDR`) and
//! nothing per message.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use actix::{Actor, ActorContext as _, Addr, AsyncContext as _, Handler, StreamHandler};
use actix_web::http::header::AUTHORIZATION;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_web_actors::ws;
use anyhow::Context as _;
use clap::Parser;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Flags of `ephemera-relay`.
#[derive(Parser)]
#[command(
    name = "ephemera-relay",
    about = "Bare relay: a benchmark control for Ephemera"
)]
struct Args {
    /// Address to listen on (port 0: any free port; the ready line names it).
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Socket threads (the server's `--socket-threads` default is 2).
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

/// How long a login's token is said to live (never enforced).
const TOKEN_LIFETIME_MS: i64 = 30 * 24 * 3600 * 1000;

/// Most members of a group, the caller included (the server's default
/// `max_group_members`).
const MAX_GROUP_MEMBERS: usize = 256;

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------

/// Everything the relay knows, in memory only.
#[derive(Default)]
struct Relay {
    /// Accounts by username.
    accounts: Mutex<HashMap<String, Account>>,
    /// Users by id, for `to`.
    users: RwLock<HashMap<Arc<str>, Arc<User>>>,
    /// Live tokens.
    sessions: RwLock<HashMap<String, Login>>,
    /// Conversations by id: 1:1 ones created by their first message,
    /// groups by `POST /api/v1/conversations`.
    conversations: RwLock<HashMap<Arc<str>, Arc<Conversation>>>,
    /// Source of user, device, socket and message numbers.
    next: AtomicU64,
}

/// A registered account.
struct Account {
    /// Kept as given: the relay does no password hashing.
    password: String,
    /// Its user.
    user: Arc<User>,
}

/// One user: the sockets its devices hold, and its cursor.
struct User {
    /// The user id.
    id: Arc<str>,
    /// Under one lock, so a user's cursors reach each socket in order.
    inbox: Mutex<Inbox>,
}

/// What a user's messages go through.
#[derive(Default)]
struct Inbox {
    /// The last cursor handed out (per user, shared by its devices).
    cursor: u64,
    /// Open sockets: (socket number, device number, the socket's actor).
    sockets: Vec<(u64, u64, Addr<Socket>)>,
}

/// A token's owner.
#[derive(Clone)]
struct Login {
    /// The user.
    user: Arc<User>,
    /// The device this login created.
    device: u64,
}

/// A conversation: 1:1 or a group.
struct Conversation {
    /// Its id: derived from the pair, or `g<number>` for a group.
    id: Arc<str>,
    /// Its members (one when a user writes to itself; the creator first in
    /// a group).
    members: Vec<Arc<User>>,
    /// The last `seq`; held while a message fans out, so seqs arrive in
    /// order.
    seq: Mutex<u64>,
}

/// Lock a mutex; a panic elsewhere leaves the data usable for a control.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Relay {
    /// A fresh number for an id.
    fn number(&self) -> u64 {
        self.next.fetch_add(1, Relaxed) + 1
    }

    /// The user with id `id`.
    fn user(&self, id: &str) -> Option<Arc<User>> {
        let users = self.users.read().unwrap_or_else(PoisonError::into_inner);
        users.get(id).cloned()
    }

    /// The owner of `token`.
    fn login(&self, token: &str) -> Option<Login> {
        let sessions = self.sessions.read().unwrap_or_else(PoisonError::into_inner);
        sessions.get(token).cloned()
    }

    /// The conversation of `a` and `b`, created on first use.
    fn direct(&self, a: &Arc<User>, b: &Arc<User>) -> Arc<Conversation> {
        let (lo, hi) = if a.id <= b.id { (a, b) } else { (b, a) };
        let id = format!("c-{}-{}", lo.id, hi.id);
        if let Some(c) = self.conversation(&id) {
            return c;
        }
        let mut convs = self
            .conversations
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let id: Arc<str> = id.into();
        let members = if Arc::ptr_eq(lo, hi) {
            vec![lo.clone()]
        } else {
            vec![lo.clone(), hi.clone()]
        };
        convs
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(Conversation {
                    id,
                    members,
                    seq: Mutex::new(0),
                })
            })
            .clone()
    }

    /// An existing conversation.
    fn conversation(&self, id: &str) -> Option<Arc<Conversation>> {
        let convs = self
            .conversations
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        convs.get(id).cloned()
    }
}

/// Unix time in milliseconds.
fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A random 128-bit token, hex.
fn new_token() -> anyhow::Result<String> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness for a token"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// The body of a registration or a login.
#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

/// An error answer in the protocol's envelope.
fn http_error(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": { "code": code, "message": message } }))
}

/// `POST /api/v1/accounts`.
async fn register(relay: web::Data<Relay>, body: web::Json<Credentials>) -> HttpResponse {
    let Credentials { username, password } = body.into_inner();
    let mut accounts = lock(&relay.accounts);
    if accounts.contains_key(&username) {
        return http_error(StatusCode::CONFLICT, "conflict", "username taken");
    }
    let id: Arc<str> = format!("u{}", relay.number()).into();
    let user = Arc::new(User {
        id: id.clone(),
        inbox: Mutex::default(),
    });
    relay
        .users
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id.clone(), user.clone());
    accounts.insert(username.clone(), Account { password, user });
    HttpResponse::Created().json(json!({ "user_id": &*id, "username": username }))
}

/// `POST /api/v1/sessions`: a new device and its token.
async fn login(relay: web::Data<Relay>, body: web::Json<Credentials>) -> HttpResponse {
    let user = {
        let accounts = lock(&relay.accounts);
        match accounts.get(&body.username) {
            Some(a) if a.password == body.password => a.user.clone(),
            _ => return http_error(StatusCode::UNAUTHORIZED, "unauthorized", "bad credentials"),
        }
    };
    let Ok(token) = new_token() else {
        return http_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "no token");
    };
    let device = relay.number();
    relay
        .sessions
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(
            token.clone(),
            Login {
                user: user.clone(),
                device,
            },
        );
    HttpResponse::Created().json(json!({
        "token": token,
        "user_id": &*user.id,
        "device_id": format!("d{device}"),
        "expires_at": unix_ms() + TOKEN_LIFETIME_MS,
    }))
}

/// The owner of the request's `Authorization: Bearer` token, if live.
fn bearer(relay: &Relay, req: &HttpRequest) -> Option<Login> {
    let token = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))?;
    relay.login(token.trim())
}

/// The body of `POST /api/v1/conversations`.
#[derive(Deserialize)]
struct CreateGroup {
    members: Vec<String>,
}

/// `POST /api/v1/conversations`: a group of the caller and `members`.
async fn create_group(
    relay: web::Data<Relay>,
    req: HttpRequest,
    body: web::Json<CreateGroup>,
) -> HttpResponse {
    let Some(login) = bearer(&relay, &req) else {
        return http_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a live bearer token is required",
        );
    };
    let mut members = vec![login.user];
    for id in &body.members {
        let Some(user) = relay.user(id) else {
            return http_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "members must be existing users",
            );
        };
        if !members.iter().any(|m| Arc::ptr_eq(m, &user)) {
            members.push(user);
        }
    }
    if members.len() > MAX_GROUP_MEMBERS {
        return http_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "too many members",
        );
    }
    let id: Arc<str> = format!("g{}", relay.number()).into();
    relay
        .conversations
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(
            id.clone(),
            Arc::new(Conversation {
                id: id.clone(),
                members,
                seq: Mutex::new(0),
            }),
        );
    HttpResponse::Created().json(json!({ "conversation_id": &*id }))
}

/// `GET /api/v1/ws`: a [`Socket`] for a live `Authorization: Bearer` token.
async fn upgrade(
    relay: web::Data<Relay>,
    req: HttpRequest,
    stream: web::Payload,
) -> actix_web::Result<HttpResponse> {
    let Some(login) = bearer(&relay, &req) else {
        return Ok(http_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a live bearer token is required",
        ));
    };
    let socket = Socket {
        relay: relay.into_inner(),
        login,
        number: 0,
    };
    ws::start(socket, &req, stream)
}

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

/// A frame from a client; only what a plain load run sends.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientFrame {
    /// Send a message.
    Send(SendFrame),
    /// Liveness check.
    Ping,
    /// Any other type: the relay does not implement it.
    #[serde(other)]
    Other,
}

/// The fields of a `send` the relay reads.
#[derive(Deserialize)]
struct SendFrame {
    client_msg_id: String,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    conversation_id: Option<String>,
    #[serde(default)]
    body: Option<String>,
    view_policy: String,
    ttl_seconds: u64,
}

/// A frame to a client.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerFrame<'a> {
    Ack {
        client_msg_id: &'a str,
        msg_id: &'a str,
        conversation_id: &'a str,
        seq: u64,
        state: &'static str,
        sent_at: i64,
        expires_at: i64,
    },
    Message {
        cursor: u64,
        msg_id: &'a str,
        conversation_id: &'a str,
        seq: u64,
        from: &'a str,
        sent_at: i64,
        expires_at: i64,
        view_policy: &'static str,
        body: &'a str,
    },
    Error {
        code: &'static str,
        message: &'static str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    Pong,
}

impl ServerFrame<'_> {
    fn text(&self) -> String {
        // Only strings and integers, under string keys: cannot fail.
        serde_json::to_string(self).expect("a server frame serialises")
    }
}

// ---------------------------------------------------------------------------
// Socket
// ---------------------------------------------------------------------------

/// One device's socket.
struct Socket {
    relay: Arc<Relay>,
    login: Login,
    /// This socket's number in its user's inbox, set when it starts.
    number: u64,
}

/// A frame for this socket from a message another socket sent.
#[derive(actix::Message)]
#[rtype(result = "()")]
struct Push(String);

impl Actor for Socket {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.number = self.relay.number();
        let entry = (self.number, self.login.device, ctx.address());
        lock(&self.login.user.inbox).sockets.push(entry);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        let number = self.number;
        lock(&self.login.user.inbox)
            .sockets
            .retain(|(n, _, _)| *n != number);
    }
}

impl Handler<Push> for Socket {
    type Result = ();

    fn handle(&mut self, push: Push, ctx: &mut Self::Context) {
        ctx.text(push.0);
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Socket {
    fn handle(&mut self, item: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        match item {
            Ok(ws::Message::Text(text)) => {
                let answer = self.on_text(&text);
                ctx.text(answer);
            }
            Ok(ws::Message::Ping(bytes)) => ctx.pong(&bytes),
            Ok(ws::Message::Binary(_)) => {
                ctx.text(error("bad_frame", "text frames only", None));
            }
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Ok(ws::Message::Pong(_) | ws::Message::Continuation(_) | ws::Message::Nop) => {}
            Err(_) => ctx.stop(),
        }
    }
}

/// An `error` frame.
fn error(code: &'static str, message: &'static str, reference: Option<&str>) -> String {
    ServerFrame::Error {
        code,
        message,
        reference,
    }
    .text()
}

impl Socket {
    /// Handle one text frame; returns the answer for this socket.
    fn on_text(&self, text: &str) -> String {
        match serde_json::from_str::<ClientFrame>(text) {
            Ok(ClientFrame::Send(send)) => self.send(&send),
            Ok(ClientFrame::Ping) => ServerFrame::Pong.text(),
            Ok(ClientFrame::Other) => error("bad_frame", "not implemented by the relay", None),
            Err(_) => error("bad_frame", "not a frame the relay reads", None),
        }
    }

    /// Fan a message out to every other device of its conversation; the
    /// `ack` for the sender.
    fn send(&self, f: &SendFrame) -> String {
        let reference = Some(f.client_msg_id.as_str());
        let Some(body) = f.body.as_deref().filter(|_| f.view_policy == "timed") else {
            return error("invalid", "the relay carries timed text only", reference);
        };
        let me = &self.login.user;
        let conv = match (&f.to, &f.conversation_id) {
            (Some(to), None) => self.relay.user(to).map(|peer| self.relay.direct(me, &peer)),
            (None, Some(id)) => self
                .relay
                .conversation(id)
                .filter(|c| c.members.iter().any(|m| Arc::ptr_eq(m, me))),
            _ => {
                return error(
                    "bad_frame",
                    "exactly one of to and conversation_id",
                    reference,
                )
            }
        };
        let Some(conv) = conv else {
            return error("not_found", "no such user or conversation", reference);
        };
        let msg_id = format!("m{}", self.relay.number());
        let sent_at = unix_ms();
        let expires_at = sent_at.saturating_add(f.ttl_seconds.saturating_mul(1000) as i64);
        let mut seq = lock(&conv.seq);
        *seq += 1;
        for member in &conv.members {
            let mut inbox = lock(&member.inbox);
            inbox.cursor += 1;
            let frame = ServerFrame::Message {
                cursor: inbox.cursor,
                msg_id: &msg_id,
                conversation_id: &conv.id,
                seq: *seq,
                from: &me.id,
                sent_at,
                expires_at,
                view_policy: "timed",
                body,
            }
            .text();
            for (_, device, addr) in &inbox.sockets {
                if !(Arc::ptr_eq(member, me) && *device == self.login.device) {
                    addr.do_send(Push(frame.clone()));
                }
            }
        }
        ServerFrame::Ack {
            client_msg_id: &f.client_msg_id,
            msg_id: &msg_id,
            conversation_id: &conv.id,
            seq: *seq,
            state: "sent",
            sent_at,
            expires_at,
        }
        .text()
    }
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let relay = web::Data::new(Relay::default());
    let listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let server = HttpServer::new(move || {
        App::new().app_data(relay.clone()).service(
            web::scope("/api/v1")
                .route("/accounts", web::post().to(register))
                .route("/sessions", web::post().to(login))
                .route("/conversations", web::post().to(create_group))
                .route("/ws", web::get().to(upgrade)),
        )
    })
    .workers(args.workers)
    .tcp_nodelay(true)
    .shutdown_timeout(1)
    .listen(listener)
    .with_context(|| format!("serving {addr}"))?
    .run();
    println!("RELAY_READY http={addr}");
    server.await.context("serving")
}
