//! The drain: SIGTERM/SIGINT turn /readyz to 503, wait out the preStop delay, send the stop
//! signal, and SIGKILL the child's process group after the grace period. A second signal
//! hurries the drain, a third kills at once, and a child that ends early ends it.

use std::time::{Duration, Instant};

use crate::support::{TestDir, http, spawn_listening, unix_nanos};

/// A child that records SIGTERM with the time it came (`date +%s%N`), then dies of it.
const DIES_ON_TERM: &str =
    "trap 'rec TERM $(date +%s%N); trap - TERM; kill -TERM $$' TERM; mark ready; idle";

/// The time the child recorded with `word`, in Unix nanoseconds.
fn recorded_at(dir: &TestDir, word: &str) -> u128 {
    let line = dir
        .got()
        .into_iter()
        .find(|l| l.starts_with(&format!("{word} ")))
        .unwrap_or_else(|| panic!("the child recorded no {word}: {:?}", dir.got()));
    line[word.len() + 1..].trim().parse().expect("a timestamp")
}

#[test]
fn sigterm_turns_unready_and_waits_out_the_prestop_delay() {
    let delay = Duration::from_secs(2);
    let dir = TestDir::new("prestop");
    let (mut lastcall, port) = spawn_listening(
        |port| {
            dir.lastcall()
                .args(["--listen", &format!("127.0.0.1:{port}"), "--prestop-delay", "2s"])
                .sh(DIES_ON_TERM)
        },
        || dir.exists("ready"),
    );
    assert_eq!(http(port, "GET", "/readyz").status, 200);
    assert_eq!(http(port, "GET", "/livez").status, 200);

    let sent = unix_nanos();
    let sent_at = Instant::now();
    lastcall.signal(libc::SIGTERM);
    lastcall.wait_until("/readyz answers 503", || http(port, "GET", "/readyz").status == 503);
    let asked = sent_at.elapsed();
    let livez = http(port, "GET", "/livez").status;
    // Asked within the delay, the child cannot have been stopped yet: it is alive.
    assert!(asked < delay, "/readyz took {asked:?} to turn 503, longer than the preStop delay");
    assert_eq!(livez, 200, "/livez during the preStop delay");

    let out = lastcall.wait();
    out.assert_code(128 + libc::SIGTERM);
    let recorded = recorded_at(&dir, "TERM");
    out.check(recorded >= sent, "the child recorded SIGTERM before it was sent (clock step?)");
    let waited = Duration::from_nanos((recorded - sent) as u64);
    out.check(
        waited >= delay,
        format!("the stop signal came {waited:?} after SIGTERM, before the 2s delay"),
    );
    out.check(
        waited < delay + Duration::from_secs(5),
        format!("the stop signal came {waited:?} after SIGTERM"),
    );
    out.assert_stderr_has(
        "lastcall: received SIGTERM: draining, /readyz answers 503; preStop delay 2.0s",
    )
    .assert_stderr_has("lastcall: sending SIGTERM to child")
    .assert_stderr_has("exiting with 143");
}

#[test]
fn sigint_drains_and_the_child_gets_sigint() {
    let dir = TestDir::new("sigint");
    let lastcall = dir
        .lastcall()
        .args(["--listen", "off", "--prestop-delay", "0s"])
        .sh("trap 'rec INT; exit 7' INT; trap 'rec TERM; exit 8' TERM; mark ready; idle")
        .spawn_marked("ready");
    let out = lastcall.signal_and_wait(libc::SIGINT);
    out.assert_code(7)
        .check(dir.got() == ["INT"], "the child gets SIGINT and nothing else")
        .assert_stderr_has("lastcall: received SIGINT: draining");
}

#[test]
fn stop_signal_replaces_the_signal_passed_on() {
    let dir = TestDir::new("stop_signal");
    let lastcall = dir
        .lastcall()
        .args(["--listen", "off", "--prestop-delay", "0s", "--stop-signal", "USR2"])
        .sh("trap 'rec USR2; exit 5' USR2; trap 'rec TERM; exit 6' TERM; mark ready; idle")
        .spawn_marked("ready");
    let out = lastcall.signal_and_wait(libc::SIGTERM);
    out.assert_code(5)
        .check(dir.got() == ["USR2"], "the child gets SIGUSR2 and not SIGTERM")
        .assert_stderr_has("sending SIGUSR2 to child");
}

#[test]
fn a_second_sigterm_skips_the_rest_of_the_prestop_delay() {
    let dir = TestDir::new("second_term");
    let mut lastcall = dir
        .lastcall()
        .args(["--listen", "off", "--prestop-delay", "60s"])
        .sh(DIES_ON_TERM)
        .spawn_marked("ready");
    let first = Instant::now();
    lastcall.signal(libc::SIGTERM);
    lastcall.wait_stderr("preStop delay 60.0s");
    let out = lastcall.signal_and_wait(libc::SIGTERM);
    out.assert_code(128 + libc::SIGTERM)
        .check(first.elapsed() < Duration::from_secs(30), "the delay was not cut short")
        .check(dir.got_has("TERM"), "the child got the stop signal")
        .assert_stderr_has("received SIGTERM again: skipping");
}

#[test]
fn a_second_sigterm_during_the_grace_period_is_passed_on() {
    let dir = TestDir::new("second_term_grace");
    let mut lastcall = dir
        .lastcall()
        .args(["--listen", "off", "--prestop-delay", "0s", "--grace-period", "60s"])
        .sh("trap 'rec TERM' TERM; mark ready; idle")
        .spawn_marked("ready");
    lastcall.signal(libc::SIGTERM);
    lastcall.wait_until("the child got the stop signal", || dir.got().len() == 1);
    lastcall.signal(libc::SIGTERM);
    lastcall.wait_until("the child got the second SIGTERM", || dir.got().len() == 2);
    let third = Instant::now();
    let out = lastcall.signal_and_wait(libc::SIGTERM);
    out.assert_code(128 + libc::SIGKILL)
        .check(dir.got() == ["TERM", "TERM"], "the child gets SIGTERM twice")
        .check(third.elapsed() < Duration::from_secs(5), "the third SIGTERM kills at once")
        .assert_stderr_has("received SIGTERM a third time");
}

#[test]
fn a_third_sigterm_kills_at_once() {
    let dir = TestDir::new("third_term");
    let mut lastcall = dir
        .lastcall()
        .args(["--listen", "off", "--prestop-delay", "60s", "--grace-period", "60s"])
        .sh("trap '' TERM; mark ready; idle")
        .spawn_marked("ready");
    lastcall.signal(libc::SIGTERM);
    lastcall.wait_stderr("draining");
    lastcall.signal(libc::SIGTERM);
    lastcall.wait_stderr("sending SIGTERM to child");
    let third = Instant::now();
    let out = lastcall.signal_and_wait(libc::SIGTERM);
    out.assert_code(128 + libc::SIGKILL)
        .check(third.elapsed() < Duration::from_secs(5), "the third SIGTERM kills at once")
        .assert_stderr_has("received SIGTERM a third time")
        .assert_stderr_has("sending SIGKILL to process group");
}

#[test]
fn the_grace_period_ends_in_sigkill() {
    let dir = TestDir::new("grace");
    let lastcall = dir
        .lastcall()
        .args(["--listen", "off", "--prestop-delay", "0s", "--grace-period", "1s"])
        .sh("trap '' TERM; mark ready; idle")
        .spawn_marked("ready");
    let sent = Instant::now();
    let out = lastcall.signal_and_wait(libc::SIGTERM);
    let took = sent.elapsed();
    out.assert_code(128 + libc::SIGKILL)
        .check(
            took >= Duration::from_secs(1),
            format!("killed {took:?} after SIGTERM, before the 1s grace period"),
        )
        .check(took < Duration::from_secs(6), format!("killed {took:?} after SIGTERM"))
        .assert_stderr_has("grace period of 1.0s is over");
}

#[test]
fn a_child_ending_during_the_prestop_delay_ends_lastcall_promptly() {
    let dir = TestDir::new("exit_during_delay");
    let mut lastcall = dir
        .lastcall()
        .args(["--listen", "off", "--prestop-delay", "60s"])
        .sh("trap 'rec TERM' TERM; mark ready; await go; exit 9")
        .spawn_marked("ready");
    lastcall.signal(libc::SIGTERM);
    lastcall.wait_stderr("draining");
    let go = Instant::now();
    dir.write("go", "");
    let out = lastcall.wait();
    out.assert_code(9)
        .check(
            go.elapsed() < Duration::from_secs(5),
            "lastcall must exit as soon as the child does",
        )
        .check(dir.got().is_empty(), "the child must not get the stop signal")
        .assert_stderr_has("during the preStop delay");
}

/// Clears the markers of the previous run in `dir`.
fn reset(dir: &TestDir) {
    for name in ["ready", "got"] {
        let _ = std::fs::remove_file(dir.join(name));
    }
}

/// `--prestop-delay auto` (the default): 5s once /readyz was probed or in Kubernetes, else
/// 0. The log line says which; a second SIGTERM cuts a 5s delay short.
#[test]
fn auto_prestop_delay_depends_on_probes_and_kubernetes() {
    let dir = TestDir::new("auto_prestop");
    let log = |why: &str| format!("preStop delay {why}");

    // Probed once: 5s.
    let (mut lastcall, port) = spawn_listening(
        |port| dir.lastcall().args(["--listen", &format!("127.0.0.1:{port}")]).sh(DIES_ON_TERM),
        || dir.exists("ready"),
    );
    assert_eq!(http(port, "GET", "/readyz").status, 200);
    let first = Instant::now();
    lastcall.signal(libc::SIGTERM);
    lastcall.wait_stderr(&log("5.0s (auto: /readyz has been probed)"));
    assert!(dir.got().is_empty(), "the stop signal came during the delay");
    let out = lastcall.signal_and_wait(libc::SIGTERM);
    out.assert_code(128 + libc::SIGTERM).check(
        first.elapsed() < Duration::from_secs(5),
        "the second SIGTERM must cut the delay short",
    );

    // Never probed: none.
    reset(&dir);
    let lastcall =
        dir.lastcall().args(["--listen", "127.0.0.1:0"]).sh(DIES_ON_TERM).spawn_marked("ready");
    lastcall
        .signal_and_wait(libc::SIGTERM)
        .assert_code(128 + libc::SIGTERM)
        .assert_stderr_has(&log("0ms (auto: not in Kubernetes and /readyz never probed)"));

    // In Kubernetes: 5s, even with no endpoint to probe.
    reset(&dir);
    let mut lastcall = dir
        .lastcall()
        .env("KUBERNETES_SERVICE_HOST", "10.0.0.1")
        .args(["--listen", "off"])
        .sh(DIES_ON_TERM)
        .spawn_marked("ready");
    lastcall.signal(libc::SIGTERM);
    lastcall.wait_stderr(&log("5.0s (auto: KUBERNETES_SERVICE_HOST is set)"));
    lastcall.signal_and_wait(libc::SIGTERM).assert_code(128 + libc::SIGTERM);
}

/// Ignores SIGTERM and leaves its own process group for one a helper made, while another
/// helper stays in the first group: signalling the first group reaches neither the child
/// nor the second helper.
const ESCAPES_ITS_GROUP: &str = r#"
import os, signal, time
D = os.environ["DIR"]
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    time.sleep(60)
    os._exit(0)
r, w = os.pipe()
helper = os.fork()
if helper == 0:
    os.setpgid(0, 0)
    os.write(w, b"x")
    time.sleep(60)
    os._exit(0)
os.read(r, 1)
os.setpgid(0, helper)
open(os.path.join(D, "escaped"), "w").close()
time.sleep(60)
"#;

/// At the end of the grace period every process under lastcall dies, whatever its group.
#[test]
fn a_child_that_left_its_process_group_is_still_killed() {
    if !crate::support::has_python() {
        return;
    }
    let dir = TestDir::new("escape");
    let lastcall = dir
        .lastcall()
        .args(["--listen", "off", "--prestop-delay", "0s", "--grace-period", "1s"])
        .args(["--", "python3", "-c", ESCAPES_ITS_GROUP])
        .spawn_marked("escaped");
    let sent = Instant::now();
    let out = lastcall.signal_and_wait(libc::SIGTERM);
    out.assert_code(128 + libc::SIGKILL).check(
        sent.elapsed() < Duration::from_secs(5),
        "lastcall must end everything soon after the 1s grace period",
    );
}
