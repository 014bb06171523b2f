//! The public HTTP API and the WebSocket route. Each module exposes
//! `configure`; [`configure`] nests them under `/api/v1`.

pub mod accounts;
pub mod calls;
pub mod conversations;
pub mod error;
pub mod highlights;
pub mod keys;
pub mod login_limits;
pub mod media;
pub mod moderation;
pub mod reports;
pub mod stories;
pub mod ws;

use std::future::{ready, Future};
use std::pin::Pin;
use std::sync::Arc;

use actix_web::{web, FromRequest, HttpMessage, HttpRequest, HttpResponse};
use ephemera_actors::directory::Directory;
use ephemera_actors::ids::{DeviceId, UserId};

use crate::config::Config;
use crate::store::RocksStore;
use error::ApiError;

/// What every handler may use.
pub struct AppState {
    /// Storage.
    pub store: Arc<RocksStore>,
    /// Live actors.
    pub dir: Arc<Directory>,
    /// Configuration.
    pub config: Arc<Config>,
    /// Media keys and object storage.
    pub media: crate::media::service::MediaService,
    /// Reported content, cases and moderators.
    pub quarantine: crate::quarantine::Quarantine,
    /// How many groups each user is in, for `max_groups_per_user`.
    pub group_counts: conversations::GroupCounts,
    /// Rate limits and the hashing pool of the password calls.
    pub logins: login_limits::LoginGuard,
    /// Open sockets per client address.
    pub sockets: ws::SocketsPerAddress,
    /// Claims of one-time prekeys per (caller, target user).
    pub prekey_claims: keys::ClaimLimits,
}

/// Mounts every route of the public listener.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(64 * 1024)
            .error_handler(error::json_error),
    )
    .app_data(web::QueryConfig::default().error_handler(error::query_error))
    .app_data(web::PathConfig::default().error_handler(error::path_error))
    .service(
        web::scope("/api/v1")
            // Cluster mode: calls about what another node owns go there.
            .wrap(actix_web::middleware::from_fn(
                crate::cluster::route::middleware,
            ))
            .configure(accounts::configure)
            .configure(calls::configure)
            .configure(conversations::configure)
            .configure(media::configure)
            .configure(stories::configure)
            .configure(highlights::configure)
            .configure(keys::configure)
            .configure(reports::configure)
            .configure(moderation::configure)
            .configure(ws::configure)
            // An unknown path gets the error envelope, like every answer.
            .default_service(web::to(|| async {
                Err::<HttpResponse, _>(error::ApiError::NotFound("no such resource"))
            })),
    );
}

/// The bearer token of a request, from `Authorization: Bearer`.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    let h = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let t = h
        .strip_prefix("Bearer ")
        .or_else(|| h.strip_prefix("bearer "))?
        .trim();
    (!t.is_empty()).then_some(t)
}

/// An authenticated caller: taking this as an argument is what makes a
/// handler require a valid token.
#[derive(Clone)]
pub struct Authed {
    /// The user.
    pub user: UserId,
    /// The device (login).
    pub device: DeviceId,
    /// The raw token, to revoke it on logout.
    pub token: String,
    /// When the token stops working (Unix ms): a socket it opened closes then.
    pub expires_at: u64,
}

/// Resolves a token to its live login.
pub async fn authenticate(state: &AppState, token: String) -> Result<Authed, ApiError> {
    let store = Arc::clone(&state.store);
    let t = token.clone();
    match web::block(move || store.token(&t)).await?? {
        Some(rec) => Ok(Authed {
            user: rec.user_id,
            device: rec.device_id,
            token,
            expires_at: rec.expires_at,
        }),
        None => Err(ApiError::Unauthorized(
            "missing, invalid, expired or revoked token",
        )),
    }
}

impl FromRequest for Authed {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
            return Box::pin(ready(Err(ApiError::Internal)));
        };
        // Already authenticated for this request (the cluster's routing
        // needed the caller first): not looked up twice.
        if let Some(a) = req.extensions().get::<Authed>() {
            return Box::pin(ready(Ok(a.clone())));
        }
        let Some(token) = bearer(req).map(str::to_owned) else {
            return Box::pin(ready(Err(ApiError::Unauthorized("missing bearer token"))));
        };
        Box::pin(async move { authenticate(&state, token).await })
    }
}
