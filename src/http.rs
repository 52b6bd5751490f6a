//! lastcall's own HTTP endpoint, on a mio listener in the one event loop.
//!
//! It is probed by kubelets, load balancers and Prometheus, and reachable by anything on the
//! pod network, so nothing a client does may block the loop or grow memory: requests are
//! parsed with httparse from at most [`MAX_HEAD`] bytes per connection, answers wait in at
//! most [`MAX_OUT`] bytes, every connection has a deadline, and the number of connections is
//! capped. Every bad input ends in a status code or a closed connection, logged at debug.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

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
    /// Connections closed at once because the maximum was open.
    pub rejected: u64,
    /// Connections dropped for a timeout, bad input, or not reading their answers.
    pub dropped: u64,
}

/// What the endpoint did in one call that the supervisor must know.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Happened {
    /// `/readyz` was requested.
    pub probed: bool,
}

impl Happened {
    pub fn add(&mut self, other: Happened) {
        self.probed |= other.probed;
    }
}

/// The largest request head accepted; a longer one gets 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// Unsent output beyond this means the client does not read its answers: it is dropped.
pub const MAX_OUT: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;
/// After an error answer, how long lastcall keeps reading (and discarding) so that closing
/// with unread input does not reset the connection before the client has read the answer.
const LINGER: Duration = Duration::from_secs(2);
/// The most input discarded per lingering connection.
const LINGER_BYTES: usize = 256 * 1024;
/// Out of file descriptors with no room to make, how soon accepting is tried again.
const RETRY_ACCEPT: Duration = Duration::from_millis(100);

/// The limits set by options.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections beyond this are accepted and closed at once, so the backlog never fills.
    pub max_connections: usize,
    /// How long a request head may take to arrive (slowloris).
    pub request_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
}

/// One answer, before it is written.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Cow<'static, str>,
    pub content_type: &'static str,
    /// Add `Allow: GET, HEAD` (405).
    pub allow: bool,
    /// The connection closes after this answer.
    pub close: bool,
}

const PLAIN: &str = "text/plain; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

impl Response {
    /// An error answer; the connection closes after it.
    pub fn error(status: u16) -> Response {
        let body = Cow::Owned(format!("{}\n", reason(status).to_ascii_lowercase()));
        Response { status, body, content_type: PLAIN, allow: status == 405, close: true }
    }

    pub fn write_to(&self, head_only: bool, out: &mut Vec<u8>) {
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}{}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len(),
            if self.allow { "Allow: GET, HEAD\r\n" } else { "" },
            if self.close { "Connection: close\r\n" } else { "" },
        );
        if !head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Route {
    Readyz,
    Livez,
    Metrics,
}

/// Paths, with the aliases common in existing manifests.
fn find_route(path: &str) -> Option<Route> {
    match path {
        "/readyz" | "/ready" => Some(Route::Readyz),
        "/livez" | "/healthz" | "/health" => Some(Route::Livez),
        "/metrics" => Some(Route::Metrics),
        _ => None,
    }
}

/// Answers one parsed request. Pure apart from the counters.
pub fn route(method: &str, target: &str, snap: &Snapshot, http: &mut HttpCounters) -> Response {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let Some(route) = find_route(path) else {
        return Response::error(404);
    };
    if method != "GET" && method != "HEAD" {
        return Response::error(405);
    }
    let verbose = query.split('&').any(|kv| kv.split('=').next() == Some("verbose"));
    let (ok, word) = match route {
        Route::Metrics => {
            let body = Cow::Owned(snap.pages.metrics(http));
            return Response {
                status: 200,
                body,
                content_type: PROMETHEUS,
                allow: false,
                close: false,
            };
        }
        Route::Readyz if snap.ready => (true, "ready"),
        Route::Readyz => (false, "not ready"),
        Route::Livez if snap.live => (true, "alive"),
        Route::Livez => (false, "not alive"),
    };
    let counter = &mut http.probes[usize::from(route == Route::Livez)][usize::from(!ok)];
    *counter += 1;
    let body = if verbose {
        Cow::Owned(format!("{word}\n{}", snap.pages.verbose()))
    } else if ok {
        Cow::Borrowed(if route == Route::Readyz { "ready\n" } else { "alive\n" })
    } else {
        Cow::Borrowed(if route == Route::Readyz { "not ready\n" } else { "not alive\n" })
    };
    Response {
        status: if ok { 200 } else { 503 },
        body,
        content_type: PLAIN,
        allow: false,
        close: false,
    }
}

/// What [`process`] did with its input.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Processed {
    /// Bytes of complete requests answered (the rest is a partial head).
    pub consumed: usize,
    /// Requests answered.
    pub answered: usize,
    /// The connection must close after the output (error, `Connection: close`, HTTP/1.0).
    pub close: bool,
    /// `/readyz` was requested.
    pub probed: bool,
}

/// Answers the complete requests at the start of `input` (pipelining), appending the answers
/// to `out`, until `out` holds [`MAX_OUT`]. Never panics, whatever the bytes.
pub fn process(
    input: &[u8],
    snap: &Snapshot,
    http: &mut HttpCounters,
    out: &mut Vec<u8>,
) -> Processed {
    let mut done = Processed::default();
    // Past MAX_OUT of answers waiting, the rest of the requests wait for the client to read.
    while done.consumed < input.len() && !done.close && out.len() < MAX_OUT {
        let rest = &input[done.consumed..];
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let (response, head_only) = match req.parse(rest) {
            Ok(httparse::Status::Complete(used)) if used > MAX_HEAD => {
                (Response::error(431), false)
            }
            Ok(httparse::Status::Complete(used)) => {
                done.consumed += used;
                answer(&req, snap, http, &mut done)
            }
            Ok(httparse::Status::Partial) if rest.len() >= MAX_HEAD => {
                (Response::error(431), false)
            }
            Ok(httparse::Status::Partial) => return done,
            Err(httparse::Error::TooManyHeaders) => (Response::error(431), false),
            Err(e) => {
                log::debug!("bad request: {e}");
                (Response::error(400), false)
            }
        };
        done.answered += 1;
        done.close |= response.close;
        response.write_to(head_only, out);
    }
    done
}

/// The answer to one complete request, and whether it is a HEAD.
fn answer(
    req: &httparse::Request,
    snap: &Snapshot,
    http: &mut HttpCounters,
    done: &mut Processed,
) -> (Response, bool) {
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return (Response::error(400), false);
    };
    // No route takes a body; one would be misread as the next request.
    let has_body = req.headers.iter().any(|h| {
        (h.name.eq_ignore_ascii_case("content-length") && h.value != b"0")
            || h.name.eq_ignore_ascii_case("transfer-encoding")
    });
    if has_body {
        return (Response::error(400), false);
    }
    let connection = req.headers.iter().find(|h| h.name.eq_ignore_ascii_case("connection"));
    let keep_alive = match connection.map(|h| h.value.to_ascii_lowercase()) {
        Some(v) if v == b"close" => false,
        Some(v) if v == b"keep-alive" => true,
        _ => version == 1,
    };
    if target.split('?').next().and_then(find_route) == Some(Route::Readyz) {
        done.probed = true;
    }
    let mut response = route(method, target, snap, http);
    response.close |= !keep_alive;
    (response, method == "HEAD")
}

/// A connection's partial request head, kept between reads.
#[derive(Default)]
pub struct Pending {
    buf: Vec<u8>,
    /// Answering stopped at the output limit with input left over.
    stalled: bool,
}

impl Pending {
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether requests are waiting that were read but not answered (the output was full).
    pub fn has_unanswered(&self) -> bool {
        self.stalled
    }

    /// Feeds newly read bytes: answers what is complete, keeps a partial head (never more
    /// than [`MAX_HEAD`] bytes; the caller reads at most `MAX_HEAD - len()` at a time).
    pub fn feed(
        &mut self,
        chunk: &[u8],
        snap: &Snapshot,
        http: &mut HttpCounters,
        out: &mut Vec<u8>,
    ) -> Processed {
        let done = if self.buf.is_empty() {
            // The common case, one whole request per read: nothing is copied.
            let done = process(chunk, snap, http, out);
            if !done.close {
                self.buf.extend_from_slice(&chunk[done.consumed..]);
            }
            done
        } else {
            self.buf.extend_from_slice(chunk);
            let done = process(&self.buf, snap, http, out);
            if done.close {
                self.buf.clear();
            } else {
                self.buf.drain(..done.consumed);
            }
            done
        };
        if self.buf.is_empty() {
            // Give the memory back: an idle connection holds no buffer.
            self.buf = Vec::new();
        }
        self.stalled = !done.close && !self.buf.is_empty() && out.len() >= MAX_OUT;
        done
    }
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
    pending: Pending,
    out: Vec<u8>,
    state: State,
    deadline: Instant,
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
        Ok(Endpoint {
            listener: TcpListener::bind(addr)?,
            first_token,
            conns: Vec::new(),
            free: Vec::new(),
            spare_fd: File::open("/dev/null").ok(),
            retry_accept: false,
            next_expiry: None,
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
            let mut stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Out of fds, accept fails whether or not a connection waits. The spare
                    // fd makes room to accept one and close it, so that the backlog drains
                    // (the listener is edge-triggered and would not wake us again for it).
                    log::debug!("accept: {e}");
                    if !self.reject_one() {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    log::debug!("accept: {e}");
                    return;
                }
            };
            let counters = &mut self.shared.counters;
            if counters.open >= self.shared.limits.max_connections {
                counters.rejected += 1;
                continue; // dropped: closed at once
            }
            let slot = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
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
            self.conns[slot] = Some(Conn {
                stream,
                pending: Pending::default(),
                out: Vec::new(),
                state: State::Head,
                deadline,
            });
            self.shared.counters.open += 1;
            self.note_deadline(deadline);
        }
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
        let Some(slot) = token.0.checked_sub(self.first_token) else {
            return Happened::default();
        };
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return Happened::default();
        };
        let outcome = conn.drive(&mut self.shared, snap, now, read_closed);
        match outcome {
            Outcome::Keep => {
                let deadline = conn.deadline;
                self.note_deadline(deadline);
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
            if conn.deadline > now {
                let deadline = conn.deadline;
                self.note_deadline(deadline);
                continue;
            }
            if conn.state == State::Head && conn.pending.len() > 0 {
                // Best effort: the client stalled mid-request (slowloris); tell it why.
                let mut out = Vec::new();
                Response::error(408).write_to(false, &mut out);
                let _ = conn.stream.write(&out);
            }
            log::debug!("connection timed out in state {:?}", conn.state);
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
        loop {
            if !flush(conn) {
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
            let done = conn.pending.feed(&scratch[..chunk], snap, http, &mut conn.out);
            happened.add(Happened { probed: done.probed });
            if done.close {
                conn.state = State::Closing;
            } else if done.answered > 0 && conn.pending.len() == 0 {
                conn.state = State::Idle;
                conn.deadline = now + limits.idle_timeout;
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

/// Writes what is pending without blocking. False: the connection is broken.
fn flush(conn: &mut Conn) -> bool {
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
    conn.out.drain(..written);
    if conn.out.is_empty() && conn.out.capacity() > 4096 {
        conn.out = Vec::new();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages that say which they are.
    struct Fixed;

    impl Pages for Fixed {
        fn metrics(&self, _: &HttpCounters) -> String {
            "lastcall_up 1\n".to_string()
        }

        fn verbose(&self) -> String {
            "phase: draining\n".to_string()
        }
    }

    /// Calls `f` with a snapshot of a child that runs (or drains).
    fn with_view<R>(draining: bool, f: impl FnOnce(&Snapshot) -> R) -> R {
        f(&Snapshot { ready: !draining, live: true, pages: &Fixed })
    }

    /// Runs `input` through [`process`] against a running child; returns the output.
    fn run(input: &[u8], draining: bool) -> (String, Processed) {
        with_view(draining, |view| {
            let mut out = Vec::new();
            let done = process(input, view, &mut HttpCounters::default(), &mut out);
            (String::from_utf8(out).unwrap(), done)
        })
    }

    fn status_of(request: &str) -> u16 {
        let (out, _) = run(request.as_bytes(), false);
        out.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    #[test]
    fn statuses() {
        for (request, status) in [
            ("GET /readyz HTTP/1.1\r\n\r\n", 200),
            ("GET /ready HTTP/1.1\r\n\r\n", 200),
            ("HEAD /readyz HTTP/1.0\r\n\r\n", 200),
            ("GET /livez HTTP/1.1\r\n\r\n", 200),
            ("GET /healthz HTTP/1.1\r\n\r\n", 200),
            ("GET /health?x=1 HTTP/1.1\r\n\r\n", 200),
            ("GET /metrics HTTP/1.1\r\n\r\n", 200),
            ("GET /nope HTTP/1.1\r\n\r\n", 404),
            ("POST /readyz HTTP/1.1\r\n\r\n", 405),
            ("GET /readyz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 400),
            ("\x00\x01garbage\r\n\r\n", 400),
            ("GET /readyz HTTP/9.9\r\n\r\n", 400),
        ] {
            assert_eq!(status_of(request), status, "{request:?}");
        }
        let many_headers: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(status_of(&format!("GET /readyz HTTP/1.1\r\n{many_headers}\r\n")), 431);
        let long = format!("GET /readyz HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(status_of(&long), 431);
    }

    #[test]
    fn draining_is_503_and_verbose_explains() {
        let (out, _) = run(b"GET /readyz?verbose HTTP/1.1\r\n\r\n", true);
        assert!(out.starts_with("HTTP/1.1 503 "), "{out}");
        assert!(out.ends_with("\r\n\r\nnot ready\nphase: draining\n"), "{out}");
        let (out, _) = run(b"GET /livez HTTP/1.1\r\n\r\n", true);
        assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    }

    #[test]
    fn head_has_no_body_and_405_has_allow() {
        let (out, _) = run(b"HEAD /readyz HTTP/1.1\r\n\r\n", false);
        assert!(out.ends_with("Content-Length: 6\r\n\r\n"), "{out}");
        let (out, done) = run(b"DELETE /livez HTTP/1.1\r\n\r\n", false);
        assert!(out.contains("Allow: GET, HEAD\r\n") && done.close, "{out}");
    }

    #[test]
    fn pipelining_keep_alive_and_close() {
        let two = b"GET /readyz HTTP/1.1\r\n\r\nGET /livez HTTP/1.1\r\n\r\nGET /rea";
        let (out, done) = run(two, false);
        assert_eq!(done.answered, 2);
        assert_eq!(done.consumed, two.len() - 8, "the partial third request is kept");
        assert!(!done.close);
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2);
        let (_, done) = run(
            b"GET /readyz HTTP/1.1\r\nConnection: close\r\n\r\nGET /readyz HTTP/1.1\r\n\r\n",
            false,
        );
        assert_eq!((done.answered, done.close), (1, true), "nothing is answered after close");
        let (_, done) = run(b"GET /readyz HTTP/1.0\r\n\r\n", false);
        assert!(done.close, "HTTP/1.0 closes by default");
        let (_, done) = run(b"GET /readyz HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", false);
        assert!(!done.close);
    }

    /// Feeds `input` split at `cuts` through [`Pending`]; returns the output.
    fn feed_in_pieces(input: &[u8], cuts: &[usize]) -> (Vec<u8>, usize) {
        with_view(false, |view| feed_through(view, input, cuts))
    }

    fn feed_through(view: &Snapshot, input: &[u8], cuts: &[usize]) -> (Vec<u8>, usize) {
        let mut http = HttpCounters::default();
        let mut pending = Pending::default();
        let mut out = Vec::new();
        let mut max_pending = 0;
        let mut start = 0;
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        bounds.push(input.len());
        bounds.sort_unstable();
        for end in bounds {
            // As the connection does: never read more than the head buffer has room for.
            let mut at = start;
            while at < end {
                let take = (end - at).min(MAX_HEAD - pending.len());
                let done = pending.feed(&input[at..at + take], view, &mut http, &mut out);
                max_pending = max_pending.max(pending.len());
                at += take;
                if done.close {
                    return (out, max_pending);
                }
            }
            start = end;
        }
        (out, max_pending)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Random bytes in random pieces: never a panic, never more than MAX_HEAD held, and
        /// every answer is a well-formed HTTP/1.1 status line.
        #[test]
        fn random_bytes_never_panic(input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20_000),
                                    cuts in proptest::collection::vec(0usize..20_000, 0..16)) {
            let (out, max_pending) = feed_in_pieces(&input, &cuts);
            proptest::prop_assert!(max_pending <= MAX_HEAD);
            let text = String::from_utf8_lossy(&out);
            for answer in text.split("HTTP/1.1 ").skip(1) {
                let status: u16 = answer[..3].parse().unwrap();
                proptest::prop_assert!([200, 400, 404, 405, 431, 503].contains(&status), "{}", status);
            }
        }

        /// Valid pipelined requests give the same answers however they are split.
        #[test]
        fn splitting_does_not_change_answers(picks in proptest::collection::vec(0usize..6, 1..12),
                                             cuts in proptest::collection::vec(0usize..2_000, 0..12)) {
            const REQUESTS: [&str; 6] = [
                "GET /readyz HTTP/1.1\r\n\r\n",
                "HEAD /livez HTTP/1.1\r\nHost: x\r\n\r\n",
                "GET /nope HTTP/1.1\r\n\r\n",
                "GET /healthz?verbose HTTP/1.1\r\nAccept: */*\r\n\r\n",
                "PUT /readyz HTTP/1.1\r\n\r\n",
                "GET /ready HTTP/1.1\r\nConnection: keep-alive\r\n\r\n",
            ];
            let input: String = picks.iter().map(|&i| REQUESTS[i]).collect();
            let (whole, _) = feed_in_pieces(input.as_bytes(), &[]);
            let (pieces, _) = feed_in_pieces(input.as_bytes(), &cuts);
            proptest::prop_assert_eq!(String::from_utf8_lossy(&whole), String::from_utf8_lossy(&pieces));
        }
    }
}
