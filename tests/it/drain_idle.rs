//! Drain until idle: with `--drain-idle-port`, the stop signal comes once the app's
//! connections are gone (and `--drain-min` has passed), not at the end of the preStop delay;
//! lastcall's own check connections do not count.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::apps::{
    HOLDER, lastcall_with_app, metrics, readyz, stderr_count, term_at, wait_readyz,
};
use crate::support::{Running, TestDir, free_port, has_python, spawn_listening, unix_nanos};

#[test]
fn drain_waits_for_an_open_connection_to_close() {
    if !has_python() {
        return;
    }
    let dir = TestDir::new("drain_idle_open");
    let app = free_port();
    let (mut lastcall, port) = spawn_listening(
        |port| {
            let options = [
                "--prestop-delay",
                "20s",
                "--drain-idle-port",
                &app.to_string(),
                "--drain-min",
                "200ms",
            ];
            lastcall_with_app(&dir, port, &options, HOLDER, app)
        },
        || dir.exists("listening"),
    );
    let client = TcpStream::connect(("127.0.0.1", app)).expect("connecting to the app");
    lastcall.wait_until("the app accepted the connection", || dir.read("accepted") == "1");

    let sent = Instant::now();
    lastcall.signal(libc::SIGTERM);
    lastcall.wait_stderr("lastcall: 1 connection(s) to the app still open");
    let counted = metrics(port);
    assert!(
        counted.contains("lastcall_app_connections 1\n"),
        "expected lastcall_app_connections 1 in:\n{counted}"
    );
    // Well past --drain-min: only the open connection holds the stop signal back.
    while sent.elapsed() < Duration::from_millis(1200) {
        assert!(!dir.exists("term"), "the stop signal came while a connection was open");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(readyz(port), 503, "/readyz during the drain");

    let closed = unix_nanos();
    drop(client);
    lastcall.wait_until("the app gets the stop signal", || dir.exists("term"));
    let after_close = Duration::from_nanos(term_at(&dir).saturating_sub(closed) as u64);
    let out = lastcall.wait();
    out.assert_code(128 + libc::SIGTERM)
        .check(term_at(&dir) >= closed, "the stop signal came before the connection closed")
        .check(
            after_close < Duration::from_secs(5),
            format!("the stop signal came {after_close:?} after the connection closed"),
        )
        .check(sent.elapsed() < Duration::from_secs(15), "the drain took most of its 20s")
        .assert_stderr_has("lastcall: the app is idle after ");
}

/// Sends SIGTERM to a lastcall draining with `--drain-idle-port` (`--drain-min 1s`, a 30s
/// delay) whose app has no connection: the stop signal comes after --drain-min.
fn assert_stop_after_drain_min(dir: &TestDir, mut lastcall: Running, port: u16) {
    let sent = unix_nanos();
    lastcall.signal(libc::SIGTERM);
    lastcall.wait_stderr("lastcall: 0 connection(s) to the app still open");
    if !dir.exists("term") {
        let counted = metrics(port);
        assert!(
            counted.contains("lastcall_app_connections 0\n"),
            "expected lastcall_app_connections 0 in:\n{counted}"
        );
    }
    let out = lastcall.wait();
    out.check(dir.exists("term"), "the app got no stop signal");
    let waited = Duration::from_nanos(term_at(dir).saturating_sub(sent) as u64);
    out.assert_code(128 + libc::SIGTERM)
        .check(
            waited >= Duration::from_secs(1),
            format!("the stop signal came {waited:?} after SIGTERM, before --drain-min 1s"),
        )
        .check(
            waited < Duration::from_secs(10),
            format!("the stop signal came {waited:?} after SIGTERM (delay 30s)"),
        )
        .assert_stderr_has("lastcall: the app is idle after ")
        .assert_stderr_has("(--drain-min 1.0s)");
}

#[test]
fn drain_with_no_connection_stops_after_drain_min() {
    if !has_python() {
        return;
    }
    let dir = TestDir::new("drain_idle_none");
    let app = free_port();
    let (lastcall, port) = spawn_listening(
        |port| {
            let options = [
                "--prestop-delay",
                "30s",
                "--drain-idle-port",
                &app.to_string(),
                "--drain-min",
                "1s",
            ];
            lastcall_with_app(&dir, port, &options, HOLDER, app)
        },
        || dir.exists("listening"),
    );
    assert_stop_after_drain_min(&dir, lastcall, port);
}

#[test]
fn lastcalls_own_check_connections_do_not_count() {
    if !has_python() {
        return;
    }
    let dir = TestDir::new("drain_idle_checks");
    let app = free_port();
    let (mut lastcall, port) = spawn_listening(
        |port| {
            let options = [
                "--ready-tcp",
                &format!("127.0.0.1:{app}"),
                "--ready-interval",
                "100ms",
                "--prestop-delay",
                "30s",
                "--drain-idle-port",
                &app.to_string(),
                "--drain-min",
                "1s",
            ];
            lastcall_with_app(&dir, port, &options, HOLDER, app)
        },
        || dir.exists("listening"),
    );
    wait_readyz(&mut lastcall, port, 200);
    // Several checks have connected: the app holds its side of each.
    lastcall.wait_until("the app accepted three check connections", || {
        dir.read("accepted").parse::<u32>().is_ok_and(|n| n >= 3)
    });
    assert_eq!(stderr_count(&dir, "the app is ready ("), 1);
    assert_stop_after_drain_min(&dir, lastcall, port);
}
