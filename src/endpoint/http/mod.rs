//! lastcall's own HTTP endpoint, on a mio listener in the one event loop.
//!
//! It is probed by kubelets, load balancers and Prometheus, and reachable by anything on the
//! pod network, so nothing a client does may block the loop or grow memory: requests are
//! parsed with httparse from at most [`MAX_HEAD`] bytes per connection, answers wait in at
//! most [`MAX_OUT`] bytes, every connection has a deadline (one owed an answer, a deadline
//! from its output's last move: [`SEND_TIMEOUT`]), and the number of connections is capped.
//! Every bad input ends in a status code or a closed connection, logged at debug.

mod admission;
mod answer;

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use admission::Admission;
pub use admission::Standing;
use answer::Pending;
pub use answer::Response;

/// What the endpoint answers from, taken afresh for each turn of the loop: the endpoint
/// knows nothing of the supervisor beyond this.
pub struct Snapshot<'a> {
    /// `/readyz` answers 200.
    pub ready: bool,
    /// `/livez` answers 200.
    pub live: bool,
    pub pages: &'a dyn Pages,
}

/// The pages that take more than a word: `/metrics` and `?verbose`.
pub trait Pages {
    /// The Prometheus exposition, with the endpoint's own counters.
    fn metrics(&self, http: &HttpCounters) -> String;
    /// What `?verbose` adds to a probe's answer.
    fn verbose(&self) -> String;
}

/// The endpoint's counters.
#[derive(Default)]
pub struct HttpCounters {
    /// `[route][status]`: routes are /readyz and /livez, statuses 200 and 503.
    pub probes: [[u64; 2]; 2],
    pub open: usize,
    /// Connections closed at once: the maximum was open and none could make room (or no file
    /// descriptor was left to take them with).
    pub rejected: u64,
    /// Connections closed to make room for a new one, by the [`Standing`] they had.
    pub evicted: [u64; 3],
    /// Connections dropped for a timeout, bad input, or not reading their answers.
    pub dropped: u64,
    /// Connections accepted, those closed at once included: the drain leaves them out of the
    /// network namespace's count.
    pub accepted: u64,
}

/// One `/readyz` answer: who asked, and what it was told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The client's address (an IPv4-mapped IPv6 address as IPv4).
    pub from: IpAddr,
    /// 200 (true) or 503.
    pub ready: bool,
    /// The kubelet asked (`User-Agent: kube-probe/...`).
    pub kubelet: bool,
    /// What a load balancer said of itself in the probe, if it did.
    pub lb: Option<LbWord>,
}

/// A load balancer's own word on the app, sent with its health check: HAProxy's
/// `http-check send-state` adds `X-Haproxy-Server-State: DOWN; ...; scur=0/4; qcur=0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbWord {
    /// It has taken the app out of its rotation (DOWN or MAINT).
    pub down: bool,
    /// Requests it has in flight with the app (`scur`), and queued for it (`qcur`).
    pub sessions: u32,
    pub queued: u32,
    /// Which of its servers the word is about (a hash of `name=`, 0 without one): one
    /// HAProxy may check the app as several servers, each with its own state.
    pub server: u64,
}

impl LbWord {
    /// Reads the header's value; `None` unless the state, `scur` and `qcur` are all there.
    pub fn parse(value: &[u8]) -> Option<LbWord> {
        let text = std::str::from_utf8(value).ok()?;
        let mut parts = text.split(';').map(str::trim);
        let state = parts.next()?.split_whitespace().next()?;
        let (mut sessions, mut queued, mut server) = (None, None, 0);
        for part in parts {
            match part.split_once('=') {
                Some(("scur", v)) => sessions = v.split('/').next()?.parse().ok(),
                Some(("qcur", v)) => queued = v.parse().ok(),
                // FNV-1a: a stable name for the server, not a secret.
                Some(("name", v)) => {
                    server = v.bytes().fold(0xcbf2_9ce4_8422_2325, |h: u64, b| {
                        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                    })
                }
                _ => {}
            }
        }
        let down = matches!(state, "DOWN" | "MAINT");
        Some(LbWord { down, sessions: sessions?, queued: queued?, server })
    }
}

/// What the endpoint did in one call that the supervisor must know.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Happened {
    /// The `/readyz` answers, in order.
    pub probes: Vec<Probe>,
}

impl Happened {
    pub fn add(&mut self, other: Happened) {
        self.probes.extend(other.probes);
    }
}

/// The largest request head accepted; a longer one gets 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// Unsent output beyond this means the client does not read its answers: it is dropped.
pub const MAX_OUT: usize = 64 * 1024;
/// How long a connection owed an answer may go without its output moving (no byte written)
/// before it is closed, as nginx's `send_timeout`: the time runs from the last write that made
/// progress, not over the whole answer, so a slow reader is kept and one that stopped reading
/// is not, whatever it keeps sending. One probe period at the kubelet's default
/// (`periodSeconds: 10`); a probe itself reads its answer within its 1 s timeout. Under `--max-connections` such a
/// connection makes room before this (see [`admission`]).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// After an error answer, how long lastcall keeps reading (and discarding) so that closing
/// with unread input does not reset the connection before the client has read the answer.
const LINGER: Duration = Duration::from_secs(2);
/// The most input discarded per lingering connection.
const LINGER_BYTES: usize = 256 * 1024;
/// Out of file descriptors with no room to make, how soon accepting is tried again.
const RETRY_ACCEPT: Duration = Duration::from_millis(100);
/// The most requests one connection has answered per turn of the loop; the rest wait for
/// its next turn (at once), so that a pipelining client cannot hold the loop.
const REQUESTS_PER_TURN: usize = 8;
/// The send buffer asked for each connection (the kernel doubles it); the endpoint's answers
/// are small.
const SEND_BUFFER: usize = 32 * 1024;
/// The listen backlog: deep enough that a burst of connects waits in it while lastcall has no
/// CPU, rather than losing SYNs (the kernel caps it at net.core.somaxconn).
pub const BACKLOG: i32 = 4096;

/// The limits set by options.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// At most this many connections; a new one beyond it makes room (see [`admission`]).
    pub max_connections: usize,
    /// How long a request head may take to arrive (slowloris).
    pub request_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request, from when its last
    /// answer was written.
    pub idle_timeout: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Waiting for a request head, which must be complete by the deadline.
    Head,
    /// Between keep-alive requests.
    Idle,
    /// Writing the last answer; closes when written.
    Closing,
    /// Answer written and write side shut: reading and discarding until EOF or the deadline.
    Lingering { discarded: usize },
}

struct Conn {
    stream: TcpStream,
    /// The client's address, for the probes it makes.
    peer: IpAddr,
    pending: Pending,
    out: Vec<u8>,
    state: State,
    /// The request head's deadline ([`State::Head`]) or the end of [`State::Lingering`]; the
    /// connection's own is [`Conn::due`].
    deadline: Instant,
    /// When its output last moved: a write that made progress, or answers queued with none
    /// ahead of them. With output waiting, [`SEND_TIMEOUT`] runs from here; with none in
    /// [`State::Idle`], the idle timeout.
    moved: Instant,
    /// What the connection could give up, for admission; `epoch` names this standing.
    standing: Standing,
    epoch: u64,
    /// Requests answered so far: a change means the connection was active.
    answered: u64,
    /// It used its turn's budget with work left: it gets another turn at once.
    more: bool,
}

impl Conn {
    fn standing(&self) -> Standing {
        let owes = !self.out.is_empty() || self.pending.has_unanswered();
        match self.state {
            State::Lingering { .. } => Standing::Idle,
            _ if owes => Standing::Owed,
            State::Idle => Standing::Idle,
            State::Head if self.pending.len() == 0 => Standing::Idle,
            State::Head => Standing::Partial,
            State::Closing => Standing::Owed,
        }
    }

    /// When the connection is closed unless something happens first. Answering a request
    /// whose answer cannot be written moves none of these.
    fn due(&self, limits: &Limits) -> Instant {
        let stalled = self.moved + SEND_TIMEOUT;
        let owes = !self.out.is_empty();
        match self.state {
            State::Lingering { .. } => self.deadline,
            State::Head if owes => self.deadline.min(stalled),
            State::Head => self.deadline,
            State::Idle | State::Closing if owes => stalled,
            // Idle: its last answer was written when its output last moved.
            State::Idle => self.moved + limits.idle_timeout,
            // Not kept: with nothing left to write it lingers at once.
            State::Closing => self.deadline,
        }
    }
}

pub struct Endpoint {
    listener: TcpListener,
    first_token: usize,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Held so that, out of file descriptors, lastcall can still accept and close.
    spare_fd: Option<File>,
    /// Accepting stopped with connections possibly waiting (no fd to take them with): the
    /// next expiry pass, at most [`RETRY_ACCEPT`] away, tries again.
    retry_accept: bool,
    /// No connection's deadline is earlier than this (it may be stale-early, never late).
    next_expiry: Option<Instant>,
    /// Who makes room when the maximum is open.
    admission: Admission,
    next_epoch: u64,
    /// Connections with work left after their turn (see [`REQUESTS_PER_TURN`]).
    again: Vec<usize>,
    shared: Shared,
}

/// What every connection uses.
struct Shared {
    limits: Limits,
    /// One read buffer for every connection.
    scratch: Box<[u8; MAX_HEAD]>,
    counters: HttpCounters,
    /// What the connection being driven did, taken by [`Endpoint::on_event`].
    happened: Happened,
}

enum Outcome {
    Keep,
    Close,
}

impl Endpoint {
    /// Binds the listener; `first_token` and the tokens after it are the connections'.
    pub fn bind(addr: SocketAddr, limits: Limits, first_token: usize) -> io::Result<Endpoint> {
        let listener =
            std::net::TcpListener::from(crate::platform::sockets::bind_tcp(addr, BACKLOG)?);
        listener.set_nonblocking(true)?;
        Ok(Endpoint {
            listener: TcpListener::from_std(listener),
            first_token,
            conns: Vec::new(),
            free: Vec::new(),
            spare_fd: File::open("/dev/null").ok(),
            retry_accept: false,
            next_expiry: None,
            admission: Admission::default(),
            next_epoch: 0,
            again: Vec::new(),
            shared: Shared {
                limits,
                scratch: Box::new([0; MAX_HEAD]),
                counters: HttpCounters::default(),
                happened: Happened::default(),
            },
        })
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut self.listener, token, Interest::READABLE)
    }

    pub fn owns(&self, token: Token) -> bool {
        token.0 >= self.first_token && token.0 - self.first_token < self.conns.len()
    }

    /// The earliest connection deadline, for the poll timeout.
    pub fn deadline(&self) -> Option<Instant> {
        self.next_expiry
    }

    /// When accepting should be tried again without a new event, if it should.
    fn retry_deadline(&self, now: Instant) -> Option<Instant> {
        self.retry_accept.then(|| now + RETRY_ACCEPT)
    }

    /// Accepts until the backlog is empty.
    pub fn accept(&mut self, registry: &Registry, now: Instant) {
        self.retry_accept = false;
        self.accept_all(registry, now);
        if let Some(at) = self.retry_deadline(now) {
            self.note_deadline(at);
        }
    }

    fn accept_all(&mut self, registry: &Registry, now: Instant) {
        loop {
            let (mut stream, peer) = match self.listener.accept() {
                Ok((stream, peer)) => {
                    self.shared.counters.accepted += 1;
                    (stream, peer.ip().to_canonical())
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Out of fds, accept fails whether or not a connection waits. The spare
                    // fd makes room to accept one and close it, so that the backlog drains
                    // (the listener is edge-triggered and would not wake us again for it).
                    log::debug!("accept: {e}");
                    if self.evict(registry, now) || self.reject_one() {
                        continue;
                    }
                    return;
                }
                Err(e) => {
                    log::debug!("accept: {e}");
                    return;
                }
            };
            if self.shared.counters.open >= self.shared.limits.max_connections
                && !self.evict(registry, now)
            {
                self.shared.counters.rejected += 1;
                continue; // dropped: closed at once
            }
            let slot = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            // A small send buffer: a client that sends requests and never reads their answers
            // is found out (and dropped) after some tens of answers, not after the megabytes
            // an auto-tuned buffer would take, each rendered for nobody.
            let _ = nix::sys::socket::setsockopt(
                &stream,
                nix::sys::socket::sockopt::SndBuf,
                &SEND_BUFFER,
            );
            let token = Token(self.first_token + slot);
            // Edge-triggered, registered once for both: no re-registration per request.
            if let Err(e) =
                registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            {
                log::debug!("register: {e}");
                self.free.push(slot);
                continue;
            }
            let deadline = now + self.shared.limits.request_timeout;
            self.next_epoch += 1;
            self.conns[slot] = Some(Conn {
                stream,
                peer,
                pending: Pending::default(),
                out: Vec::new(),
                state: State::Head,
                deadline,
                moved: now,
                standing: Standing::Idle,
                epoch: self.next_epoch,
                answered: 0,
                more: false,
            });
            self.admission.note(slot, self.next_epoch, Standing::Idle, now);
            self.shared.counters.open += 1;
            self.note_deadline(deadline);
        }
    }

    /// Closes the connection that can best give up its place (see [`admission`]); false
    /// if none can.
    fn evict(&mut self, registry: &Registry, now: Instant) -> bool {
        let conns = &self.conns;
        let Some((slot, reason)) = self.admission.victim(now, |s, e| stands(conns, s, e)) else {
            return false;
        };
        log::debug!("evicting a connection ({}) to make room", reason.label());
        self.shared.counters.evicted[reason as usize] += 1;
        self.close(registry, slot);
        true
    }

    /// After a connection's turn: its new standing for admission, and whether it needs
    /// another turn at once.
    fn after_turn(&mut self, slot: usize, before: (u64, Instant), now: Instant) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let standing = conn.standing();
        // An idle connection that just answered a request starts waiting again, and an owed
        // one whose output moved starts stalling again: to the back.
        let (answered_before, moved_before) = before;
        let active = match standing {
            Standing::Idle => conn.answered != answered_before,
            Standing::Owed => conn.moved != moved_before,
            Standing::Partial => false,
        };
        if standing != conn.standing || active {
            self.next_epoch += 1;
            conn.standing = standing;
            conn.epoch = self.next_epoch;
            self.admission.note(slot, conn.epoch, standing, now);
        }
        if std::mem::take(&mut conn.more) {
            self.again.push(slot);
        }
        let conns = &self.conns;
        self.admission.compact(self.shared.counters.open, |s, e| stands(conns, s, e));
    }

    /// Whether some connection has work left from its last turn.
    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.counters.accepted
    }

    pub fn has_more(&self) -> bool {
        !self.again.is_empty()
    }

    /// Gives the connections with work left their next turn.
    pub fn resume(&mut self, registry: &Registry, snap: &Snapshot, now: Instant) -> Happened {
        let mut happened = Happened::default();
        for slot in std::mem::take(&mut self.again) {
            if self.conns.get(slot).is_some_and(Option::is_some) {
                happened.add(self.drive_slot(registry, slot, false, snap, now));
            }
        }
        happened
    }

    /// Out of file descriptors: accepts one waiting connection into the spare fd's room and
    /// closes it. False when there is nothing more to do now: the backlog is empty, or no
    /// room could be made (then accepting is tried again after [`RETRY_ACCEPT`]).
    fn reject_one(&mut self) -> bool {
        let Some(spare) = self.spare_fd.take() else {
            self.retry_accept = true;
            return false;
        };
        drop(spare);
        let accepted = self.listener.accept();
        self.spare_fd = File::open("/dev/null").ok();
        match accepted {
            Ok((stream, _)) => {
                drop(stream);
                self.shared.counters.accepted += 1;
                self.shared.counters.rejected += 1;
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => {
                log::debug!("accept: {e}");
                self.retry_accept = true;
                false
            }
        }
    }

    /// Handles readiness on a connection's token: reads, answers from `snap`, writes.
    /// `read_closed`: the event said the peer closed its side.
    pub fn on_event(
        &mut self,
        registry: &Registry,
        token: Token,
        read_closed: bool,
        snap: &Snapshot,
        now: Instant,
    ) -> Happened {
        match token.0.checked_sub(self.first_token) {
            Some(slot) => self.drive_slot(registry, slot, read_closed, snap, now),
            None => Happened::default(),
        }
    }

    fn drive_slot(
        &mut self,
        registry: &Registry,
        slot: usize,
        read_closed: bool,
        snap: &Snapshot,
        now: Instant,
    ) -> Happened {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return Happened::default();
        };
        let before = (conn.answered, conn.moved);
        match conn.drive(&mut self.shared, snap, now, read_closed) {
            Outcome::Keep => {
                let due = conn.due(&self.shared.limits);
                self.note_deadline(due);
                self.after_turn(slot, before, now);
            }
            Outcome::Close => self.close(registry, slot),
        }
        std::mem::take(&mut self.shared.happened)
    }

    /// Closes the connections whose deadline has passed; tries accepting again if that
    /// stopped for want of a file descriptor.
    pub fn expire(&mut self, registry: &Registry, now: Instant) {
        if self.next_expiry.is_none_or(|t| t > now) {
            return;
        }
        self.next_expiry = None;
        if self.retry_accept {
            self.accept(registry, now);
        }
        for slot in 0..self.conns.len() {
            let Some(conn) = self.conns[slot].as_mut() else {
                continue;
            };
            let due = conn.due(&self.shared.limits);
            if due > now {
                self.note_deadline(due);
                continue;
            }
            if conn.state == State::Head && conn.pending.len() > 0 && conn.out.is_empty() {
                // Best effort: the client stalled mid-request (slowloris); tell it why (not
                // after part of another answer).
                let mut out = Vec::new();
                Response::error(408).write_to(false, &mut out);
                let _ = conn.stream.write(&out);
            }
            log::debug!(
                "connection timed out in state {:?} with {} bytes unsent",
                conn.state,
                conn.out.len()
            );
            self.shared.counters.dropped += 1;
            self.close(registry, slot);
        }
    }

    fn note_deadline(&mut self, deadline: Instant) {
        if self.next_expiry.is_none_or(|t| deadline < t) {
            self.next_expiry = Some(deadline);
        }
    }

    fn close(&mut self, registry: &Registry, slot: usize) {
        if let Some(mut conn) = self.conns[slot].take() {
            let _ = registry.deregister(&mut conn.stream);
            self.free.push(slot);
            self.shared.counters.open -= 1;
        }
    }
}

/// Whether the connection in `slot` still stands as admission noted it at `epoch`.
fn stands(conns: &[Option<Conn>], slot: usize, epoch: u64) -> bool {
    conns.get(slot).and_then(Option::as_ref).is_some_and(|c| c.epoch == epoch)
}

impl Conn {
    /// Reads, answers and writes as far as the socket allows without blocking.
    fn drive(
        &mut self,
        shared: &mut Shared,
        snap: &Snapshot,
        now: Instant,
        read_closed: bool,
    ) -> Outcome {
        let conn = self;
        let Shared { limits, scratch, counters: http, happened } = shared;
        // A read shorter than the room it had emptied the socket: with edge-triggered events,
        // more data will come with an event of its own, so the read that would only say
        // WouldBlock is saved (one system call per request). Not when the peer has closed: its
        // EOF, already queued, would bring no new event.
        let mut drained = false;
        if let State::Lingering { discarded } = conn.state {
            return linger(conn, scratch, discarded);
        }
        let mut eof = false;
        let mut budget = REQUESTS_PER_TURN;
        loop {
            if !flush(conn, now) {
                return Outcome::Close;
            }
            if conn.out.len() >= MAX_OUT {
                // Answers piled up to the limit and the socket takes no more of them.
                log::debug!("client does not read its answers; dropping it");
                http.dropped += 1;
                return Outcome::Close;
            }
            if eof || !matches!(conn.state, State::Head | State::Idle) {
                break;
            }
            if budget == 0 {
                // Its turn is over; what it sent meanwhile waits in the socket.
                conn.more = true;
                break;
            }
            // Requests read earlier but not answered yet (the output was full) go first.
            let chunk = if conn.pending.has_unanswered() {
                0
            } else if drained {
                break;
            } else {
                let room = MAX_HEAD - conn.pending.len();
                match conn.stream.read(&mut scratch[..room]) {
                    Ok(0) => {
                        eof = true;
                        continue;
                    }
                    Ok(n) => {
                        drained = n < room && !read_closed;
                        n
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return Outcome::Close,
                }
            };
            let nothing_ahead = conn.out.is_empty();
            let done = conn.pending.feed(&scratch[..chunk], snap, http, &mut conn.out, budget);
            if nothing_ahead && !conn.out.is_empty() {
                // Answers start waiting to be written: the send timeout runs from now.
                conn.moved = now;
            }
            budget -= done.answered.min(budget);
            conn.answered += done.answered as u64;
            let (ready, kubelet, lb) = (snap.ready, done.kubelet, done.lb);
            let probe = Probe { from: conn.peer, ready, kubelet, lb };
            happened.probes.extend((0..done.readyz).map(|_| probe));
            if done.close {
                conn.state = State::Closing;
            } else if done.answered > 0 && conn.pending.len() == 0 {
                // Its idle time runs from when the answers are written (see `Conn::due`).
                conn.state = State::Idle;
            } else if done.answered > 0 || conn.state == State::Idle {
                // A new request has begun: its head has the request timeout.
                conn.state = State::Head;
                conn.deadline = now + limits.request_timeout;
            }
        }
        if eof && conn.state != State::Closing {
            // The client is done sending; whatever it asked for is answered once written.
            conn.state = State::Closing;
        }
        if conn.state == State::Closing && conn.out.is_empty() {
            if eof {
                return Outcome::Close;
            }
            let _ = conn.stream.shutdown(Shutdown::Write);
            conn.state = State::Lingering { discarded: 0 };
            conn.deadline = now + LINGER;
            return linger(conn, scratch, 0);
        }
        Outcome::Keep
    }
}

/// Discards input after the last answer until the client closes, within a budget.
fn linger(conn: &mut Conn, scratch: &mut [u8; MAX_HEAD], mut discarded: usize) -> Outcome {
    loop {
        match conn.stream.read(&mut scratch[..]) {
            Ok(0) => return Outcome::Close,
            Ok(n) => {
                discarded += n;
                if discarded > LINGER_BYTES {
                    return Outcome::Close;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.state = State::Lingering { discarded };
                return Outcome::Keep;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Outcome::Close,
        }
    }
}

/// Writes what is pending without blocking, noting when something was. False: the connection
/// is broken.
fn flush(conn: &mut Conn, now: Instant) -> bool {
    let mut written = 0;
    while written < conn.out.len() {
        match conn.stream.write(&conn.out[written..]) {
            Ok(0) => return false,
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    if written > 0 {
        conn.moved = now;
    }
    conn.out.drain(..written);
    if conn.out.is_empty() && conn.out.capacity() > 4096 {
        conn.out = Vec::new();
    }
    true
}
