//! The `Sweeper`: reads the persistent deadline index and hands each
//! deadline that is due soon to its conversation, which keeps a precise
//! timer for it. This is what re-arms every deadline after a restart (the
//! first scan starts from the beginning of the index) and what wakes
//! passivated conversations.
//!
//! A deadline leaves the index only in the transaction that burns its
//! message, so one still there well past its time was lost on the way (an
//! `Arm` dropped by an actor that crashed, a burn that failed and whose
//! actor died before retrying it): every scan hands those over again.
//! Burns are guarded on the message being present, so handing one over
//! twice never burns twice.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::conversation::Arm;
use crate::directory::Directory;
use crate::ids::ConvId;
use crate::store::{blocking, now_ms, Deadline, LOOKAHEAD_MS};

/// How often the index is scanned.
const SCAN_EVERY: Duration = Duration::from_millis(500);
/// Deadlines read per scan step.
const BATCH: usize = 10_000;
/// A deadline this far past its time and still in the index is handed
/// over again. Longer than a burn takes to commit (a few ms), so a burn in
/// flight is rarely handed over twice (which would be harmless anyway).
const OVERDUE_AFTER_MS: u64 = 1_000;

/// The deadline scanner.
pub struct Sweeper {
    dir: Arc<Directory>,
    deps: Arc<crate::directory::Deps>,
    /// The last deadline handed out; the next scan starts after it.
    watermark: Option<Deadline>,
    scanning: bool,
}

impl Sweeper {
    /// A sweeper that starts from the beginning of the index.
    pub fn new(dir: Arc<Directory>) -> Self {
        Sweeper {
            deps: Arc::clone(dir.deps()),
            dir,
            watermark: None,
            scanning: false,
        }
    }

    /// Wakes the actor of every story whose end is due soon (or overdue):
    /// it arms a precise timer. The index holds live stories only (an end
    /// removes its entry), so this reads few rows.
    fn wake_stories(&mut self, ctx: &mut Context<Self>) {
        let store = Arc::clone(&self.deps.store);
        let until = now_ms() + LOOKAHEAD_MS;
        ctx.spawn(
            blocking(move || store.story_deadlines(until, BATCH))
                .into_actor(self)
                .map(|res, act, _| match res {
                    Ok(due) => {
                        for d in due {
                            act.dir
                                .story(d.story)
                                .do_send(crate::story::Wake(Some(d.at)));
                        }
                    }
                    Err(_) => tracing::error!("story deadline scan failed; retrying"),
                }),
        );
    }

    fn scan(&mut self, ctx: &mut Context<Self>) {
        if self.scanning {
            return;
        }
        self.scanning = true;
        let store = Arc::clone(&self.deps.store);
        let after = self.watermark;
        let now = now_ms();
        let until = now + LOOKAHEAD_MS;
        let overdue_until = now.saturating_sub(OVERDUE_AFTER_MS);
        ctx.spawn(
            blocking(move || {
                let overdue = store.deadlines(None, overdue_until, BATCH)?;
                Ok((overdue, store.deadlines(after, until, BATCH)?))
            })
            .into_actor(self)
            .map(|res: Result<_, crate::store::ReadError>, act, ctx| {
                act.scanning = false;
                let Ok((overdue, found)) = res else {
                    tracing::error!("deadline scan failed; retrying");
                    return;
                };
                if !overdue.is_empty() {
                    tracing::warn!(
                        count = overdue.len(),
                        "handing over overdue deadlines again"
                    );
                }
                let full = found.len() == BATCH;
                if let Some(last) = found.last() {
                    act.watermark = Some(*last);
                }
                let mut by_conv: HashMap<ConvId, BTreeSet<Deadline>> = HashMap::new();
                for d in overdue.into_iter().chain(found) {
                    by_conv.entry(d.msg.conv).or_default().insert(d);
                }
                for (conv, list) in by_conv {
                    act.dir
                        .conversation(conv)
                        .do_send(Arm(list.into_iter().collect()));
                }
                if full {
                    act.scan(ctx);
                }
            }),
        );
    }
}

impl Actor for Sweeper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.scan(ctx);
        // Fanouts that a stop interrupted resume in their story's actor.
        let store = Arc::clone(&self.deps.store);
        ctx.spawn(
            blocking(move || store.pending_fanouts(BATCH))
                .into_actor(self)
                .map(|res, act, _| {
                    for story in res.unwrap_or_default() {
                        act.dir.story(story).do_send(crate::story::Wake(None));
                    }
                }),
        );
        ctx.run_interval(SCAN_EVERY, |act, ctx| {
            // Supervision of conversations: one that crashed is restarted
            // here, so its timers come back even if nobody writes to it.
            let revived = act.dir.revive_dead();
            if revived > 0 {
                tracing::warn!(revived, "restarted crashed conversation actors");
            }
            act.scan(ctx);
            act.wake_stories(ctx);
        });
    }
}
