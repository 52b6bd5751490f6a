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

/// Connects to lastcall on loopback with a receive buffer of `rcvbuf` bytes, set before the
/// connect so that the window the kernel offers is small from the start.
fn connect_with_rcvbuf(port: u16, rcvbuf: libc::c_int) -> std::io::Result<TcpStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: a new socket, owned at once.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a socket of ours that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `rcvbuf` outlives the call and `size` is its size.
    let set = unsafe {
        libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&rcvbuf as *const libc::c_int).cast(),
            size,
        )
    };
    if set != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be() },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` is a sockaddr_in of `len` bytes.
    if unsafe { libc::connect(raw, (&addr as *const libc::sockaddr_in).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(TcpStream::from(fd))
}

/// One kubelet-style probe: a fresh connection, `GET /readyz`, 1 s for the whole exchange.
/// The time it took when answered 200.
fn kubelet_probe(port: u16) -> Result<Duration, String> {
    use std::io::{Read, Write};
    let start = Instant::now();
    let budget = Duration::from_secs(1);
    let left = || budget.checked_sub(start.elapsed()).filter(|d| !d.is_zero());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream =
        TcpStream::connect_timeout(&addr, budget).map_err(|e| format!("connect: {e}"))?;
    stream.set_write_timeout(left()).map_err(|e| format!("{e}"))?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: kube-probe/1.31\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    let mut chunk = [0; 1024];
    loop {
        let Some(timeout) = left() else {
            return Err(format!("no answer within 1 s ({} bytes)", raw.len()));
        };
        stream.set_read_timeout(Some(timeout)).map_err(|e| format!("{e}"))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read after {} bytes: {e}", raw.len())),
        }
    }
    let text = String::from_utf8_lossy(&raw);
    if text.starts_with("HTTP/1.1 200 ") && text.ends_with("ready\n") {
        Ok(start.elapsed())
    } else {
        Err(format!("answered {text:?}"))
    }
}

/// Clients that pipeline `/readyz` until lastcall's answers to them fill the socket buffers
/// and wait in lastcall, never reading them, and every so often read a few bytes and send
/// one more request to look alive, hold every connection at `--max-connections`. A fresh
/// probe must still be answered, each time: a connection that makes no write progress makes
/// room for it.
#[test]
fn probes_get_through_clients_that_pipeline_and_never_read() {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    const MAX: usize = 32;
    const ATTACKERS: usize = 40;
    // About 40 KB of the answers fill the kernel's buffers (lastcall's 32 KiB send buffer,
    // the attacker's 2 KiB receive buffer); the rest, about 35 KB, waits in lastcall, under
    // the 64 KiB at which it would drop the connection for not reading.
    const PIPELINED: usize = 800;
    let dir = TestDir::new("pipeline_flood");
    let (mut lastcall, port) = spawn_listening(
        |port| {
            dir.lastcall()
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--max-connections", &MAX.to_string(), "--prestop-delay", "0s"])
                .sh("mark ready; exec sleep 600")
        },
        || dir.exists("ready"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    // Attackers holding a connection lastcall has answered on, counted each time one does.
    let holding = Arc::new(AtomicUsize::new(0));
    let request = "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|_| {
            let (stop, holding) = (stop.clone(), holding.clone());
            std::thread::spawn(move || {
                let end = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    let Ok(mut conn) = connect_with_rcvbuf(port, 2048) else {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    };
                    let timeout = Some(Duration::from_secs(1));
                    let _ = conn.set_write_timeout(timeout);
                    let _ = conn.set_read_timeout(timeout);
                    let mut alive = conn.write_all(request.repeat(PIPELINED).as_bytes()).is_ok();
                    let mut counted = false;
                    while alive && !stop.load(Ordering::Relaxed) && Instant::now() < end {
                        // Look alive: a few bytes read, one more request.
                        std::thread::sleep(Duration::from_millis(500));
                        let mut few = [0; 64];
                        alive = matches!(conn.read(&mut few), Ok(n) if n > 0)
                            && conn.write_all(request.as_bytes()).is_ok();
                        if alive && !std::mem::replace(&mut counted, true) {
                            holding.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // Closed by lastcall (or refused): come back after a moment.
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        })
        .collect();
    lastcall.wait_until("the attackers hold every connection", || {
        holding.load(Ordering::Relaxed) >= MAX
    });

    let mut failed = Vec::new();
    let mut took = Vec::new();
    for i in 0..20 {
        let next = Instant::now() + Duration::from_millis(200);
        match kubelet_probe(port) {
            Ok(t) => took.push(t),
            Err(why) => failed.push(format!("probe {i}: {why}")),
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    assert!(failed.is_empty(), "{} of 20 probes failed: {failed:#?}", failed.len());
    took.sort();
    assert!(took[19] < Duration::from_millis(500), "the slowest probe took {:?}", took[19]);
    // The probes got in by evicting attackers, which did hold their places.
    let metrics = crate::support::http(port, "GET", "/metrics").body;
    let evicted = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("lastcall_http_connections_evicted_total{reason=\"unread_answer\"} ")
        })
        .and_then(|v| v.parse::<f64>().ok());
    assert!(evicted.is_some_and(|n| n >= 20.0), "unread_answer evictions {evicted:?}:\n{metrics}");
    stop.store(true, Ordering::Relaxed);
    for attacker in attackers {
        attacker.join().expect("an attacker thread");
    }
    lastcall.signal_and_wait(libc::SIGTERM).assert_code(128 + libc::SIGTERM);
}

/// A client that pipelines until its answers wait in lastcall, never reads them, and sends one
/// more request every 500 ms is closed once its output has not moved for the send timeout
/// (10 s): the requests it keeps sending restart no timer.
#[test]
fn a_client_whose_answers_do_not_move_is_closed_after_the_send_timeout() {
    use std::io::Write;
    let dir = TestDir::new("send_timeout");
    let (lastcall, port) = spawn_listening(
        |port| {
            dir.lastcall()
                .args(["--listen", &format!("127.0.0.1:{port}"), "--prestop-delay", "0s"])
                .sh("mark ready; exec sleep 600")
        },
        || dir.exists("ready"),
    );
    let dropped = || {
        let metrics = crate::support::http(port, "GET", "/metrics").body;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("lastcall_http_connections_dropped_total "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no dropped count in /metrics:\n{metrics}"))
    };
    assert_eq!(dropped(), 0.0);
    let request = "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let mut client = connect_with_rcvbuf(port, 2048).expect("connecting");
    client.set_write_timeout(Some(Duration::from_secs(1))).expect("write timeout");
    client.write_all(request.repeat(800).as_bytes()).expect("writing the pipeline");
    let start = Instant::now();
    let limit = Duration::from_secs(20);
    let mut writes = 0;
    while dropped() == 0.0 {
        assert!(start.elapsed() < limit, "still open after {limit:?} ({writes} more requests)");
        std::thread::sleep(Duration::from_millis(500));
        if client.write_all(request.as_bytes()).is_ok() {
            writes += 1;
        }
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(9), "dropped after only {took:?}: not the send timeout");
    assert!(writes >= 10, "only {writes} more requests were sent before it was dropped");
    lastcall.signal_and_wait(libc::SIGTERM).assert_code(128 + libc::SIGTERM);
}
