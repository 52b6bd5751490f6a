//! Signal forwarding: every signal lastcall does not handle itself reaches the child as it
//! arrives, in every phase, and with `--group` the child's whole process group.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{
    LASTCALL, TIMEOUT, TestDir, can_unshare, children_of, has_python, metric, send, spawn_listening,
};

/// The signals to forward, with the name the child records for each.
fn forwarded() -> Vec<(String, i32)> {
    let mut list: Vec<(String, i32)> = [
        ("HUP", libc::SIGHUP),
        ("USR1", libc::SIGUSR1),
        ("USR2", libc::SIGUSR2),
        ("QUIT", libc::SIGQUIT),
        ("WINCH", libc::SIGWINCH),
        ("CONT", libc::SIGCONT),
        ("ALRM", libc::SIGALRM),
        ("URG", libc::SIGURG),
        ("PIPE", libc::SIGPIPE),
        ("TSTP", libc::SIGTSTP),
    ]
    .iter()
    .map(|(n, s)| (n.to_string(), *s))
    .collect();
    list.push(("RTMIN+1".to_string(), libc::SIGRTMIN() + 1));
    list
}

#[test]
fn signals_are_forwarded_to_the_child() {
    let dir = TestDir::new("forwarding");
    let traps: String =
        forwarded().iter().map(|(name, sig)| format!("trap 'rec {name}' {sig}\n")).collect();
    let mut lastcall = dir
        .lastcall()
        .args(["--listen", "off", "--prestop-delay", "0s"])
        .sh(&format!("{traps}trap 'rec TERM; exit 0' TERM\nmark ready\nidle"))
        .spawn_marked("ready");
    // One at a time: a second standard signal sent before the first was handled merges
    // with it.
    let mut expected = Vec::new();
    for (name, sig) in forwarded() {
        lastcall.signal(sig);
        lastcall.wait_until(&format!("the child got {name}"), || dir.got_has(&name));
        expected.push(name);
    }
    let out = lastcall.signal_and_wait(libc::SIGTERM);
    out.assert_code(0);
    expected.push("TERM".to_string());
    out.check(dir.got() == expected, format!("expected the child to get exactly {expected:?}"));
}

#[test]
fn signals_are_forwarded_while_draining_and_stopping() {
    let dir = TestDir::new("forwarding_drain");
    let mut lastcall = dir
        .lastcall()
        .args(["--listen", "off", "--prestop-delay", "60s", "--grace-period", "60s"])
        .sh("trap 'rec USR1' USR1; trap 'rec USR2' USR2; trap 'rec TERM' TERM; mark ready; idle")
        .spawn_marked("ready");

    lastcall.signal(libc::SIGTERM);
    lastcall.wait_stderr("draining");
    lastcall.signal(libc::SIGUSR1);
    lastcall.wait_until("the child got USR1 during the preStop delay", || dir.got_has("USR1"));

    // The second skips the rest of the delay: now the grace period runs.
    lastcall.signal(libc::SIGTERM);
    lastcall.wait_until("the child got the stop signal", || dir.got_has("TERM"));
    lastcall.signal(libc::SIGUSR2);
    lastcall.wait_until("the child got USR2 during the grace period", || dir.got_has("USR2"));

    let out = lastcall.signal_and_wait(libc::SIGTERM);
    out.assert_code(128 + libc::SIGKILL);
    out.check(dir.got() == ["USR1", "TERM", "USR2"], "expected USR1, TERM, USR2 in that order");
}

/// The child starts a grandchild in its own process group, which records what it gets, and
/// does not pass anything on. The child's TERM trap waits for the grandchild to end.
const FAMILY: &str = r#"
( trap 'rec grand USR1' USR1; trap 'rec grand USR2' USR2; trap 'rec grand TERM; exit 0' TERM
  mark grand-ready; idle ) &
grand=$!
mark grand "$grand"
trap 'rec child USR1' USR1
trap 'rec child TERM; wait $grand; exit 0' TERM
await grand-ready
mark ready
idle
"#;

#[test]
fn group_sends_forwarded_and_stop_signals_to_the_whole_group() {
    let dir = TestDir::new("group");
    let mut lastcall = dir
        .lastcall()
        .args(["--listen", "off", "--group", "--prestop-delay", "0s", "--grace-period", "10s"])
        .sh(FAMILY)
        .spawn_marked("ready");
    lastcall.signal(libc::SIGUSR1);
    lastcall.wait_until("both got USR1", || dir.got_has("child USR1") && dir.got_has("grand USR1"));
    // The grandchild ends on TERM, so the child's trap finishes: a clean exit, well before
    // the grace period would end in SIGKILL (137).
    let out = lastcall.signal_and_wait(libc::SIGTERM);
    out.assert_code(0);
    out.check(
        dir.got_has("grand TERM") && dir.got_has("child TERM"),
        "both must have got the stop signal",
    );
}

#[test]
fn without_group_only_the_child_gets_signals() {
    let dir = TestDir::new("no_group");
    let mut lastcall = dir
        .lastcall()
        .args(["--listen", "off", "--prestop-delay", "0s", "--grace-period", "1s"])
        .sh(FAMILY)
        .spawn_marked("ready");
    let grand: i32 = dir.read("grand").trim().parse().expect("the grandchild's pid");
    lastcall.signal(libc::SIGUSR1);
    lastcall.wait_until("the child got USR1", || dir.got_has("child USR1"));
    // dash runs pending traps in signal-number order, so once the grandchild has handled
    // this USR2 it would have handled a USR1 sent to it before.
    send(grand, libc::SIGUSR2);
    lastcall.wait_until("the grandchild got USR2", || dir.got_has("grand USR2"));
    assert!(!dir.got_has("grand USR1"), "USR1 went to the grandchild too: {:?}", dir.got());
    // The stop signal too goes to the child alone: its trap waits for the grandchild, which
    // never gets TERM, until the grace period ends in SIGKILL.
    let out = lastcall.signal_and_wait(libc::SIGTERM);
    out.assert_code(128 + libc::SIGKILL);
    out.check(!dir.got_has("grand TERM"), "the grandchild must not get the stop signal");
}

/// SIGSEGV, SIGFPE, SIGILL, SIGBUS, SIGABRT, SIGTRAP and SIGSYS sent with kill() are the
/// child's like any other: only a real fault of lastcall's own would be lastcall's.
#[test]
fn fault_signals_sent_by_a_process_are_forwarded() {
    let dir = TestDir::new("forwarding-faults");
    let names = ["SEGV", "FPE", "ILL", "BUS", "ABRT", "TRAP", "SYS"];
    let traps: String = names.iter().map(|n| format!("trap 'rec {n}' {n}; ")).collect();
    let mut lastcall = dir
        .lastcall()
        .args(["--listen", "off", "--prestop-delay", "0s"])
        .sh(&format!("{traps} trap 'exit 0' TERM; mark started; idle"))
        .spawn_marked("started");
    let signals = [
        libc::SIGSEGV,
        libc::SIGFPE,
        libc::SIGILL,
        libc::SIGBUS,
        libc::SIGABRT,
        libc::SIGTRAP,
        libc::SIGSYS,
    ];
    for (name, sig) in names.iter().zip(signals) {
        lastcall.signal(sig);
        lastcall.wait_until(&format!("the child got {name}"), || dir.got_has(name));
    }
    lastcall.signal_and_wait(libc::SIGTERM).assert_code(0);
}

/// lastcall writing its log to a pipe nobody reads raises SIGPIPE in lastcall itself: that
/// one is not forwarded, and the child lives on to exit as it means to.
#[test]
fn lastcalls_own_sigpipe_is_not_forwarded() {
    let dir = TestDir::new("own-sigpipe");
    let (read, write) = nix::unistd::pipe().expect("a pipe");
    drop(read);
    let lastcall = dir
        .lastcall()
        .args(["--listen", "off", "--prestop-delay", "0s"])
        .sh("trap 'rec PIPE' PIPE; trap 'rec TERM; exit 0' TERM; mark started; idle")
        .stdio(
            std::process::Stdio::null(),
            std::process::Stdio::null(),
            std::process::Stdio::from(write),
        )
        .spawn_marked("started");
    // The drain's log lines go to the broken pipe.
    let finished = lastcall.signal_and_wait(libc::SIGTERM);
    assert!(dir.got_has("TERM"), "the child got the stop signal: {:?}", dir.got());
    assert!(!dir.got_has("PIPE"), "lastcall's own SIGPIPE reached the child: {:?}", dir.got());
    finished.assert_code(0);
}

/// Counts every real-time signal it is sent, one by one (`sigwaitinfo` dequeues each queued
/// instance; a handler would see repeats merged). On SIGTERM it drains what is queued and
/// writes `RTMIN+1 RTMIN+2` counts to `$DIR/counts`.
const RT_COUNTER: &str = r#"
import os, signal
D = os.environ["DIR"]
one, two = signal.SIGRTMIN + 1, signal.SIGRTMIN + 2
wanted = {one, two, signal.SIGTERM}
signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
open(os.path.join(D, "ready"), "w").close()
counts = {one: 0, two: 0}
while True:
    info = signal.sigtimedwait(wanted, 60)
    if info is None or info.si_signo == signal.SIGTERM:
        break
    counts[info.si_signo] += 1
while True:
    info = signal.sigtimedwait({one, two}, 0)
    if info is None:
        break
    counts[info.si_signo] += 1
with open(os.path.join(D, "counts"), "w") as f:
    f.write("%d %d" % (counts[one], counts[two]))
"#;

/// Real-time signals queue: every one sent is forwarded, and one of another kind sent right
/// after a burst is not lost behind it.
#[test]
fn a_burst_of_real_time_signals_is_forwarded_one_for_one() {
    if !has_python() {
        return;
    }
    let dir = TestDir::new("rt_burst");
    let (mut lastcall, port) = spawn_listening(
        |port| {
            dir.lastcall()
                .args(["--listen", &format!("127.0.0.1:{port}"), "--prestop-delay", "0s"])
                .args(["--", "python3", "-c", RT_COUNTER])
        },
        || dir.exists("ready"),
    );
    let (one, two) = (libc::SIGRTMIN() + 1, libc::SIGRTMIN() + 2);
    let mut sent = 0u64;
    for _ in 0..10_000 {
        // SAFETY: plain libc call. EAGAIN (the kernel's queue is full) is the sender's to
        // see: only signals the kernel took count.
        if unsafe { libc::kill(lastcall.pid(), one) } == 0 {
            sent += 1;
        }
    }
    send(lastcall.pid(), two);
    let series = |n: i32| format!("lastcall_signals_forwarded_total{{signal=\"SIGRTMIN+{n}\"}}");
    lastcall.wait_until("lastcall forwarded the burst and the one after it", || {
        metric(port, &series(1)) == Some(sent as f64) && metric(port, &series(2)) == Some(1.0)
    });
    let out = lastcall.signal_and_wait(libc::SIGTERM);
    out.assert_code(0);
    let counts = dir.read("counts");
    out.check(
        counts == format!("{sent} 1"),
        format!("sent {sent} and 1; the child counted {counts}"),
    );
}

/// Whether process `pid` runs the program at `path`.
fn runs(pid: i32, path: &str) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == Path::new(path))
}

/// Whether `sig` is blocked in `pid`'s signal mask, from /proc/PID/status.
fn blocks(pid: i32, sig: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mask = status.lines().find_map(|l| l.strip_prefix("SigBlk:")).unwrap_or("0");
    u64::from_str_radix(mask.trim(), 16).is_ok_and(|m| m & (1 << (sig - 1)) != 0)
}

/// As PID 1, a SIGTERM that arrives as soon as any code of lastcall's own has run is taken,
/// even before its event loop exists: as PID 1 with no handler yet, the kernel would drop
/// it. 20 runs, the signal sent the moment lastcall's mask shows it has begun.
#[test]
fn as_pid_1_an_early_sigterm_is_never_lost() {
    if !can_unshare() {
        return;
    }
    let dir = TestDir::new("early_term");
    for run in 0..20 {
        let mut unshare = dir
            .command("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--", LASTCALL, "--listen", "off"])
            .args(["--prestop-delay", "0s", "--", "sleep", "100"])
            .spawn();
        let start = Instant::now();
        let mut lastcall = None;
        while start.elapsed() < TIMEOUT {
            // unshare blocks TERM itself between its fork and exec: only once the process
            // runs lastcall does a blocked TERM mean lastcall's own code has begun.
            lastcall = children_of(unshare.pid())
                .first()
                .copied()
                .filter(|&p| runs(p, LASTCALL) && blocks(p, libc::SIGTERM));
            if lastcall.is_some() || unshare.try_wait().is_some() {
                break;
            }
            std::hint::spin_loop();
        }
        let Some(pid) = lastcall else {
            panic!("run {run}: lastcall never blocked SIGTERM before it ran its loop");
        };
        send(pid, libc::SIGTERM);
        let out = unshare.wait_for(Duration::from_secs(5));
        out.assert_code(128 + libc::SIGTERM);
    }
}
