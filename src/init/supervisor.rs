//! The event loop: one thread, one mio `Poll`, no periodic wake-ups. It decides nothing.
//!
//! [`run`] sets up and starts the child, then loops: [`Supervisor::wait`] sleeps until an
//! event or the earliest deadline and sorts what woke it in one pass over the events;
//! [`Supervisor::turn`] translates that into the machine's [`Input`]s; [`Supervisor::execute`]
//! carries out the [`Action`]s the machine returns. One turn goes in this order:
//!
//! 1. signals, as they arrived (SIGCHLD is a reaping pass): first, so that a request in the
//!    same turn already sees the drain;
//! 2. notify messages from the child (`--ready-notify`);
//! 3. readiness checks: their sockets' events, then due rounds and timeouts;
//! 4. the endpoint: accept, answer from a snapshot taken now, close what expired;
//! 5. a tick, for the machine's deadlines.
//!
//! An action that brings an input back (a reload's new child, a connection count) queues it,
//! and the queue is empty before the next step of the turn: no recursion.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};

use crate::cli::Config;
use crate::drain::eyes;
use crate::endpoint::checks::{self, Checker, MAX_CHECKS};
use crate::endpoint::http::{Endpoint, Happened, Snapshot};
use crate::endpoint::metrics::View;
use crate::init::reaper;
use crate::init::signals::{self, SIGCHLD, SIGKILL, Sig, Signals};
use crate::init::spawn::{self, SpawnError};
use crate::init::status::ChildStatus;
use crate::machine::{Action, Input, Machine, Target};
use crate::platform::notify::{self, Said};
use crate::platform::oom::OomWatch;
use crate::platform::sockets::{self, Bound};
use crate::platform::termination;
use crate::platform::users::Credentials;

const SIGNALS: Token = Token(0);
const LISTENER: Token = Token(2);
const CHILD_NOTIFY: Token = Token(3);
/// The most signals taken in one turn: a flood of them must not starve the rest of the loop
/// (the kernel keeps the others queued; the next turn comes at once).
const SIGNALS_PER_TURN: usize = 1024;
/// The most notify datagrams read in one turn: a flood costs bounded time and memory.
const NOTIFY_PER_TURN: usize = 64;
const FIRST_CHECK: usize = 16;
const FIRST_CONNECTION: usize = FIRST_CHECK + MAX_CHECKS;

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
}

impl Fatal {
    /// The termination message (`--termination-log`) for a run that never got going: `exec
    /// failed: /app/server: not found`, or what went wrong, as the log line says it.
    pub fn termination_message(&self) -> String {
        match self {
            Fatal::Spawn(SpawnError::Exec { program, errno }) => {
                let why = match errno {
                    nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR => "not found".into(),
                    nix::errno::Errno::EACCES => "permission denied".into(),
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

fn setup(what: &'static str) -> impl FnOnce(io::Error) -> Fatal {
    move |err| Fatal::Setup { what, err }
}

/// Supervises `config.command` to the end; returns lastcall's exit code.
pub fn run(mut config: Config) -> Result<u8, Fatal> {
    let started = Instant::now();
    let fd_limit = spawn::raise_fd_limit();
    warn_if_fds_are_short(&config, fd_limit);
    // Bound before the child starts; failing to is fatal, like the endpoint's address.
    let sockets = sockets::bind_all(&config.sockets).map_err(Fatal::Sockets)?;
    let signals = Signals::open().map_err(setup("taking signals"))?;
    let poll = Poll::new().map_err(setup("creating the event loop"))?;
    poll.registry()
        .register(&mut SourceFd(&signals.fd()), SIGNALS, Interest::READABLE)
        .map_err(setup("watching signals"))?;
    let endpoint = listen(&config, poll.registry())?;
    let child_notify = private_notify(config.policy.notify, poll.registry())?;
    let systemd = notify::Systemd::from_env();
    config.policy.systemd = systemd.is_some();
    config.policy.watchdog = systemd.as_ref().and_then(|s| s.watchdog_every);
    claim_orphans(config.subreaper);

    let held: Vec<_> = sockets.iter().map(Bound::fd).collect();
    let eyes = eyes::Eyes::new(config.drain_ports, &held, config.policy.drain_quiet);
    let options = child_options(child_notify.as_ref(), systemd.is_some(), &sockets, config.user);
    let spawner = Spawner { command: config.command, options, _sockets: sockets };
    let pid = spawner.spawn().map_err(Fatal::Spawn)?;
    log::debug!("started child {pid}");
    // Kills before this are not this run's. Read once the child runs, not before: it is not
    // worth delaying the child's start, and a child killed within the microseconds before
    // this read would only go unclaimed (never be wrongly claimed).
    let oom = OomWatch::start();
    match oom.cgroup() {
        Some(cgroup) => log::debug!(
            "watching OOM kills in {} (memory limit {})",
            cgroup.dir.display(),
            oom.limit_text().as_deref().unwrap_or("none")
        ),
        None => log::debug!("no memory cgroup to watch for OOM kills"),
    }
    let checker = Checker::new(
        config.checks,
        config.policy.ready_interval,
        config.check_timeout,
        FIRST_CHECK,
        started,
    );
    let mut supervisor = Supervisor {
        machine: Machine::new(config.policy, pid, started),
        poll,
        events: Events::with_capacity(256),
        signals,
        more: Woke::default(),
        endpoint,
        checker,
        child_notify,
        systemd,
        eyes,
        spawner,
        oom,
        termination_log: config.termination_log,
    };
    supervisor.supervise().map_err(setup("waiting for events"))
}

/// File descriptors lastcall needs besides its connections: stdio, the event loop, signals,
/// the listener and its spare, the notify sockets, checks, `--socket`s, with room to spare.
const FDS_BESIDES_CONNECTIONS: u64 = 64 + MAX_CHECKS as u64;

/// `--max-connections` beyond what the file-descriptor limit allows is said at start: past
/// the limit, new connections are turned away (or, out of descriptors, make room by eviction).
fn warn_if_fds_are_short(config: &Config, limit: u64) {
    let wanted = config.limits.max_connections as u64;
    let room = limit.saturating_sub(FDS_BESIDES_CONNECTIONS + config.sockets.len() as u64);
    if config.listen.is_some() && wanted > room {
        log::warn!(
            "--max-connections {wanted} is more than the file-descriptor limit allows ({limit}, \
             room for about {room} connections); raise the hard limit (ulimit -Hn) or lower \
             --max-connections"
        );
    }
}

fn listen(config: &Config, registry: &Registry) -> Result<Option<Endpoint>, Fatal> {
    let Some(addr) = config.listen else {
        return Ok(None);
    };
    let bind = |err| Fatal::Bind { addr, err };
    let mut endpoint = Endpoint::bind(addr, config.limits, FIRST_CONNECTION).map_err(bind)?;
    endpoint.register(registry, LISTENER).map_err(bind)?;
    Ok(Some(endpoint))
}

fn private_notify(wanted: bool, registry: &Registry) -> Result<Option<notify::Private>, Fatal> {
    if !wanted {
        return Ok(None);
    }
    let mut private = notify::Private::bind().map_err(setup("creating the notify socket"))?;
    registry
        .register(private.source(), CHILD_NOTIFY, Interest::READABLE)
        .map_err(setup("watching the notify socket"))?;
    Ok(Some(private))
}

/// Orphans of the child's descendants must come to lastcall to be reaped: as PID 1 they do
/// anyway; otherwise lastcall registers as a child subreaper.
fn claim_orphans(subreaper: bool) {
    if std::process::id() == 1 {
        return;
    }
    if !subreaper {
        log::warn!(
            "not PID 1 and --no-subreaper given: zombie reaping won't work for orphaned \
             descendants (they go to the real init)"
        );
        return;
    }
    if let Err(e) = reaper::become_subreaper() {
        log::warn!(
            "cannot become a child subreaper ({e}): orphaned descendants will not be reaped here"
        );
    }
}

/// The child's environment: lastcall's own, with NOTIFY_SOCKET pointing at the private socket
/// (`--ready-notify`) or removed when it is lastcall's to use (WATCHDOG_USEC and WATCHDOG_PID
/// with it: the watchdog is lastcall's then); the socket-activation variables
/// for `--socket`, or LISTEN_PID rewritten to the child's pid when systemd's fds were meant for
/// lastcall.
/// With `--user`, HOME is the user's (as gosu and su-exec set it), not root's.
fn child_options(
    private: Option<&notify::Private>,
    lastcall_notifies: bool,
    sockets: &[Bound],
    user: Option<Credentials>,
) -> spawn::Options {
    let inherited_activation =
        std::env::var("LISTEN_PID").is_ok_and(|pid| pid.trim() == std::process::id().to_string());
    let own_sockets = !sockets.is_empty();
    if private.is_none()
        && !lastcall_notifies
        && !inherited_activation
        && !own_sockets
        && user.is_none()
    {
        return spawn::Options::default();
    }
    let drop_notify = private.is_some() || lastcall_notifies;
    let mut env: Vec<OsString> = std::env::vars_os()
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
        env.push(format!("NOTIFY_SOCKET={}", private.env_value).into());
    }
    if let Some(user) = &user {
        env.push(user.home_env());
    }
    if own_sockets {
        for (key, value) in sockets::env(sockets) {
            env.push(format!("{key}={value}").into());
        }
    }
    spawn::Options {
        env: Some(env),
        own_pid_var: (inherited_activation || own_sockets).then_some("LISTEN_PID"),
        quiet: false,
        pass_fds: sockets.iter().map(Bound::fd).collect(),
        user,
    }
}

/// How a child is started: the first one, and a reload's new one, the same way.
struct Spawner {
    command: Vec<OsString>,
    options: spawn::Options,
    /// Held for the children: a reload's new child gets the same sockets.
    _sockets: Vec<Bound>,
}

impl Spawner {
    fn spawn(&self) -> Result<nix::unistd::Pid, SpawnError> {
        spawn::spawn(&self.command, &self.options)
    }
}

/// What woke the loop, sorted in one pass over the events.
#[derive(Default)]
struct Woke {
    signals: bool,
    /// A reaping pass is due without a SIGCHLD: the first turn's, for a child that exited
    /// before the loop began.
    reap: bool,
    notify: bool,
    /// Connections of the endpoint's with work left from their last turn.
    endpoint: bool,
    listener: bool,
    checks: Vec<Token>,
    /// Connections' tokens, and whether the peer closed its side.
    connections: Vec<(Token, bool)>,
}

struct Supervisor {
    machine: Machine,
    poll: Poll,
    events: Events,
    signals: Signals,
    /// Work a turn left for the next one (it stopped at its bound): that turn comes at once.
    more: Woke,
    endpoint: Option<Endpoint>,
    checker: Checker,
    child_notify: Option<notify::Private>,
    /// systemd's notify socket, when lastcall runs as a `Type=notify` service.
    systemd: Option<notify::Systemd>,
    /// The drain's view of the app's ports and connections.
    eyes: eyes::Eyes,
    spawner: Spawner,
    /// lastcall's memory cgroup's OOM-kill counter.
    oom: OomWatch,
    /// `--termination-log`: where the machine's last word goes.
    termination_log: Option<PathBuf>,
}

impl Supervisor {
    /// Turns until the machine says lastcall exits.
    fn supervise(&mut self) -> io::Result<u8> {
        // systemd hears at once that lastcall is up (and ready, without checks).
        self.feed(Input::Tick);
        let mut woke = Woke { reap: true, ..Woke::default() };
        loop {
            self.turn(&woke);
            if let Some(code) = self.machine.exit_code() {
                return Ok(code);
            }
            woke = self.wait()?;
        }
    }

    /// Sleeps until an event or the earliest deadline.
    fn wait(&mut self) -> io::Result<Woke> {
        let deadline = [
            self.machine.deadline(),
            self.endpoint.as_ref().and_then(Endpoint::deadline),
            self.checker.deadline(),
        ]
        .into_iter()
        .flatten()
        .min();
        let carried = self.more.signals || self.more.notify || self.more.endpoint;
        let timeout = if carried {
            Some(Duration::ZERO)
        } else {
            deadline.map(|d| {
                let left = d.saturating_duration_since(Instant::now());
                // epoll_wait may sleep past its timeout by 0.1% (the kernel's slack for it, up to
                // 100 ms), and mio rounds up to whole milliseconds: ask for that much less. The
                // turn that wakes early finds nothing due and waits out the rest, short enough to
                // be on time.
                let slack = left / 1000 + Duration::from_millis(1);
                if left > slack * 2 { left - slack } else { left }
            })
        };
        let mut woke = std::mem::take(&mut self.more);
        match self.poll.poll(&mut self.events, timeout) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(woke),
            other => other?,
        }
        let endpoint = self.endpoint.as_ref();
        for event in self.events.iter() {
            match event.token() {
                SIGNALS => woke.signals = true,
                LISTENER => woke.listener = true,
                CHILD_NOTIFY => woke.notify = true,
                token if self.checker.owns(token) => woke.checks.push(token),
                token if endpoint.is_some_and(|e| e.owns(token)) => {
                    woke.connections.push((token, event.is_read_closed()))
                }
                // A PID 1 logs and carries on.
                token => log::debug!("event for unknown token {token:?}"),
            }
        }
        Ok(woke)
    }

    /// One turn: what woke the loop becomes inputs, in the order of the module's doc.
    fn turn(&mut self, woke: &Woke) {
        let mut received: Vec<Sig> = Vec::new();
        if woke.signals {
            self.more.signals = self.signals.read(SIGNALS_PER_TURN, &mut received);
        }
        if woke.reap {
            self.reap();
        }
        for sig in received {
            if sig == SIGCHLD { self.reap() } else { self.feed(Input::Signal(sig)) }
        }
        if woke.notify {
            self.hear_the_child();
        }
        let registry = self.poll.registry();
        let mut reports = Vec::new();
        for &token in &woke.checks {
            reports.extend(self.checker.on_event(registry, token));
        }
        reports.extend(self.checker.on_tick(registry, Instant::now()));
        for report in reports {
            self.feed(checks_input(report));
        }
        for probe in self.serve(woke).probes {
            self.feed(Input::Probed(probe));
        }
        self.feed(Input::Tick);
    }

    /// One reaping pass: check commands to the checker, the rest to the machine.
    fn reap(&mut self) {
        let reaped = reaper::reap();
        let collected = reaped.exits.len();
        let mut exits = Vec::new();
        for (pid, status) in reaped.exits {
            match self.checker.on_exit(pid, status) {
                Some(report) => {
                    if let Some(report) = report {
                        self.feed(checks_input(report));
                    }
                }
                None => exits.push((pid, status)),
            }
        }
        if collected > 0 {
            // The kernel's OOM killer kills with SIGKILL: only its counter tells. Read now,
            // so that the machine knows before it hears of the deaths.
            if exits.iter().any(|(_, status)| *status == ChildStatus::Signaled(SIGKILL)) {
                let new = self.oom.new_kills();
                if new > 0 {
                    self.feed(Input::OomKills { new, limit: self.oom.limit() });
                }
            }
            self.feed(Input::Reaped { exits, children_left: reaped.children_left });
        }
    }

    /// The child's notify messages, each with the child of lastcall's it came from; at most
    /// [`NOTIFY_PER_TURN`] a turn.
    fn hear_the_child(&mut self) {
        let Some(private) = self.child_notify.as_mut() else {
            return;
        };
        let (heard, more) = private.receive(NOTIFY_PER_TURN);
        self.more.notify = more;
        for message in heard {
            let ready = message.said == Said::Ready;
            self.feed(Input::Notify { ready, from: message.under });
        }
    }

    /// The endpoint's turn: accept, answer, expire.
    fn serve(&mut self, woke: &Woke) -> Happened {
        let mut happened = Happened::default();
        let Some(endpoint) = self.endpoint.as_mut() else {
            return happened;
        };
        let registry = self.poll.registry();
        let now = Instant::now();
        let view = View { machine: &self.machine, checker: &self.checker, now };
        let snapshot =
            Snapshot { ready: self.machine.is_ready(), live: self.machine.is_live(), pages: &view };
        // Requests first: a connection with a complete request is answered before anything is
        // evicted to make room for a new one.
        if woke.endpoint {
            happened.add(endpoint.resume(registry, &snapshot, now));
        }
        for &(token, read_closed) in &woke.connections {
            happened.add(endpoint.on_event(registry, token, read_closed, &snapshot, now));
        }
        if woke.listener {
            endpoint.accept(registry, now);
        }
        endpoint.expire(registry, now);
        self.more.endpoint = endpoint.has_more();
        happened
    }

    /// Steps the machine with `input`, and with every input its actions bring back.
    fn feed(&mut self, input: Input) {
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            if input != Input::Tick {
                log::debug!("{input}");
            }
            for action in self.machine.step(input, Instant::now()) {
                queue.extend(self.execute(action));
            }
        }
    }

    /// Carries out one action; some bring an input back.
    fn execute(&mut self, action: Action) -> Option<Input> {
        match action {
            Action::Signal { sig, to } => deliver(sig, to),
            Action::SpawnNew => {
                return Some(match self.spawner.spawn() {
                    Ok(pid) => Input::Spawned(pid),
                    Err(e) => Input::SpawnFailed(e.to_string()),
                });
            }
            Action::FindAppPorts => return Some(Input::AppPorts(self.eyes.find_ports())),
            Action::ReadApp => return Some(Input::AppRead(self.eyes.read(Instant::now()))),
            Action::StopChecks => self.checker.stop(self.poll.registry()),
            Action::Systemd(message) => {
                if let Some(systemd) = self.systemd.as_ref() {
                    systemd.send(&message);
                }
            }
            Action::Log(level, line, fields) => {
                crate::platform::logger::log_fields(level, &line, &fields)
            }
            Action::Ended(why) => termination::record(self.termination_log.as_deref(), &why),
        }
        None
    }
}

fn checks_input(report: checks::Report) -> Input {
    Input::Checks { pass: report.pass, failing: report.failing }
}

fn deliver(sig: Sig, to: Target) {
    let result = match to {
        Target::Child(pid) => signals::send(pid.as_raw(), sig),
        Target::Group(pid) => {
            let group = signals::send(-pid.as_raw(), sig);
            // The child may have left its group (setsid, setpgid): it gets the signal too.
            match nix::unistd::getpgid(Some(pid)) {
                Ok(pgid) if pgid == pid => group,
                _ => signals::send(pid.as_raw(), sig),
            }
        }
        Target::Descendants => {
            reaper::signal_descendants(sig);
            Ok(())
        }
    };
    match result {
        Ok(()) => log::debug!("sent {sig} to {to}"),
        Err(e) => log::debug!("sending {sig} to {to} failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use nix::errno::Errno;

    use super::*;

    #[test]
    fn a_run_that_never_got_going_says_why_in_the_termination_message() {
        let exec = |errno| Fatal::Spawn(SpawnError::Exec { program: "/app/server".into(), errno });
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
    }
}
