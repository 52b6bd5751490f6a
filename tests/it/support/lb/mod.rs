//! What the load-balancer scenarios share: backends (an app wrapped by lastcall), HAProxy and
//! nginx in front of them, HAProxy's stats socket, the load client's GET, and quiet ports.
//! The scenarios themselves are [`rolling`] (HAProxy, a rolling restart), [`drain`] (the
//! request-aware drain behind HAProxy and nginx) and [`edge`] (the drain's edge cases, one pod
//! at a time); the tests assert on what they find, and `bench/lb` records it.

pub mod drain;
pub mod edge;
pub mod rolling;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{Finished, Running, TestDir, python3, required, unix_nanos, wait_until};

/// Whether `tool` (haproxy, nginx, tini) runs: `tool -v` succeeds.
pub fn found(tool: &str) -> bool {
    Command::new(tool)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The python interpreter and `tool`, if both are here; else `None` after saying what is
/// missing (see [`required`]).
pub fn python_and(tool: &str) -> Option<String> {
    let Some(python) = python3() else {
        required("python3 (apt-get install python3)", false);
        return None;
    };
    required(&format!("{tool} (apt-get install {tool})"), found(tool)).then_some(python)
}

/// One backend: the app on `app_port`, wrapped by lastcall with its endpoint on `ready_port`
/// (or by another wrapper, with no endpoint).
pub struct Backend {
    pub name: &'static str,
    pub app_port: u16,
    pub ready_port: u16,
    /// Where the wrapper's output goes (each start truncates it).
    pub dir: TestDir,
    /// The interpreter and the app's script.
    app: Vec<String>,
    wrapper: Option<Running>,
}

/// The port of the load balancer's frontend and backends `a` and `b` of the scenario
/// `scenario`, each to run `app` (the interpreter and the script), all on ports of their own.
pub fn backends(scenario: &str, app: &[String]) -> (u16, [Backend; 2]) {
    let [front, a_app, a_ready, b_app, b_ready] = quiet_ports();
    let backend = |name, app_port, ready_port| Backend {
        name,
        app_port,
        ready_port,
        dir: TestDir::new(&format!("{scenario}-{name}")),
        app: app.to_vec(),
        wrapper: None,
    };
    (front, [backend("a", a_app, a_ready), backend("b", b_app, b_ready)])
}

impl Backend {
    /// Starts the app with the app port and `app_args` as its arguments. Wrapped by lastcall
    /// with `drain` (its drain options), a grace period of 10 s and the app's `/health` as its
    /// readiness check; or, with `other` (tini), by that program.
    pub fn start(&mut self, other: Option<&str>, drain: &[String], app_args: &[&str]) {
        let cmd = match other {
            None => self
                .dir
                .lastcall()
                .args(["--listen", &format!("127.0.0.1:{}", self.ready_port)])
                .args(drain)
                .args(["--grace-period", "10s", "--ready-interval", "100ms"])
                .args(["--ready-http", &format!("http://127.0.0.1:{}/health", self.app_port)])
                .arg("--"),
            Some(program) => self.dir.command(program).arg("--"),
        };
        let cmd = cmd.args(&self.app).arg(self.app_port.to_string()).args(app_args);
        self.wrapper = Some(cmd.spawn());
    }

    /// Waits until the load balancer sends the backend traffic: HAProxy has seen it pass a
    /// check; nginx, which does not check, once lastcall says the app is ready. (Not by
    /// probing `/readyz`: the drain would wait for this probe to hear 503, as for a load
    /// balancer's checks.)
    pub fn wait_up(&mut self, lb: &mut Balancer) {
        let name = self.name;
        let running = self.wrapper.as_mut().expect("started");
        match &lb.stats {
            Some(stats) => {
                running
                    .wait_until(&format!("HAProxy sees backend {name} up"), || stats.is_up(name));
            }
            None => running.wait_stderr("lastcall: the app is ready ("),
        }
        assert!(lb.process.try_wait().is_none(), "the load balancer exited");
    }

    /// Waits until HAProxy has taken the backend out. Under lastcall that happened during
    /// the drain; under tini HAProxy finds out from a failed check after the app is gone.
    pub fn wait_down(&self, lb: &Balancer) {
        let name = self.name;
        let stats = lb.stats.as_ref().expect("HAProxy checks the backends");
        wait_until(&format!("HAProxy sees backend {name} down"), || !stats.is_up(name));
    }

    /// SIGTERM to the wrapper; how it ended, once it has, within `within`.
    pub fn stop(&mut self, within: Duration) -> Finished {
        let running = self.wrapper.take().expect("started");
        running.signal(libc::SIGTERM);
        let out = running.wait_for(within);
        out.check(out.code().is_some(), "the wrapper must exit, not be killed");
        out
    }
}

/// The load balancer in front of the backends, running: HAProxy with its stats socket, or
/// nginx.
pub struct Balancer {
    pub process: Running,
    pub stats: Option<Stats>,
}

impl Balancer {
    /// HAProxy with the configuration `config` (see [`haproxy_config`]) in `dir`, once it
    /// answers on its stats socket `dir/stats.sock`.
    pub fn haproxy(dir: &TestDir, config: &str) -> Balancer {
        dir.write("lb.cfg", config);
        let cfg = dir.join("lb.cfg").to_string_lossy().into_owned();
        let mut process = dir.command("haproxy").args(["-f", &cfg, "-db"]).spawn();
        let stats = Stats(stats_socket(dir));
        process.wait_until("HAProxy answers on its stats socket", || {
            stats.field("BACKEND", "status").is_some()
        });
        Balancer { process, stats: Some(stats) }
    }

    /// nginx with the configuration `config` (see [`nginx_config`]), its files in `dir`.
    pub fn nginx(dir: &TestDir, config: &str) -> Balancer {
        dir.write("lb.cfg", config);
        let cfg = dir.join("lb.cfg").to_string_lossy().into_owned();
        let process =
            dir.command("nginx").args(["-c", &cfg, "-p", &dir.path().to_string_lossy()]).spawn();
        Balancer { process, stats: None }
    }
}

/// Where HAProxy's stats socket is, in the scenario's dir.
pub fn stats_socket(dir: &TestDir) -> PathBuf {
    dir.join("stats.sock")
}

/// An HAProxy configuration: a frontend on 127.0.0.1:`front` to the round-robin backend `app`,
/// which `backend`'s lines complete (checks, servers), client and server timeouts of
/// `timeout` seconds, and the stats socket [`Stats`] reads.
pub fn haproxy_config(front: u16, stats: &Path, timeout: u32, backend: &str) -> String {
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

/// HAProxy's `server` lines: traffic to each app port, checks on lastcall's endpoint port, or
/// with `on_app`, on the app port itself.
pub fn haproxy_servers(backends: &[Backend], on_app: bool) -> String {
    let mut servers = String::new();
    for b in backends {
        let port = if on_app { String::new() } else { format!(" port {}", b.ready_port) };
        let _ = writeln!(servers, "    server {} 127.0.0.1:{} check{port}", b.name, b.app_port);
    }
    servers
}

/// An nginx configuration: 127.0.0.1:`front` to the backends' app ports through an
/// `upstream { keepalive 16; }` pool, its files in `dir`.
pub fn nginx_config(front: u16, dir: &Path, backends: &[Backend]) -> String {
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
    pub fn retries(&self) -> (String, String) {
        let get = |name| self.field("BACKEND", name).unwrap_or_else(|| "?".to_string());
        (get("wretr"), get("wredis"))
    }
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
