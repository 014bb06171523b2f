//! Media (PROTOCOL 4): upload URLs and data keys. The client encrypts the
//! file with the data key and PUTs the ciphertext to the presigned URL;
//! object storage only ever holds ciphertext. `bytes` is the exact size of
//! that ciphertext (the sealed file, plaintext + 28), which the URL binds.
//!
//! | refusal | status |
//! |---|---|
//! | `bytes` below 28 (no sealed file is smaller) | `422 invalid` |
//! | `content_type` not `image/*`, `video/*`, `audio/*` (voice notes) or `application/*` (documents) | `422 invalid` |
//! | `bytes` over the limit of its kind (`max_image_bytes`, `max_video_bytes`, `max_audio_bytes`, `max_document_bytes`, each at most 100 MiB), or over the user's pending-bytes quota on its own | `413 too_large` |
//! | the user's pending uploads (count or bytes) are at their quota | `429 rate_limited`, `Retry-After`: when the oldest ends at the latest (sending one frees its place at once) |
//! | the user is over the rate of upload URLs | `429 rate_limited`, `Retry-After` |

use actix_web::{web, HttpResponse};
use ephemera_actors::ids::Id;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::{AppState, Authed};
use crate::media::kinds::MediaKind;
use crate::media::quota::Refusal;
use crate::media::service::{MintError, SEAL_OVERHEAD};

/// Mounts the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/media/upload-urls", web::post().to(upload_urls))
        // Between cluster nodes only (see `cluster::route`).
        .route(
            "/media/{media_key}/handover",
            web::post().to(crate::cluster::route::hand_over),
        );
}

#[derive(Deserialize)]
struct Upload {
    content_type: String,
    bytes: i64,
}

#[derive(Serialize)]
struct Minted {
    media_key: Id,
    put_url: String,
    expires_in: u64,
    data_key: String,
    cipher: &'static str,
}

async fn upload_urls(
    state: web::Data<AppState>,
    who: Authed,
    body: web::Json<Upload>,
) -> Result<HttpResponse, ApiError> {
    let Upload {
        content_type,
        bytes,
    } = body.into_inner();
    let Some(kind) = MediaKind::of(&content_type) else {
        return Err(ApiError::Invalid(
            "content_type must be image/*, video/*, audio/* or application/*",
        ));
    };
    if bytes < SEAL_OVERHEAD as i64 {
        return Err(ApiError::Invalid(
            "bytes is the size of the sealed file (plaintext + 28): at least 28",
        ));
    }
    if bytes as u64 > state.config.media_sizes.of(kind) {
        return Err(ApiError::TooLarge(
            "media is over the size limit of its type (the sealed file; at most 100 MiB)",
        ));
    }
    let media = state.media.clone();
    let grant = web::block(move || media.mint_upload(who.user, &content_type, bytes as u64))
        .await?
        .map_err(|e| match e {
            MintError::Store(e) => ApiError::from(e),
            MintError::Quota(Refusal::TooLarge) => {
                ApiError::TooLarge("media is larger than the quota of pending uploads")
            }
            MintError::Quota(Refusal::Pending(ms)) => ApiError::RateLimited {
                message: "too many uploads pending: send or let some end first",
                retry_after_secs: ms.div_ceil(1000),
            },
            MintError::Quota(Refusal::Rate(ms)) => ApiError::RateLimited {
                message: "too many upload URLs; retry after the retry-after header",
                retry_after_secs: ms.div_ceil(1000),
            },
        })?;
    Ok(HttpResponse::Ok().json(Minted {
        media_key: grant.media_key,
        put_url: grant.put_url,
        expires_in: grant.expires_in,
        data_key: grant.data_key,
        cipher: "AES-256-GCM",
    }))
}
