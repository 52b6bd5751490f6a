//! The drain's view of the app: its ports, and its connections on them.
//!
//! Read through socket diagnostics ([`crate::drain::diag`]): each connection with its `tcp_info`,
//! for the machine to tell busy from idle. Where the kernel will not answer (seccomp, an
//! LSM, an old kernel), from /proc/net/tcp and tcp6 instead, for good: they show lastcall's
//! network namespace, the child's too, but only a connection's state, so every established
//! connection counts as busy. Either way, only connections whose local port is one of the
//! app's count: not lastcall's own sockets (its endpoint, its readiness checks), and not the
//! app's side of a connection that lastcall itself opened.

use std::collections::HashSet;
use std::os::fd::RawFd;

use nix::unistd::Pid;

use crate::cli::DrainPorts;
use crate::drain::diag;
use crate::init::reaper;
use crate::machine::Reading;

/// `st` of an established connection in /proc/net/tcp.
const ESTABLISHED: &str = "01";
/// `st` of a listening socket.
const LISTEN: &str = "0A";

/// One row of /proc/net/tcp{,6}: local and remote (address, port) as printed, and inode.
#[derive(Debug, PartialEq, Eq)]
struct Row<'a> {
    local: (&'a str, u16),
    remote: (&'a str, u16),
    state: &'a str,
    inode: u64,
}

fn parse_endpoint(text: &str) -> Option<(&str, u16)> {
    let (addr, port) = text.split_once(':')?;
    Some((addr, u16::from_str_radix(port, 16).ok()?))
}

fn parse_row(line: &str) -> Option<Row<'_>> {
    let mut fields = line.split_whitespace();
    let _slot = fields.next()?;
    let local = parse_endpoint(fields.next()?)?;
    let remote = parse_endpoint(fields.next()?)?;
    let state = fields.next()?;
    // tx_queue:rx_queue, tr:tm->when, retrnsmt, uid, timeout, then the inode.
    let inode = fields.nth(5)?.parse().ok()?;
    Some(Row { local, remote, state, inode })
}

/// Counts the connections to `ports` in the tables' text, leaving out lastcall's own.
fn count_in(tables: &[String], ports: &[u16], own_inodes: &HashSet<u64>) -> usize {
    let rows: Vec<Row> =
        tables.iter().flat_map(|t| t.lines().skip(1)).filter_map(parse_row).collect();
    // Where lastcall's own sockets are: the app's side of those connections is ours too.
    let own_ends: HashSet<(&str, u16)> =
        rows.iter().filter(|r| own_inodes.contains(&r.inode)).map(|r| r.local).collect();
    rows.iter()
        .filter(|r| r.state == ESTABLISHED && ports.contains(&r.local.1))
        .filter(|r| !own_inodes.contains(&r.inode) && !own_ends.contains(&r.remote))
        .count()
}

/// The ports of the listening sockets among `inodes`, in the tables' text.
fn listening_in(tables: &[String], inodes: &HashSet<u64>) -> Vec<u16> {
    let mut ports: Vec<u16> = tables
        .iter()
        .flat_map(|t| t.lines().skip(1))
        .filter_map(parse_row)
        .filter(|r| r.state == LISTEN && inodes.contains(&r.inode))
        .map(|r| r.local.1)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

fn tables() -> Vec<String> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect()
}

/// The drain's eyes on the app.
pub struct Eyes {
    ports: DrainPorts,
    /// The inodes of the `--socket`s lastcall holds for the app: they are the app's.
    held: HashSet<u64>,
    /// Why socket diagnostics cannot be used, once they could not.
    lost: Option<String>,
}

impl Eyes {
    pub fn new(ports: DrainPorts, held: &[RawFd]) -> Eyes {
        let held = held.iter().filter_map(|fd| diag::inode_of(*fd)).collect();
        Eyes { ports, held, lost: None }
    }

    /// The app's ports: those given, or those on which lastcall's descendants and its
    /// `--socket`s listen now (lastcall's own endpoint is not among them: the child cannot
    /// hold it, as it is close-on-exec).
    pub fn ports(&mut self) -> Vec<u16> {
        match &self.ports {
            DrainPorts::Ports(ports) => return ports.clone(),
            DrainPorts::Off => return vec![],
            DrainPorts::Auto => {}
        }
        let pids: Vec<i32> = reaper::descendants(Pid::this()).iter().map(|p| p.as_raw()).collect();
        let inodes = diag::app_socket_inodes(&pids, &self.held);
        if self.lost.is_none() {
            match diag::listening_ports(&inodes) {
                Ok(ports) => return ports,
                Err(diag::Error::Unavailable(e)) => self.lost = Some(unavailable(&e)),
                Err(diag::Error::Failed(e)) => log::debug!("finding the app's ports: {e}"),
            }
        }
        listening_in(&tables(), &inodes)
    }

    /// The app's connections on `ports` now.
    pub fn read(&mut self, ports: &[u16]) -> Reading {
        let own = diag::own_socket_inodes();
        if self.lost.is_none() {
            match diag::app_connections(ports, &own) {
                Ok(samples) => return Reading::Sockets(samples),
                Err(diag::Error::Unavailable(e)) => self.lost = Some(unavailable(&e)),
                Err(diag::Error::Failed(e)) => return Reading::Failed(e.to_string()),
            }
        }
        let lost = self.lost.clone().unwrap_or_default();
        Reading::Count { n: count_in(&tables(), ports, &own), lost }
    }
}

/// The app's established connections on `ports` now, from /proc.
#[cfg(test)]
pub fn count(ports: &[u16]) -> usize {
    count_in(&tables(), ports, &diag::own_socket_inodes())
}

fn unavailable(e: &std::io::Error) -> String {
    format!("socket diagnostics are unavailable ({e})")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";

    fn row(local: &str, remote: &str, st: &str, inode: u64) -> String {
        format!(
            "   0: {local} {remote} {st} 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0000000000000000 20 4 0 10 -1"
        )
    }

    #[test]
    fn counts_only_the_apps_established_connections() {
        let app = "0100007F:1F90"; // 127.0.0.1:8080
        let table = [
            HEADER.to_string(),
            row("00000000:1F90", "00000000:0000", "0A", 1), // the listener
            row(app, "0100007F:D431", "01", 2),             // a client
            row(app, "0100007F:D432", "01", 3),             // another client
            row(app, "0100007F:D433", "06", 4),             // TIME_WAIT
            row("0100007F:2611", "0100007F:D440", "01", 5), // another port (9745)
            row("0100007F:D450", app, "01", 6),             // lastcall's check, client side
            row(app, "0100007F:D450", "01", 7),             // ... and the app's side of it
        ]
        .join("\n");
        let own: HashSet<u64> = [6].into();
        let tables = [table];
        assert_eq!(count_in(&tables, &[8080], &own), 2);
        assert_eq!(count_in(&tables, &[8080], &HashSet::new()), 3);
        assert_eq!(count_in(&tables, &[8080, 9745], &own), 3);
    }

    #[test]
    fn finds_the_listening_ports_of_the_apps_sockets() {
        let table = [
            HEADER.to_string(),
            row("00000000:1F90", "00000000:0000", "0A", 1), // the app's listener, 8080
            row("0100007F:2611", "00000000:0000", "0A", 2), // another's listener, 9745
            row("0100007F:1F90", "0100007F:D431", "01", 3), // a connection to 8080
            row("00000000:1F90", "00000000:0000", "0A", 4), // a second listener on 8080
        ]
        .join("\n");
        let tables = [table];
        assert_eq!(listening_in(&tables, &[1, 3, 4].into()), vec![8080]);
        assert_eq!(listening_in(&tables, &[1, 2].into()), vec![8080, 9745]);
        assert_eq!(listening_in(&tables, &HashSet::new()), Vec::<u16>::new());
    }

    #[test]
    fn parses_rows() {
        let line = row("0100007F:1F90", "0100007F:D431", "01", 42);
        let parsed = parse_row(&line).unwrap();
        assert_eq!(parsed.local, ("0100007F", 8080));
        assert_eq!(parsed.remote.1, 0xD431);
        assert_eq!(parsed.inode, 42);
        assert_eq!(parse_row("garbage"), None);
    }
}
