//! Signal forwarding: every signal lastcall does not handle itself reaches the child as it
//! arrives, in every phase, and with `--group` the child's whole process group.

use crate::support::{TestDir, send};

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
        .spawn();
    lastcall.wait_until("the child is ready", || dir.exists("ready"));
    // One at a time: a second standard signal sent before the first was handled merges
    // with it.
    let mut expected = Vec::new();
    for (name, sig) in forwarded() {
        lastcall.signal(sig);
        lastcall.wait_until(&format!("the child got {name}"), || dir.got_has(&name));
        expected.push(name);
    }
    lastcall.signal(libc::SIGTERM);
    let out = lastcall.wait();
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
        .spawn();
    lastcall.wait_until("the child is ready", || dir.exists("ready"));

    lastcall.signal(libc::SIGTERM);
    lastcall.wait_stderr("draining");
    lastcall.signal(libc::SIGUSR1);
    lastcall.wait_until("the child got USR1 during the preStop delay", || dir.got_has("USR1"));

    // The second skips the rest of the delay: now the grace period runs.
    lastcall.signal(libc::SIGTERM);
    lastcall.wait_until("the child got the stop signal", || dir.got_has("TERM"));
    lastcall.signal(libc::SIGUSR2);
    lastcall.wait_until("the child got USR2 during the grace period", || dir.got_has("USR2"));

    lastcall.signal(libc::SIGTERM);
    let out = lastcall.wait();
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
        .spawn();
    lastcall.wait_until("the child is ready", || dir.exists("ready"));
    lastcall.signal(libc::SIGUSR1);
    lastcall.wait_until("both got USR1", || dir.got_has("child USR1") && dir.got_has("grand USR1"));
    // The grandchild ends on TERM, so the child's trap finishes: a clean exit, well before
    // the grace period would end in SIGKILL (137).
    lastcall.signal(libc::SIGTERM);
    let out = lastcall.wait();
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
        .spawn();
    lastcall.wait_until("the child is ready", || dir.exists("ready"));
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
    lastcall.signal(libc::SIGTERM);
    let out = lastcall.wait();
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
        .spawn();
    lastcall.wait_until("the child set its traps", || dir.exists("started"));
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
    lastcall.signal(libc::SIGTERM);
    lastcall.wait().assert_code(0);
}

/// lastcall writing its log to a pipe nobody reads raises SIGPIPE in lastcall itself: that
/// one is not forwarded, and the child lives on to exit as it means to.
#[test]
fn lastcalls_own_sigpipe_is_not_forwarded() {
    let dir = TestDir::new("own-sigpipe");
    let (read, write) = nix::unistd::pipe().expect("a pipe");
    drop(read);
    let mut lastcall = dir
        .lastcall()
        .args(["--listen", "off", "--prestop-delay", "0s"])
        .sh("trap 'rec PIPE' PIPE; trap 'rec TERM; exit 0' TERM; mark started; idle")
        .stdio(
            std::process::Stdio::null(),
            std::process::Stdio::null(),
            std::process::Stdio::from(write),
        )
        .spawn();
    lastcall.wait_until("the child started", || dir.exists("started"));
    // The drain's log lines go to the broken pipe.
    lastcall.signal(libc::SIGTERM);
    let finished = lastcall.wait();
    assert!(dir.got_has("TERM"), "the child got the stop signal: {:?}", dir.got());
    assert!(!dir.got_has("PIPE"), "lastcall's own SIGPIPE reached the child: {:?}", dir.got());
    finished.assert_code(0);
}
