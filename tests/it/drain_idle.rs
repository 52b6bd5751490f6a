//! The request-aware drain: the stop signal comes before the end of the preStop delay only on
//! evidence. The clients probing `/readyz` were told (or, without one, the traffic seen has
//! stopped), no request came for `--drain-quiet`, and nothing can be in flight: a connection
//! that never carried a request does not hold it; a request in flight does; a connection the
//! app wrote last on does, until its load balancer says it has nothing in flight;
//! lastcall's own check connections do not count; `auto` finds the app's ports.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::apps::{
    HOLDER, PY_PRELUDE, lastcall_with_app, metrics, readyz, stderr_count, term_at, wait_readyz,
};
use crate::support::{
    Running, TestDir, free_port, has_python, own_network, spawn_listening, unix_nanos,
};

/// An HTTP/1.1 app that keeps connections alive: `/` answers at once, `/slow` marks `asked`
/// and answers once the test creates `$DIR/answer`.
const KEEP_ALIVE_APP: &str = r#"
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/slow":
            mark("asked")
            wait_for("answer")
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
srv = ThreadingHTTPServer(("127.0.0.1", PORT), H)
srv.daemon_threads = True
mark("listening")
srv.serve_forever()
"#;

/// Sends a GET on a kept-alive connection.
fn ask(client: &mut TcpStream, path: &str) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: app\r\n\r\n");
    client.write_all(request.as_bytes()).expect("sending a request to the app");
}

/// Reads one answer of [`KEEP_ALIVE_APP`] (its body is `ok`); returns the status line.
fn answer(client: &mut TcpStream) -> String {
    client.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0; 1024];
    while !got.ends_with(b"\r\n\r\nok") {
        match client.read(&mut buf) {
            Ok(n @ 1..) => got.extend_from_slice(&buf[..n]),
            // A signal to the test process is no reason to stop reading.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(0) | Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&got);
    text.lines().next().unwrap_or("no answer").to_string()
}

/// lastcall with a 20 s preStop delay and `options`, supervising [`KEEP_ALIVE_APP`].
fn keep_alive(dir: &TestDir, app: u16, options: &[&str]) -> (Running, u16) {
    spawn_listening(
        |port| {
            let mut all = vec!["--prestop-delay", "20s", "--drain-min", "200ms"];
            all.extend_from_slice(options);
            lastcall_with_app(dir, port, &all, KEEP_ALIVE_APP, app)
        },
        || dir.exists("listening"),
    )
}

/// The time from `since` (Unix nanoseconds) to the app's stop signal.
fn stop_after(dir: &TestDir, since: u128) -> Duration {
    Duration::from_nanos(term_at(dir).saturating_sub(since) as u64)
}

/// Checks for `within` that the app gets no stop signal (what must not happen yet).
fn no_stop_for(dir: &TestDir, within: Duration, why: &str) {
    let start = Instant::now();
    while start.elapsed() < within {
        assert!(!dir.exists("term"), "the stop signal came while {why}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A load balancer's health checks before the drain: this test's address asks `/readyz`
/// twice, so it is a prober of the drain.
fn probe_before(port: u16) {
    for _ in 0..2 {
        assert_eq!(readyz(port), 200, "/readyz before the drain");
    }
}

/// The prober hears 503 three times, as HAProxy's `fall 3` needs to take the app out.
fn tell(port: u16) {
    for _ in 0..3 {
        assert_eq!(readyz(port), 503, "/readyz during the drain");
    }
}

/// A health check that says what HAProxy's `http-check send-state` says: `word` is the
/// value of its `X-Haproxy-Server-State` header.
fn say(port: u16, word: &str) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting to lastcall");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!("GET /readyz HTTP/1.0\r\nX-Haproxy-Server-State: {word}\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("sending a health check");
    let mut got = String::new();
    let _ = stream.read_to_string(&mut got);
    got.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[test]
fn a_connection_that_never_carried_a_request_does_not_hold_the_drain() {
    if !has_python() || !own_network() {
        return;
    }
    let dir = TestDir::new("drain_idle_pooled");
    let app = free_port();
    let (mut lastcall, port) = keep_alive(&dir, app, &["--drain-quiet", "300ms"]);
    // A load balancer's pooled connection, opened ahead and never used.
    let pooled = TcpStream::connect(("127.0.0.1", app)).expect("connecting to the app");
    probe_before(port);
    let sent = unix_nanos();
    lastcall.signal(libc::SIGTERM);
    lastcall.wait_stderr("lastcall: the drain watches the app's connections");
    tell(port);
    lastcall.wait_until("the app gets the stop signal", || dir.exists("term"));
    let waited = stop_after(&dir, sent);
    let out = lastcall.wait();
    out.assert_code(128 + libc::SIGTERM)
        .check(
            waited < Duration::from_secs(5),
            format!("the stop signal came {waited:?} after SIGTERM; the delay is 20s"),
        )
        .assert_stderr_has(&format!(
            "lastcall: the drain watches the app's connections on port {app}"
        ))
        .assert_stderr_has("lastcall: load balancers let go: probers told 3 times, no request ")
        .assert_stderr_has(", 0 busy of 1 connection, after ");
    drop(pooled);
}

#[test]
fn a_connection_the_app_wrote_last_on_holds_until_its_load_balancer_says_it_is_done() {
    if !has_python() || !own_network() {
        return;
    }
    let dir = TestDir::new("drain_idle_unsure");
    let app = free_port();
    let (mut lastcall, port) = keep_alive(&dir, app, &["--drain-quiet", "300ms"]);
    // A pooled connection that carried a request: answered, or an answer paused mid-stream,
    // TCP cannot tell.
    let mut pooled = TcpStream::connect(("127.0.0.1", app)).expect("connecting to the app");
    ask(&mut pooled, "/");
    assert_eq!(answer(&mut pooled), "HTTP/1.1 200 OK");
    probe_before(port);
    lastcall.signal(libc::SIGTERM);
    lastcall.wait_stderr("lastcall: the drain watches the app's connections");
    tell(port);
    no_stop_for(&dir, Duration::from_millis(1500), "a connection was unsure");
    let counted = metrics(port);
    assert!(
        counted.contains("lastcall_app_connections{state=\"unsure\"} 1\n"),
        "expected one unsure connection in:\n{counted}"
    );
    // The load balancer has requests in flight with the app, then none.
    assert_eq!(say(port, "DOWN; address=127.0.0.1; scur=1/1; qcur=0"), 503);
    no_stop_for(&dir, Duration::from_millis(500), "the load balancer had a request in flight");
    let done = unix_nanos();
    assert_eq!(say(port, "DOWN; address=127.0.0.1; scur=0/0; qcur=0"), 503);
    lastcall.wait_until("the app gets the stop signal", || dir.exists("term"));
    let out = lastcall.wait();
    out.assert_code(128 + libc::SIGTERM)
        .check(term_at(&dir) >= done, "the stop signal came before the load balancer's word")
        .assert_stderr_has(
            "lastcall: load balancers let go: probers told 5 times, and said they have no \
             request in flight, no request for ",
        )
        .assert_stderr_has(
            "0 busy of 1 connection (1 the app wrote last on, cleared by the prober)",
        );
    drop(pooled);
}

#[test]
fn a_request_in_flight_holds_the_drain_until_it_is_answered() {
    if !has_python() || !own_network() {
        return;
    }
    let dir = TestDir::new("drain_idle_in_flight");
    let app = free_port();
    let (mut lastcall, port) = keep_alive(&dir, app, &["--drain-quiet", "300ms"]);
    probe_before(port);
    let mut client = TcpStream::connect(("127.0.0.1", app)).expect("connecting to the app");
    ask(&mut client, "/slow");
    lastcall.wait_until("the app has the request", || dir.exists("asked"));

    lastcall.signal(libc::SIGTERM);
    lastcall.wait_stderr("lastcall: the drain watches the app's connections");
    tell(port);
    no_stop_for(&dir, Duration::from_millis(1500), "a request was in flight");
    let counted = metrics(port);
    assert!(
        counted.contains("lastcall_app_connections{state=\"busy\"} 1\n"),
        "expected one busy connection in:\n{counted}"
    );
    assert_eq!(readyz(port), 503, "/readyz during the drain");

    let answered = unix_nanos();
    dir.write("answer", "");
    assert_eq!(answer(&mut client), "HTTP/1.1 200 OK", "the request in flight was answered");
    // The client hangs up after its answer: nothing can be in flight on that connection.
    drop(client);
    lastcall.wait_until("the app gets the stop signal", || dir.exists("term"));
    let out = lastcall.wait();
    out.assert_code(128 + libc::SIGTERM)
        .check(term_at(&dir) >= answered, "the stop signal came before the answer")
        .check(
            stop_after(&dir, answered) < Duration::from_secs(5),
            format!("the stop signal came {:?} after the answer", stop_after(&dir, answered)),
        )
        .assert_stderr_has("lastcall: load balancers let go: probers told 4 times");
}

#[test]
fn without_a_prober_the_drain_waits_for_the_traffic_to_stop() {
    if !has_python() || !own_network() {
        return;
    }
    let dir = TestDir::new("drain_idle_short");
    let app = free_port();
    let options = ["--drain-quiet", "2s", "--drain-probes", "0"];
    let (mut lastcall, _port) = keep_alive(&dir, app, &options);
    lastcall.signal(libc::SIGTERM);
    lastcall.wait_stderr("lastcall: the drain watches the app's connections");
    // A request every 100 ms for 2 s, each on its own connection, answered in a few
    // milliseconds, as kube-proxy would route them until it lets go.
    let start = Instant::now();
    let mut last = unix_nanos();
    while start.elapsed() < Duration::from_millis(2000) {
        assert!(!dir.exists("term"), "the stop signal came while requests kept coming");
        let mut client = TcpStream::connect(("127.0.0.1", app)).expect("connecting to the app");
        let request = "GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n";
        client.write_all(request.as_bytes()).unwrap();
        let mut got = String::new();
        client.read_to_string(&mut got).unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK"), "answered: {got:?}");
        last = unix_nanos();
        std::thread::sleep(Duration::from_millis(100));
    }
    lastcall.wait_until("the app gets the stop signal", || dir.exists("term"));
    let quiet = stop_after(&dir, last);
    let out = lastcall.wait();
    out.check(
        quiet >= Duration::from_millis(1500),
        format!("the stop signal came {quiet:?} after the last request; --drain-quiet is 2s"),
    )
    .check(quiet < Duration::from_secs(10), format!("the stop signal came {quiet:?} late"))
    .assert_stderr_has("lastcall: traffic stopped: no request for 2.")
    .assert_stderr_has(" arrivals at ");
}

#[test]
fn auto_finds_the_port_of_an_app_that_listens_through_a_grandchild() {
    if !has_python() || !own_network() {
        return;
    }
    let dir = TestDir::new("drain_idle_grandchild");
    let app = free_port();
    let body = format!("{PY_PRELUDE}{KEEP_ALIVE_APP}");
    let (mut lastcall, port) = spawn_listening(
        |port| {
            dir.lastcall()
                .args(["--listen", &format!("127.0.0.1:{port}"), "--group"])
                .args(["--prestop-delay", "20s", "--drain-min", "200ms", "--drain-quiet", "300ms"])
                .args(["--", "sh", "-c", "python3 -c \"$0\" \"$1\" & wait", &body])
                .arg(app.to_string())
        },
        || dir.exists("listening"),
    );
    let pooled = TcpStream::connect(("127.0.0.1", app)).expect("connecting to the app");
    probe_before(port);
    let sent = unix_nanos();
    lastcall.signal(libc::SIGTERM);
    lastcall.wait_stderr("lastcall: the drain watches the app's connections");
    tell(port);
    lastcall.wait_until("the app gets the stop signal", || dir.exists("term"));
    let waited = stop_after(&dir, sent);
    let out = lastcall.wait();
    out.check(waited < Duration::from_secs(5), format!("the stop signal came {waited:?} late"))
        .assert_stderr_has(&format!(
            "lastcall: the drain watches the app's connections on port {app}"
        ))
        .assert_stderr_has("0 busy of 1 connection");
    drop(pooled);
}

#[test]
fn the_drain_waits_until_the_prober_was_told() {
    if !has_python() || !own_network() {
        return;
    }
    let dir = TestDir::new("drain_idle_prober");
    let app = free_port();
    let (mut lastcall, port) = keep_alive(&dir, app, &["--drain-quiet", "200ms"]);
    // A load balancer's health checks: the same client, again and again.
    for _ in 0..3 {
        assert_eq!(readyz(port), 200);
    }
    lastcall.signal(libc::SIGTERM);
    lastcall.wait_stderr("lastcall: the drain watches the app's connections");
    no_stop_for(&dir, Duration::from_millis(1200), "the prober had not heard 503");
    let told = unix_nanos();
    for _ in 0..3 {
        assert_eq!(readyz(port), 503);
    }
    lastcall.wait_until("the app gets the stop signal", || dir.exists("term"));
    let out = lastcall.wait();
    out.check(term_at(&dir) >= told, "the stop signal came before the third 503")
        .assert_stderr_has(
            "lastcall: load balancers let go: probers told 3 times, no request seen, 0 busy of 0 \
             connections",
        );
}

/// `--drain-idle-port` on `app` with `--drain-min 1s` and a 30 s delay, around [`HOLDER`].
fn holder(dir: &TestDir, app: u16, options: &[&str]) -> (Running, u16) {
    spawn_listening(
        |port| {
            let app_port = app.to_string();
            let mut all = vec!["--prestop-delay", "30s", "--drain-idle-port", &app_port];
            all.extend_from_slice(&["--drain-min", "1s"]);
            all.extend_from_slice(options);
            lastcall_with_app(dir, port, &all, HOLDER, app)
        },
        || dir.exists("listening"),
    )
}

/// Sends SIGTERM to a lastcall from [`holder`] whose app has no connection of its own, and
/// tells its prober: the stop signal comes after --drain-min.
fn assert_stop_after_drain_min(dir: &TestDir, mut lastcall: Running, port: u16) {
    probe_before(port);
    let sent = unix_nanos();
    lastcall.signal(libc::SIGTERM);
    lastcall.wait_stderr("lastcall: the drain watches the app's connections");
    tell(port);
    if !dir.exists("term") {
        let counted = metrics(port);
        assert!(
            counted.contains("lastcall_app_connections{state=\"busy\"} 0\n"),
            "expected no busy connection in:\n{counted}"
        );
    }
    let out = lastcall.wait();
    out.check(dir.exists("term"), "the app got no stop signal");
    let waited = stop_after(dir, sent);
    out.assert_code(128 + libc::SIGTERM)
        .check(
            waited >= Duration::from_secs(1),
            format!("the stop signal came {waited:?} after SIGTERM, before --drain-min 1s"),
        )
        .check(
            waited < Duration::from_secs(10),
            format!("the stop signal came {waited:?} after SIGTERM (delay 30s)"),
        )
        .assert_stderr_has("lastcall: load balancers let go: probers told 3 times");
}

#[test]
fn drain_with_no_connection_stops_after_drain_min() {
    if !has_python() || !own_network() {
        return;
    }
    let dir = TestDir::new("drain_idle_none");
    let (lastcall, port) = holder(&dir, free_port(), &[]);
    assert_stop_after_drain_min(&dir, lastcall, port);
}

#[test]
fn lastcalls_own_check_connections_do_not_count() {
    if !has_python() || !own_network() {
        return;
    }
    let dir = TestDir::new("drain_idle_checks");
    let app = free_port();
    let check = format!("127.0.0.1:{app}");
    let options = ["--ready-tcp", &check, "--ready-interval", "100ms"];
    let (mut lastcall, port) = holder(&dir, app, &options);
    wait_readyz(&mut lastcall, port, 200);
    // Several checks have connected: the app holds its side of each.
    lastcall.wait_until("the app accepted three check connections", || {
        dir.read("accepted").parse::<u32>().is_ok_and(|n| n >= 3)
    });
    assert_eq!(stderr_count(&dir, "the app is ready ("), 1);
    assert_stop_after_drain_min(&dir, lastcall, port);
}

/// A seccomp filter that refuses `socket(AF_NETLINK, ...)` with EPERM, as a container
/// runtime's profile may: lastcall cannot use socket diagnostics under it.
#[cfg(target_arch = "x86_64")]
fn no_netlink() -> Vec<libc::sock_filter> {
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    let stmt = |code: u32, k: u32| libc::sock_filter { code: code as u16, jt: 0, jf: 0, k };
    let jeq = |k: u32, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt: 0,
        jf,
        k,
    };
    let load = |offset: u32| stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset);
    // struct seccomp_data: nr at 0, arch at 4, args[0] at 16 (its low half, little-endian).
    vec![
        load(4),
        jeq(AUDIT_ARCH_X86_64, 5),
        load(0),
        jeq(libc::SYS_socket as u32, 3),
        load(16),
        jeq(libc::AF_NETLINK as u32, 1),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ]
}

#[cfg(target_arch = "x86_64")]
#[test]
fn without_socket_diagnostics_the_drain_counts_from_proc() {
    if !has_python() || !own_network() {
        return;
    }
    let dir = TestDir::new("drain_idle_fallback");
    let app = free_port();
    let filter = no_netlink();
    let (mut lastcall, port) = spawn_listening(
        |port| {
            let filter = filter.clone();
            let cmd = lastcall_with_app(
                &dir,
                port,
                &["--prestop-delay", "20s", "--drain-min", "200ms"],
                HOLDER,
                app,
            );
            // SAFETY: prctl only, on memory prepared before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    let prog = libc::sock_fprog {
                        len: filter.len() as u16,
                        filter: filter.as_ptr() as *mut libc::sock_filter,
                    };
                    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                        || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                })
            }
        },
        || dir.exists("listening"),
    );
    // Idle, but all /proc/net/tcp shows is an established connection: it holds the drain.
    let client = TcpStream::connect(("127.0.0.1", app)).expect("connecting to the app");
    lastcall.wait_until("the app accepted the connection", || dir.read("accepted") == "1");
    probe_before(port);
    lastcall.signal(libc::SIGTERM);
    lastcall.wait_stderr("lastcall: socket diagnostics are unavailable (");
    tell(port);
    no_stop_for(&dir, Duration::from_millis(1200), "a connection was open");
    let closed = unix_nanos();
    drop(client);
    lastcall.wait_until("the app gets the stop signal", || dir.exists("term"));
    let out = lastcall.wait();
    out.assert_code(128 + libc::SIGTERM)
        .check(term_at(&dir) >= closed, "the stop signal came before the connection closed")
        .assert_stderr_has(&format!(
            "lastcall: the drain watches the app's connections on port {app}"
        ))
        .assert_stderr_has("from /proc/net/tcp, where an idle keep-alive connection holds it")
        .assert_stderr_has(
            "lastcall: load balancers let go: probers told 3 times, no connection open",
        );
    assert_eq!(stderr_count(&dir, "socket diagnostics are unavailable"), 1, "said once");
}
