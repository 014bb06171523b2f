//! Calls (PROTOCOL 10): the signaling itself is socket frames (the `Call`
//! actor); over HTTP a client gets short-lived TURN credentials in the
//! TURN REST scheme that coturn checks with `use-auth-secret`:
//! `username` = `expiry:user_id` (expiry in Unix seconds), `credential` =
//! base64 of HMAC-SHA1(`turn_secret`, `username`).
//!
//! | answer | when |
//! |---|---|
//! | `200 {"urls","username","credential","ttl_seconds"}` | `turn_secret` is set |
//! | `404 not_found` | no TURN server is configured (`turn_secret` unset) |

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use base64::Engine as _;
use ephemera_actors::ids::UserId;
use ring::hmac;
use serde::Serialize;

use super::error::ApiError;
use super::{AppState, Authed};

/// Mounts the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/calls/turn", web::get().to(turn));
}

/// The answer of `GET /calls/turn`.
#[derive(Serialize)]
struct TurnCredentials<'a> {
    urls: &'a [String],
    username: String,
    credential: String,
    ttl_seconds: u64,
}

/// TURN REST credentials for `user` that expire `ttl` seconds after `now`
/// (Unix seconds): `(username, credential)`. A pure function of its
/// inputs, so it is tested against a fixed vector.
pub fn mint(secret: &[u8], user: UserId, now: u64, ttl: u64) -> (String, String) {
    let username = format!("{}:{user}", now.saturating_add(ttl));
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    (username, credential)
}

async fn turn(state: web::Data<AppState>, who: Authed) -> Result<HttpResponse, ApiError> {
    let Some(turn) = &state.config.turn else {
        return Err(ApiError::NotFound("no TURN server is configured"));
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let ttl = turn.ttl.as_secs();
    let (username, credential) = mint(turn.secret.as_bytes(), who.user, now, ttl);
    Ok(HttpResponse::Ok()
        // Credentials: no cache keeps them.
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(TurnCredentials {
            urls: &turn.urls,
            username,
            credential,
            ttl_seconds: ttl,
        }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ephemera_actors::ids::Id;

    /// The vector computed independently (Python's hmac and base64):
    /// `base64(hmac.new(b"s3cret", b"1700003600:0101...01", sha1))`.
    #[test]
    fn mints_the_turn_rest_username_and_credential() {
        let (username, credential) = mint(b"s3cret", Id([1; 16]), 1_700_000_000, 3_600);
        assert_eq!(username, "1700003600:01010101010101010101010101010101");
        assert_eq!(credential, "YypCwLuF59iSqLsYGq604A2ah6g=");
    }
}
