//! Requests to answers: httparse over at most [`MAX_HEAD`] bytes of a connection's input,
//! the routes, and the answers, appended to the connection's output. Pure apart from the
//! counters: no sockets here, so every byte sequence can be tried in a test.

use std::borrow::Cow;
use std::io::Write;

use super::{HttpCounters, LbWord, MAX_HEAD, MAX_OUT, Snapshot};

const MAX_HEADERS: usize = 64;

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
    /// `/readyz` requests answered.
    pub readyz: u32,
    /// One of them came from the kubelet (`User-Agent: kube-probe/...`).
    pub kubelet: bool,
    /// The last load balancer's word among them.
    pub lb: Option<LbWord>,
}

/// Answers the complete requests at the start of `input` (pipelining), appending the answers
/// to `out`, until `out` holds [`MAX_OUT`] or `limit` requests are answered. Never panics,
/// whatever the bytes.
pub fn process(
    input: &[u8],
    snap: &Snapshot,
    http: &mut HttpCounters,
    out: &mut Vec<u8>,
    limit: usize,
) -> Processed {
    let mut done = Processed::default();
    // Past MAX_OUT of answers waiting, the rest of the requests wait for the client to read;
    // past `limit`, for the connection's next turn.
    while done.consumed < input.len() && !done.close && out.len() < MAX_OUT && done.answered < limit
    {
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
        done.readyz += 1;
        done.kubelet |= req.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("user-agent") && h.value.starts_with(b"kube-probe/")
        });
        let word =
            req.headers.iter().find(|h| h.name.eq_ignore_ascii_case("x-haproxy-server-state"));
        if let Some(word) = word.and_then(|h| LbWord::parse(h.value)) {
            done.lb = Some(word);
        }
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

    /// Whether requests are waiting that were read but not answered (the output was full, or
    /// the connection used its turn).
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
        limit: usize,
    ) -> Processed {
        let done = if self.buf.is_empty() {
            // The common case, one whole request per read: nothing is copied.
            let done = process(chunk, snap, http, out, limit);
            if !done.close {
                self.buf.extend_from_slice(&chunk[done.consumed..]);
            }
            done
        } else {
            self.buf.extend_from_slice(chunk);
            let done = process(&self.buf, snap, http, out, limit);
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
        let held_back = out.len() >= MAX_OUT || done.answered >= limit;
        self.stalled = !done.close && !self.buf.is_empty() && held_back;
        done
    }
}

#[cfg(test)]
mod tests {
    use super::super::Pages;
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
            let done = process(input, view, &mut HttpCounters::default(), &mut out, usize::MAX);
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

    #[test]
    fn a_turn_answers_at_most_its_limit() {
        let five = "GET /readyz HTTP/1.1\r\n\r\n".repeat(5);
        with_view(false, |view| {
            let (mut http, mut out, mut pending) =
                (HttpCounters::default(), Vec::new(), Pending::default());
            let done = pending.feed(five.as_bytes(), view, &mut http, &mut out, 2);
            assert_eq!(done.answered, 2);
            assert!(pending.has_unanswered(), "three requests wait for the next turn");
            let done = pending.feed(&[], view, &mut http, &mut out, 8);
            assert_eq!(done.answered, 3);
            assert!(!pending.has_unanswered() && pending.len() == 0);
        });
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
                let done =
                    pending.feed(&input[at..at + take], view, &mut http, &mut out, usize::MAX);
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

    #[test]
    fn a_load_balancers_word_in_a_probe_is_read() {
        let check = "GET /readyz HTTP/1.0\r\nx-haproxy-server-state: DOWN; address=127.0.0.1; \
                     port=18081; name=b/s1; node=vm; weight=1/0; scur=2/7; qcur=1\r\n\r\n";
        let (_, done) = run(check.as_bytes(), true);
        let word = done.lb.unwrap();
        assert_eq!((word.down, word.sessions, word.queued), (true, 2, 1));
        assert_ne!(word.server, 0, "name=b/s1");
        // Only /readyz's count; the last one wins.
        let two = "GET /readyz HTTP/1.1\r\nX-Haproxy-Server-State: UP 2/3; scur=0/0; qcur=0\r\n\r\n\
                   GET /readyz HTTP/1.1\r\nX-Haproxy-Server-State: MAINT; scur=0/0; qcur=0\r\n\r\n";
        assert_eq!(
            run(two.as_bytes(), true).1.lb,
            Some(LbWord { down: true, sessions: 0, queued: 0, server: 0 })
        );
        let livez = "GET /livez HTTP/1.1\r\nX-Haproxy-Server-State: DOWN; scur=0/0; qcur=0\r\n\r\n";
        assert_eq!(run(livez.as_bytes(), true).1.lb, None);
    }

    #[test]
    fn a_load_balancers_word_is_all_there_or_nothing() {
        let up = LbWord::parse(b"UP 2/3; address=10.0.0.1; scur=13/22; qcur=0");
        assert_eq!(up, Some(LbWord { down: false, sessions: 13, queued: 0, server: 0 }));
        let named =
            |name: &str| LbWord::parse(format!("DOWN; name={name}; scur=0; qcur=0").as_bytes());
        assert_eq!(named("b/s1").map(|w| w.server), named("b/s1").map(|w| w.server));
        assert_ne!(named("b/s1").map(|w| w.server), named("b/s2").map(|w| w.server));
        for bad in [
            &b""[..],
            b"DOWN",
            b"DOWN; scur=0/0",
            b"DOWN; qcur=0",
            b"DOWN; scur=x; qcur=0",
            b"\xff; scur=0; qcur=0",
            b"; scur=0; qcur=0",
        ] {
            assert_eq!(LbWord::parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
