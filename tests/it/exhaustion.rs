//! The endpoint when resources run out: file descriptors, and (later) connection floods.
//! Whatever clients do, the loop keeps turning: it reaps, forwards, drains and exits with
//! the child's status, and a fresh probe is answered.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::{TestDir, cpu_time, probe, spawn_listening};

/// Sets lastcall's file-descriptor limit, soft and hard, before it runs.
fn with_fd_limit(cmd: crate::support::Cmd, limit: u64) -> crate::support::Cmd {
    let rlimit = libc::rlimit { rlim_cur: limit, rlim_max: limit };
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
    }
}

/// Out of file descriptors, the accept loop must neither spin nor stop: 100 connections
/// opened and closed against a limit of 32 leave lastcall idle, answering, and collecting
/// its child's status.
#[test]
fn out_of_file_descriptors_the_loop_keeps_turning() {
    let dir = TestDir::new("emfile");
    let (mut lastcall, port) = spawn_listening(
        |port| {
            let cmd = dir
                .lastcall()
                .args(["--listen", &format!("127.0.0.1:{port}"), "--prestop-delay", "0s"])
                .sh("mark ready; await exit; exit 7");
            with_fd_limit(cmd, 32)
        },
        || dir.exists("ready"),
    );
    let flood: Vec<TcpStream> =
        (0..100).filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok()).collect();
    assert!(flood.len() > 32, "only {} connections were made", flood.len());
    drop(flood);

    let pid = lastcall.pid();
    lastcall.wait_until("/readyz answers again", || {
        probe(port, "/readyz", Duration::from_secs(1)) == Some(200)
    });
    let (before, at) = (cpu_time(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(1));
    let (used, window) = (cpu_time(pid) - before, at.elapsed());
    assert!(used < window / 10, "lastcall used {used:?} of CPU in {window:?} after the flood");

    dir.write("exit", "");
    lastcall.wait().assert_code(7);
}
