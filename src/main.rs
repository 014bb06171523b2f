//! Ephemera: a real-time messaging server where deletion is the product.
//!
//! # Layout
//! - `config`: settings from flags, environment and a TOML file.
//! - `store`: RocksDB: column families, typed keys, the TTL compaction
//!   filter, the group-commit writer.
//! - `auth`: password hashing and tokens.
//! - `api`: the public HTTP routes (TURN credentials for calls included)
//!   and the WebSocket upgrade.
//! - `admin`: the admin listener.
//! - `cli`: `ephemera admin ...`, the operator's commands.
//! - `backup`: `ephemera backup` and `ephemera restore`, without content.
//! - `keystore`: the key store (data keys), a RocksDB instance of its own.
//! - `sweep`: the one owner of physical deletion, and the deletion report.
//! - `deletion`: what is still on disk, measured; `ephemera verify-deletion`.
//! - `media`: uploads, SigV4 signing and the embedded blob store.
//! - `fds`: the descriptor budget shared by sockets and storage.
//! - `push`: the push webhook for users with no device online (messages,
//!   story replies, calls).
//! - `quarantine`: reported content, cases, moderators and the access log,
//!   a RocksDB instance of its own, and its backup.
//! - `web`: the web client (public `/`) and the operator console (admin
//!   `/console`), embedded pages over the public protocol and the admin API.
//!
//! The actors (sessions, users, conversations, stories, calls, the sweeper
//! and the directory) are in the `ephemera-actors` crate.

mod admin;
mod api;
mod auth;
mod backup;
mod cli;
mod cluster;
mod config;
mod deletion;
mod fds;
mod keystore;
mod media;
mod push;
mod quarantine;
mod store;
mod sweep;
mod web;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::{Actor, Arbiter};
use actix_web::web::Data;
use actix_web::{App, HttpServer};
use anyhow::Context;
use clap::{Parser, Subcommand};
use ephemera_actors::directory::{Deps, Directory, Limits};
use ephemera_actors::store::{MediaAccess, OfflinePush, Store};
use ephemera_actors::sweeper::Sweeper;
use ring::digest;

use config::{Config, Settings};
use media::service::MediaService;
use media::sigv4;
use store::RocksStore;

/// Ephemera: real-time messaging where deletion is the product.
#[derive(Parser)]
#[command(name = "ephemera", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// A TOML file with any of the settings below (keys are the flag names with underscores).
        #[arg(long, env = "EPHEMERA_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Settings,
    },
    /// Write a backup of the data directory without content: accounts,
    /// the social graph, conversation membership and the settings (without
    /// admin_token and s3_secret_access_key). Never messages, stories,
    /// highlights, media, keys or login tokens. Works while the server
    /// runs; give it the server's configuration (file, flags, environment)
    /// so the settings recorded are the server's.
    Backup {
        /// The backup file to write (mode 0600: it holds password hashes).
        #[arg(long)]
        out: PathBuf,
        /// The server's TOML configuration file.
        #[arg(long, env = "EPHEMERA_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Settings,
    },
    /// Restore a backup into an empty data directory (a non-empty one is
    /// refused). Users log in again; no message, story or media comes back.
    Restore {
        /// The data directory to create: absent or empty.
        #[arg(long)]
        data_dir: PathBuf,
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
    },
    /// Write a backup of the quarantine (cases with their sealed content
    /// and keys, the access log, the moderators, and the blob copies of the
    /// embedded blob store). Works while the server runs. The file holds
    /// reported content: mode 0600, keep it as such.
    QuarantineBackup {
        /// The server's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The backup file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a quarantine backup into a data directory whose quarantine
    /// store is absent or empty (the server stopped).
    QuarantineRestore {
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
    },
    /// The auditor's check: scans the main database, the key store and
    /// the embedded blob store of a data directory (the server running or
    /// stopped) for expired or deleted content still physically present
    /// or still decryptable. Prints counts and ages, never content; exits
    /// 0 when clean and 1 otherwise. Quarantined content is reported apart.
    VerifyDeletion {
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Tolerate content that ended less than this many seconds ago (a
        /// running server's deletion window); 0 tolerates nothing.
        #[arg(long, default_value_t = 0)]
        grace_seconds: u64,
    },
    /// Operate a running server through its admin listener.
    Admin {
        #[command(flatten)]
        target: cli::AdminTarget,
        #[command(subcommand)]
        command: cli::AdminCommand,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve { config, settings } => {
            let cfg = Config::resolve(settings, config.as_deref())?;
            actix_web::rt::System::new().block_on(serve(cfg))
        }
        Command::Backup {
            out,
            config,
            settings,
        } => {
            let cfg = Config::resolve(settings, config.as_deref())?;
            let summary = backup::backup(&cfg, &out)?;
            println!(
                "backed up {summary} to {}; settings without {}",
                out.display(),
                backup::SECRETS_LEFT_OUT.join(" and ")
            );
            Ok(())
        }
        Command::Restore { data_dir, from } => {
            let summary = backup::restore(&data_dir, &from)?;
            println!(
                "restored {summary} into {}; the backed-up settings are in {}",
                data_dir.display(),
                data_dir.join(backup::SETTINGS_FILE).display()
            );
            Ok(())
        }
        Command::QuarantineBackup { data_dir, out } => {
            let summary = quarantine::backup::backup(&data_dir, &out)?;
            println!("backed up the quarantine ({summary}) to {}", out.display());
            Ok(())
        }
        Command::QuarantineRestore { data_dir, from } => {
            let summary = quarantine::backup::restore(&data_dir, &from)?;
            println!(
                "restored the quarantine ({summary}) into {}",
                data_dir.display()
            );
            Ok(())
        }
        Command::VerifyDeletion {
            data_dir,
            grace_seconds,
        } => {
            let v = deletion::verify(&data_dir, std::time::Duration::from_secs(grace_seconds))?;
            for line in &v.report {
                println!("{line}");
            }
            if v.clean {
                println!("verdict: clean");
                return Ok(());
            }
            println!("verdict: NOT clean");
            for f in &v.findings {
                println!("  {f}");
            }
            std::process::exit(1);
        }
        Command::Admin { target, command } => {
            let out = actix_web::rt::System::new().block_on(cli::run(target, command))?;
            println!("{out}");
            Ok(())
        }
    }
}

/// The admin token: configured, or the one in DATA_DIR/admin.token, or a
/// new random one written there (readable by the owner only).
fn admin_token(cfg: &Config) -> anyhow::Result<String> {
    if let Some(t) = &cfg.admin_token {
        return Ok(t.clone());
    }
    let path = cfg.data_dir.join("admin.token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_owned();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let t = auth::new_token();
    write_private(&path, &t).context("writing the admin token file")?;
    tracing::info!(path = %path.display(), "generated an admin token");
    Ok(t)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir).context("creating the data directory")?;
    let cfg = Arc::new(cfg);
    let token = admin_token(&cfg)?;
    // The descriptor limit is raised before storage opens its files.
    let fd_budget = fds::budget();
    tracing::info!(
        descriptor_limit = fd_budget.limit,
        max_connections = fd_budget.connections,
        reserved_for_storage = fds::STORAGE_RESERVE,
        "descriptor budget"
    );
    let keys = Arc::new(
        keystore::KeyStore::open(&cfg.data_dir.join("keys")).context("opening the key store")?,
    );
    let metrics = Arc::new(ephemera_actors::metrics::Metrics::new());
    let store = Arc::new(
        RocksStore::open(
            &cfg.data_dir.join("db"),
            Arc::clone(&keys),
            cfg.durability,
            cfg.deletion_window.as_secs(),
        )
        .context("opening the database")?,
    );
    // Bind the public port first: the embedded blob store's URLs need it,
    // and so do the other nodes of a cluster (the member record says it).
    let listener = std::net::TcpListener::bind(cfg.listen)
        .with_context(|| format!("binding {}", cfg.listen))?;
    let http_addr = listener.local_addr()?;
    // Cluster mode: join before anything is written (the lease first).
    let cluster = match cfg.cluster.clone() {
        Some(c) => {
            let joined =
                cluster::Cluster::join(c, Arc::clone(&metrics), format!("http://{http_addr}"))
                    .await?;
            let head = store.outbound_head().context("reading the outbound head")?;
            if let Err(e) = joined.check_data_dir(head).await {
                // Refused: the node id is free again at once.
                joined.leave().await;
                return Err(e);
            }
            store.join_cluster(Arc::clone(&joined));
            // Before the writer starts: events a previous run left
            // outbound go to Redis first, in order.
            cluster::bus::Bus::new(&joined, &store)?;
            Some(joined)
        }
        None => None,
    };
    let bus = cluster.as_ref().and_then(|c| c.bus().cloned());
    let limits = Limits {
        max_frame_bytes: cfg.max_frame_bytes,
        max_body_bytes: cfg.max_body_bytes,
        min_ttl_seconds: cfg.min_ttl_seconds,
        max_ttl_seconds: cfg.max_ttl_seconds,
        send_rate_per_second: cfg.send_rate_per_second,
        send_burst: cfg.send_burst,
        event_rate_per_second: cfg.event_rate_per_second,
        event_burst: cfg.event_burst,
        frame_rate_per_second: cfg.frame_rate_per_second,
        frame_burst: cfg.frame_burst,
        heartbeat_timeout: cfg.heartbeat_timeout,
        passivate_after: cfg.passivate_after,
        max_sends_in_flight: cfg.max_sends_in_flight,
        max_outbound_bytes: cfg.max_outbound_bytes,
        max_outbound_frames: cfg.max_outbound_frames,
        story_fanout_max_followers: cfg.story_fanout_max_followers,
        call_ring_timeout: cfg.call_ring_timeout,
        max_calls_per_user: cfg.max_calls_per_user,
    };
    let public_url = cfg
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{http_addr}"));
    let quarantined = Arc::new(
        quarantine::QuarantineStore::open(&cfg.data_dir.join("quarantine"))
            .context("opening the quarantine store")?,
    );
    let (endpoint, credentials, blobs) = media_backend(&cfg, &public_url, &store, &quarantined)?;
    let roots = match cfg.s3.as_ref().and_then(|s3| s3.ca_file.as_ref()) {
        None => Vec::new(),
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading s3_ca_file {}", path.display()))?;
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| {
                anyhow::anyhow!("s3_ca_file {} holds no PEM certificate", path.display())
            })?
        }
    };
    let media = MediaService::new(
        Arc::clone(&store),
        Arc::clone(&keys),
        endpoint,
        credentials,
        cfg.uploads,
        roots,
    )
    .context("counting pending uploads")?;
    let quarantine = quarantine::Quarantine::new(
        quarantined,
        media.clone(),
        (cfg.quarantine_retention_days * 86_400_000.0)
            .round()
            .max(1.0) as u64,
    );
    let sweep = sweep::Sweep::new(
        Arc::clone(&store),
        Arc::clone(&keys),
        media.clone(),
        quarantine.clone(),
        Arc::clone(&metrics),
        cfg.deletion_window,
    );
    sweep.start();
    match quarantine.census() {
        Ok(c) => tracing::info!(
            open_cases = c.open_cases,
            cases_holding_content = c.cases_holding_content,
            blobs_held = c.blobs_held,
            "quarantine opened"
        ),
        Err(e) => tracing::error!(error = %e, "the quarantine census failed"),
    }

    // Conversation and user actors run on their own thread(s). One is the
    // measured best on 2 cores: every hop between actors is then a local
    // mailbox, and fewer threads mean fewer cross-thread wake-ups.
    let arbiters: Vec<Arbiter> = (0..cfg.actor_threads).map(|_| Arbiter::new()).collect();
    let deps = Arc::new(Deps {
        store: Arc::clone(&store) as Arc<dyn Store>,
        media: Arc::new(media.clone()) as Arc<dyn MediaAccess>,
        metrics: metrics.clone(),
        limits,
        push: cfg.push.as_ref().map(|p| {
            push::start(p, Arc::clone(&store), Arc::clone(&metrics)) as Arc<dyn OfflinePush>
        }),
        router: bus
            .clone()
            .map(|b| b as Arc<dyn ephemera_actors::remote::Router>),
    });
    let dir = Directory::new(deps, arbiters.iter().map(|a| a.handle()).collect());
    let logins = api::login_limits::LoginGuard::new(&cfg, Arc::clone(&metrics));
    store
        .start_writer(
            Arc::clone(&dir) as Arc<dyn ephemera_actors::store::Fanout>,
            bus.as_ref().map(|b| b.forwarder()),
            metrics,
        )
        .context("starting the writer")?;
    if let Some(b) = &bus {
        b.serve(Arc::clone(&dir));
    }
    actix_web::rt::spawn(supervise_sweeper(Arc::clone(&dir)));
    if let Some(c) = &cluster {
        // A logout on any node closes this node's sockets of the device.
        let dir = Arc::clone(&dir);
        c.start(move |user, device| {
            dir.tell_user(user, ephemera_actors::user::Revoke { device });
        });
    }
    let shutdown_dir = Arc::clone(&dir);
    actix_web::rt::spawn(return_freed_memory());

    let ready = Arc::new(AtomicBool::new(false));
    let app_state = Data::new(api::AppState {
        store: Arc::clone(&store),
        dir: Arc::clone(&dir),
        config: Arc::clone(&cfg),
        media,
        quarantine: quarantine.clone(),
        group_counts: Default::default(),
        logins,
        sockets: Default::default(),
        prekey_claims: api::keys::ClaimLimits::new(
            cfg.prekey_claim_rate_per_minute,
            cfg.prekey_claim_burst,
        ),
    });
    let public = HttpServer::new(move || {
        let app = App::new()
            .app_data(app_state.clone())
            .configure(api::configure)
            .configure(web::configure_client);
        match &blobs {
            Some(b) => app.service(media::blobstore::service(b.clone())),
            None => app,
        }
    })
    .workers(cfg.socket_threads)
    // Sockets may not take the descriptors storage needs (see `fds`);
    // actix counts this per socket thread.
    .max_connections(fd_budget.connections.div_ceil(cfg.socket_threads.max(1)))
    // Each connection's socket is noted, so one that stops reading can be
    // cut (see `api::ws`).
    .on_connect(api::ws::note_socket)
    // Frames are small and latency matters: no Nagle delay on the sockets.
    .tcp_nodelay(true)
    .listen(listener)
    .with_context(|| format!("serving {http_addr}"))?;
    let admin_state = Data::new(admin::AdminState {
        store: Arc::clone(&store),
        sweep,
        dir,
        quarantine,
        token_digest: digest::digest(&digest::SHA256, token.as_bytes())
            .as_ref()
            .to_vec(),
        ready: Arc::clone(&ready),
        cluster: cluster.clone(),
    });
    let admin = HttpServer::new(move || {
        App::new()
            .app_data(admin_state.clone())
            .configure(admin::configure)
            .configure(web::configure_console)
    })
    .workers(1)
    .bind(cfg.admin_listen)
    .with_context(|| format!("binding {}", cfg.admin_listen))?;
    let admin_addr = admin.addrs()[0];
    let public = public.disable_signals().shutdown_timeout(10).run();
    let admin = admin.disable_signals().run();
    let (public_handle, admin_handle) = (public.handle(), admin.handle());
    {
        // SIGTERM or SIGINT: not ready first, then no new connections,
        // sockets closed with 1001 (going away), every queued write made
        // durable, and the database flushed.
        let ready = Arc::clone(&ready);
        let dir = Arc::clone(&shutdown_dir);
        let store = Arc::clone(&store);
        let cluster = cluster.clone();
        actix_web::rt::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing the SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("shutting down");
            ready.store(false, Ordering::Release);
            dir.close_all_sessions(1001, "server shutting down");
            public_handle.stop(true).await;
            if let Err(e) = store.shutdown().await {
                tracing::error!(error = %e, "final flush failed");
            }
            if let Some(c) = &cluster {
                c.leave().await;
            }
            admin_handle.stop(true).await;
            tracing::info!("stopped");
        });
    }
    ready.store(true, Ordering::Release);
    tracing::info!(%http_addr, %admin_addr, durability = ?cfg.durability, "serving");
    println!("EPHEMERA_READY http={http_addr} admin={admin_addr}");
    std::io::stdout().flush().ok();
    let (a, b) = futures_join(public, admin).await;
    a?;
    b?;
    Ok(())
}

/// Where media lives: the external S3 of the configuration, or the
/// embedded blob store under DATA_DIR/blobs, served on the public listener
/// at `/blobs` with credentials of its own (kept in DATA_DIR/blobs.secret so
/// presigned URLs survive a restart), accepting only uploads that `store`
/// holds open (see [`media::service::upload_gate`]) and the blob copies of
/// reports being made in `quarantined` (see [`quarantine::upload_gate`]).
#[allow(clippy::type_complexity)]
fn media_backend(
    cfg: &Config,
    public_url: &str,
    store: &Arc<RocksStore>,
    quarantined: &Arc<quarantine::QuarantineStore>,
) -> anyhow::Result<(
    sigv4::Endpoint,
    sigv4::Credentials,
    Option<Data<media::blobstore::BlobStore>>,
)> {
    use media::sigv4::{Addressing, Credentials, Endpoint, Region};
    if let Some(s3) = &cfg.s3 {
        let addressing = match s3.addressing {
            config::S3Addressing::Path => Addressing::Path,
            config::S3Addressing::VirtualHost => Addressing::VirtualHost,
        };
        let endpoint = Endpoint::new(
            &s3.endpoint,
            &cfg.s3_bucket,
            Region::new(s3.region.clone()),
            addressing,
        )
        .map_err(|e| anyhow::anyhow!("invalid S3 settings: {e}"))?;
        let creds = Credentials::new(s3.access_key_id.clone(), s3.secret_access_key.clone());
        return Ok((endpoint, creds, None));
    }
    const ACCESS_KEY: &str = "ephemera-embedded";
    let secret_path = cfg.data_dir.join("blobs.secret");
    let secret = match std::fs::read_to_string(&secret_path) {
        Ok(s) if !s.trim().is_empty() => s.trim().to_owned(),
        _ => {
            let s = auth::new_token();
            write_private(&secret_path, &s).context("writing the blob store secret")?;
            s
        }
    };
    let region = Region::new("us-east-1");
    let lookup_secret = secret.clone();
    let lookup: media::blobstore::KeyLookup =
        Arc::new(move |ak: &str| (ak == ACCESS_KEY).then(|| lookup_secret.clone()));
    let blobs = media::blobstore::BlobStore::open(
        cfg.data_dir.join("blobs"),
        &cfg.s3_bucket,
        region.clone(),
        lookup,
        media::service::MAX_MEDIA_BYTES,
    )
    .context("opening the embedded blob store")?
    .with_upload_gate(quarantine::upload_gate(
        Arc::clone(quarantined),
        media::service::upload_gate(Arc::clone(store)),
    ));
    let endpoint = Endpoint::new(
        &format!("{public_url}/blobs"),
        &cfg.s3_bucket,
        region,
        Addressing::Path,
    )
    .map_err(|e| anyhow::anyhow!("invalid public_url for the embedded blob store: {e}"))?;
    Ok((
        endpoint,
        Credentials::new(ACCESS_KEY, secret),
        Some(Data::new(blobs)),
    ))
}

/// Runs the sweeper and restarts it if it ever dies (a panic): a new one
/// rescans the whole deadline index, so no deadline is lost.
async fn supervise_sweeper(dir: Arc<Directory>) {
    let mut sweeper = Sweeper::new(Arc::clone(&dir)).start();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        if !sweeper.connected() {
            tracing::error!("the sweeper died; restarting it");
            dir.deps()
                .metrics
                .restarts
                .get_or_create(&ephemera_actors::metrics::Kind { kind: "sweeper" })
                .inc();
            sweeper = Sweeper::new(Arc::clone(&dir)).start();
        }
    }
}

/// glibc keeps freed heap in its arenas; after a wave of passivated
/// actors that can be hundreds of MiB the process no longer uses. Handing
/// it back every few seconds keeps RSS close to what is live. (A no-op
/// cost when there is nothing to return.)
async fn return_freed_memory() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tick.tick().await;
        let _ = tokio::task::spawn_blocking(|| {
            // SAFETY: malloc_trim only releases free memory at the top of
            // the heaps and in free pages; it touches no live allocation.
            unsafe { libc::malloc_trim(0) }
        })
        .await;
    }
}

async fn futures_join<A: std::future::Future, B: std::future::Future>(
    a: A,
    b: B,
) -> (A::Output, B::Output) {
    tokio::join!(a, b)
}
