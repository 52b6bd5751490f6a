//! Which of the app's connections are busy, unsure or idle, and the rhythm of its traffic,
//! from successive samples.
//!
//! The request-aware drain reads the app's sockets every 100 ms: [`Tracker::update`] takes
//! each read as [`crate::drain::diag`] made it, with the time of the read and the network
//! namespace's count of connections accepted, and keeps what it needs of the previous reads.
//! Pure: no syscalls and no clock, so that every case is tested with recorded `tcp_info`.
//!
//! # What TCP can show, and what it cannot
//!
//! A connection is **busy** when TCP proves that a request is unanswered:
//! - **unread**: request bytes wait in its receive queue (a peer's FIN alone is not a
//!   request);
//! - **unsent**: bytes the app wrote are not yet sent or not yet acknowledged;
//! - **in flight**: request bytes arrived after the last data the app sent: the kernel's
//!   dates say so (they differ by a jiffy or more), or, where they tie, the byte counters do
//!   (request bytes and nothing ever written, or the received counter grew in a later read
//!   than the written one);
//! - **unknown**: the kernel gave no `tcp_info` for an established socket.
//!
//! A connection is **idle** when no request can be in flight on it: it never received a
//! byte (a load balancer's pooled connection that never carried a request, or one in its
//! handshake), or its peer closed it after the app's last write (clients and load balancers
//! close between exchanges).
//!
//! Every other connection is **unsure**: the app wrote last (or the dates tie and the
//! counters cannot order them), and nothing moves. TCP cannot tell an answer that is
//! complete (a keep-alive connection waiting for its next request) from one paused
//! mid-stream (headers flushed, the body to come), nor, on a tie, a fast answer from a new
//! request that came in the same jiffy as the previous answer and is being worked on. The
//! drain treats unsure connections as busy unless their peer, a load balancer, says it has
//! no request in flight with the app (the machine weighs that); their peers' addresses are
//! kept for it ([`Peers`]).
//!
//! "Written" is `bytes_acked + wqueue`: everything the app has written, sent or not. It grows
//! only when the app writes, where `bytes_sent` also grows with retransmissions. "Received"
//! is `bytes_received` less the peer's FIN, which the kernel counts as a byte.
//!
//! # Activity and arrivals
//!
//! **Activity** is anything that may be a request reaching the app: request bytes on a
//! connection, a connection that went away, one the app closed (in TIME_WAIT for a minute,
//! with the time it has left), and, where the app's are the only listeners in the network
//! namespace (besides lastcall's own), any connection accepted in it beyond lastcall's own
//! (`PassiveOpens`), which no connection escapes however short. Its last date is what a silence is
//! measured from. A counter that changed between two reads is dated by the kernel's date of
//! the last data received, but never before the previous read; what has no date of its own
//! is dated at the read that saw it, so a silence never looks longer than it was.
//!
//! **Arrivals** are what the rate of requests is measured from, from the first read on, and
//! only what is surely the app's: a connection of the app's first seen (open, or already in
//! TIME_WAIT), and each growth of request bytes on a connection that had carried a request
//! before. Several requests on one connection between two reads count as one, and a
//! connection the client opened and closed between two reads is missed: the rate can only
//! look lower than it is, and a lower rate asks for a longer silence.
//!
//! # What the kernel may not say
//!
//! Sockets are keyed by their cookie, which survives accept and is never reused; should a
//! socket's counters go back anyway, it is taken as a new socket. Without byte counters
//! (before Linux 4.1) a tie is busy. Sockets no process holds any more (closed by the app,
//! finishing in FIN_WAIT, LAST_ACK or CLOSING) are left out: the kernel delivers their last
//! bytes whether the app runs or not.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
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
    /// The app wrote last and nothing moves: answered, or an answer paused.
    Unsure,
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
    /// The kernel gave no `tcp_info` for an established socket.
    Unknown,
}

/// The most peers of unsure connections kept by address.
const PEERS: usize = 4;

/// The addresses of the peers of the unsure connections: all of them, or `more` when there
/// were more than [`PEERS`] distinct ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peers {
    addrs: [Option<IpAddr>; PEERS],
    more: bool,
}

impl Peers {
    pub fn add(&mut self, addr: IpAddr) {
        let addr = addr.to_canonical();
        if self.addrs.contains(&Some(addr)) {
            return;
        }
        match self.addrs.iter_mut().find(|a| a.is_none()) {
            Some(free) => *free = Some(addr),
            None => self.more = true,
        }
    }

    /// Whether there are peers, every one is known, and each passes `test`.
    pub fn all(&self, test: impl Fn(IpAddr) -> bool) -> bool {
        let mut known = self.addrs.iter().flatten().peekable();
        !self.more && known.peek().is_some() && known.all(|a| test(*a))
    }
}

/// The arrivals seen since the first read: how many, the first and last, and the longest
/// gap between two in a row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rhythm {
    pub arrivals: u32,
    pub first: Option<Instant>,
    pub last: Option<Instant>,
    pub longest_gap: Duration,
}

impl Rhythm {
    /// An arrival at `at`; dates come in order (an earlier one is taken as `last`).
    fn note(&mut self, at: Instant) {
        let at = self.last.map_or(at, |last| at.max(last));
        if let Some(last) = self.last {
            self.longest_gap = self.longest_gap.max(at - last);
        }
        self.first = self.first.or(Some(at));
        self.last = Some(at);
        self.arrivals = self.arrivals.saturating_add(1);
    }
}

/// The app's connections at one read, and its traffic since the drain's first read. The
/// activity module says what each count proves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppSummary {
    /// Connections with a request TCP shows to be unanswered.
    pub busy: usize,
    /// Connections the app wrote last on, nothing moving: answered, or an answer paused.
    pub unsure: usize,
    pub idle: usize,
    /// The peers of the unsure connections.
    pub unsure_from: Peers,
    /// The last thing seen that may be a request reaching the app, gone connections
    /// included; `None` if none was seen, or if the read cannot tell.
    pub last_activity: Option<Instant>,
    /// The requests seen arriving since the first read.
    pub rhythm: Rhythm,
    pub by: ReadBy,
}

impl AppSummary {
    /// A count from /proc: `busy` open connections, each taken as busy, and nothing else.
    pub fn counted(busy: usize) -> AppSummary {
        AppSummary {
            busy,
            unsure: 0,
            idle: 0,
            unsure_from: Peers::default(),
            last_activity: None,
            rhythm: Rhythm::default(),
            by: ReadBy::Counted,
        }
    }
}

/// How the app's connections were read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadBy {
    /// By socket diagnostics: each connection busy, unsure or idle, and the activity dated.
    Sockets,
    /// Counted from /proc/net/tcp: every open connection is busy, and nothing is dated.
    Counted,
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
    state: State,
}

impl Track {
    fn new(seen: Instant, state: State) -> Track {
        Track { seen, counters: None, received_round: 0, written_round: 0, state }
    }
}

#[derive(Debug, Default)]
pub struct Tracker {
    /// Reads so far.
    round: u64,
    sockets: HashMap<u64, Track>,
    /// TIME_WAIT sockets seen at the last read.
    closed: HashSet<u64>,
    /// The most connections accepted for others than lastcall seen so far.
    accepted: Option<u64>,
    /// When the last read was made.
    last_read: Option<Instant>,
    last_activity: Option<Instant>,
    rhythm: Rhythm,
    unsure_from: Peers,
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// Takes a read of the app's connections made at `now` (sockets not in it are gone), and
    /// the connections accepted in the network namespace so far, lastcall's own left out,
    /// where they are known to be the app's.
    pub fn update(
        &mut self,
        samples: &[Sample],
        accepted: Option<u64>,
        now: Instant,
    ) -> AppSummary {
        self.round += 1;
        let first = self.round == 1;
        // What came between two reads is dated no earlier than the first of them.
        let since = self.last_read.replace(now).unwrap_or(now);
        let mut arrivals: Vec<Instant> = vec![];
        let mut closed = HashSet::new();
        for s in samples.iter().filter(|s| s.state == TIME_WAIT) {
            // A connection the app closed: it carried a request before then, however short
            // it was, even if no read saw it open.
            if !self.closed.contains(&s.cookie) {
                let closed_at = now.checked_sub(TIME_WAIT_LEN.saturating_sub(ms(s.expires)));
                self.last_activity = self.last_activity.max(closed_at);
                if !first && !self.sockets.contains_key(&s.cookie) {
                    // Opened and closed since the last read.
                    arrivals.push(closed_at.map_or(now, |at| at.clamp(since, now)));
                }
            }
            closed.insert(s.cookie);
        }
        self.closed = closed;
        let mut sockets = HashMap::with_capacity(samples.len());
        self.unsure_from = Peers::default();
        for s in samples.iter().filter(|s| !orphan(s) && s.state != TIME_WAIT) {
            let before = self.sockets.remove(&s.cookie);
            let new = before.is_none();
            let (track, arrival) = self.judge(s, before, now);
            if track.state == State::Unsure {
                self.unsure_from.add(s.remote.ip());
            }
            let arrival = match (first, new) {
                (true, _) => None,
                // Opened since the last read: dated by its request, if it came.
                (false, true) => Some(
                    s.info
                        .filter(|_| track.counters.is_some_and(|c| c.received > 0))
                        .and_then(|i| ago(now, i.last_data_recv))
                        .map_or(now, |at| at.clamp(since, now)),
                ),
                (false, false) => arrival,
            };
            arrivals.extend(arrival);
            sockets.insert(s.cookie, track);
        }
        if !self.sockets.is_empty() {
            // Gone since the last read: it may have carried a request in between.
            self.last_activity = self.last_activity.max(Some(now));
        }
        self.sockets = sockets;
        // Accepted in the namespace since the last read: it may be the app's, however short
        // it was. Only the most seen counts, should lastcall's own accept lag behind.
        if let Some(accepted) = accepted {
            if self.accepted.is_some_and(|before| accepted > before) {
                self.last_activity = self.last_activity.max(Some(now));
            }
            self.accepted = Some(self.accepted.map_or(accepted, |before| before.max(accepted)));
        }
        arrivals.sort_unstable();
        for at in arrivals {
            self.rhythm.note(at);
        }
        self.totals()
    }

    /// What the last read shows, and the traffic since the first.
    pub fn totals(&self) -> AppSummary {
        let count = |f: fn(&State) -> bool| self.sockets.values().filter(|t| f(&t.state)).count();
        AppSummary {
            busy: count(|s| matches!(s, State::Busy(_))),
            unsure: count(|s| *s == State::Unsure),
            idle: count(|s| *s == State::Idle),
            unsure_from: self.unsure_from,
            last_activity: self.last_activity,
            rhythm: self.rhythm,
            by: ReadBy::Sockets,
        }
    }

    /// A socket's state, and the date of a new request on it that counts as an arrival.
    fn judge(
        &mut self,
        s: &Sample,
        before: Option<Track>,
        now: Instant,
    ) -> (Track, Option<Instant>) {
        let Some(info) = s.info else {
            return (Track::new(now, without_info(s)), None);
        };
        let counters = Counters::of(s);
        let recv_at = ago(now, info.last_data_recv);
        // A socket whose counters went back is a new one.
        let before = before.filter(|t| match (&t.counters, &counters) {
            (Some(b), Some(c)) => !c.went_back(b),
            _ => true,
        });
        let (mut received_round, mut written_round) = (0, 0);
        let mut arrival = None;
        match (counters, before.as_ref()) {
            (Some(c), Some(t @ Track { counters: Some(b), .. })) => {
                let received = c.received != b.received;
                received_round = if received { self.round } else { t.received_round };
                written_round = if c.written != b.written { self.round } else { t.written_round };
                if received {
                    // The kernel's date, but the bytes came after the previous read.
                    let at = recv_at.map_or(t.seen, |at| at.max(t.seen));
                    self.last_activity = self.last_activity.max(Some(at));
                    // A connection's first request came with its accept, counted there.
                    arrival = (b.received > 0).then_some(at);
                }
            }
            (Some(c), _) => {
                // First read of this socket: the kernel's date, if data came.
                if c.received > 0 {
                    self.last_activity = self.last_activity.max(recv_at);
                }
            }
            (None, _) => self.last_activity = self.last_activity.max(recv_at),
        }
        let app_wrote_last = match info.last_data_recv.cmp(&info.last_data_sent) {
            // Fewer milliseconds since: the request came after the last data sent.
            Ordering::Less => Some(false),
            Ordering::Greater => Some(true),
            Ordering::Equal => match counters {
                None => None,
                Some(c) if c.received > 0 && (c.written == 0 || received_round > written_round) => {
                    Some(false)
                }
                Some(_) => Some(true),
            },
        };
        let never_received = counters.is_some_and(|c| c.received == 0);
        let unread = s.rqueue.saturating_sub(u32::from(peer_closed(s.state))) > 0;
        let unsent = s.wqueue > 0 || info.unacked > 0 || info.notsent_bytes.is_some_and(|n| n > 0);
        let state = if unread {
            State::Busy(Busy::Unread)
        } else if unsent {
            State::Busy(Busy::Unsent)
        } else if never_received {
            State::Idle
        } else {
            match app_wrote_last {
                Some(false) | None => State::Busy(Busy::InFlight),
                Some(true) if peer_closed(s.state) => State::Idle,
                Some(true) => State::Unsure,
            }
        };
        let track = Track { seen: now, counters, received_round, written_round, state };
        (track, arrival)
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
    const UNSURE: State = State::Unsure;
    const UNREAD: State = State::Busy(Busy::Unread);
    const UNSENT: State = State::Busy(Busy::Unsent);
    const IN_FLIGHT: State = State::Busy(Busy::InFlight);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A tracker and a clock: `read` takes one socket's sample `after` the start.
    struct Reads {
        tracker: Tracker,
        t0: Instant,
    }

    impl Reads {
        fn new() -> Reads {
            // Far enough from the clock's start for the kernel's dates to fit before it.
            Reads { tracker: Tracker::new(), t0: Instant::now() + Duration::from_secs(3600) }
        }

        fn read(&mut self, after: Duration, s: Sample) -> State {
            let cookie = s.cookie;
            self.tracker.update(&[s], Some(0), self.t0 + after);
            state(&self.tracker, cookie).unwrap()
        }
    }

    #[test]
    fn a_request_on_a_fresh_connection_is_in_flight_on_a_tie() {
        // Request read, not answered; it came within the handshake's jiffy: a tie.
        let mut r = Reads::new();
        assert_eq!(r.read(ms(0), sample(1, info(4, 4, 0, 18))), IN_FLIGHT);
        // Nothing changes while the app works: still in flight, however long.
        assert_eq!(r.read(ms(100), sample(1, info(104, 104, 0, 18))), IN_FLIGHT);
        assert_eq!(r.read(ms(5000), sample(1, info(5004, 5004, 0, 18))), IN_FLIGHT);
        // Recorded: the request came two jiffies after the handshake; no tie.
        let mut r = Reads::new();
        assert_eq!(r.read(ms(0), sample(1, info(8, 0, 0, 18))), IN_FLIGHT);
    }

    #[test]
    fn a_pooled_connection_that_never_carried_a_request_is_idle() {
        // Recorded: 300 ms after the handshake, nothing sent or received, the dates tie.
        let mut r = Reads::new();
        assert_eq!(r.read(ms(0), sample(1, info(304, 304, 0, 0))), IDLE);
        // Even one just opened: no byte has moved on it.
        assert_eq!(r.read(ms(0), sample(2, info(0, 0, 0, 0))), IDLE);
    }

    #[test]
    fn after_the_app_wrote_last_a_connection_is_unsure_for_good() {
        // Answered a jiffy after the request, or long ago: TCP cannot tell a complete answer
        // from one paused mid-stream, so it stays unsure while nothing moves.
        let mut r = Reads::new();
        assert_eq!(r.read(ms(0), sample(1, info(8, 0, 0, 18))), IN_FLIGHT);
        assert_eq!(r.read(ms(100), sample(1, info(8, 92, 27, 18))), UNSURE);
        assert_eq!(r.read(ms(60_000), sample(1, info(59_908, 59_992, 27, 18))), UNSURE);
        let mut r = Reads::new();
        assert_eq!(r.read(ms(0), sample(1, info(4000, 5000, 27, 18))), UNSURE);
        // Recorded: the headers of an answer flushed at once, its body due in 4 s.
        let mut r = Reads::new();
        assert_eq!(r.read(ms(0), sample(1, info(4, 8, 38, 18))), UNSURE);
        assert_eq!(r.read(ms(3000), sample(1, info(3004, 3008, 38, 18))), UNSURE);
    }

    #[test]
    fn a_tie_the_counters_cannot_order_is_unsure() {
        // Request and answer between the same two reads, dates tied: answered, or a request
        // that came in the same jiffy as the previous answer and is being worked on.
        let mut r = Reads::new();
        assert_eq!(r.read(ms(0), sample(1, info(2000, 2000, 27, 18))), UNSURE);
        assert_eq!(r.read(ms(100), sample(1, info(40, 40, 54, 36))), UNSURE);
        assert_eq!(r.read(ms(5100), sample(1, info(5040, 5040, 54, 36))), UNSURE);
    }

    #[test]
    fn a_request_tied_with_the_previous_answer_is_in_flight_when_seen_across_reads() {
        let mut r = Reads::new();
        assert_eq!(r.read(ms(0), sample(1, info(2000, 2000, 27, 18))), UNSURE);
        // A second request (18 more bytes), read, nothing written since; the dates tie.
        assert_eq!(r.read(ms(100), sample(1, info(8, 8, 27, 36))), IN_FLIGHT);
        // Nothing moves while the app works: the order seen across reads holds.
        assert_eq!(r.read(ms(3000), sample(1, info(2908, 2908, 27, 36))), IN_FLIGHT);
        // The answer goes out.
        assert_eq!(r.read(ms(3100), sample(1, info(4, 4, 54, 36))), UNSURE);
    }

    #[test]
    fn unread_request_bytes_hold_the_drain() {
        // Recorded: 18 request bytes not yet read by the app.
        let mut s = sample(1, info(4, 4, 0, 18));
        s.rqueue = 18;
        assert_eq!(Reads::new().read(ms(0), s), UNREAD);
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
        let mut r = Reads::new();
        assert_eq!(r.read(ms(0), s), UNSENT);
        // Each sign alone is enough.
        let answered = info(5000, 5000, 27, 18);
        let unacked = TcpInfo { unacked: 1, ..answered };
        let notsent = TcpInfo { notsent_bytes: Some(1), ..answered };
        let mut queued = sample(4, answered);
        queued.wqueue = 1;
        assert_eq!(r.read(ms(0), sample(2, unacked)), UNSENT);
        assert_eq!(r.read(ms(0), sample(3, notsent)), UNSENT);
        assert_eq!(r.read(ms(0), queued), UNSENT);
        assert_eq!(r.read(ms(0), sample(5, answered)), UNSURE);
    }

    #[test]
    fn a_peer_that_closed_after_the_apps_last_write_leaves_an_idle_connection() {
        // Answered, then the client hung up: the FIN waits unread in the receive queue.
        let mut s = sample(1, info(9000, 9000, 27, 19));
        (s.state, s.rqueue) = (CLOSE_WAIT, 1);
        assert_eq!(Reads::new().read(ms(0), s.clone()), IDLE);
        // With a request before the FIN still unread, it is busy.
        (s.rqueue, s.info) = (19, Some(info(9000, 8000, 27, 37)));
        assert_eq!(Reads::new().read(ms(0), s.clone()), UNREAD);
        // A request read and not answered before the FIN: in flight.
        (s.rqueue, s.info) = (1, Some(info(9000, 8000, 27, 37)));
        assert_eq!(Reads::new().read(ms(0), s), IN_FLIGHT);
    }

    #[test]
    fn activity_is_dated_by_the_kernel_but_not_before_the_previous_read() {
        let mut r = Reads::new();
        r.read(ms(0), sample(1, info(700, 500, 27, 18)));
        assert_eq!(r.tracker.totals().last_activity, Some(r.t0 - ms(500)));
        // Request bytes between reads: the kernel's date (40 ms before the read)...
        r.read(ms(1000), sample(1, info(1700, 40, 27, 36)));
        assert_eq!(r.tracker.totals().last_activity, Some(r.t0 + ms(960)));
        // ... unless that is before the previous read (jiffy rounding).
        r.read(ms(1010), sample(1, info(1710, 12, 27, 40)));
        assert_eq!(r.tracker.totals().last_activity, Some(r.t0 + ms(1000)));
        // Answers do not move it.
        r.read(ms(2000), sample(1, info(4, 1002, 54, 40)));
        assert_eq!(r.tracker.totals().last_activity, Some(r.t0 + ms(1000)));
        // Nor does a peer's FIN, which the kernel counts as a received byte.
        let mut fin = sample(1, info(1004, 2002, 54, 41));
        (fin.state, fin.rqueue) = (CLOSE_WAIT, 1);
        assert_eq!(r.read(ms(3000), fin), IDLE);
        assert_eq!(r.tracker.totals().last_activity, Some(r.t0 + ms(1000)));
    }

    #[test]
    fn connections_accepted_gone_or_closed_by_the_app_are_activity_at_the_read() {
        let t0 = Instant::now() + Duration::from_secs(3600);
        let mut t = Tracker::new();
        let idle = sample(2, info(9000, 9000, 0, 0));
        assert_eq!(
            t.update(&[sample(1, info(9000, 9000, 27, 18)), idle.clone()], Some(7), t0)
                .last_activity,
            Some(t0 - ms(9000))
        );
        // One went away between reads: it may have carried a request then.
        assert_eq!(
            t.update(std::slice::from_ref(&idle), Some(7), t0 + ms(100)).last_activity,
            Some(t0 + ms(100))
        );
        // A connection accepted and gone between two reads leaves the count behind.
        assert_eq!(
            t.update(std::slice::from_ref(&idle), Some(8), t0 + ms(200)).last_activity,
            Some(t0 + ms(200))
        );
        // lastcall's own accepts are not in the count; one seen early stays counted.
        assert_eq!(
            t.update(std::slice::from_ref(&idle), Some(7), t0 + ms(300)).last_activity,
            Some(t0 + ms(200))
        );
        // Closed by the app 59.5 s before its time-wait ends: 500 ms ago.
        let mut closed = sample(3, info(0, 0, 0, 0));
        (closed.state, closed.expires, closed.info) = (TIME_WAIT, 59_500, None);
        let totals = t.update(&[idle.clone(), closed.clone()], Some(7), t0 + ms(1000));
        assert_eq!(totals.last_activity, Some(t0 + ms(500)));
        assert_eq!((totals.busy, totals.unsure, totals.idle), (0, 0, 1), "time-wait is not open");
        // Seen again later, it does not date anything anew.
        closed.expires = 1000;
        let totals = t.update(&[idle, closed], Some(7), t0 + ms(60_000));
        assert_eq!(totals.last_activity, Some(t0 + ms(500)));
    }

    #[test]
    fn arrivals_are_the_apps_new_connections_and_each_further_request_on_one() {
        let t0 = Instant::now() + Duration::from_secs(3600);
        let mut t = Tracker::new();
        // The first read only sets the baseline: what came before is not dated here.
        let rhythm = t.update(&[sample(1, info(500, 500, 27, 18))], Some(100), t0).rhythm;
        assert_eq!(rhythm, Rhythm::default());
        // Since: a new connection with its first request (4 ms ago), one the app opened and
        // closed (50 ms ago), and three accepted in the namespace, which are not surely the
        // app's: two arrivals.
        let fresh = sample(2, info(4, 4, 0, 18));
        let mut closed = sample(3, info(0, 0, 0, 0));
        (closed.state, closed.expires, closed.info) = (TIME_WAIT, 59_950, None);
        let old = sample(1, info(600, 600, 27, 18));
        let totals = t.update(&[old, fresh, closed.clone()], Some(103), t0 + ms(100));
        let rhythm = totals.rhythm;
        assert_eq!(
            (rhythm.arrivals, rhythm.first, rhythm.last),
            (2, Some(t0 + ms(50)), Some(t0 + ms(96)))
        );
        assert_eq!(totals.last_activity, Some(t0 + ms(100)), "the accepts are activity");
        // A second request on the old connection (dated by the kernel) and on the new one.
        let old = sample(1, info(700, 30, 27, 36));
        let fresh = sample(2, info(10, 20, 27, 36));
        let rhythm = t.update(&[old, fresh, closed], Some(103), t0 + ms(200)).rhythm;
        assert_eq!((rhythm.arrivals, rhythm.last), (4, Some(t0 + ms(180))));
        assert_eq!(rhythm.longest_gap, ms(74));
        // Then a connection that carried nothing yet, after a pause: dated at the read.
        let rhythm = t.update(&[sample(4, info(0, 0, 0, 0))], Some(104), t0 + ms(1200)).rhythm;
        assert_eq!((rhythm.arrivals, rhythm.longest_gap), (5, ms(1020)));
    }

    #[test]
    fn the_peers_of_unsure_connections_are_kept_up_to_four() {
        let mut t = Tracker::new();
        let now = Instant::now() + Duration::from_secs(3600);
        let from = |cookie: u64, addr: &str| {
            let mut s = sample(cookie, info(4000, 5000, 27, 18));
            s.remote = addr.parse().unwrap();
            s
        };
        let two =
            [from(1, "10.0.0.1:1000"), from(2, "[::ffff:10.0.0.1]:1001"), from(3, "10.0.0.2:1")];
        let peers = t.update(&two, Some(0), now).unsure_from;
        assert!(peers.all(|a| a == "10.0.0.1".parse::<IpAddr>().unwrap()
            || a == "10.0.0.2".parse::<IpAddr>().unwrap()));
        assert!(!peers.all(|a| a == "10.0.0.1".parse::<IpAddr>().unwrap()));
        let five: Vec<Sample> = (1..=5).map(|i| from(i, &format!("10.0.0.{i}:80"))).collect();
        let peers = t.update(&five, Some(0), now).unsure_from;
        assert!(!peers.all(|_| true), "one peer is not known");
        assert!(
            !Tracker::new().update(&[], Some(0), now).unsure_from.all(|_| true),
            "none to vouch"
        );
    }

    #[test]
    fn counters_that_go_back_are_a_new_socket() {
        let mut r = Reads::new();
        assert_eq!(r.read(ms(0), sample(1, info(9000, 9000, 54, 36))), UNSURE);
        // The same key, counters back at 0: a fresh connection, judged as one.
        assert_eq!(r.read(ms(100), sample(1, info(4, 4, 0, 0))), IDLE);
        assert_eq!(r.read(ms(200), sample(1, info(104, 104, 0, 18))), IN_FLIGHT);
        // Absurd values do not panic.
        let mut wild = sample(2, info(u32::MAX, u32::MAX, u64::MAX, u64::MAX));
        (wild.wqueue, wild.rqueue) = (u32::MAX, u32::MAX);
        assert_eq!(r.read(ms(300), wild), UNREAD);
        let wild = sample(3, info(u32::MAX, 0, u64::MAX, u64::MAX));
        let mut t = Tracker::new();
        t.update(&[wild], Some(u64::MAX), Instant::now());
        assert_eq!(state(&t, 3), Some(IN_FLIGHT));
    }

    #[test]
    fn without_byte_counters_a_tie_is_busy() {
        let no_counters = TcpInfo { bytes_acked: None, bytes_received: None, ..info(8, 8, 0, 0) };
        assert_eq!(Reads::new().read(ms(0), sample(1, no_counters)), IN_FLIGHT);
        let wrote_last = TcpInfo { bytes_acked: None, bytes_received: None, ..info(8, 20, 0, 0) };
        assert_eq!(Reads::new().read(ms(0), sample(1, wrote_last)), UNSURE);
    }

    #[test]
    fn sockets_the_app_has_closed_are_left_out() {
        let mut orphan = sample(1, info(8, 8, 27, 18));
        (orphan.inode, orphan.state, orphan.wqueue) = (0, FIN_WAIT1, 100);
        let mut tracker = Tracker::new();
        let totals = tracker.update(&[orphan.clone()], Some(0), Instant::now());
        assert_eq!((totals.busy, totals.unsure, totals.idle), (0, 0, 0));
        // Shut down for writing but still held by the app: counted.
        orphan.inode = 7;
        assert_eq!(tracker.update(&[orphan], Some(0), Instant::now()).busy, 1);
    }

    #[test]
    fn without_the_namespaces_count_accepts_are_not_known() {
        // Other servers listen beside the app: their accepts would be taken for the app's.
        let t0 = Instant::now() + Duration::from_secs(3600);
        let mut t = Tracker::new();
        let idle = [sample(1, info(9000, 9000, 0, 0))];
        assert_eq!(t.update(&idle, None, t0).last_activity, None);
        assert_eq!(t.update(&idle, None, t0 + ms(100)).last_activity, None);
    }
}
