//! Accounts and sessions (PROTOCOL 1): register, log in (each login is a
//! new device), log out (the token dies at once and its sockets close).
//! Registering and logging in hash a password: both pass the rate limits
//! and the bounded hashing pool of [`super::login_limits`] first.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use ephemera_actors::ids::Id;
use ephemera_actors::store::now_ms;
use ephemera_actors::user::Revoke;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::{AppState, Authed};
use crate::auth;
use crate::store::{AccountRecord, TokenRecord};

/// Mounts the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/accounts", web::post().to(register))
        .route("/sessions", web::post().to(login))
        .route("/sessions/current", web::delete().to(logout));
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
    #[serde(default)]
    device_name: Option<String>,
}

#[derive(Serialize)]
struct Registered {
    user_id: Id,
    username: String,
}

#[derive(Serialize)]
struct LoggedIn {
    token: String,
    user_id: Id,
    device_id: Id,
    expires_at: u64,
}

fn valid_username(u: &str) -> bool {
    (3..=32).contains(&u.len())
        && u.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn valid_password(p: &str) -> bool {
    (8..=128).contains(&p.chars().count())
}

async fn register(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, ApiError> {
    let Credentials {
        username, password, ..
    } = body.into_inner();
    if !valid_username(&username) {
        return Err(ApiError::Invalid("username must match ^[a-z0-9_]{3,32}$"));
    }
    if !valid_password(&password) {
        return Err(ApiError::Invalid("password must be 8 to 128 characters"));
    }
    state
        .logins
        .admit(req.peer_addr().map(|a| a.ip()), &username)?;
    let store = Arc::clone(&state.store);
    let iterations = state.config.pbkdf2_iterations;
    let name = username.clone();
    let user_id = state
        .logins
        .hash(move || {
            let h = auth::hash_password(&password, iterations);
            let rec = AccountRecord {
                user_id: Id::random(),
                username: name,
                salt: h.salt,
                hash: h.hash,
                iterations: h.iterations,
                created_at: now_ms(),
            };
            store.create_account(&rec).map(|()| rec.user_id)
        })
        .await?
        .map_err(|e| match ApiError::from(e) {
            ApiError::Conflict(_) => ApiError::Conflict("username is taken"),
            other => other,
        })?;
    Ok(HttpResponse::Created().json(Registered { user_id, username }))
}

async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, ApiError> {
    let Credentials {
        username,
        password,
        device_name,
    } = body.into_inner();
    if device_name.as_ref().is_some_and(|d| d.chars().count() > 64) {
        return Err(ApiError::Invalid(
            "device_name must be at most 64 characters",
        ));
    }
    state
        .logins
        .admit(req.peer_addr().map(|a| a.ip()), &username)?;
    let store = Arc::clone(&state.store);
    let ttl = state.config.token_ttl;
    let iterations = state.config.pbkdf2_iterations;
    let out = state
        .logins
        .hash(
            move || -> Result<Option<LoggedIn>, crate::store::StoreError> {
                let Some(acc) = store.account_by_username(&username)? else {
                    // The same verification as for a wrong password, so timing
                    // does not tell which usernames exist.
                    auth::verify_unknown_user(&password, iterations);
                    return Ok(None);
                };
                if !auth::verify_password(&password, &acc.salt, &acc.hash, acc.iterations) {
                    return Ok(None);
                }
                let token = auth::new_token();
                let expires_at = now_ms() + ttl.as_millis() as u64;
                let rec = TokenRecord {
                    user_id: acc.user_id,
                    device_id: Id::random(),
                    expires_at,
                    device_name,
                };
                store.put_token(&token, &rec)?;
                Ok(Some(LoggedIn {
                    token,
                    user_id: rec.user_id,
                    device_id: rec.device_id,
                    expires_at,
                }))
            },
        )
        .await??;
    match out {
        Some(l) => Ok(HttpResponse::Created().json(l)),
        None => Err(ApiError::Unauthorized("bad username or password")),
    }
}

async fn logout(state: web::Data<AppState>, who: Authed) -> Result<HttpResponse, ApiError> {
    let store = Arc::clone(&state.store);
    let token = who.token;
    // The device's public keys go with it (PROTOCOL 12).
    web::block(move || {
        store.delete_token(&token)?;
        store.delete_device_keys(who.user, who.device)
    })
    .await??;
    // Sockets of this device close now, with 4401.
    state.dir.tell_user(who.user, Revoke { device: who.device });
    Ok(HttpResponse::NoContent().finish())
}
