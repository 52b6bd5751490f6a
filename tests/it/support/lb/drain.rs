//! The request-aware drain behind real load balancers, under load.
//!
//! Two backends, each a Python HTTP/1.1 app that keeps connections alive, wrapped by
//! lastcall; a load balancer in front (HAProxy with `http-reuse always`, or nginx with an
//! `upstream { keepalive 16; }` pool), and load client threads going through it. Each backend
//! is stopped with SIGTERM to its lastcall under load, started again, and waited for. Every
//! non-2xx answer, connection error and cut-off body is a failure. The scenarios:
//! 1. `haproxy-reuse`: HAProxy checks `/readyz` fast (`inter 200ms fall 3`); quick and slow
//!    requests; an app that shuts down gracefully (stops accepting, finishes what is in
//!    flight, closes idle connections), as Go's `http.Server.Shutdown` does;
//! 2. `nginx-keepalive`: the same behind nginx, which has no active health checks (and
//!    `max_fails=0`, so that a restarted backend is used again at once);
//! 3. `legacy`: behind HAProxy, an app that dies at once on SIGTERM, with requests of
//!    0.1-2 s in flight;
//! 4. `low-traffic`: one request a second, behind HAProxy's usual `inter 2s fall 3`;
//! 5. `stream`: a legacy app sending 4-second streams in trickles, behind HAProxy.
//!
//! The tests run each scenario with the request-aware drain and stop each backend once;
//! `bench/lb` runs them with a fixed preStop delay too, and more rounds. The drain's edge
//! cases, one pod at a time, are [`super::edge`]'s.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

use super::stats_socket;
use super::{Balancer, backends, get, haproxy_config, haproxy_servers, nginx_config, python_and};
use crate::support::{Crew, TestDir};

/// The app. `/` answers at once, `/work?ms=N` after N ms, `/health` is its own readiness,
/// `/stream?ms=N` sends a chunk every 250 ms for N ms, `/pause?ms=N` sends its head at once
/// and its body N ms later. With `graceful`, SIGTERM makes it stop accepting, close its idle
/// keep-alive connections, finish the requests in flight (closing their connections after
/// them) and exit 0; with `legacy`, it dies at once. It listens on 127.0.0.1, or on the
/// address given after `graceful` or `legacy` (`::1`).
pub(super) const APP: &str = r#"import signal, socket, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

draining = threading.Event()
idle = set()
lock = threading.Lock()

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def setup(self):
        super().setup()
        with lock:
            idle.add(self)

    def finish(self):
        with lock:
            idle.discard(self)
        super().finish()

    def do_GET(self):
        with lock:
            idle.discard(self)
        url = urlsplit(self.path)
        ms = int(parse_qs(url.query).get("ms", ["0"])[0])
        if url.path == "/stream":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            end = time.time() + min(ms, 30000) / 1000
            while time.time() < end:
                self.wfile.write(b"5\r\ntick\n\r\n")
                self.wfile.flush()
                time.sleep(0.25)
            self.wfile.write(b"0\r\n\r\n")
        elif url.path == "/pause":
            body = b"ok\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.flush()
            time.sleep(min(ms, 30000) / 1000)
            self.wfile.write(body)
        elif url.path in ("/", "/work", "/health"):
            time.sleep(min(ms, 5000) / 1000)
            body = b"ok\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            if draining.is_set():
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)
        with lock:
            if draining.is_set():
                self.close_connection = True
            else:
                idle.add(self)

    def log_message(self, *args):
        pass

class Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True

host = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
if ":" in host:
    Server.address_family = socket.AF_INET6
server = Server((host, int(sys.argv[1])), Handler)

def shut_down():
    server.shutdown()
    with lock:
        for handler in idle:
            try:
                handler.request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

def on_term(*_):
    draining.set()
    threading.Thread(target=shut_down).start()

if sys.argv[2] == "graceful":
    signal.signal(signal.SIGTERM, on_term)
server.serve_forever(poll_interval=0.05)
server.server_close()
"#;

/// The load balancer in front.
#[derive(Clone, Copy, Debug)]
pub enum Lb {
    /// `http-reuse always`, health checks on lastcall's `/readyz` every `inter` ms, down after
    /// `fall` failures.
    Haproxy { inter_ms: u32, fall: u32 },
    /// `upstream { keepalive 16; }`, no active health checks.
    Nginx,
}

/// The traffic through the load balancer.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// Three clients of quick requests (10 ms apart) and three of slow ones (100 ms up to
    /// `slow_ms`).
    Busy { slow_ms: u64 },
    /// One quick request a second.
    Low,
    /// Two clients of back-to-back 6-second streams, and a quick request every 200 ms.
    Stream,
}

#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub lb: Lb,
    /// An app that dies at once on SIGTERM.
    pub legacy: bool,
    pub load: Load,
}

pub const SCENARIOS: [Scenario; 5] = [
    Scenario {
        name: "haproxy-reuse",
        lb: Lb::Haproxy { inter_ms: 200, fall: 3 },
        legacy: false,
        load: Load::Busy { slow_ms: 500 },
    },
    Scenario {
        name: "nginx-keepalive",
        lb: Lb::Nginx,
        legacy: false,
        load: Load::Busy { slow_ms: 500 },
    },
    Scenario {
        name: "legacy",
        lb: Lb::Haproxy { inter_ms: 200, fall: 3 },
        legacy: true,
        load: Load::Busy { slow_ms: 2000 },
    },
    Scenario {
        name: "low-traffic",
        lb: Lb::Haproxy { inter_ms: 2000, fall: 3 },
        legacy: false,
        load: Load::Low,
    },
    Scenario {
        name: "stream",
        lb: Lb::Haproxy { inter_ms: 200, fall: 3 },
        legacy: true,
        load: Load::Stream,
    },
];

/// How the backends' lastcall drains: `--prestop-delay DELAY`, the request-aware drain on its
/// defaults (`aware`, DELAY its upper bound) or off (`--drain-idle-port off`, a fixed delay).
/// A fixed delay of 0 is what tini does: the app gets SIGTERM at once.
#[derive(Clone, Copy, Debug)]
pub struct Drain {
    pub delay: Duration,
    pub aware: bool,
}

impl Drain {
    pub(super) fn args(self) -> Vec<String> {
        let delay = format!("{}ms", self.delay.as_millis());
        let watch = if self.aware { "auto" } else { "off" };
        ["--prestop-delay", &delay, "--drain-idle-port", watch].map(String::from).to_vec()
    }

    pub(super) fn name(self) -> String {
        let secs = self.delay.as_secs_f64();
        if self.aware {
            format!("request-aware (bound {secs:.0}s)")
        } else if self.delay.is_zero() {
            "no (--prestop-delay 0, as tini)".to_string()
        } else {
            format!("fixed {secs:.0}s")
        }
    }
}

/// How long the load runs before the first stop, and after each backend is back.
const SETTLE: Duration = Duration::from_millis(1000);
/// The load stops by itself after this, whatever happens to the run.
const LOAD_LIMIT: Duration = Duration::from_secs(240);

/// What one run of a scenario found.
pub struct Figures {
    pub requests: usize,
    pub failed: Vec<String>,
    /// Each preStop phase, as the backend's lastcall logged it.
    pub drains: Vec<Duration>,
    /// The figures in words, with the first failures.
    pub summary: String,
}

/// Runs `scenario` with `drain`, each backend stopped `rounds` times, and prints its summary;
/// `None` when the load balancer or python3 is missing (see [`crate::support::required`]).
pub fn run(scenario: &Scenario, drain: Drain, rounds: usize) -> Option<Figures> {
    let tool = match scenario.lb {
        Lb::Haproxy { .. } => "haproxy",
        Lb::Nginx => "nginx",
    };
    let python = python_and(tool)?;
    let dir = TestDir::new(&format!("lb-{}", scenario.name));
    dir.write("app.py", APP);
    let app = [python, dir.join("app.py").to_string_lossy().into_owned()];
    let (front, mut backends) = backends(&format!("lb-{}", scenario.name), &app);
    let mut lb = match scenario.lb {
        Lb::Haproxy { inter_ms, fall } => {
            let backend = format!(
                "    http-reuse always
    option httpchk GET /readyz
    http-check send-state
    http-check expect status 200
    default-server inter {inter_ms}ms fall {fall} rise 1
{}",
                haproxy_servers(&backends, false)
            );
            Balancer::haproxy(&dir, &haproxy_config(front, &stats_socket(&dir), 30, &backend))
        }
        Lb::Nginx => Balancer::nginx(&dir, &nginx_config(front, dir.path(), &backends)),
    };
    let options = drain.args();
    let legacy = [if scenario.legacy { "legacy" } else { "graceful" }];
    for backend in &mut backends {
        backend.start(None, &options, &legacy);
    }
    for backend in &mut backends {
        backend.wait_up(&mut lb);
    }
    let load = clients(front, scenario.load);
    std::thread::sleep(SETTLE);
    let mut drains = Vec::new();
    for round in 0..2 * rounds {
        let backend = &mut backends[round % 2];
        // The preStop phase, the grace period, and room to spare.
        let out = backend.stop(drain.delay + Duration::from_secs(15));
        let logged = out.stderr.lines().find_map(drain_in);
        if std::env::var_os("LB_SHOW").is_some() {
            let _ = writeln!(std::io::stderr(), "{}", out.stderr);
        }
        out.check(logged.is_some(), "lastcall logged no preStop phase");
        drains.push(logged.unwrap_or_default());
        backend.start(None, &options, &legacy);
        backend.wait_up(&mut lb);
        std::thread::sleep(SETTLE);
    }
    let requests = load.stop();
    let failed: Vec<String> = requests.iter().filter(|r| !r.starts_with("200 ")).cloned().collect();
    let mut summary = format!(
        "{} with the {} drain: {} requests, {} failed; preStop phases {:?}",
        scenario.name,
        drain.name(),
        requests.len(),
        failed.len(),
        drains
    );
    for failure in failed.iter().take(10) {
        let _ = write!(summary, "\n  failed: {failure}");
    }
    // Straight to stderr: libtest would hide an `eprintln!` of a test that passes.
    let _ = writeln!(std::io::stderr(), "{summary}");
    Some(Figures { requests: requests.len(), failed, drains, summary })
}

/// The preStop phase in lastcall's line `sending SIGTERM to child N after 1.2s of drain;
/// SIGKILL in 10.0s` (or `250ms of drain`).
pub(super) fn drain_in(line: &str) -> Option<Duration> {
    let rest = line.split_once("lastcall: sending ")?.1.split_once(" after ")?.1;
    let (shown, _) = rest.split_once(" of drain; SIGKILL")?;
    if let Some(ms) = shown.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    shown.strip_suffix('s')?.parse().ok().map(Duration::from_secs_f64)
}

/// The load client threads; each request is recorded as `STATUS PATH` or `error PATH: why`.
fn clients(port: u16, load: Load) -> Crew<String> {
    // (path for the i-th request, pause after it) per thread.
    type Plan = Box<dyn Fn(usize) -> (String, Duration) + Send>;
    let mut plans: Vec<Plan> = Vec::new();
    match load {
        Load::Busy { slow_ms } => {
            for _ in 0..3 {
                plans.push(Box::new(|_| ("/".into(), Duration::from_millis(10))));
            }
            for n in 0..3u64 {
                plans.push(Box::new(move |i| {
                    let ms = 100 + (i as u64 * 137 + n * 61) % (slow_ms - 99);
                    (format!("/work?ms={ms}"), Duration::ZERO)
                }));
            }
        }
        Load::Low => plans.push(Box::new(|_| ("/".into(), Duration::from_secs(1)))),
        Load::Stream => {
            for _ in 0..2 {
                plans.push(Box::new(|_| ("/stream?ms=6000".into(), Duration::ZERO)));
            }
            plans.push(Box::new(|_| ("/".into(), Duration::from_millis(200))));
        }
    }
    let mut crew = Crew::new(Instant::now(), LOAD_LIMIT);
    for plan in plans {
        crew.spawn(move |i| {
            let (path, pause) = plan(i);
            (format!("{} {path}", get(port, &path)), pause)
        });
    }
    crew
}
