//! The private notify socket (`--ready-notify`) under attack: only processes proven to be
//! under lastcall when their message is read are heard, and a flood of messages costs
//! bounded memory and never delays the drain.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use crate::support::apps::{lastcall_with_app, readyz, wait_readyz};
use crate::support::{
    LASTCALL, TestDir, can_unshare, free_port, has_python, spawn_listening, status_kib,
};

/// The address of the notify socket the child was given (`$DIR/notify_socket`).
fn notify_addr(dir: &TestDir) -> SocketAddr {
    let name = dir.read("notify_socket");
    let Some(abstract_name) = name.strip_prefix('@') else {
        panic!("expected NOTIFY_SOCKET=@name for the child, got {name:?}");
    };
    SocketAddr::from_abstract_name(abstract_name.as_bytes()).expect("an address")
}

/// Writes its NOTIFY_SOCKET to `$DIR/notify_socket`; says nothing.
const QUIET: &str = r#"
mark("notify_socket", os.environ.get("NOTIFY_SOCKET", ""))
time.sleep(60)
"#;

/// A sender that is gone by the time lastcall reads its message cannot be proven to have
/// been under lastcall: its READY=1 is dropped, whoever it was.
#[test]
fn ready_from_a_sender_gone_before_it_is_read_is_dropped() {
    if !has_python() {
        return;
    }
    let dir = TestDir::new("notify_gone");
    let (mut lastcall, port) = spawn_listening(
        |port| {
            let options = ["--ready-notify", "--prestop-delay", "0s", "--log-level", "debug"];
            lastcall_with_app(&dir, port, &options, QUIET, 0)
        },
        || dir.exists("notify_socket"),
    );
    // lastcall is held still while a process of the test's own sends and exits.
    lastcall.signal(libc::SIGSTOP);
    let sender = std::process::Command::new("python3")
        .args(["-c", "import socket, sys; socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'READY=1', b'\\0' + sys.argv[1][1:].encode())"])
        .arg(dir.read("notify_socket"))
        .stdin(std::process::Stdio::null())
        .status()
        .expect("running the sender");
    assert!(sender.success(), "the sender failed: {sender}");
    lastcall.signal(libc::SIGCONT);
    lastcall.wait_stderr("dropped");
    assert_eq!(readyz(port), 503, "READY=1 from a sender that was gone was heard");
    lastcall.signal_and_wait(libc::SIGTERM).assert_code(128 + libc::SIGTERM);
}

/// A process in another PID namespace (a sidecar sharing the pod's network, and so the
/// abstract socket) has no pid in lastcall's: its word is not the app's.
#[test]
fn ready_from_another_pid_namespace_is_dropped() {
    if !can_unshare() || !has_python() {
        return;
    }
    let dir = TestDir::new("notify_sidecar");
    let port = free_port();
    let mut lastcall = dir
        .command("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--", LASTCALL])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--ready-notify", "--log-level", "debug"])
        .args(["--prestop-delay", "0s", "--", "python3", "-c"])
        .arg(format!("{}{QUIET}", crate::support::apps::PY_PRELUDE))
        .spawn_marked("notify_socket");
    let sidecar = UnixDatagram::unbound().expect("a datagram socket");
    sidecar.send_to_addr(b"READY=1", &notify_addr(&dir)).expect("sending READY=1");
    lastcall.wait_stderr("dropped");
    assert_eq!(readyz(port), 503, "READY=1 from another PID namespace was heard");
    // unshare passes no signal on: lastcall is its child.
    let pid = *crate::support::children_of(lastcall.pid()).first().expect("lastcall under unshare");
    crate::support::send(pid, libc::SIGTERM);
    lastcall.wait().assert_code(128 + libc::SIGTERM);
}

/// `systemd-notify --ready` from a shell app: it is still there when lastcall reads its
/// message (it names its parent, the app, and waits for BARRIER=1 to be read).
#[test]
fn systemd_notify_from_a_shell_app_is_heard() {
    let found = std::process::Command::new("systemd-notify").arg("--version").output();
    if !crate::support::required(
        "systemd-notify (systemd)",
        found.is_ok_and(|o| o.status.success()),
    ) {
        return;
    }
    let dir = TestDir::new("notify_systemd_notify");
    let (mut lastcall, port) = spawn_listening(
        |port| {
            dir.lastcall()
                .args(["--listen", &format!("127.0.0.1:{port}"), "--ready-notify"])
                .args(["--prestop-delay", "0s"])
                .sh("mark started; await go; systemd-notify --ready; mark said; idle")
        },
        || dir.exists("started"),
    );
    assert_eq!(readyz(port), 503);
    dir.write("go", "");
    wait_readyz(&mut lastcall, port, 200);
    lastcall.signal_and_wait(libc::SIGTERM).assert_code(128 + libc::SIGTERM);
}

/// Floods the notify socket from three grandchildren: 4 KiB datagrams of `READY=1` lines,
/// as fast as the socket takes them, for up to 20 s; `$DIR/flooding` once one of them has
/// sent 2,000.
const FLOODER: &str = r#"
import socket
name = os.environ["NOTIFY_SOCKET"]
for _ in range(3):
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        junk = b"READY=1\n" * 512
        sent, end = 0, time.time() + 20
        while time.time() < end:
            try:
                s.sendto(junk, "\0" + name[1:])
            except OSError:
                time.sleep(0.001)
                continue
            sent += 1
            if sent == 2000:
                mark("flooding")
        os._exit(0)
mark("started")
time.sleep(60)
"#;

/// A notify flood costs bounded memory and does not delay the reaction to SIGTERM.
#[test]
fn a_notify_flood_neither_grows_memory_nor_delays_the_drain() {
    if !has_python() {
        return;
    }
    let dir = TestDir::new("notify_flood");
    let (mut lastcall, _port) = spawn_listening(
        |port| {
            let options = ["--ready-notify", "--prestop-delay", "0s"];
            lastcall_with_app(&dir, port, &options, FLOODER, 0)
        },
        || dir.exists("started"),
    );
    lastcall.wait_until("the flood is on", || dir.exists("flooding"));
    let sent = Instant::now();
    lastcall.signal(libc::SIGTERM);
    lastcall.wait_until("the child got the stop signal", || dir.exists("term"));
    let reaction = sent.elapsed();
    let peak = status_kib(lastcall.pid(), "VmHWM");
    // The grandchild is stopped with the rest.
    let out = lastcall.wait();
    out.check(reaction < Duration::from_secs(1), format!("SIGTERM took {reaction:?} to act"))
        .check(peak < 32 * 1024, format!("lastcall's peak RSS was {peak} kB"));
}
