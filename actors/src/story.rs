//! The `Story` actor: one per live story, the single writer of its state.
//! It writes the story once, fans tray references out to the author's
//! followers (in pages, resumable: the progress is stored; over the
//! fanout limit only to the followers online, whom `story_posted` must
//! reach), counts one
//! view per viewer however many devices race (the viewer set lives here
//! and is reloaded from storage after a restart), holds the timer of the
//! story's end, and ends it: every row and tray reference gone in one
//! transaction, `story_gone` to the followers who were told of it, the
//! media key's life ended with it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::directory::{Deps, Directory};
use crate::frames::{ErrorCode, FrameError};
use crate::ids::{Id, UserId};
use crate::metrics::StoryLabel;
use crate::store::{
    blocking, commit, now_ms, Audience, CommitError, Event, Guard, MediaRef, Millis, Op, StoryEnd,
    StoryId, StoryRecord, Txn, LOOKAHEAD_MS,
};

/// Followers per fanout transaction.
const FANOUT_PAGE: usize = 1_000;
/// Followers read per page when a story ends.
const END_PAGE: usize = 4_096;
/// How soon a failed end or fanout step is tried again.
const RETRY: Duration = Duration::from_millis(100);
/// How long a story that could not load waits before it tries again, at
/// first and at most.
const RELOAD_FIRST: Duration = Duration::from_millis(100);
const RELOAD_MAX: Duration = Duration::from_secs(10);

const NOT_FOUND: FrameError = FrameError::new(ErrorCode::NotFound, "no such story");
const NOT_AUDIENCE: FrameError =
    FrameError::new(ErrorCode::Forbidden, "this story is not shared with you");
const NOT_AUTHOR: FrameError = FrameError::new(ErrorCode::Forbidden, "only the author can do this");
const UNAVAILABLE: FrameError = FrameError::new(ErrorCode::Unavailable, "story unavailable, retry");
const STORAGE: FrameError = FrameError::new(ErrorCode::Internal, "storage failure");

fn label(a: Audience) -> StoryLabel {
    StoryLabel {
        story: match a {
            Audience::Everyone => "everyone",
            Audience::CloseFriends => "close_friends",
        },
    }
}

/// Writes a new story (sent to the fresh actor of a new id).
#[derive(Message)]
#[rtype(result = "Result<(), FrameError>")]
pub struct Publish {
    /// The story.
    pub story: Arc<StoryRecord>,
}

/// Someone opens the story: the audience is checked now, and with `count`
/// their first view is counted.
#[derive(Message)]
#[rtype(result = "Result<Arc<StoryRecord>, FrameError>")]
pub struct Open {
    /// Who.
    pub viewer: UserId,
    /// Count it as a view (a fetch), or only check (a reply, a reaction).
    pub count: bool,
}

/// The author asks who viewed the story.
#[derive(Message)]
#[rtype(result = "Result<Vec<(UserId, Millis)>, FrameError>")]
pub struct Viewers {
    /// Who asks.
    pub by: UserId,
}

/// The author deletes the story: answered once it is gone everywhere.
#[derive(Message)]
#[rtype(result = "Result<(), FrameError>")]
pub struct Delete {
    /// Who asks.
    pub by: UserId,
}

/// The author asks for the story's record (to keep a highlight of it).
#[derive(Message)]
#[rtype(result = "Result<Arc<StoryRecord>, FrameError>")]
pub struct OwnStory {
    /// Who asks.
    pub by: UserId,
}

/// The story's end is near (the sweeper read it, due at `.0`, in the
/// deadline index), or its fanout must resume (`None`): activation is all
/// this asks, but for an index entry whose story is no longer stored
/// (its row dropped by the expiry filter while the server was down), which
/// is removed, or it would be read again and again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wake(pub Option<Millis>);

/// One story's actor.
pub struct Story {
    dir: Arc<Directory>,
    deps: Arc<Deps>,
    id: StoryId,
    /// `None` until loaded, for an unknown story, and once it has ended.
    record: Option<Arc<StoryRecord>>,
    /// Loading failed: everything answers `unavailable` until it succeeds.
    broken: bool,
    /// Who viewed it and when: the count is this set's size.
    viewers: HashMap<UserId, Millis>,
    /// The timer of its end.
    timer: Option<SpawnHandle>,
    /// A fanout step is in flight.
    fanning_out: bool,
    /// Where the fanout resumes (`None`: it is complete or not needed).
    fanout_from: Option<UserId>,
    /// An end was asked for (it waits for the fanout step in flight).
    end_wanted: Option<StoryEnd>,
    /// The end is being committed.
    ending: bool,
    /// Deletions waiting for the end to be committed.
    end_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
    started_at: std::time::Instant,
    restarts: u64,
    last_active: std::time::Instant,
    pub(crate) depth: crate::Depth,
    _alive: crate::Alive,
    predecessor: Option<crate::AliveWatch>,
    pub(crate) draining: bool,
    span: tracing::Span,
}

impl crate::directory::Keyed for Story {
    const KIND: crate::metrics::Kind = crate::metrics::Kind { kind: "story" };

    fn create(
        dir: Arc<Directory>,
        id: Id,
        restarts: u64,
        depth: crate::Depth,
        alive: crate::Alive,
        predecessor: Option<crate::AliveWatch>,
    ) -> Self {
        Story {
            deps: Arc::clone(dir.deps()),
            dir,
            id,
            record: None,
            broken: false,
            viewers: HashMap::new(),
            timer: None,
            fanning_out: false,
            fanout_from: None,
            end_wanted: None,
            ending: false,
            end_waiters: Vec::new(),
            started_at: std::time::Instant::now(),
            restarts,
            last_active: std::time::Instant::now(),
            depth,
            _alive: alive,
            predecessor,
            draining: false,
            span: tracing::info_span!("story", story = %id),
        }
    }
}

impl Actor for Story {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.watch_idle(ctx);
        // A predecessor being replaced handles its mailbox first.
        if let Some(predecessor) = self.predecessor.take() {
            ctx.wait(fut::wrap_future(crate::gone(predecessor)));
        }
        self.load(ctx, Duration::ZERO);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.depth.drain();
    }
}

impl Story {
    /// Loads the story, its viewers and its fanout progress after every
    /// write queued before (a predecessor's included) is in; nothing is
    /// handled before. Then arms the timer and resumes the fanout.
    fn load(&mut self, ctx: &mut Context<Self>, waited: Duration) {
        let store = Arc::clone(&self.deps.store);
        let id = self.id;
        let load = async move {
            let _ = commit(&*store, Txn::default()).await;
            blocking(move || {
                Ok((
                    store.story(id)?,
                    store.story_views(id)?,
                    store.fanout_progress(id)?,
                ))
            })
            .await
        };
        ctx.wait(load.into_actor(self).map(move |res, act, ctx| match res {
            Ok((story, views, progress)) => {
                act.broken = false;
                act.viewers = views.into_iter().collect();
                act.record = story.map(Arc::new);
                act.fanout_from = progress.flatten();
                act.arm(ctx);
                act.fan_out(ctx);
            }
            Err(_) => {
                let wait = (waited * 2).clamp(RELOAD_FIRST, RELOAD_MAX);
                tracing::error!(story = %act.id, retry_in_ms = wait.as_millis() as u64, "could not load story");
                act.broken = true;
                ctx.run_later(wait, move |act, ctx| act.load(ctx, wait));
            }
        }));
    }

    /// The live record, or why there is none.
    fn live(&self) -> Result<&Arc<StoryRecord>, FrameError> {
        if self.broken {
            return Err(UNAVAILABLE);
        }
        match &self.record {
            Some(s) if s.live(now_ms()) && !self.ending && self.end_wanted.is_none() => Ok(s),
            _ => Err(NOT_FOUND),
        }
    }

    /// Keeps the timer of the story's end.
    fn arm(&mut self, ctx: &mut Context<Self>) {
        if let Some(h) = self.timer.take() {
            ctx.cancel_future(h);
        }
        let Some(s) = &self.record else {
            return;
        };
        let delay = Duration::from_millis(s.expires_at.saturating_sub(now_ms()));
        self.timer = Some(ctx.run_later(delay, |act, ctx| {
            act.timer = None;
            act.end(StoryEnd::Expired, ctx);
        }));
    }

    /// One page of the fanout: the next followers get a tray reference
    /// (and, those in the audience now, a `story_posted`), with the
    /// progress, in one transaction; then the next page.
    fn fan_out(&mut self, ctx: &mut Context<Self>) {
        if self.fanning_out || self.ending {
            return;
        }
        if let Some(reason) = self.end_wanted.take() {
            return self.end(reason, ctx);
        }
        let (Some(story), Some(from)) = (self.record.clone(), self.fanout_from) else {
            return;
        };
        if !story.live(now_ms()) {
            return;
        }
        self.fanning_out = true;
        let store = Arc::clone(&self.deps.store);
        let dir = Arc::clone(&self.dir);
        let read = blocking(move || {
            let after = (from != Id([0; 16])).then_some(from);
            let page = store.followers_after(story.author, after, FANOUT_PAGE)?;
            let full = page.len() == FANOUT_PAGE;
            let last = page.last().copied();
            let mut told = Vec::with_capacity(page.len());
            for f in page {
                // Over the fanout limit, only the followers online now are
                // told (their trays get a reference so its end reaches
                // them); the others' trays merge the story at read time.
                if !story.fanned_out && !dir.is_online(f) {
                    continue;
                }
                let tell = story.audience == Audience::Everyone
                    || store.is_close_friend(story.author, f)?;
                told.push((f, tell));
            }
            Ok((story, told, full, last))
        });
        let store = Arc::clone(&self.deps.store);
        let metrics = Arc::clone(&self.deps.metrics);
        ctx.spawn(
            async move {
                let (story, page, full, last) = read.await.map_err(|_| CommitError::Failed)?;
                let done = !full;
                let tray_ref = story.tray_ref();
                let mut ops = Vec::with_capacity(page.len() * 2 + 1);
                for (f, tell) in &page {
                    ops.push(Op::PutTrayRef {
                        viewer: *f,
                        story: tray_ref,
                        told: *tell,
                    });
                    if *tell {
                        ops.push(Op::Notify {
                            user: *f,
                            event: Event::StoryPosted {
                                story: story.id,
                                author: story.author,
                                expires_at: story.expires_at,
                            },
                            except_device: None,
                        });
                    }
                }
                ops.push(Op::PutFanoutProgress {
                    story: story.id,
                    last: if done { None } else { last },
                    until: story.expires_at,
                });
                let txn = Txn {
                    guards: vec![Guard::StoryPresent(story.id)],
                    ops,
                };
                commit(&*store, txn).await?;
                metrics
                    .story_fanout_refs
                    .get_or_create(&label(story.audience))
                    .inc_by(page.len() as u64);
                Ok(if done { None } else { last })
            }
            .into_actor(self)
            .map(|res: Result<Option<UserId>, CommitError>, act, ctx| {
                act.fanning_out = false;
                match res {
                    Ok(next) => act.fanout_from = next,
                    // Deleted meanwhile: nothing more to fan out.
                    Err(CommitError::Gone) => act.fanout_from = None,
                    Err(e) => {
                        tracing::warn!(error = %e, "story fanout step failed; retrying");
                        if act.end_wanted.is_none() {
                            ctx.run_later(RETRY, |act, ctx| act.fan_out(ctx));
                            return;
                        }
                    }
                }
                // The next page, or the end that waited for this one.
                act.fan_out(ctx);
            }),
        );
    }

    /// Ends the story: every row, view and tray reference of it goes in one
    /// transaction, with `story_gone` to the followers who were told of
    /// it; then its media key is destroyed (and the blob swept).
    fn end(&mut self, reason: StoryEnd, ctx: &mut Context<Self>) {
        if self.ending {
            return;
        }
        if self.fanning_out {
            // After the fanout step in flight, so no reference outlives it.
            self.end_wanted = Some(reason);
            return;
        }
        let Some(story) = self.record.clone() else {
            return;
        };
        self.ending = true;
        if let Some(h) = self.timer.take() {
            ctx.cancel_future(h);
        }
        let store = Arc::clone(&self.deps.store);
        let read_story = Arc::clone(&story);
        // Whose trays hold it, and who was told of it.
        let trays = blocking(move || {
            let story = read_story;
            let mut trays = Vec::new();
            let mut told = Vec::new();
            let mut after = None;
            loop {
                let page = store.followers_after(story.author, after, END_PAGE)?;
                for f in &page {
                    if let Some(t) = store.tray_ref_told(*f, story.author, story.id)? {
                        trays.push(*f);
                        if t {
                            told.push(*f);
                        }
                    }
                }
                if page.len() < END_PAGE {
                    break;
                }
                after = page.last().copied();
            }
            Ok((trays, told))
        });
        let store = Arc::clone(&self.deps.store);
        let metrics = Arc::clone(&self.deps.metrics);
        let ended = Arc::clone(&story);
        ctx.spawn(
            async move {
                let (trays, told) = trays.await.map_err(|_| CommitError::Failed)?;
                let mut ops = Vec::with_capacity(told.len() + 1);
                for f in told {
                    ops.push(Op::Notify {
                        user: f,
                        event: Event::StoryGone {
                            story: ended.id,
                            author: ended.author,
                            reason,
                        },
                        except_device: None,
                    });
                }
                ops.push(Op::DeleteStory {
                    story: Arc::clone(&ended),
                    trays,
                });
                let txn = Txn {
                    guards: vec![Guard::StoryPresent(ended.id)],
                    ops,
                };
                // The same transaction ends the media key's life.
                match commit(&*store, txn).await {
                    Ok(()) | Err(CommitError::Gone) => {}
                    Err(e) => return Err(e),
                }
                metrics
                    .stories_ended
                    .get_or_create(&StoryLabel {
                        story: match reason {
                            StoryEnd::Expired => "expired",
                            StoryEnd::Deleted => "deleted",
                        },
                    })
                    .inc();
                Ok(())
            }
            .into_actor(self)
            .map(move |res, act, ctx| {
                act.ending = false;
                match res {
                    Ok(()) => {
                        act.record = None;
                        act.viewers.clear();
                        act.fanout_from = None;
                        for w in act.end_waiters.drain(..) {
                            let _ = w.send(());
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "ending a story failed; retrying");
                        ctx.run_later(RETRY, move |act, ctx| act.end(reason, ctx));
                    }
                }
            }),
        );
    }

    /// Stops the actor once it has been idle for the configured time with
    /// no end due soon and nothing in flight; its end stays in the story
    /// deadline index, which wakes a new actor when due.
    fn watch_idle(&mut self, ctx: &mut Context<Self>) {
        let after = self.deps.limits.passivate_after;
        ctx.run_interval(
            (after / 2).max(Duration::from_millis(100)),
            move |act, ctx| {
                let soon = act
                    .record
                    .as_ref()
                    .is_some_and(|s| s.expires_at <= now_ms() + LOOKAHEAD_MS);
                let busy = act.fanning_out
                    || act.ending
                    || act.end_wanted.is_some()
                    || (act.fanout_from.is_some() && act.record.is_some());
                if act.last_active.elapsed() >= after
                    && !soon
                    && !busy
                    && act.dir.passivate_story(act.id, &ctx.address())
                {
                    tracing::debug!(story = %act.id, "passivated");
                    ctx.stop();
                }
            },
        );
    }
}

impl Handler<Publish> for Story {
    type Result = ResponseActFuture<Self, Result<(), FrameError>>;

    fn handle(&mut self, msg: Publish, _: &mut Self::Context) -> Self::Result {
        self.last_active = std::time::Instant::now();
        if self.broken {
            return Box::pin(fut::ready(Err(UNAVAILABLE)));
        }
        if self.record.is_some() {
            return Box::pin(fut::ready(Err(FrameError::new(
                ErrorCode::Invalid,
                "story exists",
            ))));
        }
        let story = msg.story;
        let txn = Txn {
            guards: vec![Guard::MediaUnbound(story.media.id)],
            ops: vec![
                Op::PutStory(Arc::clone(&story)),
                Op::BindStoryMedia {
                    media: story.media.id,
                    story: story.id,
                    until: story.expires_at,
                },
            ],
        };
        let store = Arc::clone(&self.deps.store);
        Box::pin(
            async move { commit(&*store, txn).await }
                .into_actor(self)
                .map(move |res, act, ctx| match res {
                    Ok(()) => {
                        act.deps
                            .metrics
                            .stories_posted
                            .get_or_create(&label(story.audience))
                            .inc();
                        act.fanout_from = Some(Id([0; 16]));
                        act.record = Some(story);
                        act.arm(ctx);
                        act.fan_out(ctx);
                        Ok(())
                    }
                    Err(CommitError::Gone) => Err(FrameError::new(
                        ErrorCode::Invalid,
                        "media_key is already used",
                    )),
                    Err(CommitError::Overloaded) => Err(FrameError::busy()),
                    Err(_) => Err(STORAGE),
                }),
        )
    }
}

impl Handler<Open> for Story {
    type Result = ResponseActFuture<Self, Result<Arc<StoryRecord>, FrameError>>;

    fn handle(&mut self, msg: Open, _: &mut Self::Context) -> Self::Result {
        self.last_active = std::time::Instant::now();
        let story = match self.live() {
            Ok(s) => Arc::clone(s),
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
        let own = msg.viewer == story.author;
        // The audience is checked now, not when the story was posted.
        let check: std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, FrameError>>>> =
            if own || story.audience == Audience::Everyone {
                Box::pin(std::future::ready(Ok(true)))
            } else {
                let store = Arc::clone(&self.deps.store);
                let (author, viewer) = (story.author, msg.viewer);
                Box::pin(async move {
                    blocking(move || store.is_close_friend(author, viewer))
                        .await
                        .map_err(|_| STORAGE)
                })
            };
        Box::pin(check.into_actor(self).then(move |allowed, act, _| {
            let refuse = |e| -> std::pin::Pin<Box<dyn ActorFuture<Self, Output = _>>> {
                Box::pin(fut::ready(Err(e)))
            };
            match allowed {
                Ok(true) => {}
                Ok(false) => return refuse(NOT_AUDIENCE),
                Err(e) => return refuse(e),
            }
            // Ended while the audience was read.
            let story = match act.live() {
                Ok(s) => Arc::clone(s),
                Err(e) => return refuse(e),
            };
            if !msg.count || own || act.viewers.contains_key(&msg.viewer) {
                return Box::pin(fut::ready(Ok(story)));
            }
            // One view per viewer: the set is this actor's, so however many
            // devices race, one insert wins, and only it writes.
            let at = now_ms();
            act.viewers.insert(msg.viewer, at);
            let txn = Txn {
                guards: vec![Guard::StoryPresent(story.id)],
                ops: vec![Op::PutStoryView {
                    story: story.id,
                    viewer: msg.viewer,
                    at,
                    until: story.expires_at,
                }],
            };
            let store = Arc::clone(&act.deps.store);
            Box::pin(
                async move { commit(&*store, txn).await }
                    .into_actor(act)
                    .map(move |res, act, _| match res {
                        Ok(()) => {
                            act.deps
                                .metrics
                                .story_views
                                .get_or_create(&label(story.audience))
                                .inc();
                            Ok(story)
                        }
                        Err(e) => {
                            act.viewers.remove(&msg.viewer);
                            Err(match e {
                                CommitError::Gone => NOT_FOUND,
                                CommitError::Overloaded => FrameError::busy(),
                                _ => STORAGE,
                            })
                        }
                    }),
            )
        }))
    }
}

impl Handler<Viewers> for Story {
    type Result = Result<Vec<(UserId, Millis)>, FrameError>;

    fn handle(&mut self, msg: Viewers, _: &mut Self::Context) -> Self::Result {
        self.last_active = std::time::Instant::now();
        let story = self.live()?;
        if story.author != msg.by {
            return Err(NOT_AUTHOR);
        }
        let mut list: Vec<(UserId, Millis)> =
            self.viewers.iter().map(|(u, at)| (*u, *at)).collect();
        list.sort_by_key(|(u, at)| (*at, *u));
        Ok(list)
    }
}

impl Handler<Delete> for Story {
    type Result = ResponseFuture<Result<(), FrameError>>;

    fn handle(&mut self, msg: Delete, ctx: &mut Self::Context) -> Self::Result {
        let span = self.span.clone();
        let _in = span.enter();
        self.last_active = std::time::Instant::now();
        let author = match self.live() {
            Ok(s) => s.author,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        if author != msg.by {
            return Box::pin(async { Err(NOT_AUTHOR) });
        }
        // From now on this actor answers `not_found`; the caller is
        // answered once the end is committed, when no read path finds it.
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.end_waiters.push(tx);
        self.end(StoryEnd::Deleted, ctx);
        Box::pin(async move { rx.await.map_err(|_| UNAVAILABLE) })
    }
}

impl Handler<OwnStory> for Story {
    type Result = Result<Arc<StoryRecord>, FrameError>;

    fn handle(&mut self, msg: OwnStory, _: &mut Self::Context) -> Self::Result {
        self.last_active = std::time::Instant::now();
        let story = Arc::clone(self.live()?);
        if story.author != msg.by {
            return Err(NOT_AUTHOR);
        }
        Ok(story)
    }
}

impl Handler<Wake> for Story {
    type Result = ();

    fn handle(&mut self, msg: Wake, ctx: &mut Self::Context) {
        let (Some(at), None, false) = (msg.0, &self.record, self.broken) else {
            return;
        };
        let txn = Txn {
            guards: vec![],
            ops: vec![Op::DeleteStoryDeadline(crate::store::StoryDeadline {
                at,
                story: self.id,
            })],
        };
        let store = Arc::clone(&self.deps.store);
        tracing::warn!(story = %self.id, "a story deadline outlived its story; removing it");
        ctx.spawn(
            async move {
                if let Err(e) = commit(&*store, txn).await {
                    tracing::warn!(error = %e, "removing a stale story deadline failed");
                }
            }
            .into_actor(self),
        );
    }
}

impl Handler<crate::Restart> for Story {
    type Result = ();

    fn handle(&mut self, _: crate::Restart, ctx: &mut Self::Context) {
        tracing::info!(story = %self.id, "story actor restarting");
        self.dir.replace_story(self.id, &ctx.address());
        self.draining = true;
        crate::stop_when_drained(ctx, |a: &Self| &a.depth);
    }
}

#[cfg(feature = "faults")]
impl Handler<crate::Panic> for Story {
    type Result = ();

    fn handle(&mut self, _: crate::Panic, _: &mut Self::Context) {
        panic!("injected fault in a story actor");
    }
}

crate::counted_draining!(Story; Publish, Open, Viewers, Delete, OwnStory, Wake);

impl Handler<crate::Summarize> for Story {
    type Result = actix::MessageResult<crate::Summarize>;

    fn handle(&mut self, _: crate::Summarize, _: &mut Self::Context) -> Self::Result {
        actix::MessageResult(crate::ActorSummary {
            kind: "story",
            id: self.id.to_string(),
            timers_armed: self.timer.is_some() as usize,
            mailbox_depth: self.depth.get(),
            attached: self.viewers.len(),
            uptime_seconds: self.started_at.elapsed().as_secs(),
            restarts: self.restarts,
        })
    }
}

/// A new story's record, as `POST /api/v1/stories` makes it: fanned out
/// unless the author has more followers than the limit.
pub fn new_story(
    author: UserId,
    media: MediaRef,
    ttl_seconds: u64,
    audience: Audience,
    caption: Option<String>,
    followers: u64,
    limits: &crate::directory::Limits,
) -> StoryRecord {
    let posted_at = now_ms();
    StoryRecord {
        id: Id::random(),
        author,
        posted_at,
        expires_at: posted_at + ttl_seconds * 1000,
        audience,
        caption,
        media,
        fanned_out: followers <= limits.story_fanout_max_followers,
    }
}
