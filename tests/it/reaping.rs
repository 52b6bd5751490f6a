//! Descendants and zombies: processes the main child leaves behind are stopped, killed after
//! the grace period, and reaped before lastcall exits; orphans come to lastcall (as a child
//! subreaper, or as PID 1 of a PID namespace) and never stay zombies.

use std::time::Duration;

use crate::support::{LASTCALL, ProcessGuard, TestDir, can_unshare, proc_state};

/// Reads the pid the child wrote to `$DIR/pid`, and guards it.
fn left_behind(dir: &TestDir) -> (i32, ProcessGuard) {
    let pid: i32 = dir.read("pid").trim().parse().expect("the child wrote a pid");
    (pid, ProcessGuard::new(pid))
}

/// Checks that `pid` is gone, and not a zombie that someone still has to reap.
#[track_caller]
fn assert_gone(pid: i32) {
    match proc_state(pid) {
        None => {}
        Some('Z') => panic!("process {pid} was left as a zombie"),
        Some(state) => panic!("process {pid} still runs (state {state})"),
    }
}

#[test]
fn a_process_left_behind_is_stopped_and_reaped() {
    let dir = TestDir::new("left_behind");
    let out = dir
        .lastcall()
        .args(["--listen", "off"])
        .sh("sleep 1000 & echo $! > \"$DIR/pid\"; exit 0")
        .run();
    let (pid, _guard) = left_behind(&dir);
    out.assert_code(0)
        .check(out.elapsed < Duration::from_secs(5), "lastcall must exit promptly")
        .assert_stderr_has("other processes remain: sending them SIGTERM")
        .assert_stderr_has("all remaining processes reaped; exiting with 0");
    assert_gone(pid);
}

#[test]
fn a_descendant_ignoring_sigterm_is_killed_after_the_grace_period() {
    let dir = TestDir::new("stubborn_descendant");
    // The subshell ignores TERM and so do the sleeps it starts: only SIGKILL ends it. The
    // child waits until the subshell ignores TERM before it exits.
    let out = dir
        .lastcall()
        .args(["--listen", "off", "--grace-period", "1s"])
        .sh("(trap '' TERM; mark ignoring; idle) & echo $! > \"$DIR/pid\"; await ignoring; exit 4")
        .run();
    let (pid, _guard) = left_behind(&dir);
    out.assert_code(4)
        .check(out.elapsed >= Duration::from_secs(1), "SIGKILL came before the grace period ended")
        .check(out.elapsed < Duration::from_secs(6), "SIGKILL came late")
        .assert_stderr_has("sending SIGKILL to the remaining processes");
    assert_gone(pid);
}

/// The child makes 50 orphans that soon exit (each `sleep` outlives the subshell that
/// started it), checks they came to its parent (lastcall), waits (bounded) until none of
/// them is left, and exits with the number still left as zombies.
const ZOMBIES: &str = r#"
lc=$PPID
scan() {
  live=0; zombies=0
  for f in /proc/[0-9]*/stat; do
    { read -r pid comm state ppid rest < "$f"; } 2>/dev/null || continue
    [ "$ppid" = "$lc" ] && [ "$pid" != $$ ] || continue
    if [ "$state" = Z ]; then zombies=$((zombies+1)); else live=$((live+1)); fi
  done
}
i=0
while [ $i -lt 50 ]; do (sleep 0.2 &); i=$((i+1)); done
scan
mark adopted "$live"
[ "$live" -gt 0 ] || exit 100
n=0
while [ $n -lt 100 ]; do
  scan
  [ $((live + zombies)) -eq 0 ] && exit 0
  sleep 0.05; n=$((n+1))
done
[ "$live" -eq 0 ] || exit 101
exit $zombies
"#;

#[test]
fn as_subreaper_orphans_are_reaped() {
    let dir = TestDir::new("subreaper");
    let out = dir.lastcall().args(["--listen", "off"]).sh(ZOMBIES).run();
    out.check(out.code() != Some(100), "no orphan came to lastcall: it is not a child subreaper")
        .check(out.code() != Some(101), "the orphans were still running after 5s")
        .assert_code(0)
        .assert_stderr_empty();
}

#[test]
fn no_subreaper_warns_and_leaves_orphans_to_init() {
    let dir = TestDir::new("no_subreaper");
    // The orphan's parent, once its subshell has exited, must not be lastcall.
    let out = dir
        .lastcall()
        .args(["--listen", "off", "--no-subreaper"])
        .sh(r#"(sleep 0.5 & echo $! > "$DIR/pid")
{ read -r pid comm state ppid rest < /proc/$(cat "$DIR/pid")/stat; } 2>/dev/null
[ "$ppid" != "$PPID" ]"#)
        .run();
    out.assert_code(0);
    let line = out.one_stderr_line();
    out.check(
        line.starts_with("lastcall: ") && line.contains("--no-subreaper"),
        "expected one warning naming --no-subreaper",
    );
}

/// `unshare` makes a PID namespace in which lastcall is PID 1.
fn unshare(dir: &TestDir) -> crate::support::Cmd {
    dir.command("unshare").args(["--pid", "--fork", "--mount-proc", LASTCALL])
}

#[test]
fn as_pid_1_orphans_are_reaped() {
    if !can_unshare() {
        return;
    }
    let dir = TestDir::new("pid1_zombies");
    let out = unshare(&dir)
        .args(["--listen", "off"])
        .sh(&format!("[ $$ = 2 ] && [ $PPID = 1 ] || exit 102\n{ZOMBIES}"))
        .run();
    out.check(out.code() != Some(102), "lastcall is not PID 1 in the namespace")
        .check(out.code() != Some(100), "no orphan came to lastcall")
        .check(out.code() != Some(101), "the orphans were still running after 5s")
        .assert_code(0)
        .assert_stderr_empty();
}

#[test]
fn as_pid_1_sigterm_drains_through_the_child() {
    if !can_unshare() {
        return;
    }
    let dir = TestDir::new("pid1_term");
    let running = unshare(&dir)
        .args(["--listen", "off", "--prestop-delay", "0s"])
        .sh("trap 'rec TERM; trap - TERM; kill -TERM $$' TERM; mark ready \"$$ $PPID\"; idle")
        .spawn_marked("ready");
    assert_eq!(dir.read("ready").trim(), "2 1", "the child's pid and parent pid in the namespace");
    // lastcall's pid out here: the one child of `unshare`.
    let unshare_pid = running.pid();
    let children =
        std::fs::read_to_string(format!("/proc/{unshare_pid}/task/{unshare_pid}/children"))
            .expect("reading unshare's children");
    let pids: Vec<i32> = children.split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert_eq!(pids.len(), 1, "unshare has one child, lastcall: {pids:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", pids[0])).unwrap();
    assert!(
        status.lines().any(|l| l.starts_with("NSpid:") && l.ends_with("\t1")),
        "unshare's child is not PID 1 of its namespace:\n{status}"
    );
    // Out of the parent namespace, PID 1 only gets signals it has a handler for.
    crate::support::send(pids[0], libc::SIGTERM);
    let out = running.wait();
    out.assert_code(128 + libc::SIGTERM)
        .check(dir.got() == ["TERM"], "the child got the stop signal")
        .assert_stderr_has("lastcall: received SIGTERM: draining");
}
