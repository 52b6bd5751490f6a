//! End to end: the request-aware drain behind real load balancers drops no request, and ends
//! as soon as the load balancer has let go.
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
//! The tests run each scenario with the request-aware drain (the default) and an upper
//! bound of 10 s, stopping each backend once, and assert no failure. `bench/drain` runs the
//! same scenarios with a fixed preStop delay too, more rounds, and records the figures,
//! through variables only it sets:
//! - `LB_DRAIN_MODE=fixed:DUR|aware:DUR` (the preStop delay, or the request-aware drain's
//!   upper bound), `LB_DRAIN_ROUNDS=N` (each backend stopped N times);
//! - `LB_DRAIN_LOG=FILE`: a line with the figures is appended there, and nothing is asserted.

use std::fmt::Write as _;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::haproxy::{self, Stats, get, quiet_ports};
use crate::support::{Crew, Running, TestDir, python3, required};

/// The app. `/` answers at once, `/work?ms=N` after N ms, `/health` is its own readiness,
/// `/stream?ms=N` sends a chunk every 250 ms for N ms. With `graceful`, SIGTERM makes it stop
/// accepting, close its idle keep-alive connections, finish the requests in flight (closing
/// their connections after them) and exit 0; with `legacy`, it dies at once.
const APP: &str = r#"import signal, socket, sys, threading, time
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

server = Server(("127.0.0.1", int(sys.argv[1])), Handler)

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

/// How the backends' lastcall drains.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// `--prestop-delay DUR --drain-idle-port off`.
    Fixed(Duration),
    /// `--prestop-delay DUR` (the upper bound), the request-aware drain on its defaults.
    Aware(Duration),
}

impl Mode {
    fn from_env() -> Mode {
        let Ok(text) = std::env::var("LB_DRAIN_MODE") else {
            return Mode::Aware(BOUND);
        };
        let (kind, delay) = text.split_once(':').expect("LB_DRAIN_MODE=fixed:DUR|aware:DUR");
        let delay = Duration::from_secs_f64(
            delay.trim_end_matches('s').parse().expect("LB_DRAIN_MODE: a number of seconds"),
        );
        match kind {
            "fixed" => Mode::Fixed(delay),
            "aware" => Mode::Aware(delay),
            other => panic!("LB_DRAIN_MODE={other}: expected fixed or aware"),
        }
    }

    fn args(self) -> Vec<String> {
        let (delay, watch) = match self {
            Mode::Fixed(d) => (d, "off"),
            Mode::Aware(d) => (d, "auto"),
        };
        let delay = format!("{}ms", delay.as_millis());
        ["--prestop-delay", &delay, "--drain-idle-port", watch].map(String::from).to_vec()
    }

    fn name(self) -> String {
        match self {
            Mode::Fixed(d) => format!("fixed {:.0}s", d.as_secs_f64()),
            Mode::Aware(d) => format!("request-aware (bound {:.0}s)", d.as_secs_f64()),
        }
    }
}

/// The request-aware drain's upper bound in the tests: generous.
const BOUND: Duration = Duration::from_secs(10);
/// How long the load runs before the first stop, and after each backend is back.
const SETTLE: Duration = Duration::from_millis(1000);
/// The load stops by itself after this, whatever happens to the test.
const LOAD_LIMIT: Duration = Duration::from_secs(240);

#[test]
fn behind_haproxy_with_http_reuse_the_drain_ends_when_haproxy_lets_go() {
    // HAProxy lets go after three checks 200 ms apart: the drain ends far below its bound.
    if let Some(f) = check(&SCENARIOS[0]) {
        let longest = f.drains.iter().max().copied().unwrap_or_default();
        assert!(longest < BOUND / 2, "a preStop phase took {longest:?}; bound {BOUND:?}");
    }
}

#[test]
fn behind_nginx_with_a_keepalive_pool_no_request_fails() {
    check(&SCENARIOS[1]);
}

#[test]
fn a_legacy_app_that_dies_on_sigterm_loses_no_request_in_flight() {
    check(&SCENARIOS[2]);
}

#[test]
fn at_low_traffic_the_drain_waits_for_haproxys_usual_checks() {
    check(&SCENARIOS[3]);
}

#[test]
fn a_streaming_response_holds_the_drain_until_it_ends() {
    check(&SCENARIOS[4]);
}

/// What one run of a scenario found.
struct Figures {
    requests: usize,
    failed: Vec<String>,
    /// Each preStop phase, as the backend's lastcall logged it.
    drains: Vec<Duration>,
}

/// Runs `scenario` as the environment says (the tests: request-aware, each backend stopped
/// once) and asserts no failure, or records the figures for bench/drain. The figures, when
/// they were asserted: `None` when recording, or when a needed tool is missing on a
/// developer's machine.
fn check(scenario: &Scenario) -> Option<Figures> {
    let mode = Mode::from_env();
    let rounds: usize = std::env::var("LB_DRAIN_ROUNDS").map_or(1, |r| r.parse().unwrap());
    let f = run(scenario, mode, rounds)?;
    let mut summary = format!(
        "{} with the {} drain: {} requests, {} failed; preStop phases {:?}",
        scenario.name,
        mode.name(),
        f.requests,
        f.failed.len(),
        f.drains
    );
    for failure in f.failed.iter().take(10) {
        let _ = write!(summary, "\n  failed: {failure}");
    }
    let _ = writeln!(std::io::stderr(), "{summary}");
    if let Ok(log) = std::env::var("LB_DRAIN_LOG") {
        let drains: Vec<String> =
            f.drains.iter().map(|d| format!("{:.2}", d.as_secs_f64())).collect();
        let line = format!(
            "{} {} {} {} {}\n",
            scenario.name,
            match mode {
                Mode::Fixed(_) => "fixed",
                Mode::Aware(_) => "aware",
            },
            f.requests,
            f.failed.len(),
            drains.join(",")
        );
        let mut file = fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        file.write_all(line.as_bytes()).unwrap();
        return None;
    }
    assert!(f.requests >= 5, "too few requests to prove anything: {summary}");
    assert_eq!(f.drains.len(), 2 * rounds, "a preStop phase is missing: {summary}");
    assert!(f.failed.is_empty(), "{summary}");
    Some(f)
}

fn run(scenario: &Scenario, mode: Mode, rounds: usize) -> Option<Figures> {
    let Some(python) = python3() else {
        required("python3 (apt-get install python3)", false);
        return None;
    };
    let tool = match scenario.lb {
        Lb::Haproxy { .. } => "haproxy",
        Lb::Nginx => "nginx",
    };
    if !required(&format!("{tool} (apt-get install {tool})"), found(tool)) {
        return None;
    }
    let dir = TestDir::new(&format!("lb-{}", scenario.name));
    dir.write("app.py", APP);
    let [front, a_app, a_ready, b_app, b_ready] = quiet_ports();
    let mut backends = [
        Backend::new(scenario.name, "a", a_app, a_ready),
        Backend::new(scenario.name, "b", b_app, b_ready),
    ];
    let stats = Stats(dir.join("stats.sock"));
    let mut lb = match scenario.lb {
        Lb::Haproxy { inter_ms, fall } => {
            dir.write("lb.cfg", &haproxy_config(front, &stats.0, inter_ms, fall, &backends));
            let cfg = dir.join("lb.cfg").to_string_lossy().into_owned();
            dir.command("haproxy").args(["-f", &cfg, "-db"]).spawn()
        }
        Lb::Nginx => {
            dir.write("lb.cfg", &nginx_config(front, dir.path(), &backends));
            let cfg = dir.join("lb.cfg").to_string_lossy().into_owned();
            dir.command("nginx").args(["-c", &cfg, "-p", &dir.path().to_string_lossy()]).spawn()
        }
    };
    let app = [python, dir.join("app.py").to_string_lossy().into_owned()];
    let legacy = if scenario.legacy { "legacy" } else { "graceful" };
    for backend in &mut backends {
        backend.start(mode, &app, legacy);
    }
    for backend in &mut backends {
        backend.wait_up(scenario.lb, &stats, &mut lb);
    }
    let load = clients(front, scenario.load);
    std::thread::sleep(SETTLE);
    let mut drains = Vec::new();
    for round in 0..2 * rounds {
        let backend = &mut backends[round % 2];
        drains.push(backend.stop(mode));
        backend.start(mode, &app, legacy);
        backend.wait_up(scenario.lb, &stats, &mut lb);
        std::thread::sleep(SETTLE);
    }
    let requests = load.stop();
    let failed = requests.iter().filter(|r| !r.starts_with("200 ")).cloned().collect();
    Some(Figures { requests: requests.len(), failed, drains })
}

fn found(tool: &str) -> bool {
    Command::new(tool)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn haproxy_config(
    front: u16,
    stats: &Path,
    inter_ms: u32,
    fall: u32,
    backends: &[Backend],
) -> String {
    let mut servers = String::new();
    for b in backends {
        let _ = writeln!(
            servers,
            "    server {} 127.0.0.1:{} check port {}",
            b.name, b.app_port, b.ready_port
        );
    }
    let backend = format!(
        "    http-reuse always
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter {inter_ms}ms fall {fall} rise 1
{servers}"
    );
    haproxy::config(front, stats, 30, &backend)
}

fn nginx_config(front: u16, dir: &Path, backends: &[Backend]) -> String {
    let mut servers = String::new();
    for b in backends {
        // max_fails=0: a backend that was restarted gets requests again at once. With the
        // default (max_fails=1 fail_timeout=10s) a restart faster than 10 s per backend
        // leaves nginx no live upstream for a while: a matter of the rolling restart's pace,
        // not of the drain.
        let _ = writeln!(servers, "        server 127.0.0.1:{} max_fails=0;", b.app_port);
    }
    let dir = dir.display();
    format!(
        "daemon off;
master_process off;
user root;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream app {{
{servers}        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{front};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_read_timeout 30s;
        }}
    }}
}}
"
    )
}

/// One backend: the app on `app_port`, wrapped by lastcall with its endpoint on `ready_port`.
struct Backend {
    name: &'static str,
    app_port: u16,
    ready_port: u16,
    dir: TestDir,
    wrapper: Option<Running>,
}

impl Backend {
    fn new(scenario: &str, name: &'static str, app_port: u16, ready_port: u16) -> Backend {
        let dir = TestDir::new(&format!("lb-{scenario}-{name}"));
        Backend { name, app_port, ready_port, dir, wrapper: None }
    }

    fn start(&mut self, mode: Mode, app: &[String], legacy: &str) {
        let cmd = self
            .dir
            .lastcall()
            .args(["--listen", &format!("127.0.0.1:{}", self.ready_port)])
            .args(mode.args())
            .args(["--grace-period", "10s", "--ready-interval", "100ms"])
            .args(["--ready-http", &format!("http://127.0.0.1:{}/health", self.app_port)])
            .arg("--")
            .args(app)
            .args([self.app_port.to_string().as_str(), legacy]);
        self.wrapper = Some(cmd.spawn());
    }

    /// Waits until the load balancer sends it traffic: HAProxy has seen it pass a check;
    /// nginx, which does not check, once it is ready. (Not by probing `/readyz`: the drain
    /// would wait for this test to hear 503, as for a load balancer's checks.)
    fn wait_up(&mut self, lb: Lb, stats: &Stats, lb_process: &mut Running) {
        let name = self.name;
        let running = self.wrapper.as_mut().expect("started");
        match lb {
            Lb::Haproxy { .. } => {
                running
                    .wait_until(&format!("HAProxy sees backend {name} up"), || stats.is_up(name));
            }
            Lb::Nginx => running.wait_stderr("lastcall: the app is ready ("),
        }
        assert!(lb_process.try_wait().is_none(), "the load balancer exited");
    }

    /// SIGTERM to lastcall; once it has exited, the preStop phase it logged.
    fn stop(&mut self, mode: Mode) -> Duration {
        let running = self.wrapper.take().expect("started");
        running.signal(libc::SIGTERM);
        let (Mode::Fixed(delay) | Mode::Aware(delay)) = mode;
        // The preStop phase, the grace period, and room to spare.
        let out = running.wait_for(delay + Duration::from_secs(15));
        out.check(out.code().is_some(), "lastcall must exit, not be killed");
        let stderr = self.dir.read("stderr");
        let drain = stderr.lines().find_map(drain_in);
        out.check(drain.is_some(), "lastcall logged no preStop phase");
        drain.unwrap_or_default()
    }
}

/// The preStop phase in lastcall's line `sending SIGTERM to child N after 1.2s of drain;
/// SIGKILL in 10.0s` (or `250ms of drain`).
fn drain_in(line: &str) -> Option<Duration> {
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
