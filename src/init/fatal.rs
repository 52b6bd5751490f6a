//! The failures that stop lastcall before or instead of supervising, and what each says:
//! the log line, the termination message and the exit code.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use nix::errno::Errno;

use crate::init::spawn::{self, SpawnError};

/// A failure that stops lastcall before or instead of supervising.
#[derive(Debug)]
pub enum Fatal {
    Spawn(SpawnError),
    Bind {
        addr: SocketAddr,
        err: io::Error,
    },
    /// A `--socket` could not be bound (the message names it).
    Sockets(String),
    Setup {
        what: &'static str,
        err: io::Error,
    },
}

impl Fatal {
    /// 126/127 when the command cannot be run, as a shell says it; 125 when lastcall itself
    /// failed, as `env` and `timeout` say it.
    pub fn exit_code(&self) -> u8 {
        match self {
            Fatal::Spawn(SpawnError::Exec { errno, .. }) => spawn::exec_failure_code(*errno),
            Fatal::Spawn(SpawnError::User { .. }) => 126,
            Fatal::Spawn(SpawnError::Os { .. })
            | Fatal::Bind { .. }
            | Fatal::Sockets(_)
            | Fatal::Setup { .. } => 125,
        }
    }

    /// The termination message (`--termination-log`) for a run that never got going: `exec
    /// failed: /app/server: not found`, or what went wrong, as the log line says it.
    pub fn termination_message(&self) -> String {
        match self {
            Fatal::Spawn(SpawnError::Exec { program, errno }) => {
                let why = match errno {
                    Errno::ENOENT | Errno::ENOTDIR => "not found".into(),
                    Errno::EACCES => "permission denied".into(),
                    other => other.desc().to_lowercase(),
                };
                format!("exec failed: {program}: {why}")
            }
            other => other.to_string(),
        }
    }
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fatal::Spawn(e) => write!(f, "{e}"),
            Fatal::Bind { addr, err } => write!(
                f,
                "cannot listen on {addr}: {err} (choose another with --listen, or --listen off)"
            ),
            Fatal::Sockets(text) => write!(f, "{text}"),
            Fatal::Setup { what, err } => write!(f, "{what}: {err}"),
        }
    }
}

/// The error of a set-up step, named by `what` lastcall was doing.
pub fn setup(what: &'static str) -> impl FnOnce(io::Error) -> Fatal {
    move |err| Fatal::Setup { what, err }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(errno: Errno) -> Fatal {
        Fatal::Spawn(SpawnError::Exec { program: "/app/server".into(), errno })
    }

    #[test]
    fn a_run_that_never_got_going_says_why_in_the_termination_message() {
        assert_eq!(
            exec(Errno::ENOENT).termination_message(),
            "exec failed: /app/server: not found"
        );
        assert_eq!(
            exec(Errno::ENOTDIR).termination_message(),
            "exec failed: /app/server: not found"
        );
        assert_eq!(
            exec(Errno::EACCES).termination_message(),
            "exec failed: /app/server: permission denied"
        );
        assert_eq!(
            exec(Errno::ENOEXEC).termination_message(),
            "exec failed: /app/server: exec format error"
        );
        let bind = Fatal::Bind {
            addr: "127.0.0.1:9753".parse().unwrap(),
            err: io::Error::from(io::ErrorKind::AddrInUse),
        };
        assert!(bind.termination_message().starts_with("cannot listen on 127.0.0.1:9753: "));
        let setup = setup("taking signals")(io::Error::from_raw_os_error(libc::EMFILE));
        assert_eq!(setup.termination_message(), setup.to_string(), "as the log line says it");
        assert!(setup.to_string().starts_with("taking signals: "), "{setup}");
    }

    #[test]
    fn the_exit_code_says_whose_failure_it_was() {
        // The command's: as a shell says it.
        assert_eq!(exec(Errno::ENOENT).exit_code(), 127);
        assert_eq!(exec(Errno::ENOTDIR).exit_code(), 127);
        assert_eq!(exec(Errno::EACCES).exit_code(), 126);
        assert_eq!(exec(Errno::ENOEXEC).exit_code(), 126);
        let user = SpawnError::User { user: "app".into(), call: "setuid", errno: Errno::EPERM };
        assert_eq!(Fatal::Spawn(user).exit_code(), 126);
        // lastcall's own: 125.
        let os = SpawnError::Os { what: "fork", errno: Errno::EAGAIN };
        assert_eq!(Fatal::Spawn(os).exit_code(), 125);
        let addr = "127.0.0.1:9753".parse().unwrap();
        let in_use = io::Error::from(io::ErrorKind::AddrInUse);
        assert_eq!(Fatal::Bind { addr, err: in_use }.exit_code(), 125);
        assert_eq!(Fatal::Sockets("--socket tcp://x: in use".into()).exit_code(), 125);
        assert_eq!(setup("creating the event loop")(io::Error::other("no")).exit_code(), 125);
    }
}
