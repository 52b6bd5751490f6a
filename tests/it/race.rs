//! Races at start-up and exit, run many times over: a child that exits at once must never be
//! missed, whether it ends before or after the event loop starts, and a program that cannot
//! be run must always end lastcall.

use std::time::Duration;

use crate::support::TestDir;

#[test]
fn a_child_that_exits_at_once_is_never_missed() {
    let dir = TestDir::new("fast_exit");
    for _ in 0..1000 {
        dir.lastcall()
            .args(["--listen", "off", "--", "true"])
            .spawn()
            .wait_for(Duration::from_secs(10))
            .assert_code(0);
    }
}

#[test]
fn a_child_that_kills_itself_at_once_is_never_missed() {
    let dir = TestDir::new("fast_kill");
    for _ in 0..200 {
        dir.lastcall()
            .args(["--listen", "off", "--", "sh", "-c", "kill -TERM $$"])
            .spawn()
            .wait_for(Duration::from_secs(10))
            .assert_code(128 + libc::SIGTERM);
    }
}

#[test]
fn a_program_that_cannot_run_always_ends_lastcall() {
    // Four at a time, each with its own output files: the failed child's exit races with
    // lastcall's own way out, and the race is lost more often on a busy machine.
    let dirs: Vec<TestDir> = (0..4).map(|_| TestDir::new("exec_failure_race")).collect();
    for _ in 0..100 {
        let running: Vec<_> = dirs
            .iter()
            .map(|dir| {
                dir.lastcall().args(["--listen", "off", "--", "/nonexistent/program"]).spawn()
            })
            .collect();
        for lastcall in running {
            lastcall.wait_for(Duration::from_secs(10)).assert_code(127);
        }
    }
}
