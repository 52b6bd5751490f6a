//! `--socket`: listening sockets that lastcall binds and holds, and hands to every child it
//! starts through the socket-activation protocol (fds from 3 on, LISTEN_FDS, LISTEN_PID,
//! LISTEN_FDNAMES). Because lastcall keeps them open, a reload can start a new child on the
//! same sockets while the old one drains, and the backlog holds connections meanwhile.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt, socket,
    sockopt,
};

/// The most sockets lastcall passes (the child's fds 3 to 3+63).
pub const MAX_SOCKETS: usize = 64;
/// A deep backlog: connections wait in it while a new child starts.
const BACKLOG: i32 = 4096;

/// One `--socket [NAME=]tcp://HOST:PORT` or `[NAME=]unix:/path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// LISTEN_FDNAMES entry.
    pub name: String,
    pub addr: Addr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.addr {
            Addr::Tcp(addr) => write!(f, "tcp://{addr}"),
            Addr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Spec {
    pub fn parse(text: &str) -> Result<Spec, String> {
        let text = text.trim();
        let (name, rest) = match text.split_once('=') {
            Some((name, rest)) if !name.contains(':') && !name.contains('/') => {
                if name.is_empty()
                    || name.len() > 255
                    || !name.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err("the name must be 1 to 255 printable characters".to_string());
                }
                (name.to_string(), rest)
            }
            _ => ("lastcall".to_string(), text),
        };
        let addr = if let Some(host_port) = rest.strip_prefix("tcp://") {
            let addr = host_port
                .to_socket_addrs()
                .map_err(|e| format!("expected tcp://HOST:PORT ({e})"))?
                .next()
                .ok_or_else(|| "the host name has no address".to_string())?;
            Addr::Tcp(addr)
        } else if let Some(path) = rest.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("expected unix:/path".to_string());
            }
            Addr::Unix(PathBuf::from(path))
        } else {
            return Err("expected tcp://HOST:PORT or unix:/path".to_string());
        };
        Ok(Spec { name, addr })
    }
}

/// A bound, listening socket (CLOEXEC in lastcall; the child gets its own copy at exec).
pub struct Bound {
    pub spec: Spec,
    fd: OwnedFd,
}

impl Bound {
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Binds every spec, in order.
pub fn bind_all(specs: &[Spec]) -> Result<Vec<Bound>, String> {
    specs
        .iter()
        .map(|spec| {
            let fd = match &spec.addr {
                Addr::Tcp(addr) => bind_tcp(*addr, BACKLOG),
                Addr::Unix(path) => bind_unix(path),
            }
            .map_err(|e| format!("cannot listen on {spec}: {e}"))?;
            Ok(Bound { spec: spec.clone(), fd })
        })
        .collect()
}

/// A listening TCP socket on `addr` with a listen backlog of `backlog` (CLOEXEC, blocking).
pub fn bind_tcp(addr: SocketAddr, backlog: i32) -> std::io::Result<OwnedFd> {
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    // As servers do: a restart may bind while old connections are in TIME_WAIT.
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    listen(&fd, Backlog::new(backlog).unwrap_or(Backlog::MAXCONN))?;
    Ok(fd)
}

fn bind_unix(path: &std::path::Path) -> std::io::Result<OwnedFd> {
    // A socket file left by an earlier run would make bind fail; anything else stays.
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    let fd = OwnedFd::from(listener);
    listen(&fd, Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN))?;
    Ok(fd)
}

/// The socket-activation variables for the child (LISTEN_PID is the child's own, set by it).
pub fn env(bound: &[Bound]) -> Vec<(String, String)> {
    let names: Vec<&str> = bound.iter().map(|b| b.spec.name.as_str()).collect();
    vec![
        ("LISTEN_FDS".to_string(), bound.len().to_string()),
        ("LISTEN_FDNAMES".to_string(), names.join(":")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let spec = Spec::parse("tcp://127.0.0.1:8080").unwrap();
        assert_eq!(spec.name, "lastcall");
        assert_eq!(spec.addr, Addr::Tcp("127.0.0.1:8080".parse().unwrap()));
        let spec = Spec::parse("web=tcp://[::1]:80").unwrap();
        assert_eq!((spec.name.as_str(), spec.to_string().as_str()), ("web", "tcp://[::1]:80"));
        let spec = Spec::parse("unix:/run/app.sock").unwrap();
        assert_eq!(spec.addr, Addr::Unix("/run/app.sock".into()));
        assert!(Spec::parse("127.0.0.1:8080").is_err());
        assert!(Spec::parse("tcp://127.0.0.1").is_err());
        assert!(Spec::parse("unix:").is_err());
        assert!(Spec::parse("a b=tcp://127.0.0.1:1").is_err());
    }

    #[test]
    fn binds_and_names() {
        let specs = [
            Spec::parse("one=tcp://127.0.0.1:0").unwrap(),
            Spec::parse("tcp://127.0.0.1:0").unwrap(),
        ];
        let bound = bind_all(&specs).unwrap();
        assert_eq!(
            env(&bound),
            [
                ("LISTEN_FDS".to_string(), "2".to_string()),
                ("LISTEN_FDNAMES".to_string(), "one:lastcall".to_string())
            ]
        );
        // SAFETY: F_GETFD only reads the flags.
        let flags = unsafe { libc::fcntl(bound[0].fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC, "lastcall's copy is CLOEXEC");
    }
}
