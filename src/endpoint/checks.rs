//! Readiness checks of the app: TCP connect, HTTP GET, a command. All must pass for
//! `/readyz` to answer 200 (with the child's own `READY=1`, which the state machine weighs).
//!
//! Checks run inside the event loop without blocking it: sockets are non-blocking with
//! deadlines, and a command is a process like any other, reaped by the reaper and killed at
//! its timeout. A round of checks starts every `--ready-interval`; its result is known when
//! every check of the round has finished or timed out. The checker reports what the checks
//! say whenever that changes; what it means for the app is the state machine's to decide.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use nix::unistd::Pid;

use crate::init::signals::{self, SIGKILL};
use crate::init::spawn;
use crate::init::status::ChildStatus;

/// The most of an HTTP check's answer that is read: enough for the status line and headers.
const MAX_ANSWER: usize = 8 * 1024;
/// The most checks one lastcall runs (each has an event-loop token of its own).
pub const MAX_CHECKS: usize = 64;

/// One configured check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// `--ready-tcp HOST:PORT`: a connect succeeds.
    Tcp { text: String, addr: SocketAddr },
    /// `--ready-http URL`: a GET answers 2xx.
    Http { url: String, addr: SocketAddr, host: String, path: String },
    /// `--ready-exec CMD`: `sh -c CMD` exits 0.
    Exec { command: String },
}

impl Check {
    pub fn tcp(text: &str) -> Result<Check, String> {
        let addr = resolve(text.trim())?;
        Ok(Check::Tcp { text: text.trim().to_string(), addr })
    }

    /// Plain `http://HOST[:PORT][/PATH]`; the host is resolved once, now.
    pub fn http(url: &str) -> Result<Check, String> {
        let url = url.trim();
        if url.len() >= 8 && url[..8].eq_ignore_ascii_case("https://") {
            return Err("https is not supported: readiness checks use plain HTTP".to_string());
        }
        let rest = match url.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &url[7..],
            _ => return Err("expected a URL like http://127.0.0.1:8080/healthz".to_string()),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err("expected a URL like http://127.0.0.1:8080/healthz".to_string());
        }
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err("the path holds spaces or control characters".to_string());
        }
        let has_port = match authority.rfind(']') {
            Some(close) => authority[close..].contains(':'),
            None => authority.contains(':'),
        };
        let with_port = if has_port { authority.to_string() } else { format!("{authority}:80") };
        let addr = resolve(&with_port)?;
        Ok(Check::Http {
            url: url.to_string(),
            addr,
            host: authority.to_string(),
            path: path.to_string(),
        })
    }

    pub fn exec(command: &str) -> Result<Check, String> {
        if command.trim().is_empty() {
            return Err("the command is empty".to_string());
        }
        Ok(Check::Exec { command: command.to_string() })
    }
}

fn resolve(host_port: &str) -> Result<SocketAddr, String> {
    let mut addrs = host_port.to_socket_addrs().map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidInput => format!("expected HOST:PORT ({e})"),
        // Well formed, but the name server does not know the host (now: it is resolved once).
        _ => format!("cannot resolve {host_port} ({e})"),
    })?;
    addrs.next().ok_or_else(|| "the host name has no address".to_string())
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Tcp { text, .. } => write!(f, "--ready-tcp {text}"),
            Check::Http { url, .. } => write!(f, "--ready-http {url}"),
            Check::Exec { command } => write!(f, "--ready-exec '{command}'"),
        }
    }
}

/// The last result of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not run yet.
    Unknown,
    Pass,
    Fail(String),
}

/// A check in flight.
enum Probe {
    Connecting { stream: TcpStream },
    Writing { stream: TcpStream, request: Vec<u8>, sent: usize },
    Reading { stream: TcpStream, answer: Vec<u8> },
    Running { pid: Pid },
}

struct Slot {
    check: Check,
    probe: Option<Probe>,
    deadline: Option<Instant>,
    last: Outcome,
    /// The result of the round in progress, once known.
    this_round: Option<Outcome>,
}

/// What the checks say: whether all passed last time, and the first that did not, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub pass: bool,
    pub failing: Option<String>,
}

/// Whose a reaped process was, as [`Checker::on_exit`] tells it.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Not a check command: the machine's to hear of.
    NotMine,
    /// A check command, taken; what the checks say if that changed.
    Mine(Option<Report>),
}

pub struct Checker {
    slots: Vec<Slot>,
    first_token: usize,
    interval: Duration,
    timeout: Duration,
    /// What the loop was last told; `None` before the first report.
    reported: Option<Report>,
    /// Commands killed at their timeout, not reaped yet: theirs is no result any more.
    abandoned: Vec<Pid>,
    next_round: Option<Instant>,
    running: bool,
}

impl Checker {
    pub fn new(
        checks: Vec<Check>,
        interval: Duration,
        timeout: Duration,
        first_token: usize,
        now: Instant,
    ) -> Checker {
        let any = !checks.is_empty();
        Checker {
            slots: checks
                .into_iter()
                .map(|check| Slot {
                    check,
                    probe: None,
                    deadline: None,
                    last: Outcome::Unknown,
                    this_round: None,
                })
                .collect(),
            first_token,
            interval,
            timeout,
            reported: None,
            abandoned: Vec::new(),
            next_round: any.then_some(now),
            running: true,
        }
    }

    pub fn is_active(&self) -> bool {
        !self.slots.is_empty()
    }

    pub fn owns(&self, token: Token) -> bool {
        token.0 >= self.first_token && token.0 - self.first_token < self.slots.len()
    }

    /// Each check and its last result, for `/metrics` and `?verbose`.
    pub fn results(&self) -> impl Iterator<Item = (String, &Outcome)> {
        self.slots.iter().map(|s| (s.check.to_string(), &s.last))
    }

    /// What each check said at its last round, in order; not checked yet is a failure.
    pub fn outcomes(&self) -> impl Iterator<Item = Result<(), String>> + '_ {
        self.slots.iter().map(|s| match &s.last {
            Outcome::Pass => Ok(()),
            Outcome::Unknown => Err("no answer yet".to_string()),
            Outcome::Fail(reason) => Err(reason.clone()),
        })
    }

    /// The first failing check and why, if any.
    fn failing(&self) -> Option<String> {
        self.slots.iter().find_map(|s| match &s.last {
            Outcome::Pass => None,
            Outcome::Unknown => Some(format!("{}: not checked yet", s.check)),
            Outcome::Fail(reason) => Some(format!("{}: {reason}", s.check)),
        })
    }

    /// The next time the checker needs a turn.
    pub fn deadline(&self) -> Option<Instant> {
        if !self.running {
            return None;
        }
        let probes = self.slots.iter().filter_map(|s| s.deadline);
        // While a check is in flight the next round cannot start, even if it is due: its
        // time (in the past, when a check outlives --ready-interval) would spin the loop.
        let idle = self.slots.iter().all(|s| s.probe.is_none());
        probes.chain(self.next_round.filter(|_| idle)).min()
    }

    /// Stops checking (the drain began, or the child is gone): in-flight commands get
    /// SIGKILL, sockets are closed.
    /// Takes over the commands `old` abandoned, still to be reaped: their ends stay the
    /// checker's, not the machine's.
    pub fn take_over(&mut self, old: &mut Checker) {
        self.abandoned.append(&mut old.abandoned);
    }

    pub fn stop(&mut self, registry: &Registry) {
        self.running = false;
        self.next_round = None;
        for slot in &mut self.slots {
            if let Some(probe) = slot.probe.take() {
                self.abandoned.extend(close(probe, registry));
            }
            slot.deadline = None;
        }
    }

    /// Starts due rounds and times out late checks.
    pub fn on_tick(&mut self, registry: &Registry, now: Instant) -> Option<Report> {
        if !self.running {
            return None;
        }
        for slot in &mut self.slots {
            if slot.deadline.is_some_and(|d| d <= now) {
                if let Some(probe) = slot.probe.take() {
                    self.abandoned.extend(close(probe, registry));
                }
                slot.deadline = None;
                slot.this_round = Some(Outcome::Fail(format!(
                    "no answer within {}",
                    crate::show::duration(self.timeout)
                )));
            }
        }
        // The round that just timed out is concluded before the next one starts.
        let timed_out = self.conclude();
        if self.next_round.is_some_and(|t| t <= now) && self.slots.iter().all(|s| s.probe.is_none())
        {
            self.next_round = Some(now + self.interval);
            for (i, slot) in self.slots.iter_mut().enumerate() {
                let token = Token(self.first_token + i);
                match start(&slot.check, registry, token) {
                    Ok(probe) => {
                        slot.probe = Some(probe);
                        slot.deadline = Some(now + self.timeout);
                        slot.this_round = None;
                    }
                    Err(reason) => slot.this_round = Some(Outcome::Fail(reason)),
                }
            }
        }
        self.conclude().or(timed_out)
    }

    /// Readiness on a check's socket.
    pub fn on_event(&mut self, registry: &Registry, token: Token) -> Option<Report> {
        let slot = self.slots.get_mut(token.0.checked_sub(self.first_token)?)?;
        let probe = slot.probe.take()?;
        match advance(probe, slot, registry) {
            Ok(Some(probe)) => slot.probe = Some(probe),
            Ok(None) => {
                slot.deadline = None;
                slot.this_round = Some(Outcome::Pass);
            }
            Err(reason) => {
                slot.deadline = None;
                slot.this_round = Some(Outcome::Fail(reason));
            }
        }
        self.conclude()
    }

    /// A reaped process: if it is a check command of ours, its exit is taken.
    pub fn on_exit(&mut self, pid: Pid, status: ChildStatus) -> Exit {
        if let Some(i) = self.abandoned.iter().position(|&p| p == pid) {
            self.abandoned.swap_remove(i);
            return Exit::Mine(None);
        }
        let running =
            |s: &&mut Slot| matches!(s.probe, Some(Probe::Running { pid: p }) if p == pid);
        let Some(slot) = self.slots.iter_mut().find(running) else {
            return Exit::NotMine;
        };
        slot.probe = None;
        slot.deadline = None;
        slot.this_round = Some(match status {
            ChildStatus::Exited(0) => Outcome::Pass,
            other => Outcome::Fail(format!("the command {other}")),
        });
        Exit::Mine(self.conclude())
    }

    /// Once every check of the round has a result, takes them; what the checks say, if it
    /// changed since the last report.
    fn conclude(&mut self) -> Option<Report> {
        if self.slots.is_empty() {
            return None;
        }
        if self.slots.iter().all(|s| s.this_round.is_some()) {
            for slot in &mut self.slots {
                if let Some(outcome) = slot.this_round.take() {
                    slot.last = outcome;
                }
            }
        }
        let failing = self.failing();
        let report = Report { pass: failing.is_none(), failing };
        if self.reported.as_ref() == Some(&report) {
            return None;
        }
        self.reported = Some(report.clone());
        Some(report)
    }
}

fn start(check: &Check, registry: &Registry, token: Token) -> Result<Probe, String> {
    match check {
        Check::Tcp { addr, .. } | Check::Http { addr, .. } => {
            let mut stream = TcpStream::connect(*addr).map_err(|e| e.to_string())?;
            registry
                .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                .map_err(|e| e.to_string())?;
            Ok(Probe::Connecting { stream })
        }
        Check::Exec { command } => {
            let argv: Vec<OsString> = vec!["/bin/sh".into(), "-c".into(), command.into()];
            match spawn::spawn_check(&argv) {
                Ok(pid) => Ok(Probe::Running { pid }),
                Err(e) => Err(e.to_string()),
            }
        }
    }
}

/// Moves a socket check along. `Ok(None)`: it passed.
fn advance(probe: Probe, slot: &Slot, registry: &Registry) -> Result<Option<Probe>, String> {
    match probe {
        Probe::Connecting { stream } => {
            if let Some(e) = stream.take_error().map_err(|e| e.to_string())? {
                let _ = registry.deregister(&mut { stream });
                return Err(e.to_string());
            }
            // Not connected yet: the event was a hint.
            if stream.peer_addr().is_err() {
                return Ok(Some(Probe::Connecting { stream }));
            }
            match &slot.check {
                Check::Http { host, path, .. } => {
                    let request = format!(
                        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lastcall\r\nAccept: */*\r\nConnection: close\r\n\r\n"
                    );
                    let probe = Probe::Writing { stream, request: request.into_bytes(), sent: 0 };
                    advance(probe, slot, registry)
                }
                _ => {
                    let _ = registry.deregister(&mut { stream });
                    Ok(None)
                }
            }
        }
        Probe::Writing { mut stream, request, mut sent } => {
            while sent < request.len() {
                match stream.write(&request[sent..]) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok(Some(Probe::Writing { stream, request, sent }));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = registry.deregister(&mut stream);
                        return Err(e.to_string());
                    }
                }
            }
            advance(Probe::Reading { stream, answer: Vec::new() }, slot, registry)
        }
        Probe::Reading { mut stream, mut answer } => {
            let mut buf = [0u8; 2048];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        answer.extend_from_slice(&buf[..n]);
                        if status_of(&answer).is_some() || answer.len() >= MAX_ANSWER {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok(Some(Probe::Reading { stream, answer }));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = registry.deregister(&mut stream);
                        return Err(e.to_string());
                    }
                }
            }
            let _ = registry.deregister(&mut stream);
            match status_of(&answer) {
                Some(code) if (200..300).contains(&code) => Ok(None),
                Some(code) => Err(format!("status {code}")),
                None => Err("no HTTP answer".to_string()),
            }
        }
        Probe::Running { pid } => Ok(Some(Probe::Running { pid })),
    }
}

/// The status code, once the answer's head is complete.
fn status_of(answer: &[u8]) -> Option<u16> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(answer) {
        Ok(httparse::Status::Complete(_)) => response.code,
        _ => None,
    }
}

/// Ends a check in flight; returns the pid of a killed command, still to be reaped.
fn close(probe: Probe, registry: &Registry) -> Option<Pid> {
    match probe {
        Probe::Connecting { mut stream }
        | Probe::Writing { mut stream, .. }
        | Probe::Reading { mut stream, .. } => {
            let _ = registry.deregister(&mut stream);
            None
        }
        // Its own process group: the command and anything it started. Reaped as usual.
        Probe::Running { pid } => {
            let _ = signals::send(-pid.as_raw(), SIGKILL);
            Some(pid)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let Ok(Check::Http { addr, host, path, .. }) =
            Check::http("http://127.0.0.1:8080/healthz?x=1")
        else {
            panic!("valid URL rejected");
        };
        assert_eq!(
            (addr.port(), host.as_str(), path.as_str()),
            (8080, "127.0.0.1:8080", "/healthz?x=1")
        );
        let Ok(Check::Http { addr, path, .. }) = Check::http("HTTP://[::1]") else {
            panic!("valid URL rejected");
        };
        assert_eq!((addr.port(), path.as_str()), (80, "/"));
        assert!(Check::http("https://127.0.0.1/").unwrap_err().contains("https"));
        assert!(Check::http("127.0.0.1:80/").is_err());
        assert!(Check::http("http://").is_err());
        assert!(Check::http("http://user@127.0.0.1/").is_err());
        assert!(Check::tcp("127.0.0.1:5432").is_ok());
        assert!(Check::tcp("127.0.0.1").is_err());
        assert!(Check::exec("  ").is_err());
    }

    /// The pid of the command `checker` runs in its first slot.
    fn running(checker: &Checker) -> Pid {
        match checker.slots[0].probe {
            Some(Probe::Running { pid }) => pid,
            _ => panic!("no command running"),
        }
    }

    #[test]
    fn a_command_exit_is_taken_only_when_it_is_a_check_of_ours() {
        let poll = mio::Poll::new().unwrap();
        let now = Instant::now();
        let second = Duration::from_secs(1);
        let exec = |cmd| vec![Check::exec(cmd).unwrap()];
        let mut checker = Checker::new(exec("exit 3"), second, second, 16, now);
        let first = checker.on_tick(poll.registry(), now);
        assert!(first.is_some_and(|r| !r.pass), "not checked yet: failing");
        let pid = running(&checker);
        // Only this child: other tests' children are theirs to wait for.
        nix::sys::wait::waitpid(pid, None).unwrap();
        let other = Pid::from_raw(pid.as_raw() + 1_000_000);
        assert_eq!(checker.on_exit(other, ChildStatus::Exited(0)), Exit::NotMine);
        let failing = Some("--ready-exec 'exit 3': the command exited with status 3".to_string());
        let report = Report { pass: false, failing };
        assert_eq!(checker.on_exit(pid, ChildStatus::Exited(3)), Exit::Mine(Some(report)));
        assert_eq!(checker.on_exit(pid, ChildStatus::Exited(3)), Exit::NotMine, "taken once");

        // Stopped in flight: the command is killed, and its exit is still ours, with no word.
        let mut checker = Checker::new(exec("sleep 60"), second, second, 16, now);
        checker.on_tick(poll.registry(), now);
        let pid = running(&checker);
        checker.stop(poll.registry());
        nix::sys::wait::waitpid(pid, None).unwrap();
        assert_eq!(checker.on_exit(pid, ChildStatus::Signaled(SIGKILL)), Exit::Mine(None));
        assert_eq!(checker.on_exit(pid, ChildStatus::Signaled(SIGKILL)), Exit::NotMine);

        // A checker started afresh (a restart's) takes over what the old one abandoned.
        let mut old = Checker::new(exec("sleep 60"), second, second, 16, now);
        old.on_tick(poll.registry(), now);
        let pid = running(&old);
        old.stop(poll.registry());
        nix::sys::wait::waitpid(pid, None).unwrap();
        let mut fresh = Checker::new(exec("sleep 60"), second, second, 16, now);
        fresh.take_over(&mut old);
        assert_eq!(fresh.on_exit(pid, ChildStatus::Signaled(SIGKILL)), Exit::Mine(None));
        assert_eq!(old.on_exit(pid, ChildStatus::Signaled(SIGKILL)), Exit::NotMine);
    }

    #[test]
    fn status_line() {
        assert_eq!(status_of(b"HTTP/1.1 204 No Content\r\n\r\n"), Some(204));
        assert_eq!(status_of(b"HTTP/1.1 500 Oops\r\nX: y\r\n"), None, "head not complete");
        assert_eq!(status_of(b"garbage"), None);
    }
}
