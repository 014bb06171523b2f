//! Configuration: one struct that is both the TOML file's schema (serde)
//! and the command line (clap), so each doc comment is both `--help` text
//! and file documentation. Precedence: flag, then `EPHEMERA_*` environment
//! variable, then the file, then the default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

/// When an acknowledged message is safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, ValueEnum, Default)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// The write-ahead log is written before the ack: survives `kill -9`
    /// of the server (the OS holds the bytes), not power loss.
    #[default]
    Wal,
    /// The write-ahead log is fsynced before the ack, in groups: survives
    /// power loss.
    Fsync,
}

/// How objects are addressed on an S3 endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum S3Addressing {
    /// `http://host/bucket/key`.
    Path,
    /// `http://bucket.host/key`.
    VirtualHost,
}

/// An external S3-compatible store. Serialised (into backups) without its
/// secret.
#[derive(Clone, Serialize)]
pub struct S3Config {
    /// `http://host:port` or `https://host:port`.
    pub endpoint: String,
    /// Signature region.
    pub region: String,
    /// Addressing style.
    pub addressing: S3Addressing,
    /// Access key id.
    pub access_key_id: String,
    /// Secret (never logged: `Debug` hides it; never serialised).
    #[serde(skip)]
    pub secret_access_key: String,
    /// A PEM file of root certificates trusted for an `https` endpoint
    /// besides the system's (a private CA).
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("addressing", &self.addressing)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

/// The push webhook (PROTOCOL 9).
#[derive(Clone)]
pub struct PushConfig {
    /// Where pushes are `POST`ed (never logged: it may carry a token).
    pub url: reqwest::Url,
    /// The HMAC-SHA256 key of `X-Ephemera-Signature` (never logged).
    pub secret: String,
    /// Pushes waiting to be posted at most; past it new ones are dropped.
    pub queue: usize,
}

impl std::fmt::Debug for PushConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushConfig")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

/// TURN REST credentials (PROTOCOL 10), minted by `GET /api/v1/calls/turn`.
/// Serialised (into backups) without its secret.
#[derive(Clone, Serialize)]
pub struct TurnConfig {
    /// The TURN/STUN URLs handed to clients (`turn:host:port?transport=udp`...).
    pub urls: Vec<String>,
    /// The shared secret the TURN server checks credentials with (its
    /// `static-auth-secret`). Never logged, never serialised.
    #[serde(skip)]
    pub secret: String,
    /// How long minted credentials work.
    #[serde(serialize_with = "whole_seconds")]
    pub ttl: Duration,
}

impl std::fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnConfig")
            .field("urls", &self.urls)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Cluster mode (many nodes sharing Redis). Serialised (into backups)
/// without the Redis URL, which may carry a password.
#[derive(Clone, Serialize)]
pub struct ClusterConfig {
    /// Where Redis is. Never logged, never serialised.
    #[serde(skip)]
    pub redis_url: String,
    /// This node's name.
    pub node_id: String,
    /// How this node's public listener is reached, if set.
    pub advertise_url: Option<String>,
    /// How long the node's lease lasts unrenewed.
    #[serde(serialize_with = "whole_millis")]
    pub lease: Duration,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("node_id", &self.node_id)
            .field("advertise_url", &self.advertise_url)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// Whether `id` may name a node: 1 to 32 of `a-z`, `0-9`, `_`, `-`.
pub fn valid_node_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Every setting, each optional so file, environment and flags can be merged.
#[derive(Args, Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Public listener for the HTTP API and WebSockets [default: 127.0.0.1:8080]
    #[arg(long, env = "EPHEMERA_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Admin listener: metrics, health, actors; keep it off the public network [default: 127.0.0.1:9090]
    #[arg(long, env = "EPHEMERA_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Directory for RocksDB and the embedded blob store [default: ./data]
    #[arg(long, env = "EPHEMERA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// When acked messages are durable: `wal` (survives kill -9) or `fsync` (survives power loss) [default: wal]
    #[arg(long, env = "EPHEMERA_DURABILITY", value_enum)]
    pub durability: Option<Durability>,
    /// Largest WebSocket frame in bytes; a larger one closes the socket with 1009 [default: 65536]
    #[arg(long, env = "EPHEMERA_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Largest message body in UTF-8 bytes [default: 16384]
    #[arg(long, env = "EPHEMERA_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Shortest message lifetime in seconds [default: 1]
    #[arg(long, env = "EPHEMERA_MIN_TTL_SECONDS")]
    pub min_ttl_seconds: Option<u64>,
    /// Longest message lifetime in seconds [default: 604800]
    #[arg(long, env = "EPHEMERA_MAX_TTL_SECONDS")]
    pub max_ttl_seconds: Option<u64>,
    /// `send` frames a second per user, across all their devices [default: 200]
    #[arg(long, env = "EPHEMERA_SEND_RATE_PER_SECOND")]
    pub send_rate_per_second: Option<u32>,
    /// Sends a user may save up above the rate [default: 400]
    #[arg(long, env = "EPHEMERA_SEND_BURST")]
    pub send_burst: Option<u32>,
    /// `delivered`, `read`, `screenshot` and `unsend` frames a second per user, across devices (each stores an event) [default: 500]
    #[arg(long, env = "EPHEMERA_EVENT_RATE_PER_SECOND")]
    pub event_rate_per_second: Option<u32>,
    /// Such frames a user may save up above the rate [default: 1000]
    #[arg(long, env = "EPHEMERA_EVENT_BURST")]
    pub event_burst: Option<u32>,
    /// Frames a second per socket, of every type [default: 1000]
    #[arg(long, env = "EPHEMERA_FRAME_RATE_PER_SECOND")]
    pub frame_rate_per_second: Option<u32>,
    /// Frames a socket may save up above the rate [default: 2000]
    #[arg(long, env = "EPHEMERA_FRAME_BURST")]
    pub frame_burst: Option<u32>,
    /// PBKDF2-HMAC-SHA256 iterations for new passwords (at least 1000; lower only for tests) [default: 600000]
    #[arg(long, env = "EPHEMERA_PBKDF2_ITERATIONS")]
    pub pbkdf2_iterations: Option<u32>,
    /// Logins and registrations a second per client address (the TCP peer; IPv6 per /64); over it they get 429 with Retry-After, before any password hashing [default: 10]
    #[arg(long, env = "EPHEMERA_LOGIN_ADDRESS_RATE_PER_SECOND")]
    pub login_address_rate_per_second: Option<u32>,
    /// Logins and registrations a client address may save up above its rate [default: 20]
    #[arg(long, env = "EPHEMERA_LOGIN_ADDRESS_BURST")]
    pub login_address_burst: Option<u32>,
    /// Logins and registrations a minute per username, from any address: the password-guessing limit (unknown usernames alike) [default: 5]
    #[arg(long, env = "EPHEMERA_LOGIN_ACCOUNT_RATE_PER_MINUTE")]
    pub login_account_rate_per_minute: Option<u32>,
    /// Logins and registrations a username may save up above its rate [default: 10]
    #[arg(long, env = "EPHEMERA_LOGIN_ACCOUNT_BURST")]
    pub login_account_burst: Option<u32>,
    /// Client addresses, and usernames, whose login budgets are tracked at most (each); past it the idle, then the least recently used, are forgotten [default: 100000]
    #[arg(long, env = "EPHEMERA_LOGIN_LIMIT_ENTRIES")]
    pub login_limit_entries: Option<usize>,
    /// Password hashes computed at once, on their own threads [default: half the cores, at least 1]
    #[arg(long, env = "EPHEMERA_KDF_THREADS")]
    pub kdf_threads: Option<usize>,
    /// Logins and registrations waiting for a hashing thread; past it they get 503 at once [default: 16]
    #[arg(long, env = "EPHEMERA_KDF_QUEUE")]
    pub kdf_queue: Option<usize>,
    /// Lifetime of a login token in seconds [default: 2592000]
    #[arg(long, env = "EPHEMERA_TOKEN_TTL_SECONDS")]
    pub token_ttl_seconds: Option<u64>,
    /// A socket silent (no frame, no pong) this long is closed [default: 30]
    #[arg(long, env = "EPHEMERA_HEARTBEAT_TIMEOUT_SECONDS")]
    pub heartbeat_timeout_seconds: Option<u64>,
    /// A conversation actor idle this many seconds stops and frees its memory; its deadlines wake it [default: 60]
    #[arg(long, env = "EPHEMERA_PASSIVATE_AFTER_SECONDS")]
    pub passivate_after_seconds: Option<u64>,
    /// Most open sockets from one client address (an IPv6 address by its /64); past it an upgrade gets 429 [default: 1000]
    #[arg(long, env = "EPHEMERA_MAX_SOCKETS_PER_ADDRESS")]
    pub max_sockets_per_address: Option<usize>,
    /// Most groups one user can be in; creating a group with a member past it gets 422 [default: 1000]
    #[arg(long, env = "EPHEMERA_MAX_GROUPS_PER_USER")]
    pub max_groups_per_user: Option<usize>,
    /// Most members of a group conversation [default: 256]
    #[arg(long, env = "EPHEMERA_MAX_GROUP_MEMBERS")]
    pub max_group_members: Option<usize>,
    /// Bytes of frames waiting to be written to one socket; a socket that falls this far behind is closed with 4408 and its device resumes by `sync` [default: 262144]
    #[arg(long, env = "EPHEMERA_MAX_OUTBOUND_BYTES")]
    pub max_outbound_bytes: Option<usize>,
    /// Frames waiting to be written to one socket; past it the socket is closed with 4408 [default: 1024]
    #[arg(long, env = "EPHEMERA_MAX_OUTBOUND_FRAMES")]
    pub max_outbound_frames: Option<usize>,
    /// Authors with more followers than this are not fanned out: their stories are merged into followers' trays at read time [default: 10000]
    #[arg(long, env = "EPHEMERA_STORY_FANOUT_MAX_FOLLOWERS")]
    pub story_fanout_max_followers: Option<u64>,
    /// Sends accepted and not yet acked, server-wide; past it sends are refused with `unavailable` and retry_after_ms [default: 2048]
    #[arg(long, env = "EPHEMERA_MAX_SENDS_IN_FLIGHT")]
    pub max_sends_in_flight: Option<usize>,
    /// Threads serving sockets and HTTP [default: 2]
    #[arg(long, env = "EPHEMERA_SOCKET_THREADS")]
    pub socket_threads: Option<usize>,
    /// Threads running the conversation and user actors [default: 1]
    #[arg(long, env = "EPHEMERA_ACTOR_THREADS")]
    pub actor_threads: Option<usize>,
    /// Every storage file passes the expiry filter within this many seconds: the physical deletion window [default: 3600]
    #[arg(long, env = "EPHEMERA_DELETION_WINDOW_SECONDS")]
    pub deletion_window_seconds: Option<u64>,
    /// Days a reported message or story stays in quarantine after its report, unless a later hold keeps it longer or a moderator closes the case; fractions allowed [default: 90]
    #[arg(long, env = "EPHEMERA_QUARANTINE_RETENTION_DAYS")]
    pub quarantine_retention_days: Option<f64>,
    /// Upload URLs (POST /api/v1/media/upload-urls) a user may mint a second on average; over it: 429 with Retry-After [default: 10]
    #[arg(long, env = "EPHEMERA_MEDIA_UPLOAD_RATE_PER_SECOND")]
    pub media_upload_rate_per_second: Option<u32>,
    /// Upload URLs a user may mint at once above the rate [default: 100]
    #[arg(long, env = "EPHEMERA_MEDIA_UPLOAD_BURST")]
    pub media_upload_burst: Option<u32>,
    /// Uploads a user may have pending (minted, not yet used by a message, not yet ended: up to 75 minutes); over it: 429 with Retry-After [default: 64]
    #[arg(long, env = "EPHEMERA_MEDIA_MAX_PENDING_UPLOADS")]
    pub media_max_pending_uploads: Option<usize>,
    /// Bytes a user's pending uploads may declare in total; over it: 429 with Retry-After, or 413 for one upload larger than this on its own [default: 1073741824]
    #[arg(long, env = "EPHEMERA_MEDIA_MAX_PENDING_BYTES")]
    pub media_max_pending_bytes: Option<u64>,
    /// Largest image/* upload in bytes (the sealed file), at most 100 MiB; over it: 413 [default: 104857600]
    #[arg(long, env = "EPHEMERA_MAX_IMAGE_BYTES")]
    pub max_image_bytes: Option<u64>,
    /// Largest video/* upload in bytes (the sealed file), at most 100 MiB; over it: 413 [default: 104857600]
    #[arg(long, env = "EPHEMERA_MAX_VIDEO_BYTES")]
    pub max_video_bytes: Option<u64>,
    /// Largest audio/* upload (voice notes) in bytes (the sealed file), at most 100 MiB; over it: 413 [default: 16777216]
    #[arg(long, env = "EPHEMERA_MAX_AUDIO_BYTES")]
    pub max_audio_bytes: Option<u64>,
    /// Largest application/* upload (documents: PDF and others) in bytes (the sealed file), at most 100 MiB; over it: 413 [default: 104857600]
    #[arg(long, env = "EPHEMERA_MAX_DOCUMENT_BYTES")]
    pub max_document_bytes: Option<u64>,
    /// Fetches of one user's keys (GET /api/v1/users/{id}/keys, each claims a one-time prekey per device) a minute per caller; over it: 429 with Retry-After [default: 10]
    #[arg(long, env = "EPHEMERA_PREKEY_CLAIM_RATE_PER_MINUTE")]
    pub prekey_claim_rate_per_minute: Option<u32>,
    /// Such fetches a caller may save up above the rate, per user fetched [default: 20]
    #[arg(long, env = "EPHEMERA_PREKEY_CLAIM_BURST")]
    pub prekey_claim_burst: Option<u32>,
    /// Base URL clients use to reach the public listener, for the embedded blob store's presigned URLs [default: http://LISTEN]
    #[arg(long, env = "EPHEMERA_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// External S3-compatible endpoint (http://host:port, or https:// verified with rustls) for media; unset: the embedded blob store in DATA_DIR/blobs
    #[arg(long, env = "EPHEMERA_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Bucket for media; objects under m/ in it belong to this server alone (the sweep deletes those it has no record of) [default: media]
    #[arg(long, env = "EPHEMERA_S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// Region the S3 signatures are scoped to [default: us-east-1]
    #[arg(long, env = "EPHEMERA_S3_REGION")]
    pub s3_region: Option<String>,
    /// `path` (http://host/bucket/key) or `virtual-host` (http://bucket.host/key) addressing [default: path]
    #[arg(long, env = "EPHEMERA_S3_ADDRESSING", value_enum)]
    pub s3_addressing: Option<S3Addressing>,
    /// PEM file of root certificates trusted for an https s3_endpoint besides the system's (a private CA)
    #[arg(long, env = "EPHEMERA_S3_CA_FILE")]
    pub s3_ca_file: Option<PathBuf>,
    /// Access key id for the external S3
    #[arg(long, env = "EPHEMERA_S3_ACCESS_KEY_ID")]
    pub s3_access_key_id: Option<String>,
    /// Secret access key for the external S3; environment only in practice (flags show in `ps`)
    #[arg(long, env = "EPHEMERA_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    #[serde(skip)]
    pub s3_secret_access_key: Option<String>,
    /// URL (http or https) to POST a push to when a user with no device online gets a message, story reply or call; unset: no pushes. Never logged
    #[arg(long, env = "EPHEMERA_PUSH_WEBHOOK_URL", hide_env_values = true)]
    pub push_webhook_url: Option<String>,
    /// Key of the pushes' X-Ephemera-Signature (HMAC-SHA256); required with push_webhook_url; environment only in practice (flags show in `ps`)
    #[arg(long, env = "EPHEMERA_PUSH_WEBHOOK_SECRET", hide_env_values = true)]
    #[serde(skip)]
    pub push_webhook_secret: Option<String>,
    /// Pushes waiting to be posted at most; past it new ones are dropped (and counted) [default: 10000]
    #[arg(long, env = "EPHEMERA_PUSH_QUEUE")]
    pub push_queue: Option<usize>,
    /// A call nobody answers within this many seconds ends with `hangup` `timeout` [default: 60]
    #[arg(long, env = "EPHEMERA_CALL_RING_TIMEOUT_SECONDS")]
    pub call_ring_timeout_seconds: Option<u64>,
    /// Calls one user may be in at once, calling or called; past it an offer gets `rate_limited` (caller) or `hangup` `busy` (callee) [default: 4]
    #[arg(long, env = "EPHEMERA_MAX_CALLS_PER_USER")]
    pub max_calls_per_user: Option<usize>,
    /// TURN/STUN URLs given to clients with TURN credentials (comma-separated in the environment); required with turn_secret
    #[arg(long, env = "EPHEMERA_TURN_URLS", value_delimiter = ',')]
    pub turn_urls: Option<Vec<String>>,
    /// Shared secret of the TURN server (coturn `static-auth-secret`); unset: GET /api/v1/calls/turn answers 404. Environment only in practice (flags show in `ps`)
    #[arg(long, env = "EPHEMERA_TURN_SECRET", hide_env_values = true)]
    #[serde(skip)]
    pub turn_secret: Option<String>,
    /// Lifetime of minted TURN credentials in seconds [default: 3600]
    #[arg(long, env = "EPHEMERA_TURN_TTL_SECONDS")]
    pub turn_ttl_seconds: Option<u64>,
    /// Redis URL (redis://[user:pass@]host:port/db) of the cluster this node joins; unset: a single node, no Redis. Never logged; environment only in practice when it carries a password
    #[arg(long, env = "EPHEMERA_REDIS_URL", hide_env_values = true)]
    #[serde(skip)]
    pub redis_url: Option<String>,
    /// This node's name in the cluster (1 to 32 of a-z 0-9 _ -); required with redis_url. A node is its data directory: keep the same node_id with the same data_dir
    #[arg(long, env = "EPHEMERA_NODE_ID")]
    pub node_id: Option<String>,
    /// How other nodes and operators reach this node's public listener (shown in /admin/cluster) [default: public_url]
    #[arg(long, env = "EPHEMERA_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Milliseconds a node's lease in Redis lasts unrenewed: a node that stops heartbeating drops out of the live set after this, and a node that cannot renew stops writing before it ends [default: 5000]
    #[arg(long, env = "EPHEMERA_CLUSTER_LEASE_MS")]
    pub cluster_lease_ms: Option<u64>,
    /// Bearer token for the admin listener; prefer the environment over the flag (flags show in `ps`). If unset, a random one is written to DATA_DIR/admin.token
    #[arg(long, env = "EPHEMERA_ADMIN_TOKEN", hide_env_values = true)]
    #[serde(skip)]
    pub admin_token: Option<String>,
}

impl Settings {
    /// Fills every unset field from `other`.
    fn or(self, other: Settings) -> Settings {
        Settings {
            listen: self.listen.or(other.listen),
            admin_listen: self.admin_listen.or(other.admin_listen),
            data_dir: self.data_dir.or(other.data_dir),
            durability: self.durability.or(other.durability),
            max_frame_bytes: self.max_frame_bytes.or(other.max_frame_bytes),
            max_body_bytes: self.max_body_bytes.or(other.max_body_bytes),
            min_ttl_seconds: self.min_ttl_seconds.or(other.min_ttl_seconds),
            max_ttl_seconds: self.max_ttl_seconds.or(other.max_ttl_seconds),
            send_rate_per_second: self.send_rate_per_second.or(other.send_rate_per_second),
            send_burst: self.send_burst.or(other.send_burst),
            event_rate_per_second: self.event_rate_per_second.or(other.event_rate_per_second),
            event_burst: self.event_burst.or(other.event_burst),
            frame_rate_per_second: self.frame_rate_per_second.or(other.frame_rate_per_second),
            frame_burst: self.frame_burst.or(other.frame_burst),
            pbkdf2_iterations: self.pbkdf2_iterations.or(other.pbkdf2_iterations),
            login_address_rate_per_second: self
                .login_address_rate_per_second
                .or(other.login_address_rate_per_second),
            login_address_burst: self.login_address_burst.or(other.login_address_burst),
            login_account_rate_per_minute: self
                .login_account_rate_per_minute
                .or(other.login_account_rate_per_minute),
            login_account_burst: self.login_account_burst.or(other.login_account_burst),
            login_limit_entries: self.login_limit_entries.or(other.login_limit_entries),
            kdf_threads: self.kdf_threads.or(other.kdf_threads),
            kdf_queue: self.kdf_queue.or(other.kdf_queue),
            token_ttl_seconds: self.token_ttl_seconds.or(other.token_ttl_seconds),
            heartbeat_timeout_seconds: self
                .heartbeat_timeout_seconds
                .or(other.heartbeat_timeout_seconds),
            max_group_members: self.max_group_members.or(other.max_group_members),
            max_groups_per_user: self.max_groups_per_user.or(other.max_groups_per_user),
            max_sockets_per_address: self
                .max_sockets_per_address
                .or(other.max_sockets_per_address),
            socket_threads: self.socket_threads.or(other.socket_threads),
            max_sends_in_flight: self.max_sends_in_flight.or(other.max_sends_in_flight),
            max_outbound_bytes: self.max_outbound_bytes.or(other.max_outbound_bytes),
            max_outbound_frames: self.max_outbound_frames.or(other.max_outbound_frames),
            story_fanout_max_followers: self
                .story_fanout_max_followers
                .or(other.story_fanout_max_followers),
            actor_threads: self.actor_threads.or(other.actor_threads),
            passivate_after_seconds: self
                .passivate_after_seconds
                .or(other.passivate_after_seconds),
            deletion_window_seconds: self
                .deletion_window_seconds
                .or(other.deletion_window_seconds),
            quarantine_retention_days: self
                .quarantine_retention_days
                .or(other.quarantine_retention_days),
            media_upload_rate_per_second: self
                .media_upload_rate_per_second
                .or(other.media_upload_rate_per_second),
            media_upload_burst: self.media_upload_burst.or(other.media_upload_burst),
            media_max_pending_uploads: self
                .media_max_pending_uploads
                .or(other.media_max_pending_uploads),
            media_max_pending_bytes: self
                .media_max_pending_bytes
                .or(other.media_max_pending_bytes),
            max_image_bytes: self.max_image_bytes.or(other.max_image_bytes),
            max_video_bytes: self.max_video_bytes.or(other.max_video_bytes),
            max_audio_bytes: self.max_audio_bytes.or(other.max_audio_bytes),
            max_document_bytes: self.max_document_bytes.or(other.max_document_bytes),
            prekey_claim_rate_per_minute: self
                .prekey_claim_rate_per_minute
                .or(other.prekey_claim_rate_per_minute),
            prekey_claim_burst: self.prekey_claim_burst.or(other.prekey_claim_burst),
            admin_token: self.admin_token.or(other.admin_token),
            public_url: self.public_url.or(other.public_url),
            s3_endpoint: self.s3_endpoint.or(other.s3_endpoint),
            s3_bucket: self.s3_bucket.or(other.s3_bucket),
            s3_region: self.s3_region.or(other.s3_region),
            s3_addressing: self.s3_addressing.or(other.s3_addressing),
            s3_ca_file: self.s3_ca_file.or(other.s3_ca_file),
            s3_access_key_id: self.s3_access_key_id.or(other.s3_access_key_id),
            s3_secret_access_key: self.s3_secret_access_key.or(other.s3_secret_access_key),
            push_webhook_url: self.push_webhook_url.or(other.push_webhook_url),
            push_webhook_secret: self.push_webhook_secret.or(other.push_webhook_secret),
            push_queue: self.push_queue.or(other.push_queue),
            call_ring_timeout_seconds: self
                .call_ring_timeout_seconds
                .or(other.call_ring_timeout_seconds),
            max_calls_per_user: self.max_calls_per_user.or(other.max_calls_per_user),
            turn_urls: self.turn_urls.or(other.turn_urls),
            turn_secret: self.turn_secret.or(other.turn_secret),
            turn_ttl_seconds: self.turn_ttl_seconds.or(other.turn_ttl_seconds),
            redis_url: self.redis_url.or(other.redis_url),
            node_id: self.node_id.or(other.node_id),
            advertise_url: self.advertise_url.or(other.advertise_url),
            cluster_lease_ms: self.cluster_lease_ms.or(other.cluster_lease_ms),
        }
    }
}

/// The resolved configuration. It serialises (into backups) without its
/// secrets: the admin token and the S3 secret key are skipped; durations
/// are whole seconds.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Public listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Durability mode.
    pub durability: Durability,
    /// Frame size limit.
    pub max_frame_bytes: usize,
    /// Body size limit.
    pub max_body_bytes: usize,
    /// Lifetime range.
    pub min_ttl_seconds: u64,
    /// Lifetime range.
    pub max_ttl_seconds: u64,
    /// Per-user send rate.
    pub send_rate_per_second: u32,
    /// Per-user send burst.
    pub send_burst: u32,
    /// Per-user rate of other event-storing frames.
    pub event_rate_per_second: u32,
    /// Per-user burst of other event-storing frames.
    pub event_burst: u32,
    /// Per-socket frame rate.
    pub frame_rate_per_second: u32,
    /// Per-socket frame burst.
    pub frame_burst: u32,
    /// PBKDF2 iterations.
    pub pbkdf2_iterations: u32,
    /// Password calls a second per client address.
    pub login_address_rate_per_second: u32,
    /// Password calls a client address may save up.
    pub login_address_burst: u32,
    /// Password calls a minute per username.
    pub login_account_rate_per_minute: u32,
    /// Password calls a username may save up.
    pub login_account_burst: u32,
    /// Addresses (and usernames) tracked at most, each.
    pub login_limit_entries: usize,
    /// Password hashes at once.
    pub kdf_threads: usize,
    /// Password calls waiting for a hashing thread at most.
    pub kdf_queue: usize,
    /// Token lifetime.
    #[serde(serialize_with = "whole_seconds")]
    pub token_ttl: Duration,
    /// Heartbeat timeout.
    #[serde(serialize_with = "whole_seconds")]
    pub heartbeat_timeout: Duration,
    /// Group size limit.
    pub max_group_members: usize,
    /// Groups per user limit.
    pub max_groups_per_user: usize,
    /// Open sockets per client address.
    pub max_sockets_per_address: usize,
    /// Server-wide limit of sends in flight.
    pub max_sends_in_flight: usize,
    /// Bytes queued for one socket before it is closed as too slow.
    pub max_outbound_bytes: usize,
    /// Frames queued for one socket before it is closed as too slow.
    pub max_outbound_frames: usize,
    /// Authors with more followers are merged into trays at read time.
    pub story_fanout_max_followers: u64,
    /// Socket (HTTP worker) threads.
    pub socket_threads: usize,
    /// Actor threads.
    pub actor_threads: usize,
    /// Idle time before a conversation actor passivates.
    #[serde(serialize_with = "whole_seconds")]
    pub passivate_after: Duration,
    /// Physical deletion window.
    #[serde(serialize_with = "whole_seconds")]
    pub deletion_window: Duration,
    /// How long quarantined content is kept after its report, in days.
    pub quarantine_retention_days: f64,
    /// Per-user bounds on media uploads.
    pub uploads: crate::media::quota::UploadLimits,
    /// The largest upload of each kind of media.
    pub media_sizes: crate::media::kinds::SizeLimits,
    /// Key fetches a minute per (caller, user fetched).
    pub prekey_claim_rate_per_minute: u32,
    /// Key fetches saved up per (caller, user fetched).
    pub prekey_claim_burst: u32,
    /// Admin bearer token (never logged, never serialised).
    #[serde(skip)]
    pub admin_token: Option<String>,
    /// Public base URL, if set.
    pub public_url: Option<String>,
    /// Media bucket.
    pub s3_bucket: String,
    /// External S3, or `None` for the embedded blob store.
    pub s3: Option<S3Config>,
    /// The push webhook, or `None` for no pushes. Never serialised (not in
    /// backups): its secret is one, and a webhook URL may carry credentials.
    #[serde(skip)]
    pub push: Option<PushConfig>,
    /// Ring timeout of a call.
    #[serde(serialize_with = "whole_seconds")]
    pub call_ring_timeout: Duration,
    /// Calls one user may be in at once.
    pub max_calls_per_user: usize,
    /// TURN credentials, or `None` when no TURN server is configured.
    pub turn: Option<TurnConfig>,
    /// Cluster mode, or `None` for a single node.
    pub cluster: Option<ClusterConfig>,
}

fn whole_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

fn whole_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for these settings.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// Which file.
        path: PathBuf,
        /// The parser's message (TOML structure only; the file holds no secrets since admin_token is not read from it).
        message: String,
    },
    /// A value is out of range.
    #[error("invalid setting: {0}")]
    Invalid(&'static str),
}

impl Config {
    /// Merges flags and environment (`cli`) over the file at `path`, then defaults.
    pub fn resolve(cli: Settings, path: Option<&Path>) -> Result<Config, ConfigError> {
        let file = match path {
            None => Settings::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.into(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: p.into(),
                    message: e.message().to_owned(),
                })?
            }
        };
        let s = cli.or(file);
        let c = Config {
            listen: s
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            admin_listen: s
                .admin_listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9090))),
            data_dir: s.data_dir.unwrap_or_else(|| PathBuf::from("data")),
            durability: s.durability.unwrap_or_default(),
            max_frame_bytes: s.max_frame_bytes.unwrap_or(65_536),
            max_body_bytes: s.max_body_bytes.unwrap_or(16_384),
            min_ttl_seconds: s.min_ttl_seconds.unwrap_or(1),
            max_ttl_seconds: s.max_ttl_seconds.unwrap_or(604_800),
            send_rate_per_second: s.send_rate_per_second.unwrap_or(200),
            send_burst: s.send_burst.unwrap_or(400),
            event_rate_per_second: s.event_rate_per_second.unwrap_or(500),
            event_burst: s.event_burst.unwrap_or(1_000),
            frame_rate_per_second: s.frame_rate_per_second.unwrap_or(1_000),
            frame_burst: s.frame_burst.unwrap_or(2_000),
            pbkdf2_iterations: s.pbkdf2_iterations.unwrap_or(600_000),
            login_address_rate_per_second: s.login_address_rate_per_second.unwrap_or(10).max(1),
            login_address_burst: s.login_address_burst.unwrap_or(20).max(1),
            login_account_rate_per_minute: s.login_account_rate_per_minute.unwrap_or(5).max(1),
            login_account_burst: s.login_account_burst.unwrap_or(10).max(1),
            login_limit_entries: s.login_limit_entries.unwrap_or(100_000).max(1),
            // Half the cores: a login flood then leaves the other half to
            // sockets and actors (a hash is about 0.3 s of a core at the
            // default iterations).
            kdf_threads: s
                .kdf_threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() / 2))
                .clamp(1, 256),
            kdf_queue: s.kdf_queue.unwrap_or(16),
            token_ttl: Duration::from_secs(s.token_ttl_seconds.unwrap_or(2_592_000)),
            heartbeat_timeout: Duration::from_secs(s.heartbeat_timeout_seconds.unwrap_or(30)),
            max_group_members: s.max_group_members.unwrap_or(256),
            max_groups_per_user: s.max_groups_per_user.unwrap_or(1_000).max(1),
            max_sockets_per_address: s.max_sockets_per_address.unwrap_or(1_000).max(1),
            max_sends_in_flight: s.max_sends_in_flight.unwrap_or(2048).max(1),
            max_outbound_bytes: s.max_outbound_bytes.unwrap_or(256 << 10).max(1024),
            max_outbound_frames: s.max_outbound_frames.unwrap_or(1024).max(16),
            story_fanout_max_followers: s.story_fanout_max_followers.unwrap_or(10_000),
            socket_threads: s.socket_threads.unwrap_or(2).clamp(1, 64),
            actor_threads: s.actor_threads.unwrap_or(1).clamp(1, 64),
            passivate_after: Duration::from_secs(s.passivate_after_seconds.unwrap_or(60).max(1)),
            deletion_window: Duration::from_secs(s.deletion_window_seconds.unwrap_or(3_600)),
            quarantine_retention_days: s.quarantine_retention_days.unwrap_or(90.0),
            uploads: crate::media::quota::UploadLimits {
                rate_per_second: s.media_upload_rate_per_second.unwrap_or(10),
                burst: s.media_upload_burst.unwrap_or(100),
                max_pending: s.media_max_pending_uploads.unwrap_or(64),
                max_pending_bytes: s.media_max_pending_bytes.unwrap_or(1 << 30),
            },
            media_sizes: {
                let d = crate::media::kinds::SizeLimits::DEFAULT;
                crate::media::kinds::SizeLimits {
                    image: s.max_image_bytes.unwrap_or(d.image),
                    video: s.max_video_bytes.unwrap_or(d.video),
                    audio: s.max_audio_bytes.unwrap_or(d.audio),
                    document: s.max_document_bytes.unwrap_or(d.document),
                }
            },
            prekey_claim_rate_per_minute: s.prekey_claim_rate_per_minute.unwrap_or(10).max(1),
            prekey_claim_burst: s.prekey_claim_burst.unwrap_or(20).max(1),
            admin_token: s.admin_token.filter(|t| !t.is_empty()),
            public_url: s.public_url.map(|u| u.trim_end_matches('/').to_owned()),
            s3_bucket: s.s3_bucket.unwrap_or_else(|| "media".into()),
            s3: match s.s3_endpoint {
                None => None,
                Some(endpoint) => Some(S3Config {
                    endpoint: endpoint.trim_end_matches('/').to_owned(),
                    region: s.s3_region.unwrap_or_else(|| "us-east-1".into()),
                    addressing: s.s3_addressing.unwrap_or(S3Addressing::Path),
                    ca_file: s.s3_ca_file,
                    access_key_id: s
                        .s3_access_key_id
                        .ok_or(ConfigError::Invalid("s3_endpoint needs s3_access_key_id"))?,
                    secret_access_key: s.s3_secret_access_key.ok_or(ConfigError::Invalid(
                        "s3_endpoint needs EPHEMERA_S3_SECRET_ACCESS_KEY",
                    ))?,
                }),
            },
            push: match s.push_webhook_url {
                None => None,
                Some(url) => Some(PushConfig {
                    // The message names the setting, never the value.
                    url: reqwest::Url::parse(&url)
                        .ok()
                        .filter(|u| matches!(u.scheme(), "http" | "https"))
                        .ok_or(ConfigError::Invalid(
                            "push_webhook_url must be an http or https URL",
                        ))?,
                    secret: s.push_webhook_secret.filter(|k| !k.is_empty()).ok_or(
                        ConfigError::Invalid("push_webhook_url needs EPHEMERA_PUSH_WEBHOOK_SECRET"),
                    )?,
                    queue: s.push_queue.unwrap_or(10_000).max(1),
                }),
            },
            call_ring_timeout: Duration::from_secs(
                s.call_ring_timeout_seconds.unwrap_or(60).max(1),
            ),
            max_calls_per_user: s.max_calls_per_user.unwrap_or(4).max(1),
            turn: match s.turn_secret.filter(|k| !k.is_empty()) {
                None => None,
                Some(secret) => Some(TurnConfig {
                    urls: s
                        .turn_urls
                        .filter(|u| !u.is_empty())
                        .ok_or(ConfigError::Invalid("turn_secret needs turn_urls"))?,
                    secret,
                    ttl: Duration::from_secs(s.turn_ttl_seconds.unwrap_or(3_600)),
                }),
            },
            cluster: match s.redis_url.filter(|u| !u.is_empty()) {
                None => None,
                Some(redis_url) => Some(ClusterConfig {
                    redis_url,
                    node_id: s
                        .node_id
                        .filter(|n| valid_node_id(n))
                        .ok_or(ConfigError::Invalid(
                            "redis_url needs node_id (1 to 32 of a-z 0-9 _ -)",
                        ))?,
                    advertise_url: s.advertise_url.map(|u| u.trim_end_matches('/').to_owned()),
                    lease: Duration::from_millis(s.cluster_lease_ms.unwrap_or(5_000)),
                }),
            },
        };
        if c.cluster
            .as_ref()
            .is_some_and(|k| k.lease < Duration::from_millis(1_000))
        {
            return Err(ConfigError::Invalid(
                "cluster_lease_ms must be at least 1000",
            ));
        }
        if let Some(turn) = &c.turn {
            let scheme_ok = |u: &String| {
                ["turn:", "turns:", "stun:", "stuns:"]
                    .iter()
                    .any(|p| u.starts_with(p))
            };
            if !turn.urls.iter().all(scheme_ok) {
                return Err(ConfigError::Invalid(
                    "turn_urls must be turn:, turns:, stun: or stuns: URLs",
                ));
            }
            if turn.ttl.as_secs() == 0 {
                return Err(ConfigError::Invalid("turn_ttl_seconds must be above 0"));
            }
        }
        if c.pbkdf2_iterations < 1_000 {
            return Err(ConfigError::Invalid(
                "pbkdf2_iterations must be at least 1000",
            ));
        }
        if c.min_ttl_seconds == 0 || c.min_ttl_seconds > c.max_ttl_seconds {
            return Err(ConfigError::Invalid(
                "ttl range must satisfy 1 <= min_ttl_seconds <= max_ttl_seconds",
            ));
        }
        if c.max_frame_bytes < 1_024 || c.max_body_bytes == 0 {
            return Err(ConfigError::Invalid(
                "max_frame_bytes must be at least 1024 and max_body_bytes above 0",
            ));
        }
        if c.max_group_members < 2 {
            return Err(ConfigError::Invalid("max_group_members must be at least 2"));
        }
        let u = &c.uploads;
        if u.rate_per_second == 0 || u.burst == 0 || u.max_pending == 0 {
            return Err(ConfigError::Invalid(
                "media_upload_rate_per_second, media_upload_burst and media_max_pending_uploads \
                 must be at least 1",
            ));
        }
        if u.max_pending_bytes < crate::media::service::SEAL_OVERHEAD {
            return Err(ConfigError::Invalid(
                "media_max_pending_bytes must be at least 28 (the smallest sealed file)",
            ));
        }
        if !c.media_sizes.valid() {
            return Err(ConfigError::Invalid(
                "max_image_bytes, max_video_bytes, max_audio_bytes and max_document_bytes must \
                 be within 28..=104857600 (100 MiB)",
            ));
        }
        // At most about 100 years, so the retention in ms stays exact.
        if !(c.quarantine_retention_days > 0.0 && c.quarantine_retention_days <= 36_500.0) {
            return Err(ConfigError::Invalid(
                "quarantine_retention_days must be above 0 (and at most 36500)",
            ));
        }
        if c.deletion_window.as_secs() == 0 {
            return Err(ConfigError::Invalid(
                "deletion_window_seconds must be above 0",
            ));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.toml");
        std::fs::write(
            &path,
            "max_body_bytes = 100\nsend_burst = 7\ndurability = \"fsync\"\n",
        )
        .unwrap();
        let cli = Settings {
            send_burst: Some(9),
            ..Settings::default()
        };
        let c = Config::resolve(cli, Some(&path)).unwrap();
        assert_eq!(c.max_body_bytes, 100);
        assert_eq!(c.send_burst, 9);
        assert_eq!(c.durability, Durability::Fsync);
        assert_eq!(c.max_ttl_seconds, 604_800);
        assert_eq!(c.uploads.max_pending, 64);
        assert_eq!(c.uploads.max_pending_bytes, 1 << 30);
    }

    #[test]
    fn login_limits_have_defaults_and_read_the_file() {
        let c = Config::resolve(Settings::default(), None).unwrap();
        assert_eq!(
            (c.login_address_rate_per_second, c.login_address_burst),
            (10, 20)
        );
        assert_eq!(
            (c.login_account_rate_per_minute, c.login_account_burst),
            (5, 10)
        );
        assert_eq!((c.login_limit_entries, c.kdf_queue), (100_000, 16));
        assert!(c.kdf_threads >= 1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.toml");
        std::fs::write(
            &path,
            "login_account_rate_per_minute = 3\nkdf_threads = 0\nkdf_queue = 0\n",
        )
        .unwrap();
        let c = Config::resolve(Settings::default(), Some(&path)).unwrap();
        assert_eq!(c.login_account_rate_per_minute, 3);
        assert_eq!((c.kdf_threads, c.kdf_queue), (1, 0));
    }

    #[test]
    fn a_push_webhook_needs_an_http_url_and_a_secret_and_neither_is_shown() {
        let url = "https://hooks.example/p?token=hidden-in-url";
        let with = |url: &str, secret: Option<&str>| Settings {
            push_webhook_url: Some(url.into()),
            push_webhook_secret: secret.map(Into::into),
            ..Settings::default()
        };
        assert!(Config::resolve(Settings::default(), None)
            .unwrap()
            .push
            .is_none());
        for refused in [
            with(url, None),
            with(url, Some("")),
            with("ftp://h/", Some("k")),
        ] {
            let e = Config::resolve(refused, None).unwrap_err().to_string();
            assert!(!e.contains("hidden-in-url"), "{e}");
        }
        let c = Config::resolve(with(url, Some("the-secret")), None).unwrap();
        let push = c.push.as_ref().unwrap();
        assert_eq!((push.url.as_str(), push.queue), (url, 10_000));
        let shown = format!("{c:?}");
        assert!(!shown.contains("hidden-in-url") && !shown.contains("the-secret"));
    }

    #[test]
    fn turn_needs_a_secret_and_urls_and_never_shows_the_secret() {
        let with = |urls: Option<Vec<&str>>, secret: Option<&str>| Settings {
            turn_urls: urls.map(|u| u.into_iter().map(Into::into).collect()),
            turn_secret: secret.map(Into::into),
            ..Settings::default()
        };
        let c = Config::resolve(Settings::default(), None).unwrap();
        assert!(c.turn.is_none());
        assert_eq!(
            (c.call_ring_timeout.as_secs(), c.max_calls_per_user),
            (60, 4)
        );
        assert!(Config::resolve(with(Some(vec!["turn:h:3478"]), None), None)
            .unwrap()
            .turn
            .is_none());
        for refused in [
            with(None, Some("s")),
            with(Some(vec![]), Some("s")),
            with(Some(vec!["http://h"]), Some("s")),
        ] {
            assert!(matches!(
                Config::resolve(refused, None),
                Err(ConfigError::Invalid(_))
            ));
        }
        let urls = vec!["turn:h:3478?transport=udp", "stun:h:3478"];
        let c = Config::resolve(with(Some(urls), Some("turn-secret-canary")), None).unwrap();
        let turn = c.turn.as_ref().unwrap();
        assert_eq!((turn.urls.len(), turn.ttl.as_secs()), (2, 3_600));
        let shown = format!("{c:?} {}", serde_json::to_string(&c).unwrap());
        assert!(!shown.contains("turn-secret-canary"), "{shown}");
        assert!(shown.contains("stun:h:3478"), "{shown}");
    }

    #[test]
    fn turn_urls_are_comma_separated_in_the_environment() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            s: Settings,
        }
        let cli = Cli::parse_from(["x", "--turn-urls", "turn:a:1,turns:b:2"]);
        assert_eq!(
            cli.s.turn_urls.unwrap(),
            vec!["turn:a:1".to_string(), "turns:b:2".to_string()]
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.toml");
        std::fs::write(&path, "max_bodybytes = 100\n").unwrap();
        assert!(matches!(
            Config::resolve(Settings::default(), Some(&path)),
            Err(ConfigError::Parse { .. })
        ));
        let cli = Settings {
            pbkdf2_iterations: Some(10),
            ..Settings::default()
        };
        assert!(matches!(
            Config::resolve(cli, None),
            Err(ConfigError::Invalid(_))
        ));
        let cli = Settings {
            media_max_pending_uploads: Some(0),
            ..Settings::default()
        };
        assert!(matches!(
            Config::resolve(cli, None),
            Err(ConfigError::Invalid(_))
        ));
        let cli = Settings {
            max_document_bytes: Some((100 << 20) + 1),
            ..Settings::default()
        };
        assert!(matches!(
            Config::resolve(cli, None),
            Err(ConfigError::Invalid(_))
        ));
    }
}
