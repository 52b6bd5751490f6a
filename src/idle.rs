//! Counting the app's open connections, for `--drain-idle-port`.
//!
//! Read from /proc/net/tcp and tcp6, which show lastcall's network namespace, the child's
//! too. Only ESTABLISHED connections whose local port is one of the app's count: not
//! listening sockets, not lastcall's own sockets (its endpoint, its readiness checks), and
//! not the app's side of a connection that lastcall itself opened.

use std::collections::HashSet;

/// `st` of an established connection in /proc/net/tcp.
const ESTABLISHED: &str = "01";

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

/// The app's established connections on `ports` now.
pub fn count(ports: &[u16]) -> usize {
    let tables: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect();
    count_in(&tables, ports, &crate::diag::own_socket_inodes())
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
    fn parses_rows() {
        let line = row("0100007F:1F90", "0100007F:D431", "01", 42);
        let parsed = parse_row(&line).unwrap();
        assert_eq!(parsed.local, ("0100007F", 8080));
        assert_eq!(parsed.remote.1, 0xD431);
        assert_eq!(parsed.inode, 42);
        assert_eq!(parse_row("garbage"), None);
    }
}
