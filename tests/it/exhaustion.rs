//! The endpoint when resources run out: file descriptors, and (later) connection floods.
//! Whatever clients do, the loop keeps turning: it reaps, forwards, drains and exits with
//! the child's status, and a fresh probe is answered.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::{TestDir, cpu_time, probe, spawn_listening};

/// Sets lastcall's file-descriptor limit, soft and hard, before it runs.
fn with_fd_limit(cmd: crate::support::Cmd, soft: u64, hard: u64) -> crate::support::Cmd {
    let rlimit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
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
            with_fd_limit(cmd, 32, 32)
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

/// With more idle connections held than `--max-connections`, a fresh probe still gets its
/// answer: an idle connection makes room for it.
#[test]
fn probes_get_through_a_flood_of_idle_connections() {
    let dir = TestDir::new("idle_flood");
    let (mut lastcall, port) = spawn_listening(
        |port| {
            dir.lastcall()
                .args(["--listen", &format!("127.0.0.1:{port}"), "--max-connections", "50"])
                .sh("mark ready; exec sleep 600")
        },
        || dir.exists("ready"),
    );
    let flood: Vec<TcpStream> =
        (0..200).map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connecting")).collect();
    for i in 0..10 {
        let status = probe(port, "/readyz", Duration::from_secs(1));
        assert_eq!(status, Some(200), "probe {i} with 200 idle connections held");
    }
    assert!(lastcall.try_wait().is_none(), "lastcall exited");
    drop(flood);
    lastcall.signal_and_wait(libc::SIGTERM).assert_code(128 + libc::SIGTERM);
}

/// A burst of 1,000 connects while both CPUs are busy completes: the listen backlog holds
/// them until lastcall gets the CPU.
#[test]
fn a_burst_of_connects_on_busy_cpus_completes() {
    let dir = TestDir::new("connect_burst");
    let (lastcall, port) = spawn_listening(
        |port| {
            dir.lastcall()
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .sh("mark ready; exec sleep 600")
        },
        || dir.exists("ready"),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let end = Instant::now() + Duration::from_secs(10);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < end {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let results: Vec<_> =
        (0..1000).map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(1))).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for thread in busy {
        thread.join().expect("a busy loop");
    }
    let failed: Vec<String> =
        results.iter().filter_map(|r| r.as_ref().err().map(|e| e.to_string())).collect();
    assert!(failed.is_empty(), "{} of 1000 connects failed: {:?}", failed.len(), &failed[..]);
    drop(results);
    assert_eq!(probe(port, "/readyz", Duration::from_secs(1)), Some(200));
    lastcall.signal_and_wait(libc::SIGTERM).assert_code(128 + libc::SIGTERM);
}

/// lastcall raises its own soft file-descriptor limit to the hard one; the child gets the
/// soft limit lastcall inherited.
#[test]
fn the_child_gets_the_file_descriptor_limit_lastcall_inherited() {
    let dir = TestDir::new("nofile");
    let cmd = dir
        .lastcall()
        .args(["--listen", "off"])
        .sh(r#"echo "$(ulimit -Sn) $(ulimit -Hn)" > "$DIR/limits"; mark ready; exec sleep 600"#);
    let cmd = with_fd_limit(cmd, 1024, 4096);
    let lastcall = cmd.spawn_marked("ready");
    assert_eq!(dir.read("limits").trim(), "1024 4096", "the child's soft and hard limits");
    let own = std::fs::read_to_string(format!("/proc/{}/limits", lastcall.pid())).unwrap();
    let line = own.lines().find(|l| l.starts_with("Max open files")).expect("Max open files");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&fields[3..5], ["4096", "4096"], "lastcall's own: {line}");
    lastcall.signal_and_wait(libc::SIGTERM).assert_code(128 + libc::SIGTERM);
}
