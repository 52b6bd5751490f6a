//! What lastcall's child is started with besides its command: its environment, the sockets
//! it is passed and its user, worked out once; the first child and a reload's new one are
//! started the same way.

use std::ffi::OsString;

use nix::unistd::Pid;

use crate::init::spawn::{self, SpawnError};
use crate::platform::sockets::{self, Bound};
use crate::platform::users::Credentials;

/// How a child is started: the first one, and a reload's new one, the same way.
pub struct Spawner {
    command: Vec<OsString>,
    options: spawn::Options,
    /// Held for the children: a reload's new child gets the same sockets.
    _sockets: Vec<Bound>,
}

impl Spawner {
    pub fn new(command: Vec<OsString>, options: spawn::Options, sockets: Vec<Bound>) -> Spawner {
        Spawner { command, options, _sockets: sockets }
    }

    pub fn spawn(&self) -> Result<Pid, SpawnError> {
        spawn::spawn(&self.command, &self.options)
    }
}

/// What the child's start depends on, besides lastcall's environment.
pub struct Given<'a> {
    /// lastcall's own pid, which LISTEN_PID names when systemd's fds were meant for it.
    pub own_pid: u32,
    /// The private notify socket's NOTIFY_SOCKET value (`--ready-notify`).
    pub private_notify: Option<&'a str>,
    /// lastcall reports to systemd's notify socket itself.
    pub lastcall_notifies: bool,
    /// `--socket`, bound.
    pub sockets: &'a [Bound],
    /// `--user`.
    pub user: Option<Credentials>,
}

/// The child's environment is `environ` (lastcall's own), with NOTIFY_SOCKET pointing at the
/// private socket (`--ready-notify`) or removed when it is lastcall's to use (WATCHDOG_USEC
/// and WATCHDOG_PID with it: the watchdog is lastcall's then); the socket-activation
/// variables for `--socket`, or LISTEN_PID rewritten to the child's pid when systemd's fds
/// were meant for lastcall. With `--user`, HOME is the user's (as gosu and su-exec set it),
/// not root's. When none of that applies, the child inherits lastcall's environment as is.
pub fn options(
    environ: impl IntoIterator<Item = (OsString, OsString)>,
    given: Given,
) -> spawn::Options {
    let environ: Vec<(OsString, OsString)> = environ.into_iter().collect();
    let own_pid = given.own_pid.to_string();
    // The first LISTEN_PID, as getenv reads it.
    let listen_pid = environ.iter().find(|(key, _)| key == "LISTEN_PID");
    let inherited_activation = listen_pid
        .is_some_and(|(_, value)| value.to_str().is_some_and(|pid| pid.trim() == own_pid));
    let own_sockets = !given.sockets.is_empty();
    let user = given.user;
    let private = given.private_notify;
    let lastcall_notifies = given.lastcall_notifies;
    if private.is_none()
        && !lastcall_notifies
        && !inherited_activation
        && !own_sockets
        && user.is_none()
    {
        return spawn::Options::default();
    }
    let drop_notify = private.is_some() || lastcall_notifies;
    let mut env: Vec<OsString> = environ
        .into_iter()
        .filter(|(key, _)| {
            let listen = key == "LISTEN_PID"
                || (own_sockets && (key == "LISTEN_FDS" || key == "LISTEN_FDNAMES"));
            // systemd's notify socket and watchdog are lastcall's when it uses them.
            let watchdog = key == "WATCHDOG_USEC" || key == "WATCHDOG_PID";
            let lastcalls =
                (watchdog && lastcall_notifies) || (key == "NOTIFY_SOCKET" && drop_notify);
            let home = key == "HOME" && user.is_some();
            !lastcalls && !home && !(listen && (own_sockets || inherited_activation))
        })
        .map(|(key, value)| {
            let mut pair = key;
            pair.push("=");
            pair.push(value);
            pair
        })
        .collect();
    if let Some(private) = private {
        env.push(format!("NOTIFY_SOCKET={private}").into());
    }
    if let Some(user) = &user {
        env.push(user.home_env());
    }
    if own_sockets {
        for (key, value) in sockets::env(given.sockets) {
            env.push(format!("{key}={value}").into());
        }
    }
    spawn::Options {
        env: Some(env),
        own_pid_var: (inherited_activation || own_sockets).then_some("LISTEN_PID"),
        quiet: false,
        pass_fds: given.sockets.iter().map(Bound::fd).collect(),
        user,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::sockets::Spec;

    fn environ(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    fn given() -> Given<'static> {
        Given {
            own_pid: 42,
            private_notify: None,
            lastcall_notifies: false,
            sockets: &[],
            user: None,
        }
    }

    fn env(child: &spawn::Options) -> Vec<String> {
        let env = child.env.as_ref().expect("an environment of its own");
        env.iter().map(|pair| pair.to_string_lossy().into_owned()).collect()
    }

    const SYSTEMD: [(&str, &str); 5] = [
        ("PATH", "/bin"),
        ("NOTIFY_SOCKET", "/run/systemd/notify"),
        ("WATCHDOG_USEC", "30000000"),
        ("WATCHDOG_PID", "42"),
        ("HOME", "/root"),
    ];

    #[test]
    fn with_nothing_to_change_the_child_inherits_lastcalls_environment() {
        let child = options(environ(&SYSTEMD), given());
        assert!(child.env.is_none());
        assert!(child.own_pid_var.is_none() && child.pass_fds.is_empty());
        assert!(child.user.is_none() && !child.quiet);
        // Another process's LISTEN_PID: its fds were not meant for lastcall.
        let child = options(environ(&[("LISTEN_PID", "7"), ("LISTEN_FDS", "1")]), given());
        assert!(child.env.is_none() && child.own_pid_var.is_none());
    }

    #[test]
    fn the_private_notify_socket_replaces_systemds_and_leaves_the_watchdog() {
        let given = Given { private_notify: Some("@lastcall/1"), ..given() };
        let child = options(environ(&SYSTEMD), given);
        assert_eq!(
            env(&child),
            ["PATH=/bin", "WATCHDOG_USEC=30000000", "WATCHDOG_PID=42", "HOME=/root"]
                .into_iter()
                .chain(["NOTIFY_SOCKET=@lastcall/1"])
                .collect::<Vec<_>>()
        );
        assert!(child.own_pid_var.is_none());
    }

    #[test]
    fn systemds_socket_and_watchdog_are_lastcalls_when_it_notifies() {
        let child = options(environ(&SYSTEMD), Given { lastcall_notifies: true, ..given() });
        assert_eq!(env(&child), ["PATH=/bin", "HOME=/root"]);
        // With --ready-notify too, the child's NOTIFY_SOCKET is the private one.
        let given = Given { lastcall_notifies: true, private_notify: Some("@p"), ..given() };
        assert_eq!(
            env(&options(environ(&SYSTEMD), given)),
            ["PATH=/bin", "HOME=/root", "NOTIFY_SOCKET=@p"]
        );
    }

    #[test]
    fn systemds_fds_for_lastcall_go_to_the_child_with_its_own_pid() {
        let activation = [("LISTEN_PID", " 42 "), ("LISTEN_FDS", "2"), ("LISTEN_FDNAMES", "a:b")];
        let child = options(environ(&activation), given());
        assert_eq!(env(&child), ["LISTEN_FDS=2", "LISTEN_FDNAMES=a:b"]);
        assert_eq!(child.own_pid_var, Some("LISTEN_PID"));
        assert!(child.pass_fds.is_empty(), "already at 3 onward");
    }

    #[test]
    fn own_sockets_replace_any_activation_variables() {
        let specs = [Spec::parse("web=tcp://127.0.0.1:0").unwrap()];
        let bound = sockets::bind_all(&specs).unwrap();
        let activation = [("LISTEN_PID", "7"), ("LISTEN_FDS", "2"), ("LISTEN_FDNAMES", "a:b")];
        let environ =
            environ(&[("PATH", "/bin")].into_iter().chain(activation).collect::<Vec<_>>());
        let child = options(environ, Given { sockets: &bound, ..given() });
        assert_eq!(env(&child), ["PATH=/bin", "LISTEN_FDS=1", "LISTEN_FDNAMES=web"]);
        assert_eq!(child.own_pid_var, Some("LISTEN_PID"));
        assert_eq!(child.pass_fds, [bound[0].fd()]);
    }

    #[test]
    fn a_user_gets_its_own_home() {
        let user = Credentials {
            uid: 1000,
            gid: 1000,
            groups: vec![1000],
            home: Some("/home/app".into()),
            name: "app".into(),
        };
        let environ = environ(&[("HOME", "/root"), ("PATH", "/bin")]);
        let child = options(environ, Given { user: Some(user), ..given() });
        assert_eq!(env(&child), ["PATH=/bin", "HOME=/home/app"]);
        assert_eq!(child.user.map(|u| u.uid), Some(1000));
    }
}
