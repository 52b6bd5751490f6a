//! A child that exits at once, over and over: lastcall must never miss its end, whether it
//! comes before or after the event loop starts.

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
