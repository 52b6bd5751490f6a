//! Sidecars: `--wait-for` holds the child until a fake proxy answers (and gives up, or is
//! stopped, in bounded time), and `--on-exit` calls the proxy's quit endpoint exactly once
//! after the child and everything under lastcall are gone, without changing the status.
//!
//! The fake proxy is a thread with a listener: `GET /ready` answers 200 once the test says
//! it is ready (503 before), `POST /quit` is counted with the time it came.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{TIMEOUT, TestDir, free_port, probe, spawn_listening, unix_nanos};

/// A small HTTP server playing a proxy sidecar.
struct FakeProxy {
    port: u16,
    ready: Arc<AtomicBool>,
    /// When each `POST /quit` came, Unix nanoseconds.
    quits: Arc<Mutex<Vec<u128>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeProxy {
    /// A proxy; a `silent` one accepts connections but never answers.
    fn start(silent: bool) -> FakeProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fake proxy");
        listener.set_nonblocking(true).expect("non-blocking");
        let port = listener.local_addr().expect("address").port();
        let ready = Arc::new(AtomicBool::new(false));
        let quits = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, q, s) = (ready.clone(), quits.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(60);
            let mut held = Vec::new();
            while !s.load(Ordering::SeqCst) && Instant::now() < end {
                match listener.accept() {
                    Ok((conn, _)) if silent => held.push(conn),
                    Ok((conn, _)) => answer(conn, &r, &q),
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        FakeProxy { port, ready, quits, stop, thread: Some(thread) }
    }

    fn quits(&self) -> Vec<u128> {
        self.quits.lock().expect("quits").clone()
    }
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer(mut conn: TcpStream, ready: &AtomicBool, quits: &Mutex<Vec<u128>>) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let status = if head.starts_with("POST /quit ") {
        quits.lock().expect("quits").push(unix_nanos());
        "200 OK"
    } else if head.starts_with("GET /ready ") && ready.load(Ordering::SeqCst) {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    let _ = write!(conn, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

/// The Unix-nanosecond time a script wrote with `mark NAME "$(date +%s%N)"`.
fn nanos(dir: &TestDir, name: &str) -> u128 {
    dir.read(name).trim().parse().unwrap_or_else(|_| panic!("no time in $DIR/{name}"))
}

fn ms(nanos: u128) -> f64 {
    nanos as f64 / 1e6
}

#[test]
fn the_child_starts_only_once_the_proxy_answers() {
    let dir = TestDir::new("wait_for_proxy");
    let proxy = FakeProxy::start(false);
    let url = format!("http://127.0.0.1:{}/ready", proxy.port);
    let (mut lastcall, port) = spawn_listening(
        |port| {
            dir.lastcall()
                .args(["--listen", &format!("127.0.0.1:{port}"), "--wait-for", &url])
                .sh(r#"mark started "$(date +%s%N)"; idle"#)
        },
        || dir.read("stderr").contains("waiting for"),
    );
    // Waiting: live, not ready, and ?verbose says what is awaited.
    let within = Duration::from_secs(2);
    assert_eq!(probe(port, "/livez", within), Some(200));
    assert_eq!(probe(port, "/readyz", within), Some(503));
    // The first attempt's answer is told once it has come: until then, "no answer".
    let mut verbose = String::new();
    lastcall.wait_until("?verbose tells the proxy's 503", || {
        verbose = crate::support::http(port, "GET", "/readyz?verbose").body;
        verbose.contains("status 503")
    });
    assert!(verbose.contains("phase: waiting"), "{verbose}");
    assert!(verbose.contains(&format!("awaited {url}: down for ")), "{verbose}");
    assert!(verbose.contains("status 503"), "{verbose}");
    assert!(!dir.exists("started"), "the child started before the proxy was ready");

    let ready_at = unix_nanos();
    proxy.ready.store(true, Ordering::SeqCst);
    lastcall.wait_until("the child starts", || dir.exists("started"));
    let started = nanos(&dir, "started");
    assert!(started > ready_at, "the child started before the proxy answered");
    let _ = writeln!(
        std::io::stderr(),
        "wait: proxy ready to child started: {:.1} ms",
        ms(started - ready_at)
    );
    let waited = crate::support::metric(
        port,
        &format!("lastcall_dependency_wait_seconds{{dependency=\"{url}\"}}"),
    );
    assert!(waited.is_some_and(|s| s > 0.0), "{waited:?}");
    let up =
        crate::support::metric(port, &format!("lastcall_dependency_up{{dependency=\"{url}\"}}"));
    assert_eq!(up, Some(1.0));
    let end = lastcall.signal_and_wait(libc::SIGTERM);
    end.assert_stderr_has(&format!("{url} is up after "));
    end.assert_stderr_has("every dependency is up after ");
}

#[test]
fn a_proxy_that_never_comes_up_ends_the_run_with_124_in_time() {
    let dir = TestDir::new("wait_for_timeout");
    let log = dir.join("termination-log");
    let closed = free_port();
    let start = Instant::now();
    let end = dir
        .lastcall()
        .args(["--listen", "off", "--termination-log", log.to_str().unwrap()])
        .args(["--wait-for", &format!("tcp://127.0.0.1:{closed}"), "--wait-timeout", "500ms"])
        .sh("mark started")
        .run();
    let took = start.elapsed();
    end.assert_code(124);
    end.assert_stderr_has(&format!(
        "never came up: tcp://127.0.0.1:{closed} (Connection refused (os error 111)); the \
         child was not started, exiting with 124"
    ));
    assert!(!dir.exists("started"));
    assert!(took >= Duration::from_millis(500) && took < Duration::from_secs(3), "{took:?}");
    assert!(
        dir.read("termination-log").starts_with("dependency not up after "),
        "{}",
        dir.read("termination-log")
    );

    // Asked for: the child starts anyway, with a warning.
    let end = dir
        .lastcall()
        .args(["--listen", "off", "--wait-for-exec", "exit 1", "--wait-timeout", "200ms"])
        .args(["--on-wait-timeout", "start"])
        .sh("mark started; exit 7")
        .run();
    end.assert_code(7).assert_stderr_has("starting the child anyway (--on-wait-timeout start)");
    assert!(dir.exists("started"));
}

#[test]
fn sigterm_during_the_wait_exits_at_once() {
    let dir = TestDir::new("wait_for_sigterm");
    let log = dir.join("termination-log");
    let closed = free_port();
    let mut lastcall = dir
        .lastcall()
        .args(["--listen", "off", "--termination-log", log.to_str().unwrap()])
        .args(["--wait-for", &format!("tcp://127.0.0.1:{closed}")])
        .sh("mark started")
        .spawn();
    lastcall.wait_stderr("waiting for");
    let sent = Instant::now();
    let end = lastcall.signal_and_wait(libc::SIGTERM);
    let took = sent.elapsed();
    end.assert_code(143).assert_stderr_has("the child was not started, exiting with 143");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let _ =
        writeln!(std::io::stderr(), "wait: SIGTERM to exit: {:.1} ms", took.as_secs_f64() * 1e3);
    assert!(!dir.exists("started"));
    assert!(dir.read("termination-log").starts_with("stopped by SIGTERM after "));
}

/// Runs `script` under lastcall with `--on-exit` to a fake proxy's quit endpoint, ended by
/// `stop` (a signal to lastcall, or none); checks the status and that the quit came exactly
/// once, after the child's end (the script marks `ended` with the time just before).
fn quits_once_after(name: &str, script: &str, args: &[&str], stop: Option<i32>, code: i32) {
    let dir = TestDir::new(name);
    let proxy = FakeProxy::start(false);
    let quit = format!("http://127.0.0.1:{}/quit", proxy.port);
    let lastcall = dir
        .lastcall()
        .args(["--listen", "off", "--prestop-delay", "0s", "--on-exit", &quit])
        .args(args)
        .sh(script)
        .spawn_marked("up");
    if let Some(sig) = stop {
        lastcall.signal(sig);
    }
    let end = lastcall.wait();
    let exited = unix_nanos();
    end.assert_code(code);
    let quits = proxy.quits();
    assert_eq!(quits.len(), 1, "{quits:?}\n{end}");
    let ended = nanos(&dir, "ended");
    assert!(quits[0] > ended && quits[0] <= exited, "{quits:?} {ended} {exited}");
    end.assert_stderr_has(&format!("on-exit POST {quit}: HTTP/1.1 200 OK"));
    let _ = writeln!(
        std::io::stderr(),
        "{name}: child's end to quit call {:.1} ms, to lastcall's exit seen {:.1} ms",
        ms(quits[0] - ended),
        ms(exited - ended)
    );
}

#[test]
fn the_quit_call_comes_once_after_a_normal_exit() {
    quits_once_after(
        "on_exit_normal",
        r#"mark up; mark ended "$(date +%s%N)"; exit 0"#,
        &[],
        None,
        0,
    );
}

#[test]
fn the_quit_call_comes_once_after_a_crash() {
    let script = r#"mark up; mark ended "$(date +%s%N)"; kill -SEGV $$"#;
    quits_once_after("on_exit_crash", script, &[], None, 128 + libc::SIGSEGV);
}

#[test]
fn the_quit_call_comes_once_after_sigkill_at_the_end_of_the_grace_period() {
    // The child ignores SIGTERM; its end is SIGKILL, 300 ms after the stop signal.
    let script = r#"trap '' TERM; mark up; mark ended "$(date +%s%N)"; idle"#;
    let args = ["--grace-period", "300ms"];
    quits_once_after("on_exit_sigkill", script, &args, Some(libc::SIGTERM), 137);
}

#[test]
fn a_dead_or_silent_sidecar_delays_the_exit_by_at_most_the_bound() {
    let dir = TestDir::new("on_exit_dead");
    let silent = FakeProxy::start(true);
    let gone = free_port();
    let start = Instant::now();
    let end = dir
        .lastcall()
        .args(["--listen", "off", "--on-exit-timeout", "300ms"])
        .args(["--on-exit", &format!("http://127.0.0.1:{gone}/quit")])
        .args(["--on-exit", &format!("http://127.0.0.1:{}/quit", silent.port)])
        .args(["--on-exit-exec", r#"echo hook >> "$DIR/got"; exit 3"#])
        .args(["--on-exit-exec", "sleep 5"])
        .sh("exit 5")
        .run();
    let took = start.elapsed();
    // The status is the child's, whatever the hooks did.
    end.assert_code(5);
    end.assert_stderr_has("connection refused, the sidecar is already gone");
    end.assert_stderr_has("no answer within 300ms");
    end.assert_stderr_has("exited with status 3");
    end.assert_stderr_has("not done within 300ms: killed");
    assert!(dir.got_has("hook"));
    // In order: the URLs, then the commands.
    let at = |needle: &str| end.stderr.find(needle).unwrap_or(usize::MAX);
    assert!(at("already gone") < at("no answer within") && at("no answer within") < at("status 3"));
    // Gone: at once; silent: 300 ms; a failing command: at once; a slow one: 300 ms.
    assert!(took < Duration::from_millis(600) + Duration::from_secs(1), "{took:?}");
    assert!(took < TIMEOUT);
    let _ = writeln!(std::io::stderr(), "on-exit: dead + silent + slow hooks: {took:?}");
}

#[test]
fn the_quit_call_comes_once_when_the_child_cannot_start() {
    // Without a wait, and once a wait is over: a command that is not there still ends with
    // the quit call, so that a Job's proxy is not left running.
    for wait in [&[][..], &["--wait-for-exec", "true"][..]] {
        let dir = TestDir::new("on_exit_not_started");
        let proxy = FakeProxy::start(false);
        let quit = format!("http://127.0.0.1:{}/quit", proxy.port);
        let log = dir.join("termination-log");
        let end = dir
            .lastcall()
            .args(["--listen", "off", "--on-exit", &quit])
            .args(["--termination-log", log.to_str().unwrap()])
            .args(wait)
            .args(["--", "/nonexistent/app"])
            .run();
        end.assert_code(127).assert_stderr_has("cannot run '/nonexistent/app'");
        end.assert_stderr_has(&format!("on-exit POST {quit}: HTTP/1.1 200 OK"));
        assert_eq!(proxy.quits().len(), 1, "{wait:?}\n{end}");
        assert_eq!(dir.read("termination-log"), "exec failed: /nonexistent/app: not found");
    }
}
