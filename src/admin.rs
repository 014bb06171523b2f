//! The admin listener (PROTOCOL 8), on its own address and bearer token,
//! off the public port: health, readiness and storage operations.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use ring::digest;

use crate::api::bearer;
use crate::api::error::ApiError;
use crate::store::RocksStore;

/// What the admin handlers use.
pub struct AdminState {
    /// Storage.
    pub store: Arc<RocksStore>,
    /// The admin token's SHA-256 (compared digest to digest, so timing does
    /// not tell how much of a guess was right).
    pub token_digest: Vec<u8>,
    /// False until the server serves, and again once shutdown begins.
    pub ready: Arc<AtomicBool>,
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
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/admin/storage/compact", web::post().to(compact));
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
