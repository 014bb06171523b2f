//! The bound on what waits to be written to one socket.
//!
//! Frames reach a `Session` through its mailbox, and a session runs only
//! while its socket takes bytes: a client that stops reading stalls it, and
//! its mailbox would grow for ever. Every frame bound for a socket is
//! therefore admitted here first, by whoever sends it (the user actor's
//! fanout, an answer to a request); the session releases it when it
//! handles it. A socket past its bound is closed with [`SLOW_CLOSE_CODE`]:
//! the close is queued behind what the socket already owes (a client that
//! reads again gets everything up to it, then the close), and if the
//! socket still has not taken it after [`ABORT_AFTER`], the connection is
//! cut under it, which frees the mailbox with the session. Either way the
//! device reconnects and resumes with `sync` from its last cursor.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The close code of a socket that fell too far behind.
pub const SLOW_CLOSE_CODE: u16 = 4408;

/// How long a socket that fell behind may take to read up to its close
/// before the connection is cut.
pub const ABORT_AFTER: Duration = Duration::from_secs(2);

/// Cuts one connection (the server shuts its TCP socket down).
pub type Abort = Box<dyn FnOnce() + Send>;

/// What waits to be written to one socket, against its bounds.
pub struct Outbox {
    bytes: AtomicUsize,
    frames: AtomicUsize,
    max_bytes: usize,
    max_frames: usize,
    /// Set once the bound is crossed: nothing more is admitted.
    overflowed: AtomicBool,
    /// Set when the session stops: there is nothing left to cut.
    finished: AtomicBool,
    abort: Mutex<Option<Abort>>,
}

impl Outbox {
    /// An empty outbox with these bounds; `abort` cuts the connection.
    pub fn new(max_bytes: usize, max_frames: usize, abort: Option<Abort>) -> Self {
        Outbox {
            bytes: AtomicUsize::new(0),
            frames: AtomicUsize::new(0),
            max_bytes,
            max_frames,
            overflowed: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            abort: Mutex::new(abort),
        }
    }

    /// Counts a frame of `len` bytes in. `Admit::Overflowed` the first time
    /// the bound is crossed (the caller queues the close), `Refused` after
    /// that (the frame is dropped: the socket is closing, and its device
    /// will resume by `sync`).
    pub fn admit(&self, len: usize) -> Admit {
        if self.overflowed.load(Ordering::Acquire) {
            return Admit::Refused;
        }
        let bytes = self.bytes.fetch_add(len, Ordering::AcqRel) + len;
        let frames = self.frames.fetch_add(1, Ordering::AcqRel) + 1;
        if bytes <= self.max_bytes && frames <= self.max_frames {
            return Admit::Queued;
        }
        self.release(len);
        if self.overflowed.swap(true, Ordering::AcqRel) {
            Admit::Refused
        } else {
            Admit::Overflowed
        }
    }

    /// A frame of `len` bytes admitted earlier was handled.
    pub fn release(&self, len: usize) {
        self.bytes.fetch_sub(len, Ordering::AcqRel);
        self.frames.fetch_sub(1, Ordering::AcqRel);
    }

    /// Bytes waiting now.
    pub fn queued_bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// Cuts the connection unless the session has stopped meanwhile.
    pub fn abort_if_stuck(&self) {
        if self.finished.load(Ordering::Acquire) {
            return;
        }
        let abort = self.abort.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(abort) = abort {
            tracing::info!("socket did not read up to its close; cutting the connection");
            abort();
        }
    }

    /// The session stopped: drops the means to cut its connection (the
    /// server's handle on the socket), so the socket closes with it.
    pub fn finish(&self) {
        self.finished.store(true, Ordering::Release);
        drop(self.abort.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
}

/// What [`Outbox::admit`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Within bounds: send it.
    Queued,
    /// This frame crossed the bound: close the socket (once).
    Overflowed,
    /// The socket is closing: drop it.
    Refused,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_within_bounds_then_overflows_once() {
        let o = Outbox::new(100, 3, None);
        assert_eq!(o.admit(40), Admit::Queued);
        assert_eq!(o.admit(40), Admit::Queued);
        assert_eq!(o.admit(40), Admit::Overflowed, "120 bytes > 100");
        assert_eq!(o.queued_bytes(), 80, "the refused frame is not counted");
        assert_eq!(o.admit(1), Admit::Refused);
        o.release(40);
        assert_eq!(o.admit(1), Admit::Refused, "a closing socket stays closing");
    }

    #[test]
    fn counts_frames_as_well_as_bytes() {
        let o = Outbox::new(1_000, 2, None);
        assert_eq!(o.admit(1), Admit::Queued);
        o.release(1);
        assert_eq!(o.admit(1), Admit::Queued);
        assert_eq!(o.admit(1), Admit::Queued);
        assert_eq!(o.admit(1), Admit::Overflowed);
    }

    #[test]
    fn abort_runs_once_and_never_after_finish() {
        use std::sync::Arc;
        let hits = Arc::new(AtomicUsize::new(0));
        let h = Arc::clone(&hits);
        let o = Outbox::new(
            1,
            1,
            Some(Box::new(move || {
                h.fetch_add(1, Ordering::SeqCst);
            })),
        );
        o.abort_if_stuck();
        o.abort_if_stuck();
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        let h = Arc::clone(&hits);
        let o = Outbox::new(
            1,
            1,
            Some(Box::new(move || {
                h.fetch_add(1, Ordering::SeqCst);
            })),
        );
        o.finish();
        o.abort_if_stuck();
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }
}
