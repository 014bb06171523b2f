//! The admin listener (PROTOCOL 8), on its own address and bearer token,
//! off the public port: health, readiness and storage operations.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use ring::digest;

use crate::api::bearer;
use crate::api::error::ApiError;
use crate::quarantine::Quarantine;
use crate::store::RocksStore;
use crate::sweep::Sweep;
use ephemera_actors::directory::Directory;

/// What the admin handlers use.
pub struct AdminState {
    /// Storage.
    pub store: Arc<RocksStore>,
    /// The physical-deletion sweep, which makes the deletion report.
    pub sweep: Sweep,
    /// Live actors.
    pub dir: Arc<Directory>,
    /// Reported content, cases, moderators and the access log.
    pub quarantine: Quarantine,
    /// The admin token's SHA-256 (compared digest to digest, so timing does
    /// not tell how much of a guess was right).
    pub token_digest: Vec<u8>,
    /// False until the server serves, and again once shutdown begins.
    pub ready: Arc<AtomicBool>,
    /// The cluster this node is in, if any.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl AdminState {
    fn check(&self, req: &HttpRequest) -> Result<(), ApiError> {
        let given = bearer(req).ok_or(ApiError::Unauthorized("admin token required"))?;
        let d = digest::digest(&digest::SHA256, given.as_bytes());
        if d.as_ref() == self.token_digest.as_slice() {
            Ok(())
        } else {
            Err(ApiError::Unauthorized("admin token required"))
        }
    }
}

/// Mounts the admin routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::QueryConfig::default().error_handler(crate::api::error::query_error))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/admin/actors", web::get().to(actors))
        .route("/admin/actors/{kind}/{id}/restart", web::post().to(restart))
        .route("/admin/deletion", web::get().to(deletion))
        .route("/admin/cluster", web::get().to(cluster))
        .route(
            "/admin/cluster/members/{node_id}",
            web::delete().to(forget_member),
        )
        .route("/admin/storage/compact", web::post().to(compact))
        .route(
            "/admin/moderators/{user_id}",
            web::put().to(grant_moderator),
        )
        .route(
            "/admin/moderators/{user_id}",
            web::delete().to(revoke_moderator),
        )
        .route("/admin/moderation/access-log", web::get().to(access_log));
    #[cfg(feature = "faults")]
    cfg.route(
        "/admin/faults/{kind}/{id}/panic",
        web::post().to(inject_panic),
    )
    .route("/admin/faults/writer", web::post().to(inject_writer_fault))
    .route("/admin/faults/sweep", web::post().to(hold_sweep));
}

/// `GET /admin/cluster`: the mode, this node, its lease, and every
/// registered node with its last heartbeat (as of this node's last one).
async fn cluster(state: web::Data<AdminState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    state.check(&req)?;
    let (users, conversations, stories) = state.dir.live_counts();
    let live_actors = serde_json::json!({
        "user": users,
        "conversation": conversations,
        "story": stories,
    });
    Ok(HttpResponse::Ok().json(match &state.cluster {
        None => serde_json::json!({
            "mode": "single",
            "live_actors": live_actors,
        }),
        Some(c) => serde_json::json!({
            "mode": "cluster",
            "node_id": c.node_id(),
            "epoch": c.epoch(),
            "lease_held": c.may_write(),
            "live_actors": live_actors,
            "members": c.members(),
        }),
    }))
}

/// `DELETE /admin/cluster/members/{node_id}`: forgets a lost node (see
/// `Cluster::forget`): `200 {"node_id","placements_released"}`, `409`
/// while it is live, `404` on a single node.
async fn forget_member(
    state: web::Data<AdminState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.check(&req)?;
    let c = state
        .cluster
        .as_ref()
        .ok_or(ApiError::NotFound("not in cluster mode"))?;
    let node = path.into_inner();
    if !crate::config::valid_node_id(&node) {
        return Err(ApiError::NotFound("no such node"));
    }
    match c.forget(&node).await {
        Ok(released) => Ok(HttpResponse::Ok().json(serde_json::json!({
            "node_id": node,
            "placements_released": released,
        }))),
        Err(crate::cluster::ForgetError::Live) => {
            Err(ApiError::Conflict("the node is live; stop it first"))
        }
        Err(crate::cluster::ForgetError::Redis(_)) => Err(ApiError::Unavailable),
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "alive" }))
}

async fn readyz(state: web::Data<AdminState>) -> HttpResponse {
    if state.ready.load(Ordering::Acquire) {
        HttpResponse::Ok().json(serde_json::json!({ "status": "ready" }))
    } else {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({ "status": "not_ready" }))
    }
}

/// Flushes every column family and compacts every file through the expiry
/// filter now, instead of waiting for the periodic compaction.
async fn compact(state: web::Data<AdminState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    state.check(&req)?;
    let store = Arc::clone(&state.store);
    web::block(move || store.flush_and_compact()).await??;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "flushed": true, "compacted": true })))
}

/// Grants (`true`) or revokes the moderator role of an existing user.
async fn set_moderator(
    state: &AdminState,
    req: &HttpRequest,
    user: &str,
    moderator: bool,
) -> Result<HttpResponse, ApiError> {
    state.check(req)?;
    const NO_USER: ApiError = ApiError::NotFound("no such user");
    let user = ephemera_actors::ids::Id::parse(user).ok_or(NO_USER)?;
    let store = Arc::clone(&state.store);
    if !web::block(move || ephemera_actors::store::Store::user_exists(&*store, user)).await?? {
        return Err(NO_USER);
    }
    // Cluster mode: the role is the cluster's (in Redis), so every node's
    // moderation calls see it.
    match state.store.cluster().cloned() {
        Some(c) => web::block(move || c.set_moderator(user, moderator))
            .await?
            .map_err(|_| ApiError::Unavailable)?,
        None => {
            let q = Arc::clone(state.quarantine.store());
            web::block(move || q.set_moderator(user, moderator)).await??
        }
    }
    tracing::info!(%user, moderator, "operator changed the moderator role");
    Ok(HttpResponse::NoContent().finish())
}

async fn grant_moderator(
    state: web::Data<AdminState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_moderator(&state, &req, &path, true).await
}

async fn revoke_moderator(
    state: web::Data<AdminState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_moderator(&state, &req, &path, false).await
}

#[derive(serde::Deserialize)]
struct AfterQuery {
    #[serde(default)]
    after: u64,
}

/// The moderators' access log after `after`, in order, a page at a time
/// ([`crate::quarantine::LOG_PAGE`] entries).
async fn access_log(
    state: web::Data<AdminState>,
    req: HttpRequest,
    q: web::Query<AfterQuery>,
) -> Result<HttpResponse, ApiError> {
    state.check(&req)?;
    let store = Arc::clone(state.quarantine.store());
    let after = q.after;
    let entries = web::block(move || store.log_after(after, crate::quarantine::LOG_PAGE)).await??;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "entries": entries })))
}

/// Prometheus text: every metric, with the deletion gauges refreshed.
async fn metrics(state: web::Data<AdminState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    state.check(&req)?;
    state.sweep.refresh_metrics().await?;
    Ok(HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.dir.deps().metrics.render()))
}

/// The deletion report (see [`crate::sweep::Report`]).
async fn deletion(
    state: web::Data<AdminState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    state.check(&req)?;
    Ok(HttpResponse::Ok().json(state.sweep.report().await?))
}

#[derive(serde::Deserialize)]
struct KindQuery {
    kind: Option<String>,
}

const KINDS: [&str; 3] = ["user", "conversation", "story"];

/// Live actors with their summaries (never content).
async fn actors(
    state: web::Data<AdminState>,
    req: HttpRequest,
    q: web::Query<KindQuery>,
) -> Result<HttpResponse, ApiError> {
    state.check(&req)?;
    let kinds: Vec<&str> = match q.kind.as_deref() {
        None => KINDS.to_vec(),
        Some(k) if KINDS.contains(&k) => vec![k],
        Some(_) => {
            return Err(ApiError::Invalid(
                "kind must be user, conversation or story",
            ))
        }
    };
    let mut actors = Vec::new();
    for k in kinds {
        actors.extend(state.dir.summaries(k, 1_000).await);
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "actors": actors })))
}

/// Restarts a live actor through its supervisor.
async fn restart(
    state: web::Data<AdminState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    state.check(&req)?;
    let (kind, id) = path.into_inner();
    if !KINDS.contains(&kind.as_str()) {
        return Err(ApiError::Invalid(
            "kind must be user, conversation or story",
        ));
    }
    let id = ephemera_actors::ids::Id::parse(&id).ok_or(ApiError::NotFound("no such actor"))?;
    if state.dir.restart(&kind, id) {
        tracing::info!(%kind, "operator restarted an actor");
        Ok(HttpResponse::Accepted().json(serde_json::json!({ "restarting": true })))
    } else {
        Err(ApiError::NotFound("no such live actor"))
    }
}

/// Test-only (feature `faults`): makes a live actor panic.
#[cfg(feature = "faults")]
async fn inject_panic(
    state: web::Data<AdminState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    state.check(&req)?;
    let (kind, id) = path.into_inner();
    let id = ephemera_actors::ids::Id::parse(&id).ok_or(ApiError::NotFound("no such actor"))?;
    if state.dir.inject_panic(&kind, id) {
        Ok(HttpResponse::Accepted().finish())
    } else {
        Err(ApiError::NotFound("no such live actor"))
    }
}

/// Test-only (feature `faults`): what `POST /admin/faults/writer` arms.
#[cfg(feature = "faults")]
#[derive(serde::Deserialize)]
struct WriterFault {
    /// The writer waits this long before collecting its next batch.
    #[serde(default)]
    stall_ms: u64,
    /// How many of the next batches fail.
    #[serde(default)]
    fail_batches: usize,
}

/// Test-only (feature `faults`): makes the storage writer stall and fail
/// write batches.
#[cfg(feature = "faults")]
async fn inject_writer_fault(
    state: web::Data<AdminState>,
    req: HttpRequest,
    fault: web::Query<WriterFault>,
) -> Result<HttpResponse, ApiError> {
    state.check(&req)?;
    state
        .store
        .writer_faults
        .arm(fault.stall_ms, fault.fail_batches);
    Ok(HttpResponse::Accepted().finish())
}

/// Test-only (feature `faults`): what `POST /admin/faults/sweep` sets.
#[cfg(feature = "faults")]
#[derive(serde::Deserialize)]
struct SweepFault {
    /// Whether the sweep deletes nothing (it still measures).
    hold: bool,
}

/// Test-only (feature `faults`): holds the physical-deletion sweep back,
/// or lets it go on.
#[cfg(feature = "faults")]
async fn hold_sweep(
    state: web::Data<AdminState>,
    req: HttpRequest,
    fault: web::Query<SweepFault>,
) -> Result<HttpResponse, ApiError> {
    state.check(&req)?;
    state.sweep.hold(fault.hold);
    Ok(HttpResponse::Accepted().finish())
}
