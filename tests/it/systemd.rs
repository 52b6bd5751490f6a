//! lastcall under systemd: a real datagram socket stands in for systemd's notify socket, and
//! a real listening socket for socket activation.

use std::os::fd::IntoRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use crate::support::{Running, TestDir, has_python, wait_until};

/// systemd's side of the notify protocol: every datagram lastcall sends, as text.
struct FakeSystemd {
    socket: UnixDatagram,
    got: Vec<String>,
}

impl FakeSystemd {
    fn at_path(dir: &TestDir) -> (FakeSystemd, String) {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("binding the notify socket");
        (FakeSystemd::new(socket), path.to_string_lossy().into_owned())
    }

    fn abstract_name(name: &str) -> (FakeSystemd, String) {
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
        let socket = UnixDatagram::bind_addr(&addr).expect("binding the abstract socket");
        (FakeSystemd::new(socket), format!("@{name}"))
    }

    fn new(socket: UnixDatagram) -> FakeSystemd {
        socket.set_read_timeout(Some(Duration::from_millis(20))).expect("read timeout");
        FakeSystemd { socket, got: Vec::new() }
    }

    /// Takes every datagram waiting now.
    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            self.got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }

    /// The index of the first datagram with a line equal to `line`.
    fn position(&self, line: &str) -> Option<usize> {
        self.got.iter().position(|m| m.lines().any(|l| l == line))
    }

    fn count(&self, line: &str) -> usize {
        self.got.iter().filter(|m| m.lines().any(|l| l == line)).count()
    }

    /// Waits until a datagram with `line` arrives.
    fn wait_for(&mut self, lastcall: &mut Running, line: &str) -> usize {
        lastcall.wait_until(&format!("systemd is told {line}"), || {
            self.drain();
            self.position(line).is_some()
        });
        self.position(line).expect("just seen")
    }
}

#[test]
fn ready_only_once_ready_then_stopping_at_the_drain() {
    let dir = TestDir::new("sd-notify");
    let (mut systemd, path) = FakeSystemd::at_path(&dir);
    let mut lastcall = dir
        .lastcall()
        .env("NOTIFY_SOCKET", &path)
        .args(["--listen", "off", "--prestop-delay", "0s", "--ready-interval", "50ms"])
        .args(["--ready-exec", "test -e \"$DIR/ok\""])
        .sh(r#"env > "$DIR/env"; trap 'rec TERM; exit 0' TERM; mark started; idle"#)
        .spawn_marked("started");
    // The check fails for a while: systemd hears no READY=1, whatever else it hears.
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        systemd.drain();
    }
    assert_eq!(
        systemd.position("READY=1"),
        None,
        "READY=1 before the app was ready: {:?}",
        systemd.got
    );
    dir.write("ok", "");
    let ready = systemd.wait_for(&mut lastcall, "READY=1");

    lastcall.signal(libc::SIGTERM);
    let stopping = systemd.wait_for(&mut lastcall, "STOPPING=1");
    assert!(ready < stopping, "READY=1, then STOPPING=1: {:?}", systemd.got);
    lastcall.wait().assert_code(0);
    systemd.drain();
    assert_eq!(systemd.count("READY=1"), 1, "READY=1 once: {:?}", systemd.got);
    assert_eq!(systemd.count("STOPPING=1"), 1, "STOPPING=1 once: {:?}", systemd.got);
    assert!(
        systemd.got.iter().any(|m| m.lines().any(|l| l.starts_with("STATUS=stopping"))),
        "STATUS at each phase: {:?}",
        systemd.got
    );
    let last = systemd.got.last().expect("messages");
    assert_eq!(last, "STATUS=exiting with 0", "{:?}", systemd.got);
    // The socket is lastcall's to use: the child does not see it.
    assert!(!dir.read("env").contains("NOTIFY_SOCKET="), "the child saw NOTIFY_SOCKET");
}

#[test]
fn an_abstract_notify_socket_works() {
    let dir = TestDir::new("sd-abstract");
    let name = format!("lastcall-test-{}-{}", std::process::id(), crate::support::unix_nanos());
    let (mut systemd, value) = FakeSystemd::abstract_name(&name);
    let mut lastcall = dir
        .lastcall()
        .env("NOTIFY_SOCKET", &value)
        .args(["--listen", "off", "--prestop-delay", "0s"])
        .sh("idle")
        .spawn();
    systemd.wait_for(&mut lastcall, "READY=1");
    lastcall.signal_and_wait(libc::SIGTERM).assert_code(128 + libc::SIGTERM);
}

#[test]
fn watchdog_pings_at_half_the_interval_while_the_child_lives() {
    let dir = TestDir::new("sd-watchdog");
    let (mut systemd, path) = FakeSystemd::at_path(&dir);
    let mut lastcall = dir
        .lastcall()
        .env("NOTIFY_SOCKET", &path)
        // 400 ms: a ping every 200 ms.
        .env("WATCHDOG_USEC", "400000")
        .args(["--listen", "off", "--prestop-delay", "0s"])
        .sh(r#"env > "$DIR/env"; idle"#)
        .spawn();
    systemd.wait_for(&mut lastcall, "WATCHDOG=1");
    // The watchdog is lastcall's: the child sees none of its variables.
    lastcall.wait_until("the child wrote its environment", || dir.read("env").contains("DIR="));
    let env = dir.read("env");
    assert!(!env.contains("WATCHDOG_"), "the child saw the watchdog's variables:\n{env}");
    let start = Instant::now();
    let before = systemd.count("WATCHDOG=1");
    while start.elapsed() < Duration::from_millis(2000) {
        systemd.drain();
    }
    let pings = systemd.count("WATCHDOG=1") - before;
    // 2 s at one ping per 200 ms is 10; the bounds leave room for a loaded machine, and
    // still fail a ping per interval (5) or a busy loop.
    assert!((7..=13).contains(&pings), "{pings} pings in 2 s, expected about 10");
    lastcall.signal_and_wait(libc::SIGTERM).assert_code(128 + libc::SIGTERM);
}

#[test]
fn no_watchdog_pings_when_watchdog_pid_names_another_process() {
    let dir = TestDir::new("sd-watchdog-pid");
    let (mut systemd, path) = FakeSystemd::at_path(&dir);
    let mut lastcall = dir
        .lastcall()
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "100000")
        .env("WATCHDOG_PID", "1")
        .args(["--listen", "off", "--prestop-delay", "0s"])
        .sh("idle")
        .spawn();
    systemd.wait_for(&mut lastcall, "READY=1");
    // Ten intervals with no ping: lastcall was told the watchdog is another process's.
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        systemd.drain();
    }
    assert_eq!(systemd.count("WATCHDOG=1"), 0, "{:?}", systemd.got);
    lastcall.signal_and_wait(libc::SIGTERM).assert_code(128 + libc::SIGTERM);
}

/// lastcall started the way systemd starts a socket-activated service: the listening socket
/// as fd 3, LISTEN_FDS=1, LISTEN_PID=lastcall's pid. The child serves on the inherited fd and
/// sees its own pid in LISTEN_PID.
#[test]
fn socket_activation_passes_the_fds_and_the_childs_pid() {
    if !has_python() {
        return;
    }
    let dir = TestDir::new("socket-activation");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding");
    let port = listener.local_addr().expect("address").port();
    let fd = listener.into_raw_fd();
    // The child: checks LISTEN_PID against its own pid, then answers one connection on fd 3.
    let server = r#"
import os, socket
with open(os.environ["DIR"] + "/seen", "w") as f:
    f.write("%s %s %s %s" % (os.environ.get("LISTEN_PID"), os.getpid(),
                             os.environ.get("LISTEN_FDS"), os.environ.get("LISTEN_FDNAMES")))
s = socket.socket(fileno=3)
c, _ = s.accept()
c.sendall(b"hello from fd 3\n")
c.close()
"#;
    // `exec` keeps the pid: LISTEN_PID names lastcall, as systemd would set it.
    let script = format!(
        r#"LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=web exec "$LASTCALL" --listen off -- python3 -c '{server}'"#
    );
    let cmd = dir.command("sh").args(["-c", &script]).env("LASTCALL", crate::support::LASTCALL);
    // SAFETY: dup2 is async-signal-safe; fd 3 is left without CLOEXEC, as systemd passes it.
    let cmd = unsafe {
        cmd.pre_exec(move || {
            if fd != 3 {
                libc::dup2(fd, 3);
            }
            let flags = libc::fcntl(3, libc::F_GETFD);
            libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            Ok(())
        })
    };
    let lastcall = cmd.spawn();
    // SAFETY: the test's copy of the socket is no longer needed; the child has its own.
    unsafe { libc::close(fd) };
    let lastcall_pid = lastcall.pid();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).expect("reading the answer");
    assert_eq!(answer, "hello from fd 3\n");
    let finished = lastcall.wait();
    finished.assert_code(0);
    wait_until("the child wrote what it saw", || dir.exists("seen"));
    let seen = dir.read("seen");
    let fields: Vec<&str> = seen.split(' ').collect();
    assert_eq!(fields.len(), 4, "{seen}");
    assert_eq!(fields[0], fields[1], "LISTEN_PID is the child's own pid: {seen}");
    assert_ne!(fields[0], lastcall_pid.to_string(), "not lastcall's: {seen}");
    assert_eq!((fields[2], fields[3]), ("1", "web"), "{seen}");
}

/// Without socket activation, the child gets no fd of lastcall's: the endpoint, the signal
/// pipes and the private notify socket are all CLOEXEC.
#[test]
fn no_fd_of_lastcalls_reaches_the_child() {
    let dir = TestDir::new("no-fd-leak");
    let port = crate::support::free_port();
    let out = dir
        .lastcall()
        .args(["--listen", &format!("127.0.0.1:{port}"), "--ready-notify", "--"])
        .args(["sh", "-c", "ls /proc/$$/fd"])
        .run();
    out.assert_code(0);
    let mut fds: Vec<i32> = out.stdout.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    fds.sort_unstable();
    // stdin, stdout, stderr, and whatever the test process itself lets its children inherit
    // (a test runner may pass some on): lastcall passes those through, and adds none.
    let mut expected: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        // SAFETY: F_GETFD only reads the descriptor's flags.
        .filter(|&fd| fd > 2 && unsafe { libc::fcntl(fd, libc::F_GETFD) } & libc::FD_CLOEXEC == 0)
        .chain([0, 1, 2])
        .collect();
    expected.sort_unstable();
    assert_eq!(fds, expected, "the child's fds\n{out}");
}
