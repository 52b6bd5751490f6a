//! The drain's eyes on the app, the one face of the drain wing that the loop sees: the app's
//! ports, and a summary of its connections on them at each read.
//!
//! Read through socket diagnostics ([`crate::drain::diag`]): each connection with its
//! `tcp_info`, which the activity [`Tracker`] turns into busy, unsure or idle across reads,
//! with the namespace's count of connections accepted where only the app listens in it.
//! Where the kernel will not answer (seccomp, an LSM, an old kernel), from /proc/net/tcp and
//! tcp6 instead ([`crate::drain::procfs`]), for good, and said once at warn: they show only a
//! connection's state, so every established connection counts as busy. Either way, which
//! connections are the app's is [`procfs::the_apps`]'s rule.

use std::collections::HashSet;
use std::os::fd::RawFd;
use std::time::Instant;

use nix::unistd::Pid;

use crate::drain::activity::Tracker;
pub use crate::drain::activity::{AppSummary, ReadBy, Rhythm};
use crate::drain::diag::{self, CONNECTED, LISTENING, Ports, Sample, TIME_WAIT};
use crate::drain::procfs;
use crate::init::reaper;

/// What `--drain-idle-port` says as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrainPorts {
    Off,
    /// The ports the app listens on when the drain starts.
    Auto,
    Ports(Vec<u16>),
}

/// Whether socket diagnostics can be used: once they cannot, they never will.
#[derive(Debug)]
enum Diag {
    Usable,
    /// Why not, and whether that was said.
    Lost {
        why: String,
        told: bool,
    },
}

impl Diag {
    fn lose(&mut self, e: &std::io::Error) {
        let why = format!("socket diagnostics are unavailable ({e})");
        *self = Diag::Lost { why, told: false };
    }

    /// What to warn of when the fallback counts, the first time only.
    fn first_count(&mut self) -> Option<String> {
        let Diag::Lost { why, told: told @ false } = self else {
            return None;
        };
        *told = true;
        Some(format!(
            "{why}: the drain counts the app's connections from /proc/net/tcp, where an idle \
             keep-alive connection holds it like a busy one"
        ))
    }
}

/// The drain's eyes on the app.
pub struct Eyes {
    choice: DrainPorts,
    /// The inodes of the `--socket`s lastcall holds for the app: they are the app's.
    held: HashSet<u64>,
    /// The ports of this drain, from [`Eyes::find_ports`].
    ports: Vec<u16>,
    diag: Diag,
    /// The namespace has no TCP listener but the app's and lastcall's own.
    alone: bool,
    tracker: Tracker,
}

impl Eyes {
    pub fn new(choice: DrainPorts, held: &[RawFd]) -> Eyes {
        let held = held.iter().filter_map(|fd| procfs::inode_of(*fd)).collect();
        let (ports, diag, tracker) = (vec![], Diag::Usable, Tracker::new());
        Eyes { choice, held, ports, diag, alone: false, tracker }
    }

    /// A drain begins: the app's ports, which [`Eyes::read`] watches from now on. Those
    /// given, or those on which lastcall's descendants and its `--socket`s listen now
    /// (lastcall's own endpoint is not among them: the child cannot hold it, as it is
    /// close-on-exec).
    pub fn find_ports(&mut self) -> Vec<u16> {
        self.tracker = Tracker::new();
        // One dump of the namespace's listeners serves both: which are the app's, and
        // whether any other server listens beside them.
        let listeners = match self.choice {
            DrainPorts::Off => None,
            _ => self.listeners(),
        };
        self.ports = match &self.choice {
            DrainPorts::Ports(ports) => ports.clone(),
            DrainPorts::Off => vec![],
            DrainPorts::Auto => self.listening(listeners.as_deref()),
        };
        self.alone = listeners.is_some_and(|l| self.alone_among(&l));
        self.ports.clone()
    }

    /// Every TCP listener in the network namespace; `None` where socket diagnostics fail.
    fn listeners(&mut self) -> Option<Vec<Sample>> {
        if !matches!(self.diag, Diag::Usable) {
            return None;
        }
        match diag::dump(LISTENING, Ports::All, false) {
            Ok(listeners) => Some(listeners),
            Err(diag::Error::Unavailable(e)) => {
                self.diag.lose(&e);
                None
            }
            Err(diag::Error::Failed(e)) => {
                log::debug!("finding the app's ports: {e}");
                None
            }
        }
    }

    /// Whether the app's ports and lastcall's own are the only ones among `listeners`, as in
    /// a pod of its own: then every connection accepted in the namespace is the app's or
    /// lastcall's.
    fn alone_among(&self, listeners: &[Sample]) -> bool {
        if self.ports.is_empty() {
            return false;
        }
        let own = procfs::own_socket_inodes();
        let others = listeners
            .iter()
            .filter(|l| !self.ports.contains(&l.local.port()) && !own.contains(&l.inode));
        let others: Vec<String> = others.map(|l| l.local.to_string()).collect();
        if !others.is_empty() {
            log::debug!(
                "other servers listen in this network namespace ({}): the drain leaves its \
                 count of accepted connections aside",
                others.join(", ")
            );
        }
        others.is_empty()
    }

    /// The ports the app's processes and `--socket`s listen on, among `listeners`, or from
    /// /proc without them.
    fn listening(&self, listeners: Option<&[Sample]>) -> Vec<u16> {
        let pids: Vec<i32> = reaper::descendants(Pid::this()).iter().map(|p| p.as_raw()).collect();
        let inodes = procfs::app_socket_inodes(&pids, &self.held);
        if inodes.is_empty() {
            return vec![];
        }
        match listeners {
            Some(listeners) => {
                procfs::ports_of(listeners.iter().map(|s| (s.inode, s.local.port())), &inodes)
            }
            None => procfs::listening_in(&procfs::tables(), &inodes),
        }
    }

    /// The app's connections on its ports, read at `now`, when lastcall's endpoint has
    /// accepted `own_accepts` connections in all; why not, if this read failed (the next one
    /// may not).
    pub fn read(&mut self, now: Instant, own_accepts: u64) -> Result<AppSummary, String> {
        let own = procfs::own_socket_inodes();
        if let Diag::Usable = self.diag {
            // Read first: a connection lastcall accepts meanwhile is then left out, not
            // taken for the app's.
            let accepted = match self.alone {
                true => Some(procfs::passive_opens()?.saturating_sub(own_accepts)),
                false => None,
            };
            // Remote ports too: lastcall's own connections to the app are how its ends are
            // found. TIME_WAIT too: the trace of a connection the app closed, however short.
            let ports = Ports::Of { list: &self.ports, remote: true };
            match diag::dump(CONNECTED | 1 << TIME_WAIT, ports, true) {
                Ok(all) => {
                    let app =
                        procfs::the_apps(all, |s| (s.inode, s.local, s.remote), &self.ports, &own);
                    return Ok(self.tracker.update(&app, accepted, now));
                }
                Err(diag::Error::Unavailable(e)) => self.diag.lose(&e),
                Err(diag::Error::Failed(e)) => return Err(e.to_string()),
            }
        }
        if let Some(warning) = self.diag.first_count() {
            log::warn!("{warning}");
        }
        let busy = procfs::established(&procfs::tables(), &self.ports, &own);
        Ok(AppSummary::counted(busy))
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn the_fallback_is_told_once() {
        let mut diag = Diag::Usable;
        assert_eq!(diag.first_count(), None, "nothing lost");
        diag.lose(&std::io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(
            diag.first_count().as_deref(),
            Some(
                "socket diagnostics are unavailable (Operation not permitted (os error 1)): the \
                 drain counts the app's connections from /proc/net/tcp, where an idle \
                 keep-alive connection holds it like a busy one"
            )
        );
        assert_eq!(diag.first_count(), None, "once");
    }

    #[test]
    fn the_ports_are_those_given_none_or_the_apps_listeners() {
        let given = DrainPorts::Ports(vec![8080, 9090]);
        assert_eq!(Eyes::new(given, &[]).find_ports(), [8080, 9090]);
        assert_eq!(Eyes::new(DrainPorts::Off, &[]).find_ports(), []);
        // A socket held for the app (`--socket`) is the app's.
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let mut eyes = Eyes::new(DrainPorts::Auto, &[held.as_raw_fd()]);
        assert!(eyes.find_ports().contains(&port));
        // lastcall's own listener is not.
        let own = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!eyes.find_ports().contains(&own.local_addr().unwrap().port()));
    }

    #[test]
    fn a_read_sums_up_the_apps_connections() {
        // This process holds both ends: lastcall's own connection, not the app's.
        let p = crate::drain::diag::tests::pair("127.0.0.1");
        let mut eyes = Eyes::new(DrainPorts::Ports(vec![p.port()]), &[]);
        eyes.find_ports();
        let read = eyes.read(Instant::now(), 0).unwrap();
        assert_eq!((read.busy, read.unsure, read.idle, read.by), (0, 0, 0, ReadBy::Sockets));
        let mut none = Eyes::new(DrainPorts::Off, &[]);
        none.find_ports();
        assert_eq!(none.read(Instant::now(), 0).map(|r| r.busy + r.unsure + r.idle), Ok(0));
    }
}
