//! On a terminal, the child is the foreground: it reads the terminal, and Ctrl-C reaches it
//! straight from the terminal.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::pty::{PtyMaster, grantpt, posix_openpt, ptsname_r, unlockpt};

use crate::support::{Running, TIMEOUT, TestDir, required};

/// A new pseudo-terminal, both ends close-on-exec: not `openpty`, whose descriptors a test
/// spawning in another thread at that moment would inherit.
fn open_pty() -> nix::Result<(PtyMaster, File)> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname_r(&master)?;
    let slave = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(name)
        .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    fcntl(&master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    Ok((master, slave))
}

/// lastcall in a new session whose controlling terminal is the pty, in its foreground, as a
/// shell would start it.
fn spawn_on_terminal(dir: &TestDir, script: &str) -> Option<(Running, PtyMaster)> {
    let pty = open_pty();
    if !required(&format!("a pseudo-terminal ({:?})", pty.as_ref().err()), pty.is_ok()) {
        return None;
    }
    let (master, slave) = pty.unwrap();
    let stdio = || Stdio::from(slave.try_clone().expect("dup of the pty"));
    let cmd = dir.lastcall().args(["--listen", "off", "--prestop-delay", "0s"]).sh(script).stdio(
        stdio(),
        stdio(),
        stdio(),
    );
    // SAFETY: setsid and ioctl are async-signal-safe.
    let cmd = unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    Some((cmd.spawn(), master))
}

/// What the terminal shows so far (lastcall's log included).
fn screen(master: &mut PtyMaster, seen: &mut String) -> String {
    let mut buf = [0u8; 4096];
    loop {
        match master.read(&mut buf) {
            Ok(n @ 1..) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            // A signal to the test process: read on.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // EAGAIN: nothing more for now; EIO: every slave end is closed.
            Ok(0) | Err(_) => break,
        }
    }
    seen.clone()
}

#[test]
fn ctrl_c_on_the_terminal_reaches_the_child() {
    let dir = TestDir::new("tty_ctrl_c");
    let Some((mut lastcall, mut master)) = spawn_on_terminal(&dir, "mark ready; exec sleep 100")
    else {
        return;
    };
    lastcall.wait_until("the child is ready", || dir.exists("ready"));
    master.write_all(b"\x03").expect("typing Ctrl-C");
    let out = lastcall.wait();
    let mut seen = String::new();
    let shown = screen(&mut master, &mut seen);
    out.check(out.code() == Some(130), format!("expected 130; the terminal showed {shown:?}"));
    // The terminal signalled the child's group, not lastcall: no drain was started.
    out.check(
        !shown.contains("received SIGINT"),
        format!("SIGINT went to lastcall, not the child; the terminal showed {shown:?}"),
    );
}

#[test]
fn the_child_reads_the_terminal() {
    let dir = TestDir::new("tty_read");
    let Some((lastcall, mut master)) =
        spawn_on_terminal(&dir, r#"read line; echo "got:$line"; echo "$line" > "$DIR/line""#)
    else {
        return;
    };
    // Typed ahead: the line waits in the terminal until the child reads it. A child not in
    // the foreground would be stopped by SIGTTIN instead, and the wait below time out.
    master.write_all(b"hello\n").expect("typing a line");
    let mut seen = String::new();
    let start = Instant::now();
    while !screen(&mut master, &mut seen).contains("got:hello") {
        assert!(
            start.elapsed() < TIMEOUT,
            "the child did not answer; the terminal showed {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = lastcall.wait();
    out.assert_code(0).check(dir.read("line") == "hello\n", "the child read the line");
}
