//! Media (PROTOCOL 4): upload URLs and data keys. The client encrypts the
//! file with the data key and PUTs the ciphertext to the presigned URL;
//! object storage only ever holds ciphertext.

use actix_web::{web, HttpResponse};
use ephemera_actors::ids::Id;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::{AppState, Authed};
use crate::media::service::MAX_MEDIA_BYTES;

/// Mounts the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/media/upload-urls", web::post().to(upload_urls));
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

fn valid_content_type(t: &str) -> bool {
    let Some((kind, sub)) = t.split_once('/') else {
        return false;
    };
    matches!(kind, "image" | "video")
        && !sub.is_empty()
        && sub.len() <= 100
        && sub
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
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
    if !valid_content_type(&content_type) {
        return Err(ApiError::Invalid("content_type must be image/* or video/*"));
    }
    if bytes < 1 {
        return Err(ApiError::Invalid("bytes must be at least 1"));
    }
    if bytes as u64 > MAX_MEDIA_BYTES {
        return Err(ApiError::TooLarge("media is limited to 100 MiB"));
    }
    let media = state.media.clone();
    let grant =
        web::block(move || media.mint_upload(who.user, &content_type, bytes as u64)).await??;
    Ok(HttpResponse::Ok().json(Minted {
        media_key: grant.media_key,
        put_url: grant.put_url,
        expires_in: grant.expires_in,
        data_key: grant.data_key,
        cipher: "AES-256-GCM",
    }))
}
