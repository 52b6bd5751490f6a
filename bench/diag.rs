//! `cargo bench --bench diag` (or `bench/diag`): what one read of the app's connections costs
//! with 20,000 other TCP sockets in the network namespace, socket diagnostics against
//! /proc/net/tcp. The drain wing's own netlink codec and /proc module, compiled in as they
//! are; the sockets are held by two copies of this program, started with
//! `LASTCALL_DIAG_HOLD=N`, which end when their stdin closes.

use std::collections::HashSet;
use std::hint::black_box;
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use nix::sys::socket::{setsockopt, sockopt};

// Cargo builds a bench without a harness with `--cfg test` but not `--test`: each module's
// `mod tests` comes in without its #[test] functions, and the helpers they call look unused.
// The modules' own code is held to the lints by the lastcall binary itself.
#[cfg_attr(test, allow(dead_code, unused_imports))]
#[path = "../src/drain/diag.rs"]
mod diag;
#[cfg_attr(test, allow(dead_code, unused_imports))]
#[path = "../src/drain/procfs.rs"]
mod procfs;

use diag::{CONNECTED, LISTENING, Ports, TIME_WAIT, dump};

/// Loopback connections held for the run, both ends each, in two other processes: this one's
/// /proc/self/fd stays small, as lastcall's is, and each stays under a hard RLIMIT_NOFILE of
/// 20,000.
const CONNECTIONS: usize = 10_000;
const HOLDERS: usize = 2;
const RUNS: usize = 51;
const HOLD: &str = "LASTCALL_DIAG_HOLD";

fn main() {
    match std::env::var(HOLD).ok().and_then(|n| n.parse::<usize>().ok()) {
        Some(n) => hold(n),
        None => measure(),
    }
}

/// Raises this process's soft RLIMIT_NOFILE to `want`, and the hard one if it must (which
/// needs CAP_SYS_RESOURCE).
fn raise_nofile(want: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit, into a struct this function owns.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    let raised = libc::rlimit { rlim_cur: want, rlim_max: limit.rlim_max.max(want) };
    // SAFETY: setrlimit only reads the struct.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
    assert_eq!(rc, 0, "RLIMIT_NOFILE {want} over a hard limit of {}", limit.rlim_max);
}

/// Holds `n` loopback connections (2n sockets) until stdin closes.
fn hold(n: usize) {
    raise_nofile(2 * n as u64 + 64);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::with_capacity(2 * n);
    // Reset on close, so that no TIME_WAIT sockets are left to skew the next run.
    let reset = libc::linger { l_onoff: 1, l_linger: 0 };
    for _ in 0..n {
        let client = TcpStream::connect(addr).unwrap();
        setsockopt(&client, sockopt::Linger, &reset).unwrap();
        held.push(client);
        held.push(listener.accept().unwrap().0);
    }
    println!("holding {} sockets on port {}", held.len(), addr.port());
    let _ = std::io::stdin().read(&mut [0]);
}

/// A holder, ended however the run ends.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_holder(n: usize) -> Holder {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(HOLD, n.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let holder = Holder(child);
    let mut line = String::new();
    while !line.starts_with("holding") {
        line.clear();
        assert!(lines.read_line(&mut line).unwrap() > 0, "a holder ended early");
    }
    println!("helper {}: {}", holder.0.id(), line.trim());
    holder
}

/// The median, fastest and slowest of `runs` calls of `f`, in microseconds.
fn time(runs: usize, f: &mut dyn FnMut()) -> (u128, u128, u128) {
    let mut took: Vec<u128> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_micros()
        })
        .collect();
    took.sort_unstable();
    (took[runs / 2], took[0], took[runs - 1])
}

fn measure() {
    let _holders: Vec<Holder> = (0..HOLDERS).map(|_| start_holder(CONNECTIONS / HOLDERS)).collect();

    // The app: a listener and 10 clients, one of them playing lastcall's readiness check.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let clients: Vec<(TcpStream, TcpStream)> = (0..10)
        .map(|_| {
            let c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            (c, listener.accept().unwrap().0)
        })
        .collect();
    let rows = ["/proc/net/tcp", "/proc/net/tcp6"]
        .map(|p| std::fs::read_to_string(p).unwrap().lines().count() - 1);
    println!("TCP sockets in the namespace: {} IPv4 + {} IPv6", rows[0], rows[1]);

    let ports = [port];
    let filtered = || dump(CONNECTED, Ports::Of { list: &ports, remote: false }, true).unwrap();
    assert_eq!(filtered().len(), clients.len());
    // As the drain reads: both ends, the app's side of lastcall's own connections left out.
    let app = |own: &HashSet<u64>| {
        let all = dump(CONNECTED | 1 << TIME_WAIT, Ports::Of { list: &ports, remote: true }, true);
        procfs::the_apps(all.unwrap(), |s| (s.inode, s.local, s.remote), &ports, own)
    };
    let check: HashSet<u64> = [procfs::inode_of(clients[0].0.as_raw_fd()).unwrap()].into();
    assert_eq!(app(&check).len(), clients.len() - 1);
    // This process holds both ends, so all are its own, here as in the drain: the work is
    // the same.
    let app_count = || app(&procfs::own_socket_inodes());
    assert_eq!(app_count().len(), 0);
    let unfiltered = || dump(CONNECTED, Ports::All, true).unwrap();
    assert!(unfiltered().len() >= 2 * CONNECTIONS);
    let this = procfs::app_socket_inodes(&[std::process::id() as i32], &HashSet::new());
    let listeners = || {
        let all = dump(LISTENING, Ports::All, false).unwrap();
        procfs::ports_of(all.iter().map(|s| (s.inode, s.local.port())), &this)
    };
    assert!(listeners().contains(&port));
    let proc_count =
        || procfs::established(&procfs::tables(), &ports, &procfs::own_socket_inodes());
    assert_eq!(proc_count(), 0);
    let proc_listeners = || procfs::listening_in(&procfs::tables(), &this);
    assert!(proc_listeners().contains(&port));
    let proc_read = procfs::tables;

    println!("{RUNS} runs each, microseconds: median (fastest..slowest)");
    let cases: [(&str, &mut dyn FnMut()); 7] = [
        ("sock_diag, port filter in the kernel, tcp_info", &mut || {
            black_box(filtered());
        }),
        ("sock_diag, the app's connections + own sockets", &mut || {
            black_box(app_count());
        }),
        ("sock_diag, no filter (20,000+ sockets)", &mut || {
            black_box(unfiltered());
        }),
        ("sock_diag, listening ports of this process", &mut || {
            black_box(listeners());
        }),
        ("/proc/net/tcp + tcp6, the fallback's count", &mut || {
            black_box(proc_count());
        }),
        ("/proc/net/tcp + tcp6, listening ports", &mut || {
            black_box(proc_listeners());
        }),
        ("/proc/net/tcp + tcp6, reading only", &mut || {
            black_box(proc_read());
        }),
    ];
    for (name, f) in cases {
        let (median, min, max) = time(RUNS, f);
        println!("{name:<50} {median:>7} ({min}..{max})");
    }
}
