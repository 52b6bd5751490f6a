//! End to end: a rolling restart behind HAProxy drops no request.
//!
//! Two backends, each a small Python HTTP app wrapped by lastcall. HAProxy health-checks
//! lastcall's `/readyz` (every 100 ms, one failure is enough) and sends traffic to the app
//! ports. Load client threads keep quick and slow (100-500 ms) requests flowing while each
//! backend is restarted twice in turn: SIGTERM to lastcall, wait for its exit, start it
//! again, wait until HAProxy sees it up. Every non-2xx answer and every connection error is
//! a failure; there must be none.
//!
//! HAProxy retries only failed connects (its default `retry-on conn-failure`), never a
//! request already sent, so a request cut off by a stopping app shows up as a failure.
//!
//! `bench/run` runs this same scenario with other settings, through variables that only it
//! sets (the test ignores them otherwise):
//! - `ROLLING_WRAPPER=tini`: tini in lastcall's place, HAProxy checking the app's `/health`;
//! - `ROLLING_APP=abrupt`: an app that dies at once on SIGTERM, as one without a handler does;
//! - `ROLLING_LOG=FILE`: one line per request and per restart step, for the chart. With it
//!   the scenario's figures are recorded rather than asserted.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Crew, Running, TestDir, python3, required, unix_nanos, wait_until};

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
/// The load stops by itself after this, whatever happens to the test.
const LOAD_LIMIT: Duration = Duration::from_secs(60);

#[test]
fn a_rolling_restart_behind_haproxy_drops_no_request() {
    let haproxy_found = Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !required("haproxy (apt-get install haproxy)", haproxy_found) {
        return;
    }
    let Some(python) = python3() else {
        required("python3 (apt-get install python3)", false);
        return;
    };
    let setup = Setup::from_env();
    let dir = TestDir::new("haproxy");
    dir.write("app.py", APP);

    let [front, a_app, a_ready, b_app, b_ready] = quiet_ports();
    let mut backends = [Backend::new("a", a_app, a_ready), Backend::new("b", b_app, b_ready)];
    let stats = dir.join("stats.sock");
    dir.write("haproxy.cfg", &haproxy_config(&setup, front, &stats, &backends));
    let mut haproxy = dir
        .command("haproxy")
        .args(["-f", &dir.join("haproxy.cfg").to_string_lossy(), "-db"])
        .spawn();
    let stats = Stats(stats);
    haproxy.wait_until("HAProxy answers on its stats socket", || {
        stats.field("BACKEND", "status").is_some()
    });
    let app = [python, dir.join("app.py").to_string_lossy().into_owned()];
    for backend in &mut backends {
        backend.start(&setup, &app);
    }
    for backend in &mut backends {
        backend.wait_up(&stats);
    }

    let start = Instant::now();
    let mut events = Vec::new();
    let load = load(front, start);
    std::thread::sleep(SETTLE);
    for round in 0..4 {
        let backend = &mut backends[round % 2];
        let name = backend.name;
        events.push((start.elapsed(), format!("sigterm {name}")));
        let code = backend.stop();
        events.push((start.elapsed(), format!("exited {name} {code}")));
        if !setup.recording() {
            assert_eq!(code, 0, "backend {name}: lastcall's exit status after SIGTERM");
        }
        backend.wait_down(&stats);
        backend.start(&setup, &app);
        backend.wait_up(&stats);
        events.push((start.elapsed(), format!("up {name}")));
        std::thread::sleep(SETTLE);
    }
    let requests = load.stop();
    let elapsed = start.elapsed();
    let (retries, redispatches) = stats.retries();

    let failed: Vec<&Request> = requests.iter().filter(|r| !r.ok()).collect();
    let mut summary = format!(
        "rolling restart ({} wrapping a{} app): {} requests in {:.1}s, {} failed; \
         HAProxy retried {retries} connects, redispatched {redispatches}",
        setup.wrapper.name(),
        if setup.abrupt { "n abrupt" } else { " graceful" },
        requests.len(),
        elapsed.as_secs_f64(),
        failed.len(),
    );
    for r in failed.iter().take(10) {
        let _ = write!(summary, "\n  failed: GET {} at {:?}: {}", r.path, r.start, r.outcome);
    }
    // Straight to stderr: libtest would hide an `eprintln!` of a test that passes.
    let _ = writeln!(std::io::stderr(), "{summary}");
    if let Some(log) = &setup.log {
        write_log(log, &requests, &events, &summary);
        return;
    }
    assert!(requests.len() > 100, "too few requests to prove anything: {}", requests.len());
    assert!(failed.is_empty(), "{summary}");
}

/// What wraps the app.
#[derive(Clone, Copy)]
enum Wrapper {
    Lastcall,
    Tini,
}

impl Wrapper {
    fn name(self) -> &'static str {
        match self {
            Wrapper::Lastcall => "lastcall",
            Wrapper::Tini => "tini",
        }
    }
}

/// The scenario's settings: the test's own, or bench/run's.
struct Setup {
    wrapper: Wrapper,
    abrupt: bool,
    log: Option<PathBuf>,
}

impl Setup {
    fn from_env() -> Setup {
        let var = |name| std::env::var(name).unwrap_or_default();
        let wrapper = match var("ROLLING_WRAPPER").as_str() {
            "" | "lastcall" => Wrapper::Lastcall,
            "tini" => Wrapper::Tini,
            other => panic!("ROLLING_WRAPPER={other}: expected lastcall or tini"),
        };
        let abrupt = match var("ROLLING_APP").as_str() {
            "" | "graceful" => false,
            "abrupt" => true,
            other => panic!("ROLLING_APP={other}: expected graceful or abrupt"),
        };
        let log = std::env::var_os("ROLLING_LOG").map(PathBuf::from);
        Setup { wrapper, abrupt, log }
    }

    /// Whether bench/run asked for figures rather than a verdict.
    fn recording(&self) -> bool {
        self.log.is_some()
    }
}

/// The HAProxy configuration: one frontend, the two backends, health checks on lastcall's
/// `/readyz` (or, under tini, which has no endpoint, on the app's own `/health`).
fn haproxy_config(setup: &Setup, front: u16, stats: &Path, backends: &[Backend]) -> String {
    let check_path = match setup.wrapper {
        Wrapper::Lastcall => "/readyz",
        Wrapper::Tini => "/health",
    };
    let mut servers = String::new();
    for b in backends {
        let port = match setup.wrapper {
            Wrapper::Lastcall => format!(" port {}", b.ready_port),
            Wrapper::Tini => String::new(),
        };
        let _ = writeln!(servers, "    server {} 127.0.0.1:{} check{port}", b.name, b.app_port);
    }
    let backend = format!(
        "    option httpchk GET {check_path}
    http-check expect status 200
    default-server inter 100ms fall 1 rise 1
{servers}"
    );
    config(front, stats, 10, &backend)
}

/// An HAProxy configuration: a frontend on 127.0.0.1:`front` to the round-robin backend `app`,
/// which `backend`'s lines complete (checks, servers), client and server timeouts of
/// `timeout` seconds, and the stats socket [`Stats`] reads.
pub fn config(front: u16, stats: &Path, timeout: u32, backend: &str) -> String {
    format!(
        "global
    nbthread 1
    stats socket {stats} mode 600 level user

defaults
    mode http
    timeout connect 1s
    timeout client {timeout}s
    timeout server {timeout}s
    timeout check 1s
    retries 3
    option redispatch

frontend web
    bind 127.0.0.1:{front}
    default_backend app

backend app
    balance roundrobin
{backend}",
        stats = stats.display()
    )
}

/// One backend: the app on `app_port`, wrapped by lastcall with its endpoint on `ready_port`.
struct Backend {
    name: &'static str,
    app_port: u16,
    ready_port: u16,
    /// Where the wrapper's output goes (each start truncates it).
    dir: TestDir,
    wrapper: Option<Running>,
}

impl Backend {
    fn new(name: &'static str, app_port: u16, ready_port: u16) -> Backend {
        let dir = TestDir::new(&format!("haproxy-{name}"));
        Backend { name, app_port, ready_port, dir, wrapper: None }
    }

    /// Starts `app` (the interpreter and the script) on the app port, wrapped.
    fn start(&mut self, setup: &Setup, app: &[String]) {
        let mut command = app.to_vec();
        command.push(self.app_port.to_string());
        if setup.abrupt {
            command.push("abrupt".to_string());
        }
        let cmd = match setup.wrapper {
            Wrapper::Lastcall => self.dir.lastcall().args([
                "--listen",
                &format!("127.0.0.1:{}", self.ready_port),
                "--prestop-delay",
                "1s",
                "--grace-period",
                "10s",
                "--ready-http",
                &format!("http://127.0.0.1:{}/health", self.app_port),
                "--ready-interval",
                "100ms",
                "--",
            ]),
            Wrapper::Tini => self.dir.command("tini").arg("--"),
        };
        self.wrapper = Some(cmd.args(command).spawn());
    }

    /// Waits until HAProxy has seen the backend pass a health check.
    fn wait_up(&mut self, stats: &Stats) {
        let name = self.name;
        let running = self.wrapper.as_mut().expect("started");
        running.wait_until(&format!("HAProxy sees backend {name} up"), || stats.is_up(name));
    }

    /// Waits until HAProxy has taken the backend out. Under lastcall that happened during
    /// the drain; under tini HAProxy finds out from a failed check after the app is gone.
    fn wait_down(&self, stats: &Stats) {
        let name = self.name;
        wait_until(&format!("HAProxy sees backend {name} down"), || !stats.is_up(name));
    }

    /// SIGTERM to the wrapper; returns its exit status once it has ended.
    fn stop(&mut self) -> i32 {
        let running = self.wrapper.take().expect("started");
        running.signal(libc::SIGTERM);
        let out = running.wait();
        out.check(out.code().is_some(), "the wrapper must exit, not be killed");
        out.code().unwrap_or(-1)
    }
}

/// HAProxy's stats socket.
pub struct Stats(pub PathBuf);

impl Stats {
    /// Field `name` (a `show stat` column) of the row for `svname` in the backend `app`;
    /// none while HAProxy is not up yet.
    fn field(&self, svname: &str, name: &str) -> Option<String> {
        let mut socket = UnixStream::connect(&self.0).ok()?;
        socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        socket.write_all(b"show stat\n").ok()?;
        let mut text = String::new();
        socket.read_to_string(&mut text).ok()?;
        let mut lines = text.lines();
        let header = lines.next()?.strip_prefix("# ")?;
        let index = header.split(',').position(|h| h == name)?;
        let row = lines.find(|l| l.starts_with(&format!("app,{svname},")))?;
        row.split(',').nth(index).map(str::to_string)
    }

    /// Whether HAProxy has seen the server pass a health check and counts it up. Before
    /// the first check, a server is shown up, with check status `INI`.
    pub fn is_up(&self, server: &str) -> bool {
        self.field(server, "status").is_some_and(|s| s.starts_with("UP"))
            && self.field(server, "check_status").is_some_and(|s| s == "L7OK")
    }

    /// The backend's retried connects and redispatched requests.
    fn retries(&self) -> (String, String) {
        let get = |name| self.field("BACKEND", name).unwrap_or_else(|| "?".to_string());
        (get("wretr"), get("wredis"))
    }
}

/// One request of the load client, and how it went.
struct Request {
    path: String,
    /// Since the scenario started.
    start: Duration,
    end: Duration,
    /// The status code, or what went wrong.
    outcome: String,
}

impl Request {
    fn ok(&self) -> bool {
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

/// One GET through a load balancer on its own connection: the status code when the whole
/// answer came (the body's length, or a chunked body's last chunk), else what went wrong
/// (`cut short: 200`, `error: ...`, `no status line in ...`).
pub fn get(port: u16, path: &str) -> String {
    let attempt = || -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        // One write: `write!` would send each piece on its own, and Nagle's algorithm would
        // hold the later ones until HAProxy's delayed ACK, 40 ms later.
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes())?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw);
        let (Some(status), true) = (text.split(' ').nth(1), text.starts_with("HTTP/1.")) else {
            return Ok(format!(
                "no status line in {:?}",
                text.chars().take(80).collect::<String>()
            ));
        };
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return Ok(format!("error: no complete head in {} bytes", raw.len()));
        };
        let head = head.to_ascii_lowercase();
        let complete = if head.contains("transfer-encoding: chunked") {
            body.ends_with("0\r\n\r\n")
        } else {
            head.lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|n| n.trim().parse::<usize>().ok())
                .is_none_or(|n| body.len() == n)
        };
        Ok(if complete { status.to_string() } else { format!("cut short: {status}") })
    };
    attempt().unwrap_or_else(|e| format!("error: {e}"))
}

/// `N` different free ports below Linux's ephemeral range (32768 and up), so that no
/// outgoing connection takes one while its backend restarts.
pub fn quiet_ports<const N: usize>() -> [u16; N] {
    let mut seed = u64::from(std::process::id()) ^ unix_nanos() as u64;
    let mut found = Vec::new();
    for _ in 0..1000 {
        if found.len() == N {
            break;
        }
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let port = 20000 + (seed >> 33) as u16 % 12000;
        if !found.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            found.push(port);
        }
    }
    found.try_into().expect("free ports between 20000 and 32000")
}

/// For bench/run: `req START_MS END_MS OUTCOME PATH` per request, `event T_MS WHAT` per
/// restart step, then `summary ...`.
fn write_log(path: &Path, requests: &[Request], events: &[(Duration, String)], summary: &str) {
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let mut text = String::new();
    for r in requests {
        let outcome = if r.ok() { "ok".to_string() } else { r.outcome.replace(' ', "_") };
        let _ = writeln!(text, "req {:.1} {:.1} {outcome} {}", ms(&r.start), ms(&r.end), r.path);
    }
    for (t, what) in events {
        let _ = writeln!(text, "event {:.1} {what}", ms(t));
    }
    let _ = writeln!(text, "summary {}", summary.lines().next().unwrap_or(""));
    fs::write(path, text).expect("writing ROLLING_LOG");
}
