//! The kinds of media a client may upload (PROTOCOL 4) and the size limit
//! of each: photos, videos, voice notes (`audio/*`) and documents
//! (`application/*`, PDF and others). Every kind has the same upload,
//! binding, shredding and grant rules; only the size limit differs.

use serde::Serialize;

use super::service::{MAX_MEDIA_BYTES, SEAL_OVERHEAD};

/// What a declared content type is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaKind {
    /// `image/*`.
    Image,
    /// `video/*`.
    Video,
    /// `audio/*`: voice notes.
    Audio,
    /// `application/*`: documents.
    Document,
}

impl MediaKind {
    /// The kind of `content_type` (`type/subtype`, the subtype of ASCII
    /// letters, digits and `+-.`, at most 100 bytes), or `None` for one
    /// that is malformed or of another top-level type (`text/plain`...).
    pub fn of(content_type: &str) -> Option<MediaKind> {
        let (kind, sub) = content_type.split_once('/')?;
        let valid_sub = !sub.is_empty()
            && sub.len() <= 100
            && sub
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
        if !valid_sub {
            return None;
        }
        match kind {
            "image" => Some(MediaKind::Image),
            "video" => Some(MediaKind::Video),
            "audio" => Some(MediaKind::Audio),
            "application" => Some(MediaKind::Document),
            _ => None,
        }
    }
}

/// The largest sealed object of each kind, each at most 100 MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SizeLimits {
    /// `image/*`.
    pub image: u64,
    /// `video/*`.
    pub video: u64,
    /// `audio/*`.
    pub audio: u64,
    /// `application/*`.
    pub document: u64,
}

impl SizeLimits {
    /// Photos and videos keep the protocol's 100 MiB; a voice note is
    /// short (an hour of Opus at 32 kbit/s is about 14 MiB), so 16 MiB;
    /// documents 100 MiB.
    pub const DEFAULT: SizeLimits = SizeLimits {
        image: MAX_MEDIA_BYTES,
        video: MAX_MEDIA_BYTES,
        audio: 16 << 20,
        document: MAX_MEDIA_BYTES,
    };

    /// The limit of `kind`.
    pub fn of(&self, kind: MediaKind) -> u64 {
        match kind {
            MediaKind::Image => self.image,
            MediaKind::Video => self.video,
            MediaKind::Audio => self.audio,
            MediaKind::Document => self.document,
        }
    }

    /// Whether every limit is within `28..=100 MiB` (a sealed file is at
    /// least 28 bytes; the protocol's cap is 100 MiB).
    pub fn valid(&self) -> bool {
        [self.image, self.video, self.audio, self.document]
            .iter()
            .all(|n| (SEAL_OVERHEAD..=MAX_MEDIA_BYTES).contains(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_of_content_types() {
        for (t, kind) in [
            ("image/jpeg", Some(MediaKind::Image)),
            ("video/mp4", Some(MediaKind::Video)),
            ("audio/ogg", Some(MediaKind::Audio)),
            ("audio/mp4", Some(MediaKind::Audio)),
            ("application/pdf", Some(MediaKind::Document)),
            (
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                Some(MediaKind::Document),
            ),
            ("text/plain", None),
            ("audio/", None),
            ("audio", None),
            ("application/pdf; charset=x", None),
            ("Audio/ogg", None),
            ("", None),
        ] {
            assert_eq!(MediaKind::of(t), kind, "{t}");
        }
        assert_eq!(
            MediaKind::of(&format!("application/{}", "a".repeat(101))),
            None
        );
    }

    #[test]
    fn limits_per_kind_within_100_mib() {
        let l = SizeLimits::DEFAULT;
        assert!(l.valid());
        assert_eq!(l.of(MediaKind::Audio), 16 << 20);
        assert_eq!(l.of(MediaKind::Image), 100 << 20);
        assert!(!SizeLimits {
            document: (100 << 20) + 1,
            ..l
        }
        .valid());
        assert!(!SizeLimits { audio: 27, ..l }.valid());
    }
}
