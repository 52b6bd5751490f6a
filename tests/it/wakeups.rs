//! No periodic wake-ups: an idle lastcall sleeps until something happens.

use std::time::Duration;

use crate::support::{TestDir, wait_until};

/// Voluntary plus involuntary context switches of `pid` so far.
fn switches(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .filter(|l| {
            l.starts_with("voluntary_ctxt_switches:")
                || l.starts_with("nonvoluntary_ctxt_switches:")
        })
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn an_idle_lastcall_does_not_wake_up() {
    let dir = TestDir::new("idle");
    let mut lastcall = dir
        .lastcall()
        .args(["--listen", "127.0.0.1:0", "--prestop-delay", "0s"])
        .sh("mark ready; exec sleep 100")
        .spawn();
    lastcall.wait_until("the child is ready", || dir.exists("ready"));
    let pid = lastcall.pid();
    // Start-up must be over first: wait until the count holds still for 100ms.
    let mut last = switches(pid);
    wait_until("lastcall settles", || {
        std::thread::sleep(Duration::from_millis(100));
        let now = switches(pid);
        std::mem::replace(&mut last, now) == now
    });
    // The observation window.
    let before = switches(pid);
    std::thread::sleep(Duration::from_millis(500));
    let after = switches(pid);
    assert_eq!(after, before, "lastcall woke up {} times in 500ms while idle", after - before);

    lastcall.signal(libc::SIGTERM);
    lastcall.wait().assert_code(128 + libc::SIGTERM);
}
