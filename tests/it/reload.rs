//! Zero-downtime reloads: lastcall holds the listening socket (`--socket`), and on the reload
//! signal starts a new child on it, waits until it is ready, then drains the old one. A client
//! sending requests over new connections all along sees no refused or failed request.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;

use crate::support::serial::{Client, request};
use crate::support::{Running, TestDir, free_port, has_python, http, wait_until};

/// A socket-activated HTTP server: serves fd 3, answers with its pid, says READY=1 when it
/// can (after a start-up pause, as a real app would take), and on SIGTERM stops accepting
/// and exits once its last answer is written. With `$DIR/fail-next` present, a new instance
/// exits at once instead.
const SERVER: &str = r#"
import os, signal, socket, sys, time
d = os.environ["DIR"]
if os.path.exists(d + "/fail-next") and os.path.exists(d + "/first"):
    sys.exit(3)
open(d + "/first", "w").close()
assert os.environ["LISTEN_PID"] == str(os.getpid()) and os.environ["LISTEN_FDS"] == "1"
listener = socket.socket(fileno=3)
listener.settimeout(0.05)
stopping = False
def stop(*_):
    global stopping
    stopping = True
signal.signal(signal.SIGTERM, stop)
time.sleep(0.3)
ns = os.environ.get("NOTIFY_SOCKET")
if ns:
    u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    u.sendto(b"READY=1", "\0" + ns[1:] if ns.startswith("@") else ns)
body = str(os.getpid()).encode()
while not stopping:
    try:
        c, _ = listener.accept()
    except socket.timeout:
        continue
    c.settimeout(5)
    c.recv(4096)
    c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    c.close()
"#;

/// lastcall holding the socket on `port`, with the endpoint on `admin`.
fn start(dir: &TestDir, port: u16, admin: u16, extra: &[&str]) -> Running {
    dir.lastcall()
        .args(["--listen", &format!("127.0.0.1:{admin}"), "--prestop-delay", "0s"])
        .args(["--socket", &format!("tcp://127.0.0.1:{port}"), "--ready-interval", "200ms"])
        .args(extra)
        .args(["--", "python3", "-c", SERVER])
        .spawn()
}

fn metric(admin: u16, name: &str) -> u64 {
    let text = http(admin, "GET", "/metrics").body;
    let line = text.lines().find(|l| l.split(' ').next() == Some(name));
    line.and_then(|l| l.split(' ').nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

fn reloads_in_a_row(notify: bool) {
    let dir = TestDir::new(if notify { "reload-notify" } else { "reload-settle" });
    let (port, admin) = (free_port(), free_port());
    let extra: &[&str] = if notify { &["--ready-notify"] } else { &[] };
    let mut lastcall = start(&dir, port, admin, extra);
    lastcall.wait_until("the app answers", || request(port).is_ok());
    let client = Client::start(port);
    let mut seen = BTreeSet::new();
    for n in 1..=5 {
        let before = client.last_pid();
        lastcall.signal(libc::SIGHUP);
        let mut not_ready = 0;
        lastcall.wait_until(&format!("reload {n} swaps the child"), || {
            // /readyz stays 200 all through a reload.
            not_ready += usize::from(http(admin, "GET", "/readyz").status != 200);
            client.last_pid() != before && metric(admin, "lastcall_reloads_total") == n
        });
        assert_eq!(not_ready, 0, "/readyz was not 200 during reload {n}");
        seen.extend(client.last_pid());
    }
    // The client stops first: once lastcall exits, the socket is closed for good.
    let (ok, failed, firsts) = client.finish();
    let pids: Vec<u32> = firsts.iter().map(|&(pid, _)| pid).collect();
    let finished = lastcall.signal_and_wait(libc::SIGTERM);
    finished.check(finished.code() == Some(0), "the last child exits 0 on SIGTERM");
    writeln_stderr(&format!("5 reloads: {ok} requests, {} failed, pids {pids:?}", failed.len()));
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), ok);
    // With READY=1, each new child serves before the old one stops, so the client sees all
    // six. Without it, a new child counts as ready after one --ready-interval, which may be
    // before it accepts (the backlog holds the connections meanwhile): fewer may be seen.
    let distinct: BTreeSet<&u32> = pids.iter().collect();
    if notify {
        assert!(seen.len() >= 5 && distinct.len() == 6, "each reload seen: {pids:?}");
    } else {
        assert!(distinct.len() >= 2, "the children changed: {pids:?}");
    }
    // No leftover: every child that served is gone (lastcall reaped them all before exiting).
    for pid in pids {
        let state = crate::support::proc_state(pid as i32);
        assert_eq!(state, None, "child {pid} is still there, state {state:?}");
    }
}

fn writeln_stderr(line: &str) {
    // Straight to stderr: libtest would hide an `eprintln!` of a test that passes.
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[test]
fn five_reloads_with_ready_notify_drop_no_request() {
    if has_python() {
        reloads_in_a_row(true);
    }
}

#[test]
fn five_reloads_without_notify_drop_no_request() {
    if has_python() {
        reloads_in_a_row(false);
    }
}

#[test]
fn a_failed_reload_keeps_the_old_child_serving() {
    if !has_python() {
        return;
    }
    let dir = TestDir::new("reload-fails");
    let (port, admin) = (free_port(), free_port());
    let mut lastcall = start(&dir, port, admin, &["--ready-notify"]);
    lastcall.wait_until("the app answers", || request(port).is_ok());
    let first = request(port).expect("the first child answers");
    dir.write("fail-next", "");
    let client = Client::start(port);
    lastcall.signal(libc::SIGHUP);
    lastcall
        .wait_until("the reload fails", || metric(admin, "lastcall_reload_failures_total") == 1);
    wait_until("a few more requests", || client.answered() > 20);
    let (ok, failed, firsts) = client.finish();
    let pids: Vec<u32> = firsts.iter().map(|&(pid, _)| pid).collect();
    assert!(failed.is_empty(), "{} of {ok} requests failed: {failed:?}", failed.len());
    assert_eq!(pids, [first], "the old child served throughout");
    assert_eq!(metric(admin, "lastcall_reloads_total"), 0);
    assert_eq!(http(admin, "GET", "/readyz").status, 200, "still ready");
    lastcall.wait_stderr("reload failed: the new child exited with status 3");
    lastcall.signal_and_wait(libc::SIGTERM).assert_code(0);
}

#[test]
fn reload_signal_needs_a_socket() {
    let dir = TestDir::new("reload-needs-socket");
    let out = dir.lastcall().args(["--reload-signal", "USR1", "--", "true"]).run();
    out.assert_code(2);
    assert!(out.one_stderr_line().contains("--reload-signal needs --socket"), "{out}");
}

/// The open descriptors of process `pid`.
fn open_fds(pid: i32) -> BTreeSet<i32> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("the process's fds");
    dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()
}

/// The soft RLIMIT_NOFILE lastcall is started with in the test below: above what it holds at
/// start, so that the first child starts; below what it holds once clients are connected.
const LOW_SOFT_NOFILE: i32 = 32;

#[test]
fn a_reload_under_a_low_fd_limit_still_passes_the_socket_at_3() {
    if !has_python() {
        return;
    }
    let dir = TestDir::new("reload-low-nofile");
    let (port, admin) = (free_port(), free_port());
    // SAFETY: getrlimit and setrlimit are async-signal-safe system calls on a local rlimit.
    let cmd = unsafe {
        dir.lastcall().pre_exec(|| {
            let mut limit: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            limit.rlim_cur = LOW_SOFT_NOFILE as libc::rlim_t;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut lastcall = cmd
        .args(["--listen", &format!("127.0.0.1:{admin}"), "--prestop-delay", "0s"])
        .args(["--socket", &format!("tcp://127.0.0.1:{port}"), "--ready-notify"])
        .args(["--request-timeout", "60s", "--", "python3", "-c", SERVER])
        .spawn();
    lastcall.wait_until("the app answers", || request(port).is_ok());
    let first = request(port).expect("the first child answers");
    let pid = lastcall.pid();
    let below: BTreeSet<i32> = (0..LOW_SOFT_NOFILE).collect();
    assert!(!open_fds(pid).is_superset(&below), "lastcall holds every fd below the limit at start");
    // Clients that connect to the endpoint and send nothing hold a descriptor of lastcall's
    // each, the lowest free one: enough of them fill every descriptor below the child's limit.
    let mut idle = Vec::new();
    for _ in 0..LOW_SOFT_NOFILE {
        let held = open_fds(pid);
        if held.is_superset(&below) {
            break;
        }
        idle.push(TcpStream::connect(("127.0.0.1", admin)).expect("connect to the endpoint"));
        lastcall
            .wait_until("lastcall accepts the idle client", || open_fds(pid).len() > held.len());
    }
    assert!(open_fds(pid).is_superset(&below), "every fd below {LOW_SOFT_NOFILE} in use");
    lastcall.signal(libc::SIGHUP);
    lastcall.wait_until("the reload ends", || {
        metric(admin, "lastcall_reloads_total") + metric(admin, "lastcall_reload_failures_total")
            > 0
    });
    let fds = |pid: u32| {
        let fd3 = std::fs::read_link(format!("/proc/{pid}/fd/3")).ok();
        format!("{pid}: fd 3 {fd3:?}, open {:?}", open_fds(pid as i32))
    };
    assert_eq!(
        metric(admin, "lastcall_reload_failures_total"),
        0,
        "the new child failed:\n{}",
        dir.read("stderr")
    );
    // The old child may still take a connection or two while it stops.
    let mut second = first;
    lastcall.wait_until("the new child serves", || {
        second = request(port).unwrap_or(first);
        second != first
    });
    let link = std::fs::read_link(format!("/proc/{second}/fd/3")).expect("fd 3 is open");
    let socket = std::fs::read_link(format!("/proc/{pid}/fd/3")).expect("lastcall's socket");
    assert_eq!(link, socket, "the socket at fd 3: {}", fds(second));
    drop(idle);
    lastcall.signal_and_wait(libc::SIGTERM).assert_code(0);
}
