//! The child sees what it would see without lastcall: the signal mask and ignored signals
//! lastcall inherited, and no file descriptor of lastcall's.

use std::io;

use crate::support::{Finished, TestDir};

/// Signals 32 and 33 belong to the C library, which lets no program change them, and which
/// the test process may have inherited ignored: lastcall leaves them as they are.
const LIBC_INTERNAL: u64 = 0b11 << 31;

/// SigBlk and SigIgn from the child's /proc/self/status, without [`LIBC_INTERNAL`].
fn masks(out: &Finished) -> (u64, u64) {
    let field = |name: &str| {
        let line = out.stdout.lines().find(|l| l.starts_with(name));
        let hex = line.and_then(|l| l.split_whitespace().nth(1));
        let value = hex.and_then(|h| u64::from_str_radix(h, 16).ok());
        let value = value.unwrap_or_else(|| panic!("no {name} in the child's status\n{out}"));
        value & !LIBC_INTERNAL
    };
    (field("SigBlk:"), field("SigIgn:"))
}

fn bit(sig: i32) -> u64 {
    1 << (sig - 1)
}

/// Between fork and exec: every signal back to its default, nothing blocked; then, if
/// `changed`, SIGTERM and SIGUSR1 blocked and SIGINT and SIGHUP ignored.
fn set_signal_state(changed: bool) -> io::Result<()> {
    // SAFETY: sigprocmask and signal are async-signal-safe; the sets are local and
    // initialised.
    unsafe {
        for sig in (1..=31).chain(libc::SIGRTMIN()..=libc::SIGRTMAX()) {
            // Fails for SIGKILL and SIGSTOP, which are default anyway.
            libc::signal(sig, libc::SIG_DFL);
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if changed {
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
        }
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
    Ok(())
}

/// `cat /proc/self/status`, started with the signal state `changed` asks for, through
/// lastcall (`true`) or directly.
fn status(dir: &TestDir, changed: bool, through_lastcall: bool) -> Finished {
    let cmd = if through_lastcall {
        dir.lastcall().args(["--listen", "off", "--", "cat", "/proc/self/status"])
    } else {
        dir.command("cat").arg("/proc/self/status")
    };
    // SAFETY: `set_signal_state` makes only async-signal-safe calls.
    let cmd = unsafe { cmd.pre_exec(move || set_signal_state(changed)) };
    let out = cmd.run();
    out.assert_code(0);
    out
}

#[test]
fn the_child_gets_the_inherited_mask_and_ignored_signals() {
    let dir = TestDir::new("signal_state");
    let out = status(&dir, true, true);
    let (blocked, ignored) = masks(&out);
    out.check(
        blocked == bit(libc::SIGTERM) | bit(libc::SIGUSR1),
        format!("expected SIGTERM and SIGUSR1 blocked, got SigBlk {blocked:016x}"),
    )
    .check(
        ignored == bit(libc::SIGINT) | bit(libc::SIGHUP),
        format!("expected SIGINT and SIGHUP ignored, got SigIgn {ignored:016x}"),
    );
    // The same as without lastcall.
    assert_eq!(masks(&status(&dir, true, false)), (blocked, ignored));
}

#[test]
fn the_child_gets_a_clean_signal_state_when_lastcall_had_one() {
    let dir = TestDir::new("signal_state_clean");
    let out = status(&dir, false, true);
    let (blocked, ignored) = masks(&out);
    // lastcall handles or ignores (SIGTTIN, SIGTTOU) nearly every signal itself: none of
    // that may show.
    out.check(blocked == 0, format!("expected nothing blocked, got SigBlk {blocked:016x}"))
        .check(ignored == 0, format!("expected nothing ignored, got SigIgn {ignored:016x}"));
    assert_eq!(masks(&status(&dir, false, false)), (0, 0));
}

/// The child's open fds as `(fd, target)`, from `ls -l /proc/self/fd` run with `cmd`; the
/// directory `ls` holds open to list itself is left out.
fn fds(out: &Finished) -> Vec<(i32, String)> {
    out.assert_code(0);
    let mut fds = Vec::new();
    for line in out.stdout.lines().filter(|l| l.contains(" -> ")) {
        let (left, target) = line.split_once(" -> ").unwrap();
        let fd: i32 = left.split_whitespace().last().unwrap().parse().unwrap();
        if !(target.starts_with("/proc/") && target.ends_with("/fd")) {
            fds.push((fd, target.to_string()));
        }
    }
    fds.sort();
    fds
}

#[test]
fn the_child_inherits_no_file_descriptor_of_lastcalls() {
    let dir = TestDir::new("fds");
    // With the endpoint on: the listener, the poll and the signal pipe are all lastcall's.
    let through =
        dir.lastcall().args(["--listen", "127.0.0.1:0", "--", "ls", "-l", "/proc/self/fd"]).run();
    // What the test itself hands down (0, 1, 2, and whatever the test was given without
    // close-on-exec) is what the child must see, and nothing more.
    let direct = dir.command("ls").args(["-l", "/proc/self/fd"]).run();
    let expected = fds(&direct);
    through.check(
        expected.iter().take(3).map(|(fd, _)| *fd).eq([0, 1, 2]),
        format!("the test hands down fds 0, 1, 2: {expected:?}"),
    );
    through.check(
        fds(&through) == expected,
        format!("expected the child's fds to be the test's own: {expected:?}"),
    );
}
