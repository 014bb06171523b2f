//! Store tests on a real RocksDB in a temporary directory.

use std::sync::{Arc, Mutex};

use ephemera_actors::ids::{Id, MsgId, UserId};
use ephemera_actors::store::{
    commit, now_ms, AckRecord, CommitError, Delivery, Event, Fanout, Guard, Op, Store,
    StoredMessage, Txn, ViewPolicy,
};

use super::RocksStore;
use crate::config::Durability;
use crate::keystore::KeyStore;

/// A deterministic stand-in for the fuzzer, for the stable suite: each
/// seed, then `count` mutations of them (1 to 3 bytes replaced, inserted or
/// deleted), drawn by xorshift from `state`.
pub(super) fn byte_mutations(
    seeds: &[Vec<u8>],
    count: usize,
    mut state: u64,
    check: impl Fn(&[u8]),
) {
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for seed in seeds {
        check(seed);
    }
    for _ in 0..count {
        let mut v = seeds[rand() as usize % seeds.len()].clone();
        for _ in 0..1 + rand() % 3 {
            let at = if v.is_empty() {
                0
            } else {
                rand() as usize % v.len()
            };
            match rand() % 3 {
                0 if !v.is_empty() => v[at] = rand() as u8,
                1 => v.insert(at, rand() as u8),
                _ if !v.is_empty() => {
                    v.remove(at);
                }
                _ => {}
            }
        }
        check(&v);
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(UserId, u64)>>);

impl Fanout for Recorder {
    fn deliver(&self, batch: Vec<(UserId, Vec<Delivery>)>) {
        let mut v = self.0.lock().unwrap();
        for (user, events) in batch {
            v.extend(events.into_iter().map(|d| (user, d.cursor)));
        }
    }
}

fn message(conv: Id, seq: u64, body: &str, ttl_ms: u64) -> Arc<StoredMessage> {
    let now = now_ms();
    Arc::new(StoredMessage {
        id: MsgId { conv, seq },
        from: Id([1; 16]),
        sent_at: now,
        expires_at: now + ttl_ms,
        view_policy: ViewPolicy::Timed,
        body: Some(body.into()),
        media: None,
        burn_after_view_seconds: None,
        story_id: None,
        reaction: false,
    })
}

#[tokio::test]
async fn group_commit_assigns_cursors_in_order_and_dedups() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(KeyStore::open(&dir.path().join("keys")).unwrap());
    let store = RocksStore::open(&dir.path().join("db"), keys, Durability::Wal, 3600).unwrap();
    let rec = Arc::new(Recorder::default());
    store
        .start_writer(
            rec.clone(),
            None,
            Arc::new(ephemera_actors::metrics::Metrics::new()),
        )
        .unwrap();
    let user = Id([9; 16]);
    let conv = Id([5; 16]);
    let mut pending = Vec::new();
    for seq in 1..=20u64 {
        let m = message(conv, seq, "hello", 60_000);
        let ack = AckRecord {
            client_msg_id: format!("c{seq}"),
            msg_id: m.id,
            sent_at: m.sent_at,
            expires_at: m.expires_at,
        };
        let txn = Txn {
            guards: vec![Guard::DedupAbsent {
                user,
                client_msg_id: ack.client_msg_id.clone(),
            }],
            ops: vec![
                Op::PutMessage(m.clone()),
                Op::PutDedup {
                    user,
                    ack,
                    until: u64::MAX,
                },
                Op::Notify {
                    user,
                    event: Event::Message(m),
                    except_device: None,
                },
            ],
        };
        pending.push(store.submit(txn));
    }
    for p in pending {
        assert!(p.await.unwrap().is_ok());
    }
    // The writer answers a batch before it hands the batch to the fanout:
    // the last deliveries may come a moment after the last answer.
    for _ in 0..200 {
        if rec.0.lock().unwrap().len() >= 20 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let cursors: Vec<u64> = rec.0.lock().unwrap().iter().map(|(_, c)| *c).collect();
    assert_eq!(cursors, (1..=20).collect::<Vec<_>>());
    assert_eq!(store.inbox_after(user, 15, 100).unwrap().len(), 5);

    // The same client_msg_id again: the first ack, nothing written.
    let m = message(conv, 21, "again", 60_000);
    let txn = Txn {
        guards: vec![Guard::DedupAbsent {
            user,
            client_msg_id: "c3".into(),
        }],
        ops: vec![Op::PutMessage(m.clone())],
    };
    match commit(&store, txn).await {
        Err(CommitError::Duplicate(first)) => assert_eq!(first.msg_id.seq, 3),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    assert!(store.message(m.id).unwrap().is_none());

    // A guard on a missing message refuses the whole transaction.
    let gone = MsgId { conv, seq: 99 };
    let txn = Txn {
        guards: vec![Guard::MessagePresent(gone)],
        ops: vec![Op::PutMessage(m.clone())],
    };
    assert!(matches!(commit(&store, txn).await, Err(CommitError::Gone)));
    assert!(store.message(m.id).unwrap().is_none());
}

/// A store in `dir` (database and key store) with its writer running.
fn started(dir: &std::path::Path) -> RocksStore {
    let keys = Arc::new(KeyStore::open(&dir.join("keys")).unwrap());
    let store = RocksStore::open(&dir.join("db"), keys, Durability::Wal, 3600).unwrap();
    store
        .start_writer(
            Arc::new(Recorder::default()),
            None,
            Arc::new(ephemera_actors::metrics::Metrics::new()),
        )
        .unwrap();
    store
}

#[tokio::test]
async fn compaction_drops_expired_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = started(dir.path());
    let conv = Id([6; 16]);
    let short = message(conv, 1, "short-lived", 1);
    let long = message(conv, 2, "long-lived", 600_000);
    let txn = Txn {
        guards: vec![],
        ops: vec![Op::PutMessage(short.clone()), Op::PutMessage(long.clone())],
    };
    commit(&store, txn).await.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    store.flush_and_compact().unwrap();
    assert!(
        store.message(short.id).unwrap().is_none(),
        "the expired row is gone after compaction"
    );
    assert!(
        store.message(long.id).unwrap().is_some(),
        "the live row stays"
    );
}

/// Opens a store on `dir` with its writer running, retrying while an
/// earlier store on the same directory is still closing (its writer thread
/// holds the database until it notices that its queue closed).
fn open_with_writer(dir: &std::path::Path, rec: Arc<Recorder>) -> RocksStore {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let opened = KeyStore::open(&dir.join("keys"))
            .map_err(|e| e.to_string())
            .and_then(|keys| {
                RocksStore::open(&dir.join("db"), Arc::new(keys), Durability::Wal, 3600)
                    .map_err(|e| e.to_string())
            });
        match opened {
            Ok(store) => {
                store
                    .start_writer(
                        rec,
                        None,
                        Arc::new(ephemera_actors::metrics::Metrics::new()),
                    )
                    .unwrap();
                return store;
            }
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("reopening the store: {e}"),
        }
    }
}

fn notify(user: UserId, m: Arc<StoredMessage>) -> Txn {
    Txn {
        guards: vec![],
        ops: vec![
            Op::PutMessage(m.clone()),
            Op::Notify {
                user,
                event: Event::Message(m),
                except_device: None,
            },
        ],
    }
}

/// Cursors never go backwards: after every inbox row of a user has
/// expired and been compacted away and the server restarted, the next
/// event still gets a cursor above every one handed out before (a device
/// syncing from its stored cursor would otherwise miss it).
#[tokio::test]
async fn cursors_stay_increasing_after_rows_expire_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let user = Id([7; 16]);
    let conv = Id([8; 16]);
    let rec = Arc::new(Recorder::default());
    let store = open_with_writer(dir.path(), rec.clone());
    for seq in 1..=3 {
        commit(&store, notify(user, message(conv, seq, "short", 1)))
            .await
            .unwrap();
    }
    // The fanout runs just after the answers: wait for it.
    let cursors = |rec: &Recorder, n: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let seen: Vec<u64> = rec.0.lock().unwrap().iter().map(|(_, c)| *c).collect();
            if seen.len() >= n || std::time::Instant::now() > deadline {
                return seen;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    assert_eq!(cursors(&rec, 3), vec![1, 2, 3]);
    std::thread::sleep(std::time::Duration::from_millis(5));
    store.flush_and_compact().unwrap();
    assert!(
        store.inbox_after(user, 0, 10).unwrap().is_empty(),
        "the expired inbox rows are gone"
    );
    drop(store);

    let rec = Arc::new(Recorder::default());
    let store = open_with_writer(dir.path(), rec.clone());
    commit(&store, notify(user, message(conv, 4, "long", 600_000)))
        .await
        .unwrap();
    assert_eq!(
        cursors(&rec, 1),
        vec![4],
        "the cursor after the restart follows 3"
    );
}

/// The per-conversation deadline index is kept with its twin: what a
/// (re)started conversation reads is what the sweeper reads.
#[tokio::test]
async fn deadline_indexes_change_together() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with_writer(dir.path(), Arc::new(Recorder::default()));
    let conv = Id([4; 16]);
    let d = ephemera_actors::store::Deadline {
        at: now_ms() + 5_000,
        msg: MsgId { conv, seq: 1 },
    };
    let other = ephemera_actors::store::Deadline {
        at: now_ms() + 1_000,
        msg: MsgId {
            conv: Id([3; 16]),
            seq: 1,
        },
    };
    commit(
        &store,
        Txn {
            guards: vec![],
            ops: vec![Op::PutDeadline(d), Op::PutDeadline(other)],
        },
    )
    .await
    .unwrap();
    assert_eq!(
        store.conversation_deadlines(conv, u64::MAX, 10).unwrap(),
        vec![d]
    );
    assert_eq!(store.deadlines(None, u64::MAX, 10).unwrap(), vec![other, d]);
    commit(
        &store,
        Txn {
            guards: vec![],
            ops: vec![Op::DeleteDeadline(d)],
        },
    )
    .await
    .unwrap();
    assert!(store
        .conversation_deadlines(conv, u64::MAX, 10)
        .unwrap()
        .is_empty());
    assert_eq!(store.deadlines(None, u64::MAX, 10).unwrap(), vec![other]);
}

/// A reaction is sealed at rest, readable while its message lives, and
/// deleted with its message, whether the deletion comes in a later batch
/// or in the same batch as the reaction.
#[tokio::test]
async fn reactions_are_sealed_and_burn_with_their_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = started(dir.path());
    let conv = Id([5; 16]);
    let (bob, carol) = (Id([2; 16]), Id([3; 16]));
    let put = |m: &StoredMessage, by: UserId, emoji: &str| Op::PutReaction {
        msg: m.id,
        by,
        emoji: emoji.into(),
        until: m.expires_at,
    };
    let txn = |ops| Txn {
        guards: vec![],
        ops,
    };
    let first = message(conv, 1, "one", 60_000);
    let second = message(conv, 2, "two", 60_000);
    commit(
        &store,
        txn(vec![
            Op::PutMessage(first.clone()),
            Op::PutMessage(second.clone()),
            put(&first, bob, "canary-emoji-1"),
            put(&first, carol, "canary-emoji-2"),
        ]),
    )
    .await
    .unwrap();
    assert_eq!(
        store.reaction(first.id, bob).unwrap().as_deref(),
        Some("canary-emoji-1")
    );
    commit(&store, txn(vec![put(&first, bob, "replaced")]))
        .await
        .unwrap();
    assert_eq!(
        store.reaction(first.id, bob).unwrap().as_deref(),
        Some("replaced")
    );
    commit(
        &store,
        txn(vec![Op::DeleteReaction {
            msg: first.id,
            by: bob,
        }]),
    )
    .await
    .unwrap();
    assert_eq!(store.reaction(first.id, bob).unwrap(), None);
    // Sealed: the emoji is in no file of the database.
    store.flush_all().unwrap();
    for entry in walkdir(&dir.path().join("db")) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(12).any(|w| w == b"canary-emoji"),
            "{} holds an emoji in clear",
            entry.display()
        );
    }
    // Burned in a later batch: carol's reaction goes with the message.
    commit(&store, txn(vec![Op::DeleteMessage(first.id)]))
        .await
        .unwrap();
    assert_eq!(store.reaction(first.id, carol).unwrap(), None);
    // Reacted and burned by two transactions queued together (one batch
    // as a rule, so the burn must see the reaction the batch is writing).
    let a = store.submit(txn(vec![put(&second, bob, "same-batch")]));
    let b = store.submit(txn(vec![Op::DeleteMessage(second.id)]));
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    assert_eq!(store.reaction(second.id, bob).unwrap(), None);
}

fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}
