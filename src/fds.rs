//! File descriptors are one budget shared by connections and storage. A
//! socket holds one; RocksDB needs more whenever it rolls a WAL, flushes a
//! memtable or compacts, and the blob store one per object it reads or
//! writes. If connections could take the last of them, the next file
//! RocksDB opens fails, and with it every write until the process
//! restarts. So the server keeps a reserve for storage and accepts no more
//! connections than the rest: past that, new connections wait in the
//! listen backlog until one closes.

/// Descriptors kept for storage and the process itself: the two RocksDB
/// databases (each capped at [`DB_OPEN_FILES`] table files, plus WALs,
/// manifests and logs), blob store objects in flight, the admin listener,
/// threads' event descriptors.
pub const STORAGE_RESERVE: u64 = 1024;

/// Table files the main database keeps open at most.
pub const DB_OPEN_FILES: i32 = 512;

/// Table files the key store keeps open at most.
pub const KEYSTORE_OPEN_FILES: i32 = 64;

/// Connections the public listener may hold at once, given the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The process's descriptor limit (after raising it).
    pub limit: u64,
    /// Connections accepted at most, over all socket threads.
    pub connections: usize,
}

/// Raises the soft descriptor limit to the hard one and divides it.
pub fn budget() -> Budget {
    let limit = raise_limit();
    Budget {
        limit,
        connections: connections_for(limit),
    }
}

/// Connections that fit under `limit` with the reserve kept (at least a
/// few, so a tiny limit still serves).
pub fn connections_for(limit: u64) -> usize {
    limit.saturating_sub(STORAGE_RESERVE).max(16) as usize
}

/// The soft `RLIMIT_NOFILE`, raised to the hard one where it was lower.
fn raise_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only `lim`, a valid
    // struct on our stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_leave_the_storage_reserve() {
        assert_eq!(connections_for(20_000), 20_000 - 1024);
        assert_eq!(connections_for(1_100), 76);
        assert_eq!(connections_for(500), 16, "a tiny limit still serves a few");
    }
}
