//! `--restart`: a child that ends on its own is started again after a backoff, within a
//! budget; `/readyz` follows, the old child's processes go first, a SIGTERM ends it at once,
//! and on held sockets (`--socket`) a client sees no refused connection.

use std::time::Duration;

use crate::support::apps::stderr_count;
use crate::support::serial::{Client, request};
use crate::support::{
    LASTCALL, TestDir, can_unshare, free_port, has_python, http, metric, wait_until,
};

/// Appends `start <ns> <pid>` to $DIR/marks and sets `n` to the number of starts so far: the
/// child's own record of when each start happened.
const MARK_START: &str =
    r#"echo "start $(date +%s%N) $$" >> "$DIR/marks"; n=$(grep -c start "$DIR/marks")"#;

/// The times (ns) of the marks named `what` in $DIR/marks, in order.
fn marks(dir: &TestDir, what: &str) -> Vec<u128> {
    dir.read("marks")
        .lines()
        .filter_map(|l| {
            let mut words = l.split(' ');
            (words.next() == Some(what)).then(|| words.next()?.parse().ok()).flatten()
        })
        .collect()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn a_child_that_crashes_twice_is_restarted_after_the_backoff_then_serves() {
    let dir = TestDir::new("restart-twice");
    let admin = free_port();
    let script = format!(
        "{MARK_START}; if [ $n -le 2 ]; then echo \"end $(date +%s%N)\" >> \"$DIR/marks\"; \
         exit 7; fi; exec sleep 600"
    );
    let mut lastcall = dir
        .lastcall()
        .args(["--listen", &format!("127.0.0.1:{admin}"), "--prestop-delay", "0s"])
        .args(["--restart", "on-failure", "--restart-delay", "300ms"])
        .args(["--termination-log", &dir.join("term").to_string_lossy()])
        .sh(&script)
        .spawn();
    lastcall.wait_until("the third start", || marks(&dir, "start").len() == 3);
    let (starts, ends) = (marks(&dir, "start"), marks(&dir, "end"));
    // Each end is marked just before the exit, each start just after the spawn: the gap is
    // at least the backoff, and not much more.
    for (i, want) in [(0, ms(300)), (1, ms(600))] {
        let gap = Duration::from_nanos((starts[i + 1] - ends[i]) as u64);
        assert!(
            gap >= want && gap < want + ms(700),
            "restart {}: {gap:?}, backoff {want:?}",
            i + 1
        );
    }
    lastcall.wait_until("two restarts counted", || {
        metric(admin, "lastcall_restarts_total") == Some(2.0)
    });
    assert_eq!(metric(admin, "lastcall_child_last_exit_status"), Some(7.0));
    assert_eq!(metric(admin, "lastcall_restart_backoff_seconds"), Some(0.6));
    assert_eq!(http(admin, "GET", "/readyz").status, 200, "no checks: ready once running");
    assert_eq!(http(admin, "GET", "/livez").status, 200);
    let verbose = http(admin, "GET", "/readyz?verbose").body;
    assert!(verbose.contains("restarts: 2; last child exit: exited with status 7"), "{verbose}");
    let out = lastcall.signal_and_wait(libc::SIGTERM);
    out.assert_code(143);
    out.assert_stderr_has("restarting it in 300ms (restart 1 of at most 5 in 10m)");
    out.assert_stderr_has("restarting it in 600ms (restart 2 of at most 5 in 10m)");
    let term = dir.read("term");
    assert!(term.ends_with("(2 restart(s) before)"), "{term}");
}

#[test]
fn a_crash_loop_exhausts_the_budget_with_the_childs_status() {
    let dir = TestDir::new("restart-budget");
    let out = dir
        .lastcall()
        .args(["--listen", "off", "--restart", "always", "--restart-delay", "10ms"])
        .args(["--restart-limit", "3", "--restart-window", "1m"])
        .args(["--termination-log", &dir.join("term").to_string_lossy()])
        .sh(&format!("{MARK_START}; exit 4"))
        .run();
    out.assert_code(4);
    assert_eq!(marks(&dir, "start").len(), 4, "the first start and three restarts");
    out.assert_stderr_has("restart budget exhausted: 3 restart(s) in the last");
    let term = dir.read("term");
    assert!(
        term.starts_with("child exited 4 after 3 restart(s): restart budget exhausted (3 in ")
            && term.ends_with("; at most 3 in 1m)"),
        "{term}"
    );
}

#[test]
fn sigterm_during_a_backoff_exits_at_once_and_starts_nothing() {
    let dir = TestDir::new("restart-sigterm");
    let admin = free_port();
    let mut lastcall = dir
        .lastcall()
        .args(["--listen", &format!("127.0.0.1:{admin}"), "--prestop-delay", "5s"])
        .args(["--restart", "on-failure", "--restart-delay", "30s"])
        .args(["--termination-log", &dir.join("term").to_string_lossy()])
        .sh(&format!("{MARK_START}; exit 1"))
        .spawn();
    lastcall.wait_stderr("restarting it in 30.0s");
    assert_eq!(http(admin, "GET", "/readyz").status, 503, "unready from the crash");
    assert_eq!(http(admin, "GET", "/livez").status, 200, "live within the budget");
    let verbose = http(admin, "GET", "/livez?verbose").body;
    assert!(verbose.contains("phase: restarting\n"), "{verbose}");
    assert!(verbose.contains("restart: backoff 30.0s, new child in "), "{verbose}");
    lastcall.signal(libc::SIGTERM);
    let out = lastcall.wait_for(Duration::from_secs(2));
    out.assert_code(1);
    out.assert_stderr_has("received SIGTERM while restarting: no new child; exiting with 1");
    assert_eq!(marks(&dir, "start").len(), 1, "no new child");
    assert_eq!(dir.read("term"), "child exited 1, then SIGTERM while restarting it");
}

#[test]
fn the_old_childs_processes_are_gone_before_the_new_child_starts() {
    let dir = TestDir::new("restart-orphans");
    // The first child leaves a process behind and crashes; the second records whether that
    // process is still there when it starts.
    let script = format!(
        "{MARK_START}; if [ $n -eq 1 ]; then sleep 600 & echo $! > \"$DIR/orphan\"; exit 1; fi; \
         if kill -0 $(cat \"$DIR/orphan\") 2>/dev/null; then echo alive > \"$DIR/seen\"; \
         else echo gone > \"$DIR/seen\"; fi; exec sleep 600"
    );
    let mut lastcall = dir
        .lastcall()
        .args(["--listen", "off", "--restart", "on-failure", "--restart-delay", "10ms"])
        .sh(&script)
        .spawn();
    lastcall.wait_until("the second child looked", || dir.read("seen").ends_with('\n'));
    assert_eq!(dir.read("seen"), "gone\n", "the orphan was reaped before the new child");
    lastcall.signal_and_wait(libc::SIGTERM).assert_code(143);
}

/// As PID 1 of a PID namespace, with `--group`: a leftover in its own session that ignores
/// SIGTERM is killed after the grace period, and only then does the new child start.
#[test]
fn as_pid_1_a_leftover_ignoring_sigterm_is_killed_before_the_new_child() {
    if !can_unshare() {
        return;
    }
    let dir = TestDir::new("restart-pid1");
    let script = format!(
        "{MARK_START}; if [ $n -eq 1 ]; then setsid sh -c 'trap \"\" TERM; echo $$ > \"$DIR/orphan\"; \
         exec sleep 600' & while [ ! -s \"$DIR/orphan\" ]; do sleep 0.01; done; exit 1; fi; \
         if kill -0 $(cat \"$DIR/orphan\") 2>/dev/null; then echo alive > \"$DIR/seen\"; \
         else echo gone > \"$DIR/seen\"; fi; exec sleep 600"
    );
    let mut lastcall = dir
        .command("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--", LASTCALL])
        .args(["--listen", "off", "--group", "--grace-period", "500ms"])
        .args(["--restart", "on-failure", "--restart-delay", "10ms", "--", "sh", "-c", &script])
        .spawn();
    lastcall.wait_until("the second child looked", || dir.read("seen").ends_with('\n'));
    assert_eq!(dir.read("seen"), "gone\n", "the leftover was killed before the new child");
    lastcall.wait_stderr("sending SIGKILL to the remaining processes");
    // unshare passes no signal on: lastcall is its child.
    let pid = *crate::support::children_of(lastcall.pid()).first().expect("lastcall under unshare");
    crate::support::send(pid, libc::SIGTERM);
    lastcall.wait().assert_code(128 + libc::SIGTERM);
}

/// A socket-activated HTTP server on fd 3 that answers with its pid and says READY=1 after a
/// start-up pause; after an answer, with `$DIR/crash` present, it removes it and crashes.
const SERVER: &str = r#"
import os, socket, time
d = os.environ["DIR"]
listener = socket.socket(fileno=3)
time.sleep(0.2)
ns = os.environ["NOTIFY_SOCKET"]
u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
u.sendto(b"READY=1", "\0" + ns[1:] if ns.startswith("@") else ns)
body = str(os.getpid()).encode()
while True:
    c, _ = listener.accept()
    c.settimeout(5)
    c.recv(4096)
    c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    c.close()
    if os.path.exists(d + "/crash"):
        os.remove(d + "/crash")
        os._exit(1)
"#;

#[test]
fn held_sockets_refuse_no_connection_through_three_crash_restarts() {
    if !has_python() {
        return;
    }
    let dir = TestDir::new("restart-socket");
    let (port, admin) = (free_port(), free_port());
    let mut lastcall = dir
        .lastcall()
        .args(["--listen", &format!("127.0.0.1:{admin}"), "--prestop-delay", "0s"])
        .args(["--socket", &format!("tcp://127.0.0.1:{port}"), "--ready-notify"])
        .args(["--restart", "on-failure", "--", "python3", "-c", SERVER])
        .spawn();
    lastcall.wait_until("the app answers", || request(port).is_ok());
    let client = Client::start(port);
    for n in 1..=3 {
        // Each child crashes only once lastcall has taken its READY=1: a datagram read after
        // its sender's end no longer counts, and the ready lines below would be short.
        lastcall.wait_until(&format!("child {n} is ready"), || {
            stderr_count(&dir, "the app is ready (") == n
        });
        dir.write("crash", "");
        lastcall.wait_until(&format!("restart {n} serves"), || {
            metric(admin, "lastcall_restarts_total") == Some(n as f64)
                && client.pids().len() == n + 1
        });
    }
    wait_until("a few more requests", || client.answered() > 20);
    let (served, failed, firsts) = client.finish();
    assert!(failed.is_empty(), "{} of {served} requests failed: {failed:?}", failed.len());
    assert_eq!(firsts.len(), 4, "four children served: {firsts:?}");
    // The request sent right after each crash waited in the backlog through the backoff
    // (100ms at least) and the new child's start: requests were made while no child ran.
    for (n, &(pid, waited)) in firsts.iter().enumerate().skip(1) {
        assert!(waited >= ms(100), "restart {n}: child {pid}'s first request waited {waited:?}");
    }
    let out = lastcall.signal_and_wait(libc::SIGTERM);
    out.assert_code(143);
    // Unready from each crash until the new child's READY=1.
    let again = out.stderr.matches("the app is ready (").count();
    assert_eq!(again, 4, "ready after the start and each restart:\n{out}");
}
