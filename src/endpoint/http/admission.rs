//! Who makes room when the endpoint is full: a new connection is never refused while an
//! open one can go. As nginx reuses its connections, the one idle longest goes first (nothing
//! received, no partial request, no answer owed: a fresh connection that sent nothing yet, a
//! keep-alive connection between requests, one lingering after its last answer); with none
//! idle, the one whose partial request head began longest ago (a slowloris pays before a
//! probe); with none of those, the one owed an answer whose output has not moved for longest
//! (a client that sends requests and does not read the answers holds its place only as long
//! as every other does the same, and never against a probe).
//!
//! One exception: a connection idle for less than [`GRACE`] (a probe accepted a moment ago
//! whose request has not been read yet) goes only after every other: otherwise, under a
//! flood, each newcomer would evict the probe admitted just before it.
//!
//! Three queues in the order connections took their standing (an owed connection takes it
//! anew each time its output moves); an entry is stale once its connection has moved on (its
//! epoch changed), and is skipped. Pure: the endpoint says what each connection's standing is
//! and whether an entry is still current.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long a connection may be idle before it ranks with the other idle ones: time for a
/// client that just connected to send its request.
pub const GRACE: Duration = Duration::from_secs(1);

/// What a connection could give up.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Standing {
    /// Nothing received, nothing owed.
    Idle,
    /// Part of a request head received.
    Partial,
    /// Requests read and not yet answered, or answers not yet written: goes after the
    /// partial heads, the one whose output has not moved for longest first.
    Owed,
}

impl Standing {
    pub const ALL: [Standing; 3] = [Standing::Idle, Standing::Partial, Standing::Owed];

    /// The standing a connection was evicted in, as `/metrics` names the reason.
    pub fn label(self) -> &'static str {
        match self {
            Standing::Idle => "idle",
            Standing::Partial => "partial_request",
            Standing::Owed => "unread_answer",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    slot: usize,
    epoch: u64,
    since: Instant,
}

#[derive(Default)]
pub struct Admission {
    idle: VecDeque<Entry>,
    partial: VecDeque<Entry>,
    owed: VecDeque<Entry>,
}

impl Admission {
    /// Connection `slot` took `standing` at `now`; `epoch` names this standing of it (a new one
    /// each time, so that older entries go stale). An owed connection is noted again, with a
    /// new epoch, each time its output moves.
    pub fn note(&mut self, slot: usize, epoch: u64, standing: Standing, now: Instant) {
        let entry = Entry { slot, epoch, since: now };
        match standing {
            Standing::Idle => self.idle.push_back(entry),
            Standing::Partial => self.partial.push_back(entry),
            Standing::Owed => self.owed.push_back(entry),
        }
    }

    /// The connection to evict at `now`, taken from the queues, if any: the idle one that
    /// has waited longest (past its [`GRACE`]), else the oldest partial head, else the owed
    /// one whose output has not moved for longest, else the idle one that has waited longest.
    /// `current(slot, epoch)` says whether an entry still stands.
    pub fn victim(
        &mut self,
        now: Instant,
        current: impl Fn(usize, u64) -> bool,
    ) -> Option<(usize, Standing)> {
        let idle = front(&mut self.idle, &current);
        if let Some(entry) = idle.filter(|e| e.since + GRACE <= now) {
            self.idle.pop_front();
            return Some((entry.slot, Standing::Idle));
        }
        if let Some(entry) = front(&mut self.partial, &current) {
            self.partial.pop_front();
            return Some((entry.slot, Standing::Partial));
        }
        if let Some(entry) = front(&mut self.owed, &current) {
            self.owed.pop_front();
            return Some((entry.slot, Standing::Owed));
        }
        self.idle.pop_front();
        idle.map(|entry| (entry.slot, Standing::Idle))
    }

    /// Drops stale entries once the queues hold many more than `open` connections could
    /// have: each connection stands in at most one place at a time.
    pub fn compact(&mut self, open: usize, current: impl Fn(usize, u64) -> bool) {
        if self.len() > 2 * open + 64 {
            self.idle.retain(|e| current(e.slot, e.epoch));
            self.partial.retain(|e| current(e.slot, e.epoch));
            self.owed.retain(|e| current(e.slot, e.epoch));
        }
    }

    /// Entries held, stale ones included.
    fn len(&self) -> usize {
        self.idle.len() + self.partial.len() + self.owed.len()
    }
}

/// The queue's first entry that still stands; stale ones before it are dropped.
fn front(queue: &mut VecDeque<Entry>, current: &impl Fn(usize, u64) -> bool) -> Option<Entry> {
    while let Some(&entry) = queue.front() {
        if current(entry.slot, entry.epoch) {
            return Some(entry);
        }
        queue.pop_front();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A start, and a time past the grace of whatever was noted at the start.
    fn times() -> (Instant, Instant) {
        let t0 = Instant::now();
        (t0, t0 + GRACE)
    }

    /// Which epoch each slot stands at now (`None`: closed or busy).
    fn current(now: &[Option<u64>]) -> impl Fn(usize, u64) -> bool + '_ {
        move |slot, epoch| now.get(slot).copied().flatten() == Some(epoch)
    }

    #[test]
    fn idle_longest_first_then_oldest_partial() {
        let (t0, later) = times();
        let mut a = Admission::default();
        a.note(0, 1, Standing::Partial, t0);
        a.note(1, 2, Standing::Idle, t0);
        a.note(2, 3, Standing::Idle, t0);
        a.note(3, 4, Standing::Partial, t0);
        let now = [Some(1), Some(2), Some(3), Some(4)];
        assert_eq!(a.victim(later, current(&now)), Some((1, Standing::Idle)));
        assert_eq!(a.victim(later, current(&now)), Some((2, Standing::Idle)));
        assert_eq!(a.victim(later, current(&now)), Some((0, Standing::Partial)), "idle ones first");
        assert_eq!(a.victim(later, current(&now)), Some((3, Standing::Partial)));
        assert_eq!(a.victim(later, current(&now)), None);
    }

    #[test]
    fn a_connection_that_moved_on_is_not_evicted_for_its_old_standing() {
        let (t0, later) = times();
        let mut a = Admission::default();
        a.note(0, 1, Standing::Idle, t0);
        a.note(1, 2, Standing::Idle, t0);
        // Slot 0 got a request and was answered (epoch 3, owed), slot 1 was closed and its
        // slot reused by a new idle connection (epoch 4).
        a.note(0, 3, Standing::Owed, t0);
        a.note(1, 4, Standing::Idle, t0);
        let now = [Some(3), Some(4)];
        assert_eq!(a.victim(later, current(&now)), Some((1, Standing::Idle)));
        assert_eq!(a.victim(later, current(&now)), Some((0, Standing::Owed)), "as owed, not idle");
        assert_eq!(a.victim(later, current(&now)), None);
    }

    #[test]
    fn idle_again_goes_to_the_back() {
        let (t0, later) = times();
        let mut a = Admission::default();
        a.note(0, 1, Standing::Idle, t0);
        a.note(1, 2, Standing::Idle, t0);
        a.note(0, 3, Standing::Idle, t0); // slot 0 answered a request and waits again
        let now = [Some(3), Some(2)];
        assert_eq!(a.victim(later, current(&now)), Some((1, Standing::Idle)));
        assert_eq!(a.victim(later, current(&now)), Some((0, Standing::Idle)));
    }

    #[test]
    fn a_connection_just_accepted_goes_after_the_partial_heads() {
        let (t0, later) = times();
        let mut a = Admission::default();
        a.note(0, 1, Standing::Partial, t0);
        a.note(1, 2, Standing::Idle, later); // a probe, a moment ago
        let now = [Some(1), Some(2)];
        let soon = later + GRACE / 2;
        assert_eq!(a.victim(soon, current(&now)), Some((0, Standing::Partial)));
        assert_eq!(a.victim(soon, current(&now)), Some((1, Standing::Idle)), "then it goes");
    }

    #[test]
    fn owed_ones_go_after_partial_heads_the_one_stalled_longest_first() {
        let (t0, later) = times();
        let mut a = Admission::default();
        a.note(0, 1, Standing::Owed, t0);
        a.note(1, 2, Standing::Owed, t0);
        a.note(2, 3, Standing::Partial, t0);
        a.note(0, 4, Standing::Owed, later); // slot 0's output moved: to the back
        let now = [Some(4), Some(2), Some(3)];
        assert_eq!(a.victim(later, current(&now)), Some((2, Standing::Partial)), "partial first");
        assert_eq!(a.victim(later, current(&now)), Some((1, Standing::Owed)), "stalled longest");
        assert_eq!(a.victim(later, current(&now)), Some((0, Standing::Owed)));
        assert_eq!(a.victim(later, current(&now)), None);
    }

    #[test]
    fn a_connection_just_accepted_goes_after_the_owed_ones() {
        let (_, later) = times();
        let mut a = Admission::default();
        a.note(0, 1, Standing::Owed, later); // its output moved a moment ago
        a.note(1, 2, Standing::Idle, later); // a probe, a moment ago
        let now = [Some(1), Some(2)];
        let soon = later + GRACE / 2;
        assert_eq!(a.victim(soon, current(&now)), Some((0, Standing::Owed)));
        assert_eq!(a.victim(soon, current(&now)), Some((1, Standing::Idle)), "then it goes");
    }

    #[test]
    fn compaction_keeps_only_what_stands() {
        let (t0, later) = times();
        let mut a = Admission::default();
        for epoch in 0..1000 {
            a.note(0, epoch, Standing::Idle, t0);
            a.note(1, 1000 + epoch, Standing::Owed, t0);
        }
        let now = [Some(999), Some(1999)];
        a.compact(2, current(&now));
        assert_eq!(a.len(), 2);
        assert_eq!(a.victim(later, current(&now)), Some((0, Standing::Idle)));
        assert_eq!(a.victim(later, current(&now)), Some((1, Standing::Owed)));
    }
}
