//! A rolling restart behind HAProxy, under load.
//!
//! Two backends, each a small Python HTTP app wrapped by lastcall. HAProxy health-checks
//! lastcall's `/readyz` (every 100 ms, one failure is enough) and sends traffic to the app
//! ports. Load client threads keep quick and slow (100-500 ms) requests flowing while each
//! backend is restarted twice in turn: SIGTERM to lastcall, wait for its exit, start it
//! again, wait until HAProxy sees it up. Every non-2xx answer and every connection error is
//! a failure.
//!
//! HAProxy retries only failed connects (its default `retry-on conn-failure`), never a
//! request already sent, so a request cut off by a stopping app shows up as a failure.
//!
//! [`Setup`] says what wraps the app and how the app stops: the test runs lastcall around a
//! graceful app; `bench/lb` compares it with tini (HAProxy then checks the app's own
//! `/health`) and an app that dies at once on SIGTERM, as one without a handler does.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

use super::{Balancer, backends, get, haproxy_config, haproxy_servers, python_and, stats_socket};
use crate::support::{Crew, TIMEOUT, TestDir};

/// The app: `/` answers at once, `/work?ms=N` after N ms, `/health` is its own readiness.
/// HTTP/1.0, so every connection carries one request: no idle keep-alive connection keeps
/// the app from exiting. On SIGTERM it stops accepting, finishes the requests in flight
/// (the server joins its request threads on close) and exits 0; with `abrupt` it keeps
/// Python's default, dying at once.
const APP: &str = r#"import signal, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

class Handler(BaseHTTPRequestHandler):
    disable_nagle_algorithm = True  # the head and the body go out in two writes

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/work":
            ms = int(parse_qs(url.query).get("ms", ["0"])[0])
            time.sleep(min(ms, 5000) / 1000)
        elif url.path not in ("/", "/health"):
            self.send_error(404)
            return
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True

server = Server(("127.0.0.1", int(sys.argv[1])), Handler)
if sys.argv[2:] != ["abrupt"]:
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
server.serve_forever(poll_interval=0.05)
server.server_close()
"#;

/// Load client threads sending only quick requests, each pausing between two requests.
const QUICK_CLIENTS: usize = 3;
const QUICK_PAUSE: Duration = Duration::from_millis(10);
/// Load client threads sending only slow requests (100-500 ms).
const SLOW_CLIENTS: usize = 3;
/// How long the load runs before the first restart, between restarts, and after the last.
const SETTLE: Duration = Duration::from_millis(500);
/// The load stops by itself after this, whatever happens to the run.
const LOAD_LIMIT: Duration = Duration::from_secs(60);

/// What wraps the app and how it stops.
pub struct Setup {
    /// Another wrapper than lastcall (`tini`), which has no endpoint.
    pub other: Option<&'static str>,
    /// An app that dies at once on SIGTERM.
    pub abrupt: bool,
}

/// One step of a backend's restart.
#[derive(Clone, Copy, Debug)]
pub enum Step {
    /// SIGTERM sent to its wrapper.
    Sigterm,
    /// The wrapper exited with this status (-1: killed).
    Exited(i32),
    /// HAProxy sees it up again.
    Up,
}

/// What one rolling restart found.
pub struct Rolled {
    pub requests: Vec<Request>,
    /// Each restart step: when (since the load started), of which backend, and what.
    pub events: Vec<(Duration, &'static str, Step)>,
    /// One line of figures (the failed requests on the lines after it).
    pub summary: String,
}

impl Rolled {
    pub fn failed(&self) -> impl Iterator<Item = &Request> {
        self.requests.iter().filter(|r| !r.ok())
    }
}

/// Runs the rolling restart, each backend restarted twice, and prints its summary; `None`
/// when HAProxy or python3 is missing (see [`crate::support::required`]).
pub fn run(setup: &Setup) -> Option<Rolled> {
    let python = python_and("haproxy")?;
    let dir = TestDir::new("haproxy");
    dir.write("app.py", APP);
    let app = [python, dir.join("app.py").to_string_lossy().into_owned()];
    let (front, mut backends) = backends("haproxy", &app);
    // Under tini, which has no endpoint, HAProxy checks the app's own /health.
    let check = if setup.other.is_some() { "/health" } else { "/readyz" };
    let servers = haproxy_servers(&backends, setup.other.is_some());
    let backend = format!(
        "    option httpchk GET {check}
    http-check send-state
    http-check expect status 200
    default-server inter 100ms fall 1 rise 1
{servers}"
    );
    let mut lb = Balancer::haproxy(&dir, &haproxy_config(front, &stats_socket(&dir), 10, &backend));
    let drain = ["--prestop-delay", "1s"].map(String::from);
    let app_args: &[&str] = if setup.abrupt { &["abrupt"] } else { &[] };
    for backend in &mut backends {
        backend.start(setup.other, &drain, app_args);
    }
    for backend in &mut backends {
        backend.wait_up(&mut lb);
    }

    let start = Instant::now();
    let mut events = Vec::new();
    let load = load(front, start);
    std::thread::sleep(SETTLE);
    for round in 0..4 {
        let backend = &mut backends[round % 2];
        let name = backend.name;
        events.push((start.elapsed(), name, Step::Sigterm));
        let code = backend.stop(TIMEOUT).code().unwrap_or(-1);
        events.push((start.elapsed(), name, Step::Exited(code)));
        backend.wait_down(&lb);
        backend.start(setup.other, &drain, app_args);
        backend.wait_up(&mut lb);
        events.push((start.elapsed(), name, Step::Up));
        std::thread::sleep(SETTLE);
    }
    let requests = load.stop();
    let elapsed = start.elapsed();
    let (retries, redispatches) = lb.stats.as_ref().expect("HAProxy's stats").retries();

    let mut rolled = Rolled { requests, events, summary: String::new() };
    let failed: Vec<&Request> = rolled.failed().collect();
    let mut summary = format!(
        "rolling restart ({} wrapping a{} app): {} requests in {:.1}s, {} failed; \
         HAProxy retried {retries} connects, redispatched {redispatches}",
        setup.other.unwrap_or("lastcall"),
        if setup.abrupt { "n abrupt" } else { " graceful" },
        rolled.requests.len(),
        elapsed.as_secs_f64(),
        failed.len(),
    );
    for r in failed.iter().take(10) {
        let _ = write!(
            summary,
            "\n  failed: GET {} from {:?} to {:?}: {}",
            r.path, r.start, r.end, r.outcome
        );
    }
    // Straight to stderr: libtest would hide an `eprintln!` of a test that passes.
    let _ = writeln!(std::io::stderr(), "{summary}");
    rolled.summary = summary;
    Some(rolled)
}

/// One request of the load client, and how it went.
pub struct Request {
    pub path: String,
    /// Since the load started.
    pub start: Duration,
    pub end: Duration,
    /// The status code, or what went wrong.
    pub outcome: String,
}

impl Request {
    pub fn ok(&self) -> bool {
        self.outcome.starts_with('2')
    }
}

/// The load client: threads sending requests through HAProxy until told to stop.
fn load(port: u16, start: Instant) -> Crew<Request> {
    let mut crew = Crew::new(start, LOAD_LIMIT);
    for n in 0..QUICK_CLIENTS + SLOW_CLIENTS {
        crew.spawn(move |i| {
            let path = if n < QUICK_CLIENTS {
                "/".to_string()
            } else {
                // 100 to 500 ms, spread evenly, different in every thread.
                format!("/work?ms={}", 100 + (i * 137 + n * 61) % 401)
            };
            let begin = start.elapsed();
            let outcome = get(port, &path);
            let pause = if n < QUICK_CLIENTS { QUICK_PAUSE } else { Duration::ZERO };
            (Request { path, start: begin, end: start.elapsed(), outcome }, pause)
        });
    }
    crew
}
