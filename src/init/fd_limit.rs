//! lastcall's file-descriptor limit. lastcall raises its soft RLIMIT_NOFILE to the hard limit,
//! as Go's runtime does, so that its connections are limited by `--max-connections` and not
//! by a low default; every child gets the soft limit lastcall inherited back ([`inherited`]).
//! A `--max-connections` the limit leaves no room for is said at start.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::cli::Config;
use crate::endpoint::checks::MAX_CHECKS;

/// The soft limit lastcall inherited, when it raised its own; `u64::MAX` when it did not.
/// The hard limit, which lastcall leaves as it is, beside it.
static INHERITED_NOFILE: AtomicU64 = AtomicU64::new(u64::MAX);
static HARD_NOFILE: AtomicU64 = AtomicU64::new(u64::MAX);

/// File descriptors lastcall needs besides its connections: stdio, the event loop, signals,
/// the listener and its spare, the notify sockets, checks, with room to spare.
const FDS_BESIDES_CONNECTIONS: u64 = 64 + MAX_CHECKS as u64;

/// Raises the soft limit to the hard limit; returns the limit lastcall now has.
pub fn raise() -> u64 {
    // SAFETY: plain libc calls on a local rlimit.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur >= limit.rlim_max {
            return limit.rlim_cur;
        }
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            return limit.rlim_cur;
        }
        INHERITED_NOFILE.store(limit.rlim_cur, Ordering::Relaxed);
        HARD_NOFILE.store(limit.rlim_max, Ordering::Relaxed);
        raised.rlim_cur
    }
}

/// The limit a child gets back: the one lastcall inherited, if [`raise`] changed it.
pub fn inherited() -> Option<libc::rlimit> {
    let soft = INHERITED_NOFILE.load(Ordering::Relaxed);
    let hard = HARD_NOFILE.load(Ordering::Relaxed);
    (soft != u64::MAX).then_some(libc::rlimit { rlim_cur: soft, rlim_max: hard })
}

/// About how many connections `limit` descriptors leave room for, beside lastcall's own and
/// the `sockets` it holds for the child.
fn room(limit: u64, sockets: usize) -> u64 {
    limit.saturating_sub(FDS_BESIDES_CONNECTIONS + sockets as u64)
}

/// Past the limit, new connections are turned away (or, out of descriptors, make room by
/// eviction): a `--max-connections` beyond it is said at start.
pub fn warn_if_short(config: &Config, limit: u64) {
    let wanted = config.limits.max_connections as u64;
    let room = room(limit, config.sockets.len());
    if config.listen.is_some() && wanted > room {
        log::warn!(
            "--max-connections {wanted} is more than the file-descriptor limit allows ({limit}, \
             room for about {room} connections); raise the hard limit (ulimit -Hn) or lower \
             --max-connections"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_for_connections_is_the_limit_less_lastcalls_own_and_the_sockets() {
        assert_eq!(room(1024, 0), 1024 - 128);
        assert_eq!(room(1024, 3), 1024 - 131);
        assert_eq!(room(100, 0), 0, "never below none");
        assert_eq!(room(0, 64), 0);
        assert_eq!(room(u64::MAX, 64), u64::MAX - 192);
    }
}
