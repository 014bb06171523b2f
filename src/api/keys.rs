//! The end-to-end key directory (PROTOCOL 12): devices publish public keys,
//! other users claim them to start an encrypted session. The server checks
//! what it can (sizes, and the signed prekey's Ed25519 signature by the
//! identity key, with `ring`) and hands each one-time prekey out once.
//!
//! | call | refusal | status |
//! |---|---|---|
//! | `PUT /keys` | a key not base64 of 32 bytes, a signature not base64 of 64 bytes, more than 100 one-time prekeys, or a pool past 1000 | `422 invalid` |
//! | `PUT /keys` | the signature does not verify | `422 invalid` |
//! | `GET /users/{id}/keys` | unknown user | `404` |
//! | `GET /users/{id}/keys` | over the caller's rate of claims of that user's keys | `429 rate_limited`, `Retry-After` |

use std::sync::Arc;
use std::time::Instant;

use actix_web::{web, HttpResponse};
use base64::Engine;
use ephemera_actors::ids::{Id, UserId};
use ephemera_actors::store::Store as _;
use ring::signature::{UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::login_limits::KeyedBuckets;
use super::{AppState, Authed};
use crate::store::prekeys::{DeviceKeys, OneTimePrekey, PutKeysError, SignedPrekey};

/// One-time prekeys in one upload at most (PROTOCOL 12).
pub const MAX_PREKEYS_PER_UPLOAD: usize = 100;

/// One-time prekeys a device may hold at most: ten full uploads.
pub const MAX_PREKEYS_HELD: usize = 1000;

/// (caller, target) pairs whose claim budgets are tracked at most.
const CLAIM_LIMIT_ENTRIES: usize = 100_000;

/// Mounts the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/keys", web::put().to(put_keys))
        .route("/keys/count", web::get().to(count))
        .route("/users/{user_id}/keys", web::get().to(claim));
}

/// The budget of claims per (caller, target user): nobody drains a user's
/// one-time prekeys.
pub struct ClaimLimits(KeyedBuckets<(UserId, UserId)>);

impl ClaimLimits {
    /// `per_minute` claims a minute per pair, `burst` saved up.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        ClaimLimits(KeyedBuckets::new(
            f64::from(per_minute.max(1)) / 60.0,
            burst.max(1),
            CLAIM_LIMIT_ENTRIES,
        ))
    }
}

#[derive(Deserialize)]
struct Upload {
    identity_key: String,
    signed_prekey: SignedPrekey,
    #[serde(default)]
    one_time_prekeys: Vec<OneTimePrekey>,
}

#[derive(Serialize)]
struct Devices {
    devices: Vec<crate::store::prekeys::Claimed>,
}

#[derive(Serialize)]
struct Count {
    one_time_prekeys: usize,
}

/// Base64 (standard) of exactly `N` bytes.
fn exactly<const N: usize>(text: &str) -> Option<[u8; N]> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?
        .try_into()
        .ok()
}

async fn put_keys(
    state: web::Data<AppState>,
    who: Authed,
    body: web::Json<Upload>,
) -> Result<HttpResponse, ApiError> {
    let Upload {
        identity_key,
        signed_prekey,
        one_time_prekeys,
    } = body.into_inner();
    let identity = exactly::<32>(&identity_key)
        .ok_or(ApiError::Invalid("identity_key must be base64 of 32 bytes"))?;
    let spk = exactly::<32>(&signed_prekey.public_key).ok_or(ApiError::Invalid(
        "signed_prekey.public_key must be base64 of 32 bytes",
    ))?;
    let signature = exactly::<64>(&signed_prekey.signature).ok_or(ApiError::Invalid(
        "signed_prekey.signature must be base64 of 64 bytes",
    ))?;
    UnparsedPublicKey::new(&ED25519, identity)
        .verify(&spk, &signature)
        .map_err(|_| {
            ApiError::Invalid("signed_prekey.signature is not identity_key's signature of it")
        })?;
    if one_time_prekeys.len() > MAX_PREKEYS_PER_UPLOAD {
        return Err(ApiError::Invalid(
            "at most 100 one-time prekeys in one upload",
        ));
    }
    let prekeys = one_time_prekeys
        .iter()
        .map(|k| exactly::<32>(&k.public_key).map(|raw| (k.key_id, raw)))
        .collect::<Option<Vec<_>>>()
        .ok_or(ApiError::Invalid(
            "one_time_prekeys[].public_key must be base64 of 32 bytes",
        ))?;
    let bundle = DeviceKeys {
        identity_key,
        signed_prekey,
    };
    let store = Arc::clone(&state.store);
    web::block(move || {
        store.put_device_keys(who.user, who.device, &bundle, &prekeys, MAX_PREKEYS_HELD)
    })
    .await?
    .map_err(|e| match e {
        PutKeysError::TooMany => ApiError::Invalid("a device holds at most 1000 one-time prekeys"),
        PutKeysError::Store(e) => e.into(),
    })?;
    Ok(HttpResponse::NoContent().finish())
}

async fn claim(
    state: web::Data<AppState>,
    who: Authed,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let target = Id::parse(&path).ok_or(ApiError::NotFound("no such user"))?;
    if let Err(ms) = state
        .prekey_claims
        .0
        .take((who.user, target), Instant::now())
    {
        return Err(ApiError::RateLimited {
            message: "too many key fetches for this user; retry after the retry-after header",
            retry_after_secs: ms.div_ceil(1000),
        });
    }
    let store = Arc::clone(&state.store);
    let devices = web::block(move || {
        if !store.user_exists(target).map_err(|_| None)? {
            return Err(None);
        }
        store.claim_keys(target).map_err(Some)
    })
    .await?
    .map_err(|e| match e {
        None => ApiError::NotFound("no such user"),
        Some(e) => e.into(),
    })?;
    Ok(HttpResponse::Ok().json(Devices { devices }))
}

async fn count(state: web::Data<AppState>, who: Authed) -> Result<HttpResponse, ApiError> {
    let store = Arc::clone(&state.store);
    let n = web::block(move || store.prekey_count(who.user, who.device)).await??;
    Ok(HttpResponse::Ok().json(Count {
        one_time_prekeys: n,
    }))
}
