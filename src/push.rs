//! Push without content (PROTOCOL 9): a message, story reply or call for a
//! user with no device online here (in cluster mode: on no node; the
//! owner's forwarder and the call's node decide) is `POST`ed to the webhook as
//! `{"user_id","kind","from","from_username","conversation_id","at"}`
//! (a call has no `conversation_id`),
//! signed with `X-Ephemera-Signature: sha256=<hex HMAC-SHA256 of the body>`.
//!
//! The fanout runs on the storage writer's thread, so [`Webhook::offline`]
//! only queues (`try_send` on a bounded channel; full: dropped and
//! counted). One task drains the queue; each push then runs on its own
//! task (at most [`IN_FLIGHT`] at once): the sender's username is read
//! with `spawn_blocking`, and the post is tried up to [`ATTEMPTS`] times
//! with doubling backoff. At least once: a webhook that answers 2xx late,
//! after a timeout, gets the push again. The queue is in memory: what
//! waits in it when the process stops is lost.
//!
//! Nothing here logs or returns the URL or the secret, and the body is
//! built from ids and a username alone: no content, keys, URLs or tokens.

use std::sync::Arc;
use std::time::Duration;

use ephemera_actors::ids::{to_hex, Id, UserId};
use ephemera_actors::metrics::{Metrics, PushLabel};
use ephemera_actors::store::{Millis, OfflinePush, StoredMessage};
use ring::hmac;
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};

use crate::config::PushConfig;
use crate::store::RocksStore;

/// Posts tried per push before it is dropped.
const ATTEMPTS: u32 = 5;
/// The wait before the first retry; each next one doubles (0.2 + 0.4 +
/// 0.8 + 1.6 s: a webhook down for about 3 s loses nothing).
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// One post's limit, connecting included.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Pushes being posted (or waiting to retry) at once, so one slow webhook
/// answer does not hold back the rest.
const IN_FLIGHT: usize = 32;

/// What a push is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A new message.
    Message,
    /// A reply or reaction to one of the user's stories.
    StoryReply,
    /// An incoming call (PROTOCOL 10).
    Call,
}

impl Kind {
    /// As a metrics label.
    fn label(self) -> &'static str {
        match self {
            Kind::Message => "message",
            Kind::StoryReply => "story_reply",
            Kind::Call => "call",
        }
    }
}

/// A queued push: references only, the username still to be read.
struct Job {
    user: UserId,
    kind: Kind,
    from: UserId,
    /// None for a call.
    conversation: Option<Id>,
    at: Millis,
}

/// The body posted: `schema/push.json`. (A call has no `conversation_id`.)
#[derive(Serialize)]
struct Body<'a> {
    user_id: UserId,
    kind: Kind,
    from: UserId,
    from_username: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    conversation_id: Option<Id>,
    at: Millis,
}

/// The queue's sending end, held by the fanout.
pub struct Webhook {
    queue: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
}

impl OfflinePush for Webhook {
    fn offline(&self, user: UserId, m: &StoredMessage) {
        let kind = match m.story_id {
            Some(_) => Kind::StoryReply,
            None => Kind::Message,
        };
        let job = Job {
            user,
            kind,
            from: m.from,
            conversation: Some(m.id.conv),
            at: m.sent_at,
        };
        self.queue(job);
    }

    fn call(&self, user: UserId, from: UserId, at: Millis) {
        self.queue(Job {
            user,
            kind: Kind::Call,
            from,
            conversation: None,
            at,
        });
    }
}

impl Webhook {
    /// Queues a push, or drops it (counted) when the queue is full.
    fn queue(&self, job: Job) {
        let kind = job.kind;
        if self.queue.try_send(job).is_err() {
            let dropped = label(kind, "queue_full");
            self.metrics.pushes_dropped.get_or_create(&dropped).inc();
        }
    }
}

/// The webhook's queue, and the task draining it (on the current runtime).
pub fn start(cfg: &PushConfig, store: Arc<RocksStore>, metrics: Arc<Metrics>) -> Arc<Webhook> {
    let (tx, mut rx) = mpsc::channel::<Job>(cfg.queue);
    let poster = Arc::new(Poster {
        http: reqwest::Client::builder()
            .timeout(TIMEOUT)
            // A redirect is a failure to retry, never a new destination.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client with the default roots always builds"),
        url: cfg.url.clone(),
        key: hmac::Key::new(hmac::HMAC_SHA256, cfg.secret.as_bytes()),
        store,
        metrics: Arc::clone(&metrics),
    });
    actix_web::rt::spawn(async move {
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        while let Some(job) = rx.recv().await {
            // The semaphore is never closed.
            let slot = Arc::clone(&slots).acquire_owned().await.expect("open");
            let poster = Arc::clone(&poster);
            actix_web::rt::spawn(async move {
                poster.push(job).await;
                drop(slot);
            });
        }
    });
    Arc::new(Webhook { queue: tx, metrics })
}

/// What posting needs.
struct Poster {
    http: reqwest::Client,
    url: reqwest::Url,
    key: hmac::Key,
    store: Arc<RocksStore>,
    metrics: Arc<Metrics>,
}

impl Poster {
    /// One push: the username read, the body signed and posted until the
    /// webhook takes it or the attempts run out.
    async fn push(&self, job: Job) {
        let store = Arc::clone(&self.store);
        let from = job.from;
        let name = actix_web::rt::task::spawn_blocking(move || store.username(from)).await;
        let Ok(Ok(Some(from_username))) = name else {
            let dropped = label(job.kind, "no_account");
            self.metrics.pushes_dropped.get_or_create(&dropped).inc();
            return;
        };
        let body = serde_json::to_vec(&Body {
            user_id: job.user,
            kind: job.kind,
            from: job.from,
            from_username: &from_username,
            conversation_id: job.conversation,
            at: job.at,
        })
        .expect("a push body always serializes");
        let signature = sign(&self.key, &body);
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            let sent = self
                .http
                .post(self.url.clone())
                .header("content-type", "application/json")
                .header("x-ephemera-signature", &signature)
                .body(body.clone())
                .send()
                .await;
            let failure = match sent {
                Ok(r) if r.status().is_success() => {
                    let sent = label(job.kind, "ok");
                    self.metrics.pushes_sent.get_or_create(&sent).inc();
                    return;
                }
                Ok(r) => {
                    tracing::warn!(status = r.status().as_u16(), attempt, "push refused");
                    "status"
                }
                Err(e) => {
                    tracing::warn!(error = %e.without_url(), attempt, "push failed");
                    "error"
                }
            };
            if attempt < ATTEMPTS {
                let retried = label(job.kind, failure);
                self.metrics.pushes_retried.get_or_create(&retried).inc();
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
        let dropped = label(job.kind, "exhausted");
        self.metrics.pushes_dropped.get_or_create(&dropped).inc();
    }
}

/// `X-Ephemera-Signature` of `body`: `sha256=` and the lower-case hex of
/// its HMAC-SHA256 under `key`.
fn sign(key: &hmac::Key, body: &[u8]) -> String {
    format!("sha256={}", to_hex(hmac::sign(key, body).as_ref()))
}

/// The metrics labels of a push of `kind` with `outcome`.
fn label(kind: Kind, outcome: &'static str) -> PushLabel {
    PushLabel {
        kind: kind.label(),
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231, test case 2.
    #[test]
    fn signs_as_the_published_hmac_sha256_vector() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        assert_eq!(
            sign(&key, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_body_has_the_documented_fields_in_order() {
        let body = serde_json::to_string(&Body {
            user_id: Id([1; 16]),
            kind: Kind::StoryReply,
            from: Id([2; 16]),
            from_username: "ann",
            conversation_id: Some(Id([3; 16])),
            at: 7,
        })
        .unwrap();
        let keys: Vec<String> = serde_json::from_str::<serde_json::Map<String, _>>(&body)
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert!(body.starts_with("{\"user_id\":"), "{body}");
        assert!(body.contains("\"kind\":\"story_reply\""), "{body}");
        assert_eq!(keys.len(), 6, "{body}");
    }
}
