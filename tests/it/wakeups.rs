//! No periodic wake-ups: an idle lastcall sleeps until something happens.

use std::time::Duration;

use crate::support::{TestDir, cpu_time, wait_until};

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
    let lastcall = dir
        .lastcall()
        .args(["--listen", "127.0.0.1:0", "--prestop-delay", "0s"])
        .sh("mark ready; exec sleep 100")
        .spawn_marked("ready");
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

    lastcall.signal_and_wait(libc::SIGTERM).assert_code(128 + libc::SIGTERM);
}

/// Accepts connections and never answers them, for about a minute.
const HUNG_APP: &str = r#"
import os, socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
open(os.path.join(os.environ["DIR"], "listening"), "w").close()
held = []
s.settimeout(0.5)
end = time.time() + 60
while time.time() < end:
    try:
        held.append(s.accept()[0])
        open(os.path.join(os.environ["DIR"], "accepted"), "w").close()
    except socket.timeout:
        pass
"#;

/// A readiness check that outlives `--ready-interval` leaves the next round in the past
/// while it is in flight: the loop must sleep until the check's own deadline, not spin.
#[test]
fn a_check_slower_than_its_interval_does_not_spin() {
    if !crate::support::has_python() {
        return;
    }
    let dir = TestDir::new("slow_check");
    let app = crate::support::free_port();
    let url = format!("http://127.0.0.1:{app}/health");
    let mut lastcall = dir
        .lastcall()
        .args(["--listen", "off", "--prestop-delay", "0s"])
        .args(["--ready-http", &url, "--ready-interval", "200ms", "--ready-timeout", "5s"])
        .args(["--", "python3", "-c", HUNG_APP, &app.to_string()])
        .spawn();
    // The first round's check is in flight; its 200ms interval ends in the window below.
    lastcall.wait_until("the check connected", || dir.exists("accepted"));
    let pid = lastcall.pid();
    let (before, at) = (cpu_time(pid), std::time::Instant::now());
    std::thread::sleep(Duration::from_secs(1));
    let (used, window) = (cpu_time(pid) - before, at.elapsed());
    assert!(
        used < window / 10,
        "lastcall used {used:?} of CPU in {window:?} while a check was in flight"
    );
    lastcall.signal_and_wait(libc::SIGTERM).assert_code(128 + libc::SIGTERM);
}
