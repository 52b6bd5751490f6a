//! The systemd notify protocol, both ways.
//!
//! - [`Private`]: `--ready-notify`. lastcall's own datagram socket, handed to the child as
//!   NOTIFY_SOCKET, where the child (or its descendants) says `READY=1` / `STOPPING=1`.
//!   It is an abstract socket (no file, so it works on a read-only root), and every message's
//!   sender is checked through SCM_CREDENTIALS when it is read: only processes under
//!   lastcall then are heard. At most a bounded number of messages is read per turn.
//! - [`Systemd`]: lastcall as a `Type=notify` service, telling systemd (the NOTIFY_SOCKET
//!   lastcall was started with) that it is ready, stopping, what its status is, and that it is
//!   alive (the watchdog). The child never sees that socket.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, UnixAddr, UnixCredentials, recvmsg, setsockopt, sockopt,
};
use nix::unistd::Pid;

use crate::init::reaper;

/// What a child's notify message said that matters to readiness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Said {
    Ready,
    Stopping,
}

/// The readiness words in one datagram, in order (`READY=1`, `STOPPING=1`; others ignored).
pub fn parse(message: &[u8]) -> Vec<Said> {
    message
        .split(|&b| b == b'\n')
        .filter_map(|line| match line {
            b"READY=1" => Some(Said::Ready),
            b"STOPPING=1" => Some(Said::Stopping),
            _ => None,
        })
        .collect()
}

/// lastcall's private notify socket for the child.
pub struct Private {
    socket: mio::net::UnixDatagram,
    /// The NOTIFY_SOCKET value for the child: `@` and the abstract name.
    pub env_value: String,
}

/// A readiness word heard from a process under lastcall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heard {
    /// The datagram's last readiness word: its words all speak of the same moment.
    pub said: Said,
    /// The child of lastcall's that the sender is, or is under.
    pub under: Pid,
}

impl Private {
    pub fn bind() -> io::Result<Private> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("lastcall/{}/{nanos:x}/notify", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
        let socket = mio::net::UnixDatagram::bind_addr(&addr)?;
        // The kernel attaches the sender's pid to every message, checked in `receive`.
        setsockopt(&socket, sockopt::PassCred, &true).map_err(io::Error::from)?;
        Ok(Private { socket, env_value: format!("@{name}") })
    }

    pub fn source(&mut self) -> &mut mio::net::UnixDatagram {
        &mut self.socket
    }

    /// Reads at most `limit` datagrams and returns the readiness words of those whose
    /// sender is, when the datagram is read, a process under lastcall; the rest are
    /// dropped. True as well when more may be waiting.
    ///
    /// A sender must still exist to be proven: its pid is looked up (once per turn) in
    /// lastcall's process tree. One in another PID namespace (a sidecar sharing the pod's
    /// network, and so the abstract socket) has pid 0 here; one that has exited cannot be
    /// traced. `systemd-notify --ready` stays until its message is read: it names its
    /// parent (the app) when it may, and waits for its `BARRIER=1` to be answered, which
    /// happens once the messages before it have been read.
    pub fn receive(&mut self, limit: usize) -> (Vec<Heard>, bool) {
        let mut heard = Vec::new();
        let mut traced: HashMap<i32, Option<Pid>> = HashMap::new();
        let mut buf = [0u8; 4096];
        for _ in 0..limit {
            let mut cmsg = nix::cmsg_space!(UnixCredentials, [RawFd; MAX_FDS]);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let (len, pid) = match recvmsg::<UnixAddr>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let mut pid = None;
                    for c in msg.cmsgs().into_iter().flatten() {
                        match c {
                            ControlMessageOwned::ScmCredentials(creds) => pid = Some(creds.pid()),
                            // BARRIER=1 and the like: closing the fd is the answer.
                            ControlMessageOwned::ScmRights(fds) => close_all(&fds),
                            _ => {}
                        }
                    }
                    (msg.bytes, pid)
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return (heard, false),
            };
            let Some(said) = parse(&buf[..len]).pop() else {
                continue;
            };
            let under = match pid {
                Some(pid) if pid > 0 => {
                    *traced.entry(pid).or_insert_with(|| reaper::child_above(pid))
                }
                _ => None,
            };
            match under {
                Some(under) => heard.push(Heard { said, under }),
                None => log::debug!(
                    "notify message from pid {} dropped: not a process under lastcall (another \
                     PID namespace, or gone before it was read)",
                    pid.unwrap_or(0)
                ),
            }
        }
        (heard, true)
    }
}

/// The most file descriptors taken with one notify message; more are closed by the kernel.
const MAX_FDS: usize = 8;

fn close_all(fds: &[RawFd]) {
    for &fd in fds {
        // SAFETY: the kernel just gave us this fd; nothing else owns it.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

/// lastcall's own messages to systemd, when started with NOTIFY_SOCKET (`Type=notify`).
pub struct Systemd {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// Half of WATCHDOG_USEC, when systemd asked for watchdog pings.
    pub watchdog_every: Option<Duration>,
}

impl Systemd {
    /// From NOTIFY_SOCKET (a path, or `@name` for an abstract socket) and WATCHDOG_USEC /
    /// WATCHDOG_PID; `None` when lastcall is not under a notify-aware manager.
    pub fn from_env() -> Option<Systemd> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name),
            None if bytes.starts_with(b"/") => SocketAddr::from_pathname(&path),
            None => return None,
        }
        .ok()?;
        let socket = UnixDatagram::unbound().ok()?;
        // WATCHDOG_PID, when set, names the process that must ping: if not us, not ours.
        let for_us = std::env::var("WATCHDOG_PID")
            .map_or(true, |pid| pid.trim() == std::process::id().to_string());
        let watchdog_every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && for_us)
            .map(|usec| Duration::from_micros(usec / 2));
        Some(Systemd { socket, addr, watchdog_every })
    }

    /// Sends one message (`READY=1`, `STATUS=...`); failures are logged at debug only:
    /// systemd going away must not disturb the supervision.
    pub fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.addr) {
            log::debug!("notify: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_messages() {
        assert_eq!(parse(b"READY=1"), [Said::Ready]);
        assert_eq!(parse(b"STATUS=starting\nREADY=1\n"), [Said::Ready]);
        assert_eq!(parse(b"STOPPING=1\nREADY=1"), [Said::Stopping, Said::Ready]);
        assert_eq!(parse(b"READY=0\nMAINPID=3\nREADY=11"), []);
        assert_eq!(parse(b""), []);
    }
}
