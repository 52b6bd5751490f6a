//! The app's TCP sockets as the kernel sees them, through socket diagnostics (netlink): the
//! codec, and nothing about whose sockets they are.
//!
//! The idle-aware drain needs more than a count of connections: each of the app's connected
//! TCP sockets with its queues and its `struct tcp_info` (byte counters, time since data last
//! moved), so that [`crate::drain::activity`] can tell a request in flight from an idle
//! keep-alive connection; and, for `--drain-idle-port auto`, the listening sockets. Both come
//! from one `SOCK_DIAG_BY_FAMILY` dump per address family on a `NETLINK_SOCK_DIAG` socket, as
//! `ss` does, with the ports matched in the kernel by inet_diag bytecode so that thousands of
//! unrelated sockets in the namespace cost little. Where the kernel will not answer (seccomp,
//! an LSM, a kernel without inet_diag), [`Error::Unavailable`] says so, and the caller falls
//! back to /proc/net/tcp ([`crate::drain::procfs`]).
//!
//! The messages are encoded and decoded here byte by byte, over nix's safe socket calls: the
//! protocol used is one request and a flat list of answers, and every length the kernel sends
//! is checked, so a shorter `tcp_info` from an older kernel leaves fields `None` instead of
//! misreading them, and a malformed answer is an error instead of a panic. `bench/diag.rs`
//! measures a dump against /proc in a busy namespace.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

/// TCP states, as the kernel numbers them (`include/net/tcp_states.h`).
pub const ESTABLISHED: u8 = 1;
pub const SYN_RECV: u8 = 3;
pub const FIN_WAIT1: u8 = 4;
pub const FIN_WAIT2: u8 = 5;
pub const TIME_WAIT: u8 = 6;
pub const CLOSE_WAIT: u8 = 8;
pub const LAST_ACK: u8 = 9;
pub const LISTEN: u8 = 10;
pub const CLOSING: u8 = 11;

/// The states of a connection the app may still be serving (a dump's state mask): not
/// listeners, not TIME_WAIT, which no process holds.
pub const CONNECTED: u32 = 1 << ESTABLISHED
    | 1 << SYN_RECV
    | 1 << FIN_WAIT1
    | 1 << FIN_WAIT2
    | 1 << CLOSE_WAIT
    | 1 << LAST_ACK
    | 1 << CLOSING;
/// Listening sockets only (a dump's state mask).
pub const LISTENING: u32 = 1 << LISTEN;

/// More ports than this are matched in user space, after an unfiltered dump: the kernel
/// checks bytecode in time quadratic in its length.
pub const MAX_FILTERED_PORTS: usize = 64;

/// One TCP socket, as the kernel reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The kernel's socket cookie: kept from the handshake through accept to the close, and
    /// never reused while the machine is up (unlike an inode number).
    pub cookie: u64,
    /// As in /proc/PID/fd's `socket:[N]`. 0 when no process holds the socket: a connection
    /// not yet accepted, or one the app has closed (an orphan the kernel finishes alone).
    pub inode: u64,
    pub uid: u32,
    /// [`ESTABLISHED`], [`CLOSE_WAIT`], ...
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Bytes received and not yet read by the app, plus 1 for a peer's FIN the app has not
    /// read as end of file; for a listener, the connections waiting to be accepted.
    pub rqueue: u32,
    /// Bytes written by the app and not yet acknowledged by the peer, sent or not.
    pub wqueue: u32,
    /// Milliseconds until the socket's timer fires; in [`TIME_WAIT`], until it is gone.
    pub expires: u32,
    /// `None` when the kernel sent no `tcp_info`, as for a connection still in its handshake
    /// (or when it was not asked for).
    pub info: Option<TcpInfo>,
}

/// The fields of `struct tcp_info` the drain uses. The structure grew over the years and the
/// kernel sends its own length: a field newer than the kernel is `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpInfo {
    /// Segments (not bytes) sent and not yet acknowledged.
    pub unacked: u32,
    /// Milliseconds since data was last sent. Counted in jiffies (4 ms at HZ=250); dated from
    /// the handshake until data is sent.
    pub last_data_sent: u32,
    /// Milliseconds since data was last received (a FIN alone does not count); dated from the
    /// handshake until data arrives.
    pub last_data_recv: u32,
    /// Bytes the peer acknowledged, a FIN the app sent included (Linux 4.1).
    pub bytes_acked: Option<u64>,
    /// Bytes received, read or not, plus 1 for the peer's FIN (Linux 4.1).
    pub bytes_received: Option<u64>,
    /// Bytes written by the app and not yet sent (Linux 4.6).
    pub notsent_bytes: Option<u32>,
    /// Bytes sent, retransmissions included (Linux 4.19).
    pub bytes_sent: Option<u64>,
}

/// Why a query failed.
#[derive(Debug)]
pub enum Error {
    /// Socket diagnostics cannot be used here: refused (seccomp, an LSM), or missing from this
    /// kernel. It will not change: fall back to /proc/net/tcp, and say once what is lost.
    Unavailable(io::Error),
    /// This query failed (no memory, no answer in time, an answer that makes no sense); the
    /// next one may work.
    Failed(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unavailable(e) => write!(f, "socket diagnostics unavailable: {e}"),
            Error::Failed(e) => write!(f, "socket diagnostics failed: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        match e {
            Error::Unavailable(e) | Error::Failed(e) => e,
        }
    }
}

/// Sorts an OS error: the errors that mean "not here, not ever" make the caller fall back.
fn classify(e: io::Error) -> Error {
    let unavailable = matches!(
        e.raw_os_error(),
        // No such protocol or family (no sock_diag), or refused (seccomp, an LSM).
        Some(libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT | libc::ESOCKTNOSUPPORT)
            | Some(libc::EPERM | libc::EACCES | libc::ENOSYS)
            // No inet_diag handler, or a request this kernel does not understand.
            | Some(libc::ENOENT | libc::EOPNOTSUPP | libc::EINVAL)
    );
    if unavailable { Error::Unavailable(e) } else { Error::Failed(e) }
}

fn malformed(what: &str) -> Error {
    Error::Failed(io::Error::new(io::ErrorKind::InvalidData, format!("malformed answer: {what}")))
}

impl From<Errno> for Error {
    fn from(e: Errno) -> Error {
        classify(io::Error::from(e))
    }
}

/// Which sockets a dump keeps, by port.
#[derive(Clone, Copy, Debug)]
pub enum Ports<'a> {
    All,
    /// Those whose local port is in `list`; with `remote`, also those whose remote port is.
    Of {
        list: &'a [u16],
        remote: bool,
    },
}

impl Ports<'_> {
    fn keeps(&self, s: &Sample) -> bool {
        match *self {
            Ports::All => true,
            Ports::Of { list, remote } => {
                list.contains(&s.local.port()) || (remote && list.contains(&s.remote.port()))
            }
        }
    }
}

/// TCP sockets of both families in `states` (a mask of `1 << state`, e.g. [`CONNECTED`])
/// that `ports` keeps, with their `tcp_info` if `info`.
pub fn dump(states: u32, ports: Ports, info: bool) -> Result<Vec<Sample>, Error> {
    let (list, remote) = match ports {
        Ports::All => (&[][..], false),
        Ports::Of { list, remote } => (list, remote),
    };
    let mut list = list.to_vec();
    list.sort_unstable();
    list.dedup();
    let filter = match ports {
        Ports::All => vec![],
        _ if list.is_empty() => return Ok(vec![]),
        _ if list.len() > MAX_FILTERED_PORTS => vec![],
        _ => port_filter(&list, remote),
    };
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    // lastcall may be PID 1: never wait forever, even on a kernel that does not answer.
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(1, 0))?;
    // Larger than any datagram of a dump: the kernel fills at most 32 KiB.
    let mut buf = vec![0; 64 * 1024];
    let mut out = Vec::new();
    for (seq, family) in [(1, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
        let request = request(seq, family, states, info, &filter);
        dump_one(&fd, &request, seq, &mut buf, &mut out)?;
    }
    // Also in user space: for the unfiltered case, and should a kernel ignore the filter.
    out.retain(|s| ports.keeps(s) && in_states(states, s.state));
    Ok(out)
}

/// Whether `state` is in the mask; a state the kernel should not send is not.
fn in_states(states: u32, state: u8) -> bool {
    1u32.checked_shl(u32::from(state)).is_some_and(|bit| states & bit != 0)
}

// --- The wire format: include/uapi/linux/{netlink,sock_diag,inet_diag,tcp}.h ---

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_msg`, the fixed part of each answer; its attributes follow.
const DIAG_MSG_LEN: usize = 72;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_INFO: u16 = 2;
/// `nla_type` less its flag bits.
const NLA_TYPE_MASK: u16 = 0x3fff;

const BC_JMP: u8 = 1;
const BC_S_GE: u8 = 2;
const BC_S_LE: u8 = 3;
const BC_D_GE: u8 = 4;
const BC_D_LE: u8 = 5;

/// A dump request: `nlmsghdr`, `inet_diag_req_v2`, and the bytecode filter if any.
fn request(seq: u32, family: u8, states: u32, info: bool, filter: &[u8]) -> Vec<u8> {
    let attr = if filter.is_empty() { 0 } else { 4 + filter.len() };
    let len = NLMSG_HDRLEN + 56 + attr;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel knows ours
    let ext = if info { 1 << (INET_DIAG_INFO - 1) } else { 0 };
    m.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, ext, 0]);
    m.extend_from_slice(&states.to_ne_bytes());
    m.extend_from_slice(&[0; 48]); // inet_diag_sockid: no address, port or cookie to match
    if !filter.is_empty() {
        m.extend_from_slice(&(attr as u16).to_ne_bytes());
        m.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        m.extend_from_slice(filter);
    }
    m
}

/// Bytecode that accepts a socket whose local port (or, with `remote`, its remote port) is
/// one of `ports` (at most [`MAX_FILTERED_PORTS`] of them).
///
/// The kernel runs it as a chain of forward jumps: each op jumps `yes` or `no` bytes on, and
/// the socket is kept if the run lands exactly on the end, dropped if it jumps past it. Each
/// port is a test of two ops, `>= port` and `<= port` (every kernel with bytecode has these;
/// the equality ops are newer), whose failures go to the next test (after the last: past the
/// end), followed, but for the last test, by a jump to the end.
fn port_filter(ports: &[u16], remote: bool) -> Vec<u8> {
    let mut tests: Vec<(u8, u8, u16)> = ports.iter().map(|&p| (BC_S_GE, BC_S_LE, p)).collect();
    if remote {
        tests.extend(ports.iter().map(|&p| (BC_D_GE, BC_D_LE, p)));
    }
    const TEST: usize = 16;
    const JUMP: usize = 4;
    let len = tests.len() * (TEST + JUMP) - JUMP;
    let mut bc = Vec::with_capacity(len);
    let mut op = |code: u8, yes: u8, no: u16| {
        bc.push(code);
        bc.push(yes);
        bc.extend_from_slice(&no.to_ne_bytes());
    };
    for (i, &(ge, le, port)) in tests.iter().enumerate() {
        // Failing at byte 0 or 8 of the test goes to byte 20: the next test, or past the end.
        op(ge, 8, 20);
        op(0, 0, port);
        op(le, 8, 12);
        op(0, 0, port);
        if i + 1 < tests.len() {
            let here = i * (TEST + JUMP) + TEST;
            op(BC_JMP, 4, (len - here) as u16);
        }
    }
    bc
}

/// Sends one request and reads its answers into `out`, until the kernel says it is done.
fn dump_one(
    fd: &OwnedFd,
    request: &[u8],
    seq: u32,
    buf: &mut [u8],
    out: &mut Vec<Sample>,
) -> Result<(), Error> {
    let kernel = NetlinkAddr::new(0, 0);
    retry(|| sendto(fd.as_raw_fd(), request, &kernel, MsgFlags::empty()))?;
    loop {
        // With MSG_TRUNC, netlink gives a datagram's full length even if it did not fit.
        let n = retry(|| recv(fd.as_raw_fd(), buf, MsgFlags::MSG_TRUNC))?;
        let datagram = match buf.get(..n) {
            Some(d) if n > 0 => d,
            _ => return Err(malformed(&format!("a datagram of {n} bytes"))),
        };
        if parse(datagram, seq, out)? == Step::Done {
            return Ok(());
        }
    }
}

fn retry<T>(mut call: impl FnMut() -> nix::Result<T>) -> nix::Result<T> {
    loop {
        match call() {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Step {
    More,
    Done,
}

/// Reads the netlink messages of one datagram: samples into `out`, until `NLMSG_DONE`.
fn parse(datagram: &[u8], seq: u32, out: &mut Vec<Sample>) -> Result<Step, Error> {
    let mut rest = datagram;
    while !rest.is_empty() {
        let (Some(len), Some(kind), Some(msg_seq)) =
            (u32_at(rest, 0), u16_at(rest, 4), u32_at(rest, 8))
        else {
            return Err(malformed("a short netlink header"));
        };
        let len = len as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(malformed(&format!("a message of {len} bytes in {}", rest.len())));
        }
        let payload = &rest[NLMSG_HDRLEN..len];
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        if msg_seq != seq {
            continue; // not an answer to this request
        }
        match kind {
            NLMSG_DONE => {
                // A dump that failed midway says so here.
                return match i32_at(payload, 0) {
                    Some(e) if e < 0 => {
                        Err(classify(io::Error::from_raw_os_error(e.wrapping_neg())))
                    }
                    _ => Ok(Step::Done),
                };
            }
            NLMSG_ERROR => match i32_at(payload, 0) {
                Some(0) => {}
                Some(e) => return Err(classify(io::Error::from_raw_os_error(e.wrapping_neg()))),
                None => return Err(malformed("a short error message")),
            },
            SOCK_DIAG_BY_FAMILY => out.extend(sample(payload)?),
            _ => {}
        }
    }
    Ok(Step::More)
}

/// One `inet_diag_msg` and its attributes; `None` for a family other than IPv4 and IPv6.
fn sample(msg: &[u8]) -> Result<Option<Sample>, Error> {
    if msg.len() < DIAG_MSG_LEN {
        // Dropping it could hide a busy connection: the count fails instead.
        return Err(malformed(&format!("a socket of {} bytes", msg.len())));
    }
    let port = |at: usize| u16::from_be_bytes([msg[at], msg[at + 1]]);
    let addr = |at: usize| -> Option<IpAddr> {
        match i32::from(msg[0]) {
            libc::AF_INET => {
                Some(Ipv4Addr::from(<[u8; 4]>::try_from(&msg[at..at + 4]).ok()?).into())
            }
            libc::AF_INET6 => {
                Some(Ipv6Addr::from(<[u8; 16]>::try_from(&msg[at..at + 16]).ok()?).into())
            }
            _ => None,
        }
    };
    let (Some(local), Some(remote)) = (addr(8), addr(24)) else {
        return Ok(None);
    };
    let u32_of = |at: usize| u32_at(msg, at).unwrap_or(0); // within DIAG_MSG_LEN, checked above
    let mut sample = Sample {
        cookie: u64::from(u32_of(44)) | u64::from(u32_of(48)) << 32,
        inode: u64::from(u32_of(68)),
        uid: u32_of(64),
        state: msg[1],
        local: SocketAddr::new(local, port(4)),
        remote: SocketAddr::new(remote, port(6)),
        expires: u32_of(52),
        rqueue: u32_of(56),
        wqueue: u32_of(60),
        info: None,
    };
    let mut attrs = &msg[DIAG_MSG_LEN..];
    while let (Some(len), Some(kind)) = (u16_at(attrs, 0), u16_at(attrs, 2)) {
        let len = usize::from(len);
        if len < 4 || len > attrs.len() {
            break; // a broken attribute: no tcp_info, which counts the socket as busy
        }
        if kind & NLA_TYPE_MASK == INET_DIAG_INFO {
            sample.info = tcp_info(&attrs[4..len]);
        }
        attrs = attrs.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    Ok(Some(sample))
}

/// The fields of `struct tcp_info` at their offsets, each only if the kernel's structure
/// reaches it; `None` if it is too short for even the timestamps.
fn tcp_info(t: &[u8]) -> Option<TcpInfo> {
    Some(TcpInfo {
        unacked: u32_at(t, 24)?,
        last_data_sent: u32_at(t, 44)?,
        last_data_recv: u32_at(t, 52)?,
        bytes_acked: u64_at(t, 120),
        bytes_received: u64_at(t, 128),
        notsent_bytes: u32_at(t, 144),
        bytes_sent: u64_at(t, 200),
    })
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::procfs::inode_of;
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    // --- Bytecode: run and audit as the kernel does (net/ipv4/inet_diag.c) ---

    fn ops(bc: &[u8]) -> impl Fn(usize) -> (u8, usize, usize) + '_ {
        |at| {
            (
                bc[at],
                usize::from(bc[at + 1]),
                usize::from(u16::from_ne_bytes([bc[at + 2], bc[at + 3]])),
            )
        }
    }

    /// Whether the kernel would keep a socket with these ports.
    fn run(bc: &[u8], sport: u16, dport: u16) -> bool {
        let op = ops(bc);
        let (mut at, mut len) = (0usize, bc.len() as isize);
        while len > 0 {
            let (code, yes, no) = op(at);
            let arg = || op(at + 4).2 as u16;
            let pass = match code {
                BC_JMP => false,
                BC_S_GE => sport >= arg(),
                BC_S_LE => sport <= arg(),
                BC_D_GE => dport >= arg(),
                BC_D_LE => dport <= arg(),
                _ => panic!("op {code} not expected"),
            };
            let step = if pass { yes } else { no };
            at += step;
            len -= step as isize;
        }
        len == 0
    }

    /// Whether the kernel would take the bytecode (`inet_diag_bc_audit` and `valid_cc`).
    fn audit(bc: &[u8]) -> bool {
        let op = ops(bc);
        let valid_cc = |target: usize| {
            let mut at = 0;
            while at < target {
                let (_, yes, _) = op(at);
                if yes < 4 || yes % 4 != 0 {
                    return false;
                }
                at += yes;
            }
            at == target
        };
        let (mut at, mut len) = (0usize, bc.len() as isize);
        while len > 0 {
            let (code, yes, no) = op(at);
            let min = match code {
                BC_S_GE | BC_S_LE | BC_D_GE | BC_D_LE if len >= 8 => 8,
                BC_JMP => 4,
                _ => return false,
            };
            let (yes, no, min) = (yes as isize, no as isize, min as isize);
            if no < min || no > len + 4 || no % 4 != 0 {
                return false;
            }
            if no < len && !valid_cc(at + no as usize) {
                return false;
            }
            if yes < min || yes > len + 4 || yes % 4 != 0 {
                return false;
            }
            at += yes as usize;
            len -= yes;
        }
        len == 0
    }

    #[test]
    fn the_filter_keeps_exactly_the_ports_asked_for() {
        let sets: [&[u16]; 5] = [&[8080], &[80, 443], &[1, 2, 3, 65535], &[0], &[9753, 8080, 8081]];
        for ports in sets {
            for remote in [false, true] {
                let bc = port_filter(ports, remote);
                assert!(audit(&bc), "{ports:?} {remote}");
                for p in [0, 1, 2, 3, 79, 80, 81, 443, 8079, 8080, 8081, 8082, 9753, 65534, 65535] {
                    let other = 31337;
                    assert_eq!(run(&bc, p, other), ports.contains(&p), "sport {p} in {ports:?}");
                    assert_eq!(run(&bc, other, p), remote && ports.contains(&p), "dport {p}");
                }
            }
        }
        let many: Vec<u16> = (1000..1000 + MAX_FILTERED_PORTS as u16).collect();
        let bc = port_filter(&many, true);
        assert!(audit(&bc) && bc.len() + 4 <= usize::from(u16::MAX));
        assert!(run(&bc, 1063, 1) && run(&bc, 1, 1000) && !run(&bc, 999, 1064));
    }

    #[test]
    fn requests_are_laid_out_as_the_kernel_reads_them() {
        let r = request(7, libc::AF_INET6 as u8, CONNECTED, true, &port_filter(&[8080], false));
        assert_eq!(r.len(), 16 + 56 + 4 + 16);
        assert_eq!(u32_at(&r, 0), Some(r.len() as u32));
        assert_eq!(u16_at(&r, 4), Some(SOCK_DIAG_BY_FAMILY));
        assert_eq!(u16_at(&r, 6), Some(0x301)); // NLM_F_REQUEST | NLM_F_DUMP
        assert_eq!(u32_at(&r, 8), Some(7));
        assert_eq!(&r[16..20], &[libc::AF_INET6 as u8, 6, 2, 0]); // TCP, INET_DIAG_INFO
        assert_eq!(u32_at(&r, 20), Some(CONNECTED));
        assert_eq!((u16_at(&r, 72), u16_at(&r, 74)), (Some(20), Some(INET_DIAG_REQ_BYTECODE)));
        let bare = request(1, libc::AF_INET as u8, LISTENING, false, &[]);
        assert_eq!((bare.len(), bare[18]), (72, 0));
    }

    // --- Answers, built by hand ---

    fn nlmsg(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = 16 + payload.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(len.next_multiple_of(4), 0);
        m
    }

    fn put(b: &mut [u8], at: usize, bytes: &[u8]) {
        b[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// An `inet_diag_msg` for 127.0.0.1:8080 <- 127.0.0.1:40000 (or [::1]), with attributes.
    fn diag_msg(family: i32, state: u8, inode: u32, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut m = vec![0; DIAG_MSG_LEN];
        m[0] = family as u8;
        m[1] = state;
        put(&mut m, 4, &8080u16.to_be_bytes());
        put(&mut m, 6, &40000u16.to_be_bytes());
        let ip: &[u8] =
            if family == libc::AF_INET { &[127, 0, 0, 1] } else { &Ipv6Addr::LOCALHOST.octets() };
        put(&mut m, 8, ip);
        put(&mut m, 24, ip);
        put(&mut m, 44, &0x0000_0002u32.to_ne_bytes()); // cookie, low half
        put(&mut m, 48, &0x0000_0001u32.to_ne_bytes()); // cookie, high half
        put(&mut m, 52, &9u32.to_ne_bytes()); // expires
        put(&mut m, 56, &5u32.to_ne_bytes()); // rqueue
        put(&mut m, 60, &6u32.to_ne_bytes()); // wqueue
        put(&mut m, 64, &1000u32.to_ne_bytes()); // uid
        put(&mut m, 68, &inode.to_ne_bytes());
        for (kind, value) in attrs {
            m.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
            m.extend_from_slice(&kind.to_ne_bytes());
            m.extend_from_slice(value);
            m.resize(m.len().next_multiple_of(4), 0);
        }
        m
    }

    /// A `tcp_info` of `len` bytes whose every field that fits holds a recognisable value.
    fn tcp_info_bytes(len: usize) -> Vec<u8> {
        let mut t = vec![0; 248];
        put(&mut t, 24, &3u32.to_ne_bytes()); // unacked
        put(&mut t, 44, &400u32.to_ne_bytes()); // last_data_sent
        put(&mut t, 52, &500u32.to_ne_bytes()); // last_data_recv
        put(&mut t, 120, &1_000u64.to_ne_bytes()); // bytes_acked
        put(&mut t, 128, &2_000u64.to_ne_bytes()); // bytes_received
        put(&mut t, 144, &7u32.to_ne_bytes()); // notsent_bytes
        put(&mut t, 200, &1_100u64.to_ne_bytes()); // bytes_sent
        t.truncate(len);
        t
    }

    fn parse_all(datagram: &[u8]) -> Result<(Step, Vec<Sample>), Error> {
        let mut out = vec![];
        parse(datagram, 1, &mut out).map(|step| (step, out))
    }

    #[test]
    fn parses_a_socket_and_its_tcp_info() {
        let shutdown = (8, vec![0]); // INET_DIAG_SHUTDOWN, ignored
        let msg = diag_msg(libc::AF_INET, ESTABLISHED, 77, &[shutdown, (2, tcp_info_bytes(248))]);
        let mut datagram = nlmsg(SOCK_DIAG_BY_FAMILY, 1, &msg);
        datagram.extend(nlmsg(NLMSG_DONE, 1, &0i32.to_ne_bytes()));
        let (step, samples) = parse_all(&datagram).unwrap();
        assert_eq!(step, Step::Done);
        let expected = Sample {
            cookie: 0x1_0000_0002,
            inode: 77,
            uid: 1000,
            state: ESTABLISHED,
            local: "127.0.0.1:8080".parse().unwrap(),
            remote: "127.0.0.1:40000".parse().unwrap(),
            rqueue: 5,
            wqueue: 6,
            expires: 9,
            info: Some(TcpInfo {
                unacked: 3,
                last_data_sent: 400,
                last_data_recv: 500,
                bytes_acked: Some(1_000),
                bytes_received: Some(2_000),
                notsent_bytes: Some(7),
                bytes_sent: Some(1_100),
            }),
        };
        assert_eq!(samples, [expected]);
        let v6 = nlmsg(SOCK_DIAG_BY_FAMILY, 1, &diag_msg(libc::AF_INET6, LISTEN, 1, &[]));
        let (step, samples) = parse_all(&v6).unwrap();
        assert_eq!((step, samples[0].local), (Step::More, "[::1]:8080".parse().unwrap()));
        assert_eq!(samples[0].info, None);
    }

    #[test]
    fn an_older_kernels_shorter_tcp_info_leaves_the_newer_fields_out() {
        let info = |len: usize| {
            let msg = diag_msg(libc::AF_INET, ESTABLISHED, 1, &[(2, tcp_info_bytes(len))]);
            parse_all(&nlmsg(SOCK_DIAG_BY_FAMILY, 1, &msg)).unwrap().1[0].info
        };
        // 4.19 and later; 4.6 to 4.18; 4.1 to 4.5; before 4.1; shorter than any kernel's.
        assert_eq!(info(232).unwrap().bytes_sent, Some(1_100));
        let v4_6 = info(160).unwrap();
        assert_eq!((v4_6.bytes_sent, v4_6.notsent_bytes), (None, Some(7)));
        let v4_1 = info(136).unwrap();
        assert_eq!(
            (v4_1.bytes_received, v4_1.bytes_acked, v4_1.notsent_bytes),
            (Some(2_000), Some(1_000), None)
        );
        let old = info(104).unwrap();
        assert_eq!((old.last_data_recv, old.bytes_acked, old.bytes_received), (500, None, None));
        assert_eq!(info(127).unwrap().bytes_acked, None, "half a counter is no counter");
        assert_eq!(info(40), None);
    }

    #[test]
    fn errors_from_the_kernel_say_whether_to_fall_back() {
        let error = |errno: i32| {
            let mut payload = (-errno).to_ne_bytes().to_vec();
            payload.extend([0; 16]); // the request's header, echoed
            parse_all(&nlmsg(NLMSG_ERROR, 1, &payload))
        };
        for errno in [libc::EPERM, libc::EACCES, libc::ENOENT, libc::EINVAL, libc::EOPNOTSUPP] {
            assert!(matches!(error(errno), Err(Error::Unavailable(_))), "{errno}");
        }
        for errno in [libc::ENOBUFS, libc::ENOMEM, libc::EBUSY] {
            assert!(matches!(error(errno), Err(Error::Failed(_))), "{errno}");
        }
        let failed_midway = nlmsg(NLMSG_DONE, 1, &(-libc::ENOMEM).to_ne_bytes());
        assert!(matches!(parse_all(&failed_midway), Err(Error::Failed(_))));
        let ack = nlmsg(NLMSG_ERROR, 1, &0i32.to_ne_bytes());
        assert_eq!(parse_all(&ack).unwrap().0, Step::More);
        let io: io::Error = classify(io::Error::from_raw_os_error(libc::EPERM)).into();
        assert_eq!(io.raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn state_masks() {
        assert!(in_states(CONNECTED, ESTABLISHED) && in_states(CONNECTED, CLOSE_WAIT));
        assert!(!in_states(CONNECTED, LISTEN) && in_states(LISTENING, LISTEN));
        assert!(!in_states(u32::MAX, 32) && !in_states(u32::MAX, 255));
    }

    #[test]
    fn other_requests_answers_are_skipped() {
        let msg = diag_msg(libc::AF_INET, ESTABLISHED, 1, &[]);
        let mut datagram = nlmsg(SOCK_DIAG_BY_FAMILY, 9, &msg);
        datagram.extend(nlmsg(NLMSG_DONE, 9, &0i32.to_ne_bytes()));
        datagram.extend(nlmsg(SOCK_DIAG_BY_FAMILY, 1, &msg));
        assert_eq!(parse_all(&datagram).unwrap().1.len(), 1);
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        let msg = diag_msg(libc::AF_INET, ESTABLISHED, 1, &[(2, tcp_info_bytes(232))]);
        let whole = nlmsg(SOCK_DIAG_BY_FAMILY, 1, &msg);
        for cut in [1, 15, 16, 40, whole.len() - 1] {
            assert!(matches!(parse_all(&whole[..cut]), Err(Error::Failed(_))), "cut at {cut}");
        }
        // A message too short for its socket.
        assert!(parse_all(&nlmsg(SOCK_DIAG_BY_FAMILY, 1, &msg[..71])).is_err());
        // An attribute longer than the message: the socket stays, without tcp_info.
        let mut broken = msg.clone();
        put(&mut broken, DIAG_MSG_LEN, &4000u16.to_ne_bytes());
        let samples = parse_all(&nlmsg(SOCK_DIAG_BY_FAMILY, 1, &broken)).unwrap().1;
        assert_eq!(samples[0].info, None);
        // A family other than IPv4 and IPv6 is skipped.
        let unix = diag_msg(libc::AF_UNIX, ESTABLISHED, 1, &[]);
        assert!(parse_all(&nlmsg(SOCK_DIAG_BY_FAMILY, 1, &unix)).unwrap().1.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_without_panicking(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)
        ) {
            let _ = parse_all(&bytes);
            // Also behind a valid header, where the socket parser sees them.
            let _ = parse_all(&nlmsg(SOCK_DIAG_BY_FAMILY, 1, &bytes));
            let _ = tcp_info(&bytes);
        }

        #[test]
        fn any_error_number_parses_without_panicking(errno in proptest::prelude::any::<i32>()) {
            let _ = parse_all(&nlmsg(NLMSG_DONE, 1, &errno.to_ne_bytes()));
            let _ = parse_all(&nlmsg(NLMSG_ERROR, 1, &errno.to_ne_bytes()));
        }
    }

    #[test]
    fn the_most_negative_error_number_is_an_error_not_a_panic() {
        for kind in [NLMSG_DONE, NLMSG_ERROR] {
            let answer = nlmsg(kind, 1, &i32::MIN.to_ne_bytes());
            assert!(matches!(parse_all(&answer), Err(Error::Failed(_))), "{kind}");
        }
    }

    // --- Real sockets on loopback ---

    /// A listener, a client connected to it, and the server's side of that connection.
    pub(crate) struct Pair {
        pub listener: TcpListener,
        pub client: TcpStream,
        pub server: TcpStream,
    }

    pub(crate) fn pair(ip: &str) -> Pair {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        Pair { listener, client, server }
    }

    impl Pair {
        pub fn port(&self) -> u16 {
            self.listener.local_addr().unwrap().port()
        }

        /// The server's side, as the kernel shows it now.
        pub fn sample(&self) -> Sample {
            let samples =
                dump(CONNECTED, Ports::Of { list: &[self.port()], remote: false }, true).unwrap();
            let client = self.client.local_addr().unwrap();
            let mine: Vec<Sample> = samples.into_iter().filter(|s| s.remote == client).collect();
            assert_eq!(mine.len(), 1, "{mine:?}");
            mine[0].clone()
        }
    }

    /// Waits until the loopback's packets have been processed.
    fn settle() {
        std::thread::sleep(Duration::from_millis(20));
    }

    fn connection_as_the_kernel_shows_it(ip: &str) {
        let mut p = pair(ip);
        let fresh = p.sample();
        assert_eq!(fresh.state, ESTABLISHED);
        assert_eq!(fresh.local, p.server.local_addr().unwrap());
        assert_eq!(fresh.inode, inode_of(p.server.as_raw_fd()).unwrap());
        assert_eq!(
            fresh.uid,
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap())
        );
        assert_eq!((fresh.rqueue, fresh.wqueue), (0, 0));
        let info = fresh.info.expect("tcp_info");
        assert_eq!((info.bytes_received, info.bytes_acked), (Some(0), Some(0)), "{info:?}");
        assert_eq!(info.last_data_recv, info.last_data_sent, "both dated from the handshake");

        p.client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        settle();
        let unread = p.sample();
        assert_eq!(unread.rqueue, 18);
        assert_eq!(unread.info.unwrap().bytes_received, Some(18));

        let mut request = [0; 18];
        p.server.read_exact(&mut request).unwrap();
        let read = p.sample();
        assert_eq!(read.rqueue, 0);
        let info = read.info.unwrap();
        assert!(info.last_data_recv <= info.last_data_sent, "received after sent: {info:?}");

        p.server.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        settle();
        let answered = p.sample();
        let info = answered.info.unwrap();
        assert_eq!(answered.wqueue, 0);
        assert_eq!((info.bytes_acked, info.bytes_sent, info.unacked), (Some(27), Some(27), 0));
        assert_eq!(info.notsent_bytes, Some(0));
        assert_eq!(answered.cookie, fresh.cookie, "one socket throughout");

        // The client hangs up: its FIN is a received byte, and an unread one.
        p.client.shutdown(std::net::Shutdown::Write).unwrap();
        settle();
        let closed = p.sample();
        assert_eq!((closed.state, closed.rqueue), (CLOSE_WAIT, 1));
        assert_eq!(closed.info.unwrap().bytes_received, Some(19));
    }

    #[test]
    fn a_connection_as_the_kernel_shows_it_ipv4() {
        connection_as_the_kernel_shows_it("127.0.0.1");
    }

    #[test]
    fn a_connection_as_the_kernel_shows_it_ipv6() {
        connection_as_the_kernel_shows_it("::1");
    }

    #[test]
    fn the_dump_keeps_only_the_ports_asked_for() {
        let (a, b) = (pair("127.0.0.1"), pair("::1"));
        let local =
            dump(CONNECTED, Ports::Of { list: &[a.port(), b.port()], remote: false }, false)
                .unwrap();
        assert_eq!(local.len(), 2, "{local:?}");
        assert!(local.iter().all(|s| s.info.is_none()));
        let either = dump(CONNECTED, Ports::Of { list: &[a.port()], remote: true }, true).unwrap();
        let mut ports: Vec<(u16, u16)> =
            either.iter().map(|s| (s.local.port(), s.remote.port())).collect();
        ports.sort();
        let client = a.client.local_addr().unwrap().port();
        let mut expected = vec![(a.port(), client), (client, a.port())];
        expected.sort();
        assert_eq!(ports, expected);
        assert!(dump(CONNECTED, Ports::Of { list: &[], remote: false }, true).unwrap().is_empty());
        let listeners =
            dump(LISTENING, Ports::Of { list: &[a.port()], remote: false }, false).unwrap();
        assert_eq!(listeners.len(), 1);
        assert_eq!(listeners[0].inode, inode_of(a.listener.as_raw_fd()).unwrap());
    }

    #[test]
    fn more_ports_than_the_filter_takes_are_matched_after_the_dump() {
        let a = pair("127.0.0.1");
        let mut ports: Vec<u16> = (1..=MAX_FILTERED_PORTS as u16 + 5).collect();
        ports.push(a.port());
        let samples = dump(CONNECTED, Ports::Of { list: &ports, remote: false }, false).unwrap();
        assert!(samples.iter().any(|s| s.local.port() == a.port()));
        assert!(samples.iter().all(|s| ports.contains(&s.local.port())));
        // The largest filter sent, local or remote: the kernel takes it.
        let most = &ports[ports.len() - MAX_FILTERED_PORTS..];
        assert!(most.contains(&a.port()));
        let samples = dump(CONNECTED, Ports::Of { list: most, remote: true }, false).unwrap();
        let ends =
            samples.iter().filter(|s| s.local.port() == a.port() || s.remote.port() == a.port());
        assert_eq!(ends.count(), 2, "both ends: {samples:?}");
        assert!(
            samples
                .iter()
                .all(|s| most.contains(&s.local.port()) || most.contains(&s.remote.port()))
        );
    }

    // --- Where the kernel refuses ---

    /// Makes `socket(AF_NETLINK, ...)` fail with EPERM in this thread from now on, as a
    /// container runtime's seccomp profile may.
    fn forbid_netlink_sockets() {
        let op =
            |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter { code: code as u16, jt, jf, k };
        // The low half of seccomp_data.args[0], the socket's family.
        let family_at = if cfg!(target_endian = "little") { 16 } else { 20 };
        let mut filter = [
            op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0), // the syscall's number
            op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 3, libc::SYS_socket as u32),
            op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, family_at),
            op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 1, libc::AF_NETLINK as u32),
            op(libc::BPF_RET | libc::BPF_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
            op(libc::BPF_RET | libc::BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW),
        ];
        let program = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_mut_ptr() };
        // SAFETY: prctl with integer arguments; no_new_privs lets a process without
        // CAP_SYS_ADMIN install a filter.
        assert_eq!(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }, 0);
        // SAFETY: `program` points to `filter`, both alive for the call; the kernel copies
        // the program.
        let rc = unsafe {
            libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &program as *const _)
        };
        assert_eq!(rc, 0, "seccomp: {}", io::Error::last_os_error());
    }

    #[test]
    fn a_seccomp_refusal_is_unavailable() {
        // A filter binds only the thread that installs it (no TSYNC): a thread of its own
        // keeps it from the other tests.
        let refused = std::thread::spawn(|| {
            forbid_netlink_sockets();
            dump(CONNECTED, Ports::All, true)
        })
        .join()
        .unwrap();
        match refused {
            Err(Error::Unavailable(e)) => assert_eq!(e.raw_os_error(), Some(libc::EPERM)),
            other => panic!("not unavailable: {other:?}"),
        }
    }
}
