//! What /proc says of TCP sockets, and the one rule of which sockets are the app's.
//!
//! Four things, all read-only: the rows of /proc/net/tcp and tcp6 (the drain's fallback where
//! socket diagnostics are refused: they show lastcall's network namespace, the child's too,
//! but only a connection's state); the namespace's count of TCP connections accepted, from
//! /proc/net/snmp; the socket inodes in /proc/PID/fd (whose sockets are
//! whose); and the rule that both sources of connections go through, [`the_apps`]: only
//! connections whose local port is one of the app's count, not lastcall's own sockets (its
//! endpoint, its readiness checks), and not the app's side of a connection that lastcall
//! itself opened.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;

use super::diag::{ESTABLISHED, LISTEN};

/// One row of /proc/net/tcp{,6}.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Row {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// As [`crate::drain::diag`] numbers states: [`ESTABLISHED`], [`LISTEN`], ...
    pub state: u8,
    pub inode: u64,
}

/// The text of /proc/net/tcp and tcp6, those that can be read.
pub fn tables() -> Vec<String> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect()
}

/// The rows of the tables' text, each once; a line that does not parse is left out. The
/// kernel prints the tables a page at a time, and a socket can appear on two pages when the
/// table changes between them.
pub fn rows(tables: &[String]) -> impl Iterator<Item = Row> + '_ {
    let mut seen = HashSet::new();
    let lines = tables.iter().flat_map(|t| t.lines().skip(1));
    lines.filter_map(parse_row).filter(move |r| seen.insert(*r))
}

fn parse_row(line: &str) -> Option<Row> {
    let mut fields = line.split_whitespace();
    let _slot = fields.next()?;
    let local = parse_end(fields.next()?)?;
    let remote = parse_end(fields.next()?)?;
    let state = u8::from_str_radix(fields.next()?, 16).ok()?;
    // tx_queue:rx_queue, tr:tm->when, retrnsmt, uid, timeout, then the inode.
    let inode = fields.nth(5)?.parse().ok()?;
    Some(Row { local, remote, state, inode })
}

/// `0100007F:1F90`: the address as the kernel holds it, printed one 32-bit word at a time
/// in the machine's byte order, then the port.
fn parse_end(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for word in addr.as_bytes().chunks(8) {
        let word = u32::from_str_radix(std::str::from_utf8(word).ok()?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip: IpAddr = match <[u8; 4]>::try_from(&bytes[..]) {
        Ok(v4) if addr.len() == 8 => Ipv4Addr::from(v4).into(),
        _ => Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[..]).ok()?).into(),
    };
    Some(SocketAddr::new(ip, port))
}

/// TCP connections accepted in lastcall's network namespace since it was made (`Tcp:
/// PassiveOpens` of /proc/net/snmp): those of every listener, lastcall's own included.
pub fn passive_opens() -> Result<u64, String> {
    let text = std::fs::read_to_string("/proc/net/snmp")
        .map_err(|e| format!("reading /proc/net/snmp: {e}"))?;
    passive_opens_in(&text).ok_or_else(|| "no Tcp: PassiveOpens in /proc/net/snmp".to_string())
}

/// `PassiveOpens` from the text of /proc/net/snmp: a `Tcp:` line of names, then one of values.
fn passive_opens_in(text: &str) -> Option<u64> {
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let at = names.split_whitespace().position(|n| n == "PassiveOpens")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// The app's established connections on `ports` in the tables' text (the fallback's count).
pub fn established(tables: &[String], ports: &[u16], own: &HashSet<u64>) -> usize {
    let rows: Vec<Row> = rows(tables).collect();
    let app = the_apps(rows, |r| (r.inode, r.local, r.remote), ports, own);
    app.iter().filter(|r| r.state == ESTABLISHED).count()
}

/// The ports of the listening sockets among `inodes`, in the tables' text.
pub fn listening_in(tables: &[String], inodes: &HashSet<u64>) -> Vec<u16> {
    let listeners = rows(tables).filter(|r| r.state == LISTEN);
    ports_of(listeners.map(|r| (r.inode, r.local.port())), inodes)
}

/// The ports of the listeners (inode, port) whose inode is among `inodes`, sorted, once each.
pub fn ports_of(listeners: impl Iterator<Item = (u64, u16)>, inodes: &HashSet<u64>) -> Vec<u16> {
    let mut ports: Vec<u16> =
        listeners.filter(|(inode, _)| inodes.contains(inode)).map(|(_, port)| port).collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The app's sockets among `all`, each seen through `ends` as (inode, local, remote): those
/// whose local port is one of `ports`, less lastcall's own (`own`, from
/// [`own_socket_inodes`]) and the app's side of the connections that lastcall opened to it
/// (its readiness checks). `all` must hold lastcall's own ends for those to be found: a dump
/// by remote port as well as local, or a whole table.
pub fn the_apps<T>(
    all: Vec<T>,
    ends: impl Fn(&T) -> (u64, SocketAddr, SocketAddr),
    ports: &[u16],
    own: &HashSet<u64>,
) -> Vec<T> {
    let own_ends: HashSet<SocketAddr> = all
        .iter()
        .map(&ends)
        .filter(|(inode, ..)| own.contains(inode))
        .map(|(_, local, _)| canonical(local))
        .collect();
    all.into_iter()
        .filter(|s| {
            let (inode, local, remote) = ends(s);
            ports.contains(&local.port())
                && !own.contains(&inode)
                && !own_ends.contains(&canonical(remote))
        })
        .collect()
}

/// An IPv4 client of a dual-stack listener shows as `::ffff:a.b.c.d` on the app's side.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The inodes of the sockets of these processes, with `held`: the sockets lastcall holds for
/// the app (`--socket`), which count as the app's. lastcall's own endpoint is not among them:
/// it is not in `held`, and the child cannot hold it (CLOEXEC).
pub fn app_socket_inodes(pids: &[i32], held: &HashSet<u64>) -> HashSet<u64> {
    let mut inodes = held.clone();
    for pid in pids {
        inodes.extend(socket_inodes(&format!("/proc/{pid}/fd")));
    }
    inodes
}

/// The inodes of lastcall's own sockets, from /proc/self/fd.
pub fn own_socket_inodes() -> HashSet<u64> {
    socket_inodes("/proc/self/fd")
}

/// The inode of a socket this process holds, as [`Row::inode`] and a dump show it (for
/// `--socket`s).
pub fn inode_of(fd: RawFd) -> Option<u64> {
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    socket_inode(target.to_str()?)
}

/// The socket inodes in a /proc/PID/fd directory; none if it cannot be read (the process is
/// gone, or is not ours to look at).
fn socket_inodes(dir: &str) -> HashSet<u64> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return HashSet::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|target| socket_inode(target.to_str()?))
        .collect()
}

fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    use super::super::diag::tests::pair;
    use super::super::diag::{CONNECTED, LISTENING, Ports, Sample, TIME_WAIT, dump};
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
        assert_eq!(established(&tables, &[8080], &own), 2);
        assert_eq!(established(&tables, &[8080], &HashSet::new()), 3);
        assert_eq!(established(&tables, &[8080, 9745], &own), 3);
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
        assert_eq!(parsed.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(parsed.remote.port(), 0xD431);
        assert_eq!((parsed.state, parsed.inode), (ESTABLISHED, 42));
        // ::ffff:127.0.0.1 and ::1, as tcp6 prints them on a little-endian machine.
        if cfg!(target_endian = "little") {
            let mapped = "0000000000000000FFFF00000100007F:1F90";
            let one = "00000000000000000000000001000000:0050";
            let parsed = parse_row(&row(mapped, one, "0A", 7)).unwrap();
            assert_eq!(parsed.local, "[::ffff:127.0.0.1]:8080".parse().unwrap());
            assert_eq!(parsed.remote, "[::1]:80".parse().unwrap());
            assert_eq!(parsed.state, LISTEN);
        }
        assert_eq!(parse_row("garbage"), None);
        let twice = format!("header\n{line}\n{line}\n");
        assert_eq!(rows(&[twice.clone(), twice]).count(), 1, "a socket printed twice is one");
        assert_eq!(parse_row(&row("0100007F", "0100007F:D431", "01", 1)), None);
        assert_eq!(parse_row(&row("0100007F:1F90", "0100007F:D431", "zz", 1)), None);
    }

    #[test]
    fn the_proc_tables_agree_with_a_dump() {
        let p = pair("127.0.0.1");
        let inode = inode_of(p.server.as_raw_fd()).unwrap();
        let rows: Vec<Row> = rows(&tables()).filter(|r| r.inode == inode).collect();
        let client = p.client.local_addr().unwrap();
        assert_eq!(
            rows,
            [Row {
                local: p.server.local_addr().unwrap(),
                remote: client,
                state: ESTABLISHED,
                inode
            }]
        );
    }

    /// The app's connections on `ports` as the drain reads them by socket diagnostics.
    fn app_connections(ports: &[u16], own: &HashSet<u64>) -> Vec<Sample> {
        let list = Ports::Of { list: ports, remote: true };
        let all = dump(CONNECTED | 1 << TIME_WAIT, list, true).unwrap();
        the_apps(all, |s| (s.inode, s.local, s.remote), ports, own)
    }

    #[test]
    fn lastcalls_own_connections_to_the_app_are_not_the_apps() {
        // The client plays lastcall's readiness check; a second client is a real user.
        let p = pair("127.0.0.1");
        let user = TcpStream::connect(p.listener.local_addr().unwrap()).unwrap();
        let (_served, _) = p.listener.accept().unwrap();
        let own: HashSet<u64> = [inode_of(p.client.as_raw_fd()).unwrap()].into();
        assert!(own.is_subset(&own_socket_inodes()));
        let app = app_connections(&[p.port()], &own);
        assert_eq!(app.len(), 1, "{app:?}");
        assert_eq!(app[0].remote, user.local_addr().unwrap());
        // Without knowing lastcall's sockets, both count.
        assert_eq!(app_connections(&[p.port()], &HashSet::new()).len(), 2);
        // The same rule over /proc.
        assert_eq!(established(&tables(), &[p.port()], &own), 1);
    }

    #[test]
    fn an_ipv4_client_of_a_dual_stack_listener_is_recognised_as_lastcalls() {
        let Ok(listener) = TcpListener::bind("[::]:0") else {
            return; // no IPv6 here
        };
        let port = listener.local_addr().unwrap().port();
        let check = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_app_side, peer) = listener.accept().unwrap();
        assert!(matches!(peer.ip(), IpAddr::V6(ip) if ip.to_ipv4_mapped().is_some()));
        let own: HashSet<u64> = [inode_of(check.as_raw_fd()).unwrap()].into();
        assert_eq!(app_connections(&[port], &own), []);
        assert_eq!(established(&tables(), &[port], &own), 0);
    }

    #[test]
    fn listening_ports_of_this_process() {
        let listening = |inodes: &HashSet<u64>| {
            let listeners = dump(LISTENING, Ports::All, false).unwrap();
            ports_of(listeners.iter().map(|s| (s.inode, s.local.port())), inodes)
        };
        let (v4, v6) = (pair("127.0.0.1"), pair("::1"));
        let this = app_socket_inodes(&[std::process::id() as i32], &HashSet::new());
        let ports = listening(&this);
        assert!(ports.contains(&v4.port()) && ports.contains(&v6.port()), "{ports:?}");
        let from_proc = listening_in(&tables(), &this);
        assert!(from_proc.contains(&v4.port()) && from_proc.contains(&v6.port()), "/proc agrees");
        // Not the connections, only the listeners: the clients' ports are not there.
        assert!(!ports.contains(&v4.client.local_addr().unwrap().port()));
        // A socket held for the app counts even when no pid holds it.
        let held: HashSet<u64> = [inode_of(v4.listener.as_raw_fd()).unwrap()].into();
        assert_eq!(listening(&app_socket_inodes(&[], &held)), [v4.port()]);
        assert_eq!(listening(&HashSet::new()), []);
        // A process that is gone has no ports.
        assert!(app_socket_inodes(&[i32::MAX], &HashSet::new()).is_empty());
    }

    #[test]
    fn passive_opens_are_read_by_name() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RtoMin ActiveOpens \
                    PassiveOpens AttemptFails\nTcp: 1 200 1234 5678 9\nUdp: InDatagrams\nUdp: 3\n";
        assert_eq!(passive_opens_in(snmp), Some(5678));
        assert_eq!(passive_opens_in("Tcp: PassiveOpens\n"), None, "no values");
        assert_eq!(passive_opens_in("Tcp: PassiveOpens\nTcp: x\n"), None);
        assert_eq!(passive_opens_in(""), None);
        assert!(passive_opens().is_ok(), "this machine has /proc/net/snmp");
    }
}
