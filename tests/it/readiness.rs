//! Readiness gating: `/readyz` answers 503 until the `--ready-*` checks pass and follows them
//! after that; a hung `--ready-exec` command is killed and reaped; only processes under
//! lastcall are heard on its notify socket. The apps are in `support::apps`.

use std::collections::HashMap;
use std::fs;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use crate::support::apps::{PY_PRELUDE, lastcall_with_app, metrics, readyz, verbose, wait_readyz};
use crate::support::{TestDir, descendants, free_port, has_python, spawn_listening};

/// Listens on PORT about a second after it starts (`binding` is marked just before).
const LATE_LISTENER: &str = r#"
mark("started")
time.sleep(1)
mark("binding")
hold(listen(PORT))
"#;

/// Serves GET /health on PORT: 200; 500 while `$DIR/sick` exists; no answer at all while
/// `$DIR/hang` exists (it marks `hung` then). One request at a time, like a stuck app.
const HEALTH_SERVER: &str = r#"
from http.server import BaseHTTPRequestHandler, HTTPServer
end = time.time() + 60
class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        if os.path.exists(os.path.join(D, "hang")):
            mark("hung")
            while os.path.exists(os.path.join(D, "hang")) and time.time() < end:
                time.sleep(0.02)
            return
        if self.path != "/health":
            code = 404
        elif os.path.exists(os.path.join(D, "sick")):
            code = 500
        else:
            code = 200
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = HTTPServer(("127.0.0.1", PORT), Health)
server.timeout = 0.2
# Answers to checks lastcall gave up on meet closed connections: not worth a traceback.
server.handle_error = lambda *args: None
mark("listening")
while time.time() < end:
    server.handle_request()
"#;

/// Does nothing for about a minute.
const SLEEPER: &str = r#"
mark("started")
time.sleep(60)
"#;

/// Exits with status 3 once `$DIR/exit` exists.
const EXITS_ON_CUE: &str = r#"
wait_for("exit")
sys.exit(3)
"#;

/// Writes its NOTIFY_SOCKET to `$DIR/notify_socket`; says READY=1 once `$DIR/go` exists,
/// and STOPPING=1 once `$DIR/stop` exists.
const NOTIFIER: &str = r#"
name = os.environ.get("NOTIFY_SOCKET", "")
mark("notify_socket", name)
def say(message):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(message.encode(), "\0" + name[1:])
    s.close()
wait_for("go")
time.sleep(0.5)
say("READY=1")
mark("said_ready")
wait_for("stop")
say("STOPPING=1")
mark("said_stopping")
time.sleep(60)
"#;

#[test]
fn a_tcp_check_gates_readyz_until_the_port_opens() {
    if !has_python() {
        return;
    }
    let dir = TestDir::new("ready_tcp");
    let app = free_port();
    let check = format!("--ready-tcp 127.0.0.1:{app}");
    let (mut lastcall, port) = spawn_listening(
        |port| {
            let options = [
                "--ready-tcp",
                &format!("127.0.0.1:{app}"),
                "--ready-interval",
                "100ms",
                "--prestop-delay",
                "0s",
            ];
            lastcall_with_app(&dir, port, &options, LATE_LISTENER, app)
        },
        || dir.exists("started"),
    );

    // The check has run and failed: the port is not open yet.
    lastcall
        .wait_until("the check fails", || verbose(port).contains(&format!("check {check}: fail")));
    assert_eq!(readyz(port), 503, "/readyz before the port opens");
    let gauge = format!("lastcall_check_passing{{check=\"{check}\"}}");
    let before = metrics(port);
    assert!(before.contains(&format!("{gauge} 0")), "expected {gauge} 0 in:\n{before}");
    assert!(
        !dir.exists("binding"),
        "the app opened its port too soon for this test: the 503s above prove nothing"
    );

    wait_readyz(&mut lastcall, port, 200);
    assert!(dir.exists("binding"), "/readyz answered 200 before the app opened its port");
    let after = metrics(port);
    assert!(after.contains(&format!("{gauge} 1")), "expected {gauge} 1 in:\n{after}");
    assert!(verbose(port).contains(&format!("check {check}: pass")));

    let out = lastcall.signal_and_wait(libc::SIGTERM);
    out.assert_code(128 + libc::SIGTERM)
        .assert_stderr_has("lastcall: the app is ready (")
        .check(
            out.stderr.matches("the app is ready").count() == 1,
            "the change to ready is logged once",
        )
        .check(
            !out.stderr.contains("the app is not ready"),
            "starting unready is not a change to log",
        );
}

#[test]
fn an_http_check_turns_unready_and_ready_again() {
    if !has_python() {
        return;
    }
    let dir = TestDir::new("ready_http");
    let app = free_port();
    let url = format!("http://127.0.0.1:{app}/health");
    let (mut lastcall, port) = spawn_listening(
        |port| {
            let options =
                ["--ready-http", &url, "--ready-interval", "100ms", "--prestop-delay", "0s"];
            lastcall_with_app(&dir, port, &options, HEALTH_SERVER, app)
        },
        || dir.exists("listening"),
    );
    wait_readyz(&mut lastcall, port, 200);
    lastcall.wait_stderr("the app is ready (");

    dir.write("sick", "");
    wait_readyz(&mut lastcall, port, 503);
    lastcall
        .wait_stderr(&format!("lastcall: the app is not ready: --ready-http {url}: status 500"));
    let explained = verbose(port);
    assert!(
        explained.contains(&format!("check --ready-http {url}: fail: status 500")),
        "?verbose names the failing check:\n{explained}"
    );

    fs::remove_file(dir.join("sick")).expect("removing $DIR/sick");
    wait_readyz(&mut lastcall, port, 200);
    lastcall.wait_stderr("lastcall: the app is ready again");

    let out = lastcall.signal_and_wait(libc::SIGTERM);
    out.assert_code(128 + libc::SIGTERM);
    for line in ["the app is ready (", "the app is not ready: ", "the app is ready again"] {
        out.check(out.stderr.matches(line).count() == 1, format!("{line:?} is logged once"));
    }
}

#[test]
fn an_http_check_that_gets_no_answer_turns_unready() {
    if !has_python() {
        return;
    }
    let dir = TestDir::new("ready_http_hang");
    let app = free_port();
    let url = format!("http://127.0.0.1:{app}/health");
    let (mut lastcall, port) = spawn_listening(
        |port| {
            let options = [
                "--ready-http",
                &url,
                "--ready-interval",
                "100ms",
                "--ready-timeout",
                "300ms",
                "--prestop-delay",
                "0s",
            ];
            lastcall_with_app(&dir, port, &options, HEALTH_SERVER, app)
        },
        || dir.exists("listening"),
    );
    wait_readyz(&mut lastcall, port, 200);

    // A stuck app: it accepts the check's connection and never answers.
    dir.write("hang", "");
    lastcall.wait_until("a check reaches the stuck app", || dir.exists("hung"));
    wait_readyz(&mut lastcall, port, 503);
    lastcall.wait_stderr(&format!(
        "lastcall: the app is not ready: --ready-http {url}: no answer within 300ms"
    ));

    fs::remove_file(dir.join("hang")).expect("removing $DIR/hang");
    wait_readyz(&mut lastcall, port, 200);
    lastcall.wait_stderr("lastcall: the app is ready again");
    lastcall.signal_and_wait(libc::SIGTERM).assert_code(128 + libc::SIGTERM);
}

/// One process under lastcall, from /proc.
struct Proc {
    pid: i32,
    state: char,
    /// Clock ticks after boot; with the pid, names the process even if the pid is reused.
    start: u64,
    cmdline: String,
}

fn proc_info(pid: i32) -> Option<Proc> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    Some(Proc {
        pid,
        state: fields.first()?.chars().next()?,
        start: fields.get(19)?.parse().ok()?,
        cmdline,
    })
}

/// Seconds since boot, as /proc/uptime says.
fn uptime() -> f64 {
    let text = fs::read_to_string("/proc/uptime").expect("/proc/uptime");
    text.split_whitespace().next().and_then(|s| s.parse().ok()).expect("seconds in /proc/uptime")
}

/// Processes seen during a test (pid, start time): the ones still there when it ends
/// (a failed test) are killed, if the pid still names the same process.
struct Seen(Vec<(i32, u64)>);

impl Seen {
    fn still_there(&self) -> Vec<i32> {
        let there = |&&(pid, start): &&(i32, u64)| {
            proc_info(pid).is_some_and(|p| p.start == start && p.state != 'Z')
        };
        self.0.iter().filter(there).map(|&(pid, _)| pid).collect()
    }
}

impl Drop for Seen {
    fn drop(&mut self) {
        for pid in self.still_there() {
            // SAFETY: plain libc call, on a process this test's lastcall started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn a_hung_exec_check_is_killed_and_reaped() {
    if !has_python() {
        return;
    }
    let dir = TestDir::new("ready_exec_hung");
    let (mut lastcall, port) = spawn_listening(
        |port| {
            let options = [
                "--ready-exec",
                "sleep 100",
                "--ready-timeout",
                "300ms",
                "--ready-interval",
                "100ms",
                "--prestop-delay",
                "0s",
            ];
            lastcall_with_app(&dir, port, &options, SLEEPER, 0)
        },
        || dir.exists("started"),
    );
    let lastcall_pid = lastcall.pid();
    let is_check = |p: &Proc| p.state != 'Z' && p.cmdline.contains("sleep 100");
    lastcall.wait_until("the check command runs", || {
        descendants(lastcall_pid).into_iter().filter_map(proc_info).any(|p| is_check(&p))
    });

    // For 1.5 s (several rounds of checks): no `sleep 100` under lastcall is older than 1 s
    // (it is killed at 300ms), and no process under it stays a zombie for 1 s.
    // SAFETY: plain libc call.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut seen = Seen(Vec::new());
    let mut zombie_since: HashMap<(i32, u64), Instant> = HashMap::new();
    let window = Instant::now();
    while window.elapsed() < Duration::from_millis(1500) {
        let now = uptime();
        for p in descendants(lastcall_pid).into_iter().filter_map(proc_info) {
            let key = (p.pid, p.start);
            if p.state == 'Z' {
                let since = *zombie_since.entry(key).or_insert_with(Instant::now);
                assert!(
                    since.elapsed() < Duration::from_secs(1),
                    "process {} under lastcall has been a zombie for {:?}",
                    p.pid,
                    since.elapsed()
                );
            } else if is_check(&p) {
                let age = now - p.start as f64 / ticks;
                assert!(
                    age < 1.0,
                    "{:?} (pid {}) has run for {age:.2}s under lastcall: the 300ms check \
                     timeout did not kill it",
                    p.cmdline,
                    p.pid
                );
                if !seen.0.contains(&key) {
                    seen.0.push(key);
                }
            }
        }
        assert_eq!(readyz(port), 503, "/readyz while the check hangs");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        seen.0.len() >= 2,
        "expected the check command to be started again each round; saw {} `sleep 100`",
        seen.0.len()
    );
    // Kept for the end, where a wrong explanation fails the test after everything else.
    let explained = verbose(port);
    let gauge = metrics(port);

    let term = Instant::now();
    let out = lastcall.signal_and_wait(libc::SIGTERM);
    out.assert_code(128 + libc::SIGTERM)
        .check(term.elapsed() < Duration::from_secs(5), "lastcall took long to exit")
        .assert_stderr_has("lastcall: sending SIGTERM to child")
        .check(!out.stderr.contains("the app is ready"), "the app was never ready");
    let left = seen.still_there();
    out.check(left.is_empty(), format!("check commands left running after exit: {left:?}"));
    assert!(
        gauge.contains("lastcall_check_passing{check=\"--ready-exec 'sleep 100'\"} 0\n"),
        "/metrics during the hang:\n{gauge}"
    );
    assert!(
        explained.contains("check --ready-exec 'sleep 100': fail: no answer within 300ms"),
        "?verbose should say why the check fails, after {} `sleep 100` were killed:\n{explained}",
        seen.0.len()
    );
}

#[test]
fn the_child_exiting_during_an_exec_check_ends_lastcall() {
    if !has_python() {
        return;
    }
    let dir = TestDir::new("ready_exec_child_exits");
    let mut lastcall = dir
        .lastcall()
        // `exec`: the check is one process, no shell with a `sleep` under it.
        .args(["--listen", "off", "--ready-exec", "exec sleep 100", "--ready-timeout", "5s"])
        .args(["--", "python3", "-c", &format!("{PY_PRELUDE}{EXITS_ON_CUE}")])
        .spawn();
    let lastcall_pid = lastcall.pid();
    lastcall.wait_until("the check command runs", || {
        descendants(lastcall_pid)
            .into_iter()
            .filter_map(proc_info)
            .any(|p| p.state != 'Z' && p.cmdline.contains("sleep 100"))
    });
    let cue = Instant::now();
    dir.write("exit", "");
    // The check in flight is killed and reaped; nothing else is left to wait for.
    let out = lastcall.wait();
    out.assert_code(3).check(
        cue.elapsed() < Duration::from_secs(5),
        "lastcall took long to exit after its child (grace period 20s)",
    );
}

#[test]
fn notify_ready_and_stopping_from_the_child_only() {
    if !has_python() {
        return;
    }
    let dir = TestDir::new("ready_notify");
    let (mut lastcall, port) = spawn_listening(
        |port| {
            let options = ["--ready-notify", "--ready-interval", "100ms", "--prestop-delay", "0s"];
            lastcall_with_app(&dir, port, &options, NOTIFIER, 0)
        },
        || dir.exists("notify_socket"),
    );
    let name = dir.read("notify_socket");
    let Some(abstract_name) = name.strip_prefix('@') else {
        panic!("expected NOTIFY_SOCKET=@name for the child, got {name:?}");
    };
    let addr = SocketAddr::from_abstract_name(abstract_name.as_bytes()).expect("an address");
    let outsider = UnixDatagram::unbound().expect("a datagram socket");
    assert_eq!(readyz(port), 503, "/readyz before any READY=1");
    assert!(verbose(port).contains("check --ready-notify: not run yet"));

    // From the test itself, not under lastcall. The message is queued before the request
    // below is even sent, and lastcall reads its notify socket in the same loop turn as the
    // request, or an earlier one: its answer already counts the message.
    outsider.send_to_addr(b"READY=1", &addr).expect("sending READY=1 from outside");
    for _ in 0..10 {
        assert_eq!(readyz(port), 503, "READY=1 from a process not under lastcall was heard");
        std::thread::sleep(Duration::from_millis(30));
    }

    dir.write("go", "");
    wait_readyz(&mut lastcall, port, 200);
    assert!(dir.exists("said_ready"), "/readyz answered 200 before the child said READY=1");
    assert!(verbose(port).contains("check --ready-notify: pass"));
    lastcall.wait_stderr("lastcall: the app is ready (");

    outsider.send_to_addr(b"STOPPING=1", &addr).expect("sending STOPPING=1 from outside");
    for _ in 0..10 {
        assert_eq!(readyz(port), 200, "STOPPING=1 from a process not under lastcall was heard");
        std::thread::sleep(Duration::from_millis(30));
    }

    dir.write("stop", "");
    wait_readyz(&mut lastcall, port, 503);
    lastcall.wait_stderr("lastcall: the app is not ready: --ready-notify:");

    lastcall.signal_and_wait(libc::SIGTERM).assert_code(128 + libc::SIGTERM);
}
