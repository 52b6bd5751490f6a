//! Which of the app's connections are busy and which are idle, from successive samples.
//!
//! The idle-aware drain asks at every count: [`Tracker::update`] takes the app's sockets as
//! [`crate::drain::diag`] read them and the time of the read, and keeps what it needs of the
//! previous reads. Pure: no syscalls and no clock, so that every case is tested with
//! recorded `tcp_info` values.
//!
//! # The rule
//!
//! A connection is **busy** while
//! - **unread**: request bytes wait in its receive queue (a peer's FIN alone is not a
//!   request: an app that has not yet read the end of a closed keep-alive connection is not
//!   serving it);
//! - **unsent**: bytes the app wrote are not yet sent or not yet acknowledged (send queue,
//!   `notsent_bytes`, `unacked`): the answer is still on its way;
//! - **in flight**: request bytes arrived after the last data the app sent (a tie counts as
//!   busy unless the byte counters show the answer went out after the request: below);
//! - **moving**: bytes moved on it less than `quiet` ago, received, written or acknowledged:
//!   a stream that sends in trickles would look idle between its chunks otherwise;
//!
//! and **idle** otherwise, so that idle keep-alive connections never hold the drain.
//!
//! # Ties, and how the byte counters settle them
//!
//! `tcp_info` dates the last data received and sent in jiffies (4 ms at HZ=250), and dates
//! both from the handshake until data moves. When the two dates differ the order is certain:
//! the request came at least a jiffy after the last answer byte (in flight), or the answer
//! at least a jiffy after the request (answered). A tie is ambiguous, and it is the usual
//! case, not a corner: on loopback here, 200 of 200 requests on fresh connections tied with
//! the handshake, and 199 of 200 requests answered at once tied with their answer. Taking
//! every tie as busy would hold the drain on any connection whose last exchange was fast;
//! taking ties as idle cuts requests in flight on fresh connections (measured on loopback).
//! Nor is "nothing received since the previous read, and all that was written acknowledged"
//! enough to call a tie idle: it also describes a request being worked on, on a fresh
//! connection where nothing was written yet, so all of it is acknowledged.
//! So a tie is settled by the byte counters, which are exact where the dates are coarse,
//! compared between reads:
//! - nothing ever received (a FIN aside): nothing to answer; idle (a pooled connection that
//!   never carried a request);
//! - request bytes received and nothing ever written: in flight (the fresh-connection tie);
//! - the received counter last grew in a later read than the written counter: in flight (a
//!   request that came after the last answer, kept busy across reads while nothing changes);
//! - otherwise both last grew between the same two reads (or before the first): answered.
//!   Within one jiffy the order is unknowable, request-then-fast-answer is by far the usual
//!   order, and the connection stays busy anyway for `quiet` after its bytes moved. What this
//!   gets wrong is a request that arrives in the same jiffy as the previous answer was sent
//!   (pipelining, or a client that sends its next request at once) and then takes longer
//!   than `quiet` with no byte moving: choose `quiet` with that in mind.
//!
//! "Written" is `bytes_acked + wqueue`: everything the app has written, sent or not. It grows
//! only when the app writes (an acknowledgement moves bytes from one term to the other),
//! where `bytes_sent` also grows with retransmissions. "Received" is `bytes_received` less
//! the peer's FIN, which the kernel counts as a byte once the connection is half-closed.
//!
//! # Dates
//!
//! A counter that changed between two reads is dated at the later read (at most one read
//! interval late, never early), so the quiet window never ends too soon. On the first read
//! of a socket the kernel's own dates are used: the later of the last data received and
//! sent, each only if such data exists. "The last request bytes" ([`Totals::last_request`],
//! for "no request bytes for DUR") are dated by `last_data_recv`, but never before the read
//! before the one that saw them grow; a socket that has gone keeps its date there.
//!
//! A connection opened and closed between two reads is not seen open, but one the app
//! closed first stays in TIME_WAIT for a minute, with the time it has left: its close dates
//! the last request too (a close is never before the request it ended). One the client
//! closed first leaves no trace; the load balancers in front usually let the app close.
//!
//! # What the kernel may not say
//!
//! Sockets are keyed by their cookie, which survives accept and is never reused; should a
//! socket's counters go back anyway, it is taken as a new socket. A socket with no
//! `tcp_info` is busy, as the /proc count would have it, unless it is still in its handshake
//! (it can hold no request). Without byte counters (before Linux 4.1) a tie is busy and a
//! movement is dated by the kernel's dates alone. Sockets no process holds any more (closed
//! by the app, finishing in FIN_WAIT, LAST_ACK or CLOSING) are left out: the kernel delivers
//! their last bytes whether the app runs or not.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::drain::diag::{
    CLOSE_WAIT, CLOSING, FIN_WAIT1, FIN_WAIT2, LAST_ACK, SYN_RECV, Sample, TIME_WAIT,
};

/// How long Linux keeps a socket in TIME_WAIT (`TCP_TIMEWAIT_LEN`).
const TIME_WAIT_LEN: Duration = Duration::from_secs(60);

/// What a connection is doing, as of the last read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Idle,
    Busy(Busy),
}

/// Why a connection is busy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Busy {
    /// Request bytes wait in the receive queue.
    Unread,
    /// Written bytes are not yet sent or not yet acknowledged.
    Unsent,
    /// A request was read and not yet answered.
    InFlight,
    /// Bytes moved less than `quiet` ago.
    Moving,
    /// The kernel gave no `tcp_info` for an established socket.
    Unknown,
}

/// The app's connections at the last read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Totals {
    pub busy: usize,
    pub idle: usize,
    /// When request bytes last arrived on any connection seen so far, gone ones included.
    pub last_request: Option<Instant>,
}

/// The counters that show bytes moving; see the module's documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counters {
    received: u64,
    written: u64,
    acked: u64,
}

impl Counters {
    fn of(s: &Sample) -> Option<Counters> {
        let info = s.info?;
        let acked = info.bytes_acked?;
        Some(Counters {
            received: info.bytes_received?.saturating_sub(u64::from(peer_closed(s.state))),
            written: acked.saturating_add(u64::from(s.wqueue)),
            acked,
        })
    }

    fn went_back(&self, before: &Counters) -> bool {
        self.received < before.received
            || self.written < before.written
            || self.acked < before.acked
    }
}

/// What is kept of a socket between reads.
#[derive(Clone, Debug)]
struct Track {
    seen: Instant,
    counters: Option<Counters>,
    /// The read in which `received` (`written`) last grew; 0: before the first read.
    received_round: u64,
    written_round: u64,
    moved_at: Option<Instant>,
    state: State,
}

impl Track {
    fn new(seen: Instant) -> Track {
        let (received_round, written_round, moved_at) = (0, 0, None);
        Track { seen, counters: None, received_round, written_round, moved_at, state: State::Idle }
    }
}

#[derive(Debug)]
pub struct Tracker {
    quiet: Duration,
    /// Reads so far.
    round: u64,
    sockets: HashMap<u64, Track>,
    last_request: Option<Instant>,
}

impl Tracker {
    /// `quiet`: how long after its bytes last moved a connection still counts as busy.
    pub fn new(quiet: Duration) -> Tracker {
        Tracker { quiet, round: 0, sockets: HashMap::new(), last_request: None }
    }

    /// Takes a read of the app's connections, made at `now`: sockets not in it are gone.
    pub fn update(&mut self, samples: &[Sample], now: Instant) -> Totals {
        self.round += 1;
        let mut sockets = HashMap::with_capacity(samples.len());
        for s in samples.iter().filter(|s| s.state == TIME_WAIT) {
            // A connection the app closed: it carried a request before then, however short
            // it was, even if no read saw it open.
            let closed_at = now.checked_sub(TIME_WAIT_LEN.saturating_sub(ms(s.expires)));
            self.last_request = self.last_request.max(closed_at);
        }
        for s in samples.iter().filter(|s| !orphan(s) && s.state != TIME_WAIT) {
            let before = self.sockets.remove(&s.cookie);
            let track = self.judge(s, before, now);
            sockets.insert(s.cookie, track);
        }
        self.sockets = sockets;
        self.totals()
    }

    /// The totals of the last read.
    pub fn totals(&self) -> Totals {
        let busy = self.sockets.values().filter(|t| t.state != State::Idle).count();
        Totals { busy, idle: self.sockets.len() - busy, last_request: self.last_request }
    }

    fn judge(&mut self, s: &Sample, before: Option<Track>, now: Instant) -> Track {
        let Some(info) = s.info else {
            return Track { state: without_info(s), ..Track::new(now) };
        };
        let counters = Counters::of(s);
        let recv_at = ago(now, info.last_data_recv);
        let sent_at = ago(now, info.last_data_sent);
        // A socket whose counters went back is a new one.
        let before = before.filter(|t| match (&t.counters, &counters) {
            (Some(b), Some(c)) => !c.went_back(b),
            _ => true,
        });
        let (mut received_round, mut written_round) = (0, 0);
        let (moved_at, request_at) = match (counters, before.as_ref()) {
            (Some(c), Some(t @ Track { counters: Some(b), .. })) => {
                let received = c.received != b.received;
                let written = c.written != b.written;
                received_round = if received { self.round } else { t.received_round };
                written_round = if written { self.round } else { t.written_round };
                let moved = received || written || c.acked != b.acked;
                let moved_at = if moved { Some(now) } else { t.moved_at };
                // The kernel's date, but the bytes came after the previous read.
                let request_at = received.then(|| recv_at.map_or(t.seen, |at| at.max(t.seen)));
                (moved_at, request_at)
            }
            (Some(c), _) => {
                // First read of this socket: the kernel's dates, for data that exists.
                let recv_at = if c.received > 0 { recv_at } else { None };
                let sent_at = if c.written > 0 { sent_at } else { None };
                (recv_at.max(sent_at), recv_at)
            }
            (None, _) => (recv_at.max(sent_at), recv_at),
        };
        if let Some(at) = request_at {
            self.last_request = self.last_request.max(Some(at));
        }
        let in_flight = match info.last_data_recv.cmp(&info.last_data_sent) {
            // Fewer milliseconds since: the request came after the last data sent.
            Ordering::Less => true,
            Ordering::Greater => false,
            Ordering::Equal => match counters {
                None => true,
                Some(c) => c.received > 0 && (c.written == 0 || received_round > written_round),
            },
        };
        let unread = s.rqueue.saturating_sub(u32::from(peer_closed(s.state))) > 0;
        let unsent = s.wqueue > 0 || info.unacked > 0 || info.notsent_bytes.is_some_and(|n| n > 0);
        let moving = moved_at.is_some_and(|at| now.saturating_duration_since(at) < self.quiet);
        let state = if unread {
            State::Busy(Busy::Unread)
        } else if unsent {
            State::Busy(Busy::Unsent)
        } else if in_flight {
            State::Busy(Busy::InFlight)
        } else if moving {
            State::Busy(Busy::Moving)
        } else {
            State::Idle
        };
        Track { seen: now, counters, received_round, written_round, moved_at, state }
    }
}

/// A socket without `tcp_info`: in its handshake it can hold no request; otherwise what it
/// does cannot be seen, and it is busy, as the /proc count would have it.
fn without_info(s: &Sample) -> State {
    if s.rqueue > 0 {
        State::Busy(Busy::Unread)
    } else if s.wqueue > 0 {
        State::Busy(Busy::Unsent)
    } else if s.state == SYN_RECV {
        State::Idle
    } else {
        State::Busy(Busy::Unknown)
    }
}

/// `n` milliseconds before `now`; `None` if that is before the clock began.
fn ago(now: Instant, n: u32) -> Option<Instant> {
    now.checked_sub(ms(n))
}

fn ms(n: u32) -> Duration {
    Duration::from_millis(u64::from(n))
}

/// The peer's FIN has arrived: the kernel counts it as a received byte, and as an unread one
/// until the app reads the end of file.
fn peer_closed(state: u8) -> bool {
    matches!(state, CLOSE_WAIT | LAST_ACK | CLOSING)
}

/// No process holds the socket any more: the app closed it, and the kernel finishes it alone.
fn orphan(s: &Sample) -> bool {
    s.inode == 0 && matches!(s.state, FIN_WAIT1 | FIN_WAIT2 | CLOSING | LAST_ACK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain::diag::{ESTABLISHED, TcpInfo};

    /// A connection's `tcp_info`: milliseconds since data was last sent and received, bytes
    /// acknowledged and received (as recorded on loopback on this project's machine).
    fn info(sent: u32, recv: u32, acked: u64, received: u64) -> TcpInfo {
        TcpInfo {
            unacked: 0,
            last_data_sent: sent,
            last_data_recv: recv,
            bytes_acked: Some(acked),
            bytes_received: Some(received),
            notsent_bytes: Some(0),
            bytes_sent: Some(acked),
        }
    }

    /// One of the app's connections on 127.0.0.1:8080, established, with `info`.
    fn sample(cookie: u64, info: TcpInfo) -> Sample {
        Sample {
            cookie,
            inode: 1000 + cookie,
            uid: 0,
            state: ESTABLISHED,
            local: "127.0.0.1:8080".parse().unwrap(),
            remote: "127.0.0.1:40000".parse().unwrap(),
            rqueue: 0,
            wqueue: 0,
            expires: 0,
            info: Some(info),
        }
    }

    /// A socket's state at the last read, by cookie; `None` if it was not in it.
    fn state(t: &Tracker, cookie: u64) -> Option<State> {
        t.sockets.get(&cookie).map(|t| t.state)
    }

    const IDLE: State = State::Idle;
    const UNREAD: State = State::Busy(Busy::Unread);
    const UNSENT: State = State::Busy(Busy::Unsent);
    const IN_FLIGHT: State = State::Busy(Busy::InFlight);
    const MOVING: State = State::Busy(Busy::Moving);

    const QUIET: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A tracker and a clock: `read` takes one socket's sample `after` the start.
    struct Reads {
        tracker: Tracker,
        t0: Instant,
    }

    impl Reads {
        fn new(quiet: Duration) -> Reads {
            // Far enough from the clock's start for the kernel's dates to fit before it.
            Reads { tracker: Tracker::new(quiet), t0: Instant::now() + Duration::from_secs(3600) }
        }

        fn read(&mut self, after: Duration, s: Sample) -> State {
            let cookie = s.cookie;
            self.tracker.update(&[s], self.t0 + after);
            state(&self.tracker, cookie).unwrap()
        }
    }

    #[test]
    fn a_request_on_a_fresh_connection_is_in_flight_on_a_tie() {
        // Request read, not answered; it came within the handshake's jiffy: a tie.
        let mut r = Reads::new(QUIET);
        assert_eq!(r.read(ms(0), sample(1, info(4, 4, 0, 18))), IN_FLIGHT);
        // Nothing changes while the app works: still in flight, long after `quiet`.
        assert_eq!(r.read(ms(100), sample(1, info(104, 104, 0, 18))), IN_FLIGHT);
        assert_eq!(r.read(ms(5000), sample(1, info(5004, 5004, 0, 18))), IN_FLIGHT);
        // Recorded: the request came two jiffies after the handshake; no tie.
        let mut r = Reads::new(QUIET);
        assert_eq!(r.read(ms(0), sample(1, info(8, 0, 0, 18))), IN_FLIGHT);
    }

    #[test]
    fn a_pooled_connection_that_never_carried_a_request_is_idle() {
        // Recorded: 300 ms after the handshake, nothing sent or received, the dates tie.
        let mut r = Reads::new(QUIET);
        assert_eq!(r.read(ms(0), sample(1, info(304, 304, 0, 0))), IDLE);
        // Even one just opened: no byte has moved on it.
        assert_eq!(r.read(ms(0), sample(2, info(0, 0, 0, 0))), IDLE);
    }

    #[test]
    fn a_keep_alive_connection_is_idle_after_its_answer() {
        // Recorded: request read (in flight), then answered within the same jiffy (a tie).
        let mut r = Reads::new(QUIET);
        assert_eq!(r.read(ms(0), sample(1, info(8, 0, 0, 18))), IN_FLIGHT);
        assert_eq!(r.read(ms(100), sample(1, info(8, 8, 27, 18))), MOVING, "answered");
        assert_eq!(r.read(ms(400), sample(1, info(312, 312, 27, 18))), MOVING);
        assert_eq!(r.read(ms(1100), sample(1, info(1008, 1008, 27, 18))), IDLE);
        // Seen for the first time after its answer (the drain starts then): the same.
        let mut r = Reads::new(QUIET);
        assert_eq!(r.read(ms(0), sample(1, info(8, 8, 27, 18))), MOVING);
        assert_eq!(r.read(ms(992), sample(1, info(1000, 1000, 27, 18))), IDLE);
        // An answer a jiffy or more after the request needs no counters.
        let mut r = Reads::new(QUIET);
        assert_eq!(r.read(ms(0), sample(1, info(4000, 5000, 27, 18))), IDLE);
    }

    #[test]
    fn a_request_tied_with_the_previous_answer_is_in_flight_when_seen_across_reads() {
        let mut r = Reads::new(QUIET);
        assert_eq!(r.read(ms(0), sample(1, info(2000, 2000, 27, 18))), IDLE);
        // A second request (18 more bytes), read, nothing written since; the dates tie.
        assert_eq!(r.read(ms(100), sample(1, info(8, 8, 27, 36))), IN_FLIGHT);
        // Nothing moves while the app works: the order seen across reads holds.
        assert_eq!(r.read(ms(3000), sample(1, info(2908, 2908, 27, 36))), IN_FLIGHT);
        // The answer goes out.
        assert_eq!(r.read(ms(3100), sample(1, info(4, 4, 54, 36))), MOVING);
        assert_eq!(r.read(ms(4100), sample(1, info(1004, 1004, 54, 36))), IDLE);
    }

    #[test]
    fn request_and_answer_between_the_same_two_reads_count_as_answered() {
        // The documented guess: within one jiffy the order is unknown; request-then-answer
        // is taken, and the connection is busy for `quiet` all the same.
        let mut r = Reads::new(QUIET);
        assert_eq!(r.read(ms(0), sample(1, info(2000, 2000, 27, 18))), IDLE);
        assert_eq!(r.read(ms(100), sample(1, info(40, 40, 54, 36))), MOVING);
        assert_eq!(r.read(ms(1099), sample(1, info(1039, 1039, 54, 36))), MOVING);
        assert_eq!(r.read(ms(1100), sample(1, info(1040, 1040, 54, 36))), IDLE);
    }

    #[test]
    fn a_trickling_stream_is_busy_while_its_chunks_come_within_quiet() {
        // Recorded: a chunk of 13 bytes every 255 ms, read 5 ms and 255 ms after each.
        let reads = [
            (5, info(4, 16, 54, 36)),
            (10, info(12, 32, 67, 36)),
            (260, info(264, 284, 67, 36)),
            (265, info(8, 304, 80, 36)),
            (515, info(264, 560, 80, 36)),
            (520, info(4, 572, 93, 36)),
            (770, info(260, 828, 93, 36)),
        ];
        let mut r = Reads::new(QUIET);
        for (at, info) in reads {
            assert_eq!(r.read(ms(at), sample(1, info)), MOVING, "at {at} ms");
        }
        // The stream stops: idle `quiet` after the read that saw the last chunk.
        assert_eq!(r.read(ms(1519), sample(1, info(1004, 1572, 93, 36))), MOVING);
        assert_eq!(r.read(ms(1520), sample(1, info(1004, 1572, 93, 36))), IDLE);
        // A `quiet` shorter than the gap between chunks sees it idle between them.
        let mut r = Reads::new(ms(200));
        for (at, info) in &reads[..3] {
            r.read(ms(*at), sample(1, *info));
        }
        assert_eq!(state(&r.tracker, 1), Some(IDLE));
    }

    #[test]
    fn unread_request_bytes_hold_the_drain() {
        // Recorded: a pooled connection's first request, not yet read.
        let mut s = sample(1, info(320, 4, 0, 18));
        s.rqueue = 18;
        assert_eq!(Reads::new(Duration::ZERO).read(ms(0), s), UNREAD);
        // A connection the app has not accepted yet: no inode, the same.
        let mut s = sample(2, info(300, 300, 0, 18));
        (s.inode, s.rqueue) = (0, 18);
        assert_eq!(Reads::new(QUIET).read(ms(0), s), UNREAD);
    }

    #[test]
    fn unsent_or_unacknowledged_bytes_hold_the_drain() {
        // Recorded: 3.9 MB written to a client that does not read.
        let recorded = TcpInfo {
            unacked: 2,
            last_data_sent: 8,
            last_data_recv: 20,
            bytes_acked: Some(32_768),
            bytes_received: Some(0),
            notsent_bytes: Some(3_797_504),
            bytes_sent: Some(160_768),
        };
        let mut s = sample(1, recorded);
        s.wqueue = 3_877_888;
        let mut r = Reads::new(Duration::ZERO);
        assert_eq!(r.read(ms(0), s), UNSENT);
        // Each sign alone is enough.
        let idle = info(5000, 5000, 27, 18);
        let unacked = TcpInfo { unacked: 1, ..idle };
        let notsent = TcpInfo { notsent_bytes: Some(1), ..idle };
        let mut queued = sample(4, idle);
        queued.wqueue = 1;
        assert_eq!(r.read(ms(0), sample(2, unacked)), UNSENT);
        assert_eq!(r.read(ms(0), sample(3, notsent)), UNSENT);
        assert_eq!(r.read(ms(0), queued), UNSENT);
        assert_eq!(r.read(ms(0), sample(5, idle)), IDLE);
    }

    #[test]
    fn the_quiet_window_ends_exactly_quiet_after_the_read_that_saw_bytes_move() {
        let quiet = ms(500);
        let mut r = Reads::new(quiet);
        r.read(ms(0), sample(1, info(9000, 9000, 27, 18)));
        // Bytes moved between the reads at 0 and 100 ms: dated at 100 ms, never earlier.
        assert_eq!(r.read(ms(100), sample(1, info(60, 60, 54, 36))), MOVING);
        let just_before = ms(600) - Duration::from_nanos(1);
        assert_eq!(r.read(just_before, sample(1, info(560, 560, 54, 36))), MOVING);
        assert_eq!(r.read(ms(600), sample(1, info(560, 560, 54, 36))), IDLE);
        // On a first read, the kernel's dates: here 100 ms ago.
        let mut r = Reads::new(quiet);
        assert_eq!(r.read(ms(0), sample(1, info(100, 100, 27, 18))), MOVING);
        assert_eq!(r.read(ms(399), sample(1, info(499, 499, 27, 18))), MOVING);
        assert_eq!(r.read(ms(400), sample(1, info(500, 500, 27, 18))), IDLE);
        // No quiet at all: only the other signs.
        let mut r = Reads::new(Duration::ZERO);
        assert_eq!(r.read(ms(0), sample(1, info(0, 0, 27, 18))), IDLE);
    }

    #[test]
    fn sockets_that_vanish_are_forgotten_but_their_last_request_is_not() {
        let mut tracker = Tracker::new(QUIET);
        let t0 = Instant::now() + Duration::from_secs(3600);
        let busy = sample(1, info(8, 0, 0, 18));
        let idle = sample(2, info(9000, 9000, 27, 18));
        let totals = tracker.update(&[busy, idle.clone()], t0);
        assert_eq!((totals.busy, totals.idle), (1, 1));
        assert_eq!(totals.last_request, Some(t0), "the in-flight request, 0 ms ago");
        let totals = tracker.update(&[idle], t0 + ms(100));
        assert_eq!((totals.busy, totals.idle, totals.last_request), (0, 1, Some(t0)));
        assert_eq!(state(&tracker, 1), None);
        assert_eq!(tracker.sockets.keys().collect::<Vec<_>>(), [&2]);
        assert_eq!(state(&tracker, 2), Some(IDLE));
        let totals = tracker.update(&[], t0 + ms(200));
        assert_eq!((totals.busy, totals.idle, totals.last_request), (0, 0, Some(t0)));
    }

    #[test]
    fn the_last_request_is_dated_by_the_kernel_but_not_before_the_previous_read() {
        let mut r = Reads::new(QUIET);
        r.read(ms(0), sample(1, info(700, 500, 27, 18)));
        assert_eq!(r.tracker.totals().last_request, Some(r.t0 - ms(500)));
        // Request bytes between reads: the kernel's date (40 ms before the read)...
        r.read(ms(1000), sample(1, info(1700, 40, 27, 36)));
        assert_eq!(r.tracker.totals().last_request, Some(r.t0 + ms(960)));
        // ... unless that is before the previous read (jiffy rounding).
        r.read(ms(1010), sample(1, info(1710, 12, 27, 40)));
        assert_eq!(r.tracker.totals().last_request, Some(r.t0 + ms(1000)));
        // Answers do not move it.
        r.read(ms(2000), sample(1, info(4, 1002, 54, 40)));
        assert_eq!(r.tracker.totals().last_request, Some(r.t0 + ms(1000)));
        // Nor does a peer's FIN, which the kernel counts as a received byte.
        let mut fin = sample(1, info(1004, 2002, 54, 41));
        (fin.state, fin.rqueue) = (CLOSE_WAIT, 1);
        assert_eq!(r.read(ms(3000), fin), IDLE);
        assert_eq!(r.tracker.totals().last_request, Some(r.t0 + ms(1000)));
    }

    #[test]
    fn counters_that_go_back_are_a_new_socket() {
        let mut r = Reads::new(QUIET);
        assert_eq!(r.read(ms(0), sample(1, info(9000, 9000, 54, 36))), IDLE);
        // The same key, counters back at 0: a fresh connection, judged as one.
        assert_eq!(r.read(ms(100), sample(1, info(4, 4, 0, 0))), IDLE);
        assert_eq!(r.read(ms(200), sample(1, info(104, 104, 0, 18))), IN_FLIGHT);
        // Absurd values do not panic.
        let mut wild = sample(2, info(u32::MAX, u32::MAX, u64::MAX, u64::MAX));
        (wild.wqueue, wild.rqueue) = (u32::MAX, u32::MAX);
        assert_eq!(r.read(ms(300), wild), UNREAD);
        let wild = sample(3, info(u32::MAX, 0, u64::MAX, u64::MAX));
        let mut t = Tracker::new(Duration::MAX);
        t.update(&[wild], Instant::now());
        assert_eq!(state(&t, 3), Some(IN_FLIGHT));
    }

    #[test]
    fn a_peers_fin_is_neither_a_request_nor_unread() {
        // Answered, then the client hung up: the FIN waits unread in the receive queue.
        let mut s = sample(1, info(9000, 9000, 27, 19));
        (s.state, s.rqueue) = (CLOSE_WAIT, 1);
        assert_eq!(Reads::new(QUIET).read(ms(0), s.clone()), IDLE);
        // With a request before the FIN still unread, it is.
        (s.rqueue, s.info) = (19, Some(info(9000, 8000, 27, 37)));
        assert_eq!(Reads::new(QUIET).read(ms(0), s), UNREAD);
    }

    #[test]
    fn sockets_the_app_has_closed_are_left_out() {
        let mut orphan = sample(1, info(8, 8, 27, 18));
        (orphan.inode, orphan.state, orphan.wqueue) = (0, FIN_WAIT1, 100);
        let mut tracker = Tracker::new(QUIET);
        let totals = tracker.update(&[orphan.clone()], Instant::now());
        assert_eq!((totals.busy, totals.idle), (0, 0));
        // Shut down for writing but still held by the app: counted.
        orphan.inode = 7;
        assert_eq!(tracker.update(&[orphan], Instant::now()).busy, 1);
    }

    #[test]
    fn without_tcp_info_only_a_handshake_is_idle() {
        let mut s = sample(1, info(0, 0, 0, 0));
        s.info = None;
        let mut r = Reads::new(QUIET);
        assert_eq!(r.read(ms(0), s.clone()), State::Busy(Busy::Unknown));
        s.state = SYN_RECV;
        assert_eq!(r.read(ms(0), s.clone()), IDLE);
        s.rqueue = 3;
        assert_eq!(r.read(ms(0), s), UNREAD);
    }

    #[test]
    fn without_byte_counters_a_tie_is_busy() {
        // A kernel before 4.1: the dates alone.
        let old = |sent, recv| TcpInfo {
            bytes_acked: None,
            bytes_received: None,
            notsent_bytes: None,
            bytes_sent: None,
            ..info(sent, recv, 0, 0)
        };
        let mut r = Reads::new(QUIET);
        assert_eq!(r.read(ms(0), sample(1, old(5000, 5000))), IN_FLIGHT);
        assert_eq!(r.read(ms(0), sample(2, old(5000, 4000))), IN_FLIGHT);
        assert_eq!(r.read(ms(0), sample(3, old(4000, 5000))), IDLE);
        assert_eq!(r.read(ms(0), sample(4, old(400, 5000))), MOVING);
    }

    // --- Real sockets: the kernel's samples and the rule agree ---

    fn a_real_exchange(ip: &str) {
        use std::io::{Read, Write};
        let mut p = crate::drain::diag::tests::pair(ip);
        let mut tracker = Tracker::new(QUIET);
        // Each read is dated `skip` later than the clock says, to skip quiet windows.
        let mut read = |p: &crate::drain::diag::tests::Pair, skip: Duration| {
            std::thread::sleep(ms(20)); // the loopback's packets processed
            let now = Instant::now() + skip;
            let s = p.sample();
            tracker.update(std::slice::from_ref(&s), now);
            (state(&tracker, s.cookie).unwrap(), tracker.totals(), now)
        };
        let (state, _, t0) = read(&p, Duration::ZERO);
        assert_eq!(state, IDLE, "a fresh connection");

        p.client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let (state, totals, _) = read(&p, Duration::ZERO);
        assert_eq!((state, totals.busy), (UNREAD, 1));
        assert!(totals.last_request.is_some_and(|at| at >= t0), "{totals:?}");

        let mut request = [0; 18];
        p.server.read_exact(&mut request).unwrap();
        assert_eq!(read(&p, Duration::ZERO).0, IN_FLIGHT);
        assert_eq!(read(&p, QUIET * 3).0, IN_FLIGHT, "however long it takes");

        p.server.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!(read(&p, QUIET * 3).0, MOVING);
        let (state, totals, _) = read(&p, QUIET * 4);
        assert_eq!((state, totals.busy, totals.idle), (IDLE, 0, 1));

        // The next request, answered at once: request and answer tie, or nearly.
        p.client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        std::thread::sleep(ms(5));
        p.server.read_exact(&mut request).unwrap();
        p.server.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!(read(&p, QUIET * 4).0, MOVING);
        assert_eq!(read(&p, QUIET * 5).0, IDLE);
    }

    #[test]
    fn a_real_exchange_ipv4() {
        a_real_exchange("127.0.0.1");
    }

    #[test]
    fn a_real_exchange_ipv6() {
        a_real_exchange("::1");
    }

    #[test]
    fn a_real_answer_the_client_does_not_read() {
        use std::io::Write;
        let mut p = crate::drain::diag::tests::pair("127.0.0.1");
        p.server.set_nonblocking(true).unwrap();
        let chunk = vec![b'x'; 1 << 16];
        while p.server.write(&chunk).is_ok() {}
        std::thread::sleep(ms(20));
        let s = p.sample();
        assert!(s.wqueue > 0 && s.info.unwrap().notsent_bytes.unwrap() > 0, "{s:?}");
        let mut tracker = Tracker::new(Duration::ZERO);
        tracker.update(std::slice::from_ref(&s), Instant::now());
        assert_eq!(state(&tracker, s.cookie), Some(UNSENT));
    }

    #[test]
    fn a_connection_the_app_closed_dates_the_last_request() {
        // Far enough from the clock's start for a minute's subtraction.
        let t0 = Instant::now() + Duration::from_secs(120);
        let mut tracker = Tracker::new(QUIET);
        let closed = Sample {
            state: TIME_WAIT,
            inode: 0,
            expires: 59_700, // closed 300 ms ago
            info: None,
            ..sample(9, info(0, 0, 0, 0))
        };
        let totals = tracker.update(std::slice::from_ref(&closed), t0);
        assert_eq!(totals.last_request, Some(t0 - ms(300)));
        assert_eq!((totals.busy, totals.idle), (0, 0), "not a connection of the app's");
        // An older one does not move the date back.
        let older = Sample { cookie: 10, expires: 30_000, ..closed };
        assert_eq!(tracker.update(&[older], t0 + ms(100)).last_request, Some(t0 - ms(300)));
    }
}
