//! The systemd notify protocol, both ways.
//!
//! - [`Private`]: `--ready-notify`. lastcall's own datagram socket, handed to the child as
//!   NOTIFY_SOCKET, where the child (or its descendants) says `READY=1` / `STOPPING=1`.
//!   It is an abstract socket (no file, so it works on a read-only root), and every message's
//!   sender is checked through SCM_CREDENTIALS: only processes under lastcall are heard.
//! - [`Systemd`]: lastcall as a `Type=notify` service, telling systemd (the NOTIFY_SOCKET
//!   lastcall was started with) that it is ready, stopping, what its status is, and that it is
//!   alive (the watchdog). The child never sees that socket.

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixAddr, recvmsg, setsockopt, sockopt};

use crate::reaper;

/// What a child's notify message said that matters to readiness.
#[derive(Debug, PartialEq, Eq)]
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

    /// Every message waiting, from processes under lastcall, with its sender; others are
    /// dropped.
    pub fn receive(&mut self) -> Vec<(Said, Sender)> {
        let mut said = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let (len, sender) = match recvmsg::<UnixAddr>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(msg) => {
                    let sender = msg.cmsgs().ok().and_then(|mut c| {
                        c.find_map(|m| match m {
                            ControlMessageOwned::ScmCredentials(creds) => {
                                Some((creds.pid(), creds.uid()))
                            }
                            _ => None,
                        })
                    });
                    (msg.bytes, sender)
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return said,
            };
            let from = match sender {
                Some((pid, _)) if reaper::is_descendant(pid) => Some(Sender::Pid(pid)),
                // A short-lived sender (`systemd-notify --ready` in a shell app) may be gone
                // by now, and its ancestry with it; one running as lastcall's own user is
                // taken at its word.
                Some((pid, uid)) if !reaper::exists(pid) && uid == own_euid() => Some(Sender::Gone),
                _ => None,
            };
            match from {
                Some(from) => said.extend(parse(&buf[..len]).into_iter().map(|s| (s, from))),
                None => log::debug!("notify message from a process not under lastcall dropped"),
            }
        }
    }
}

/// lastcall's effective user id.
fn own_euid() -> u32 {
    // SAFETY: geteuid cannot fail and has no preconditions.
    unsafe { libc::geteuid() }
}

/// Who sent a notify message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// A process under lastcall.
    Pid(i32),
    /// A process that has exited since, running as lastcall's user.
    Gone,
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
