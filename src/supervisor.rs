//! The event loop: one thread, one mio `Poll`, no periodic wake-ups.
//!
//! Waiting ([`Supervisor::next_events`]) is kept apart from deciding (the state machine's
//! `step`) and doing ([`Supervisor::execute`]). The poll timeout is the earliest deadline of
//! the machine, the endpoint's connections, the readiness checks and the systemd watchdog;
//! with none of those, an idle lastcall sleeps in `epoll_wait` until something happens.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use nix::errno::Errno;
use signal_hook_mio::v1_0::Signals;

use crate::checks::{Check, Checker, Verdict};
use crate::http::{Endpoint, Limits};
use crate::idle;
use crate::machine::{Action, Input, Machine, Phase, Policy, Target, show};
use crate::metrics::{Counters, View};
use crate::notify::{self, Said, Sender};
use crate::reaper;
use crate::signals::{self, BlockOnDrop, Inherited, RawSignals, SIGCHLD, Sig};
use crate::sockets::{self, Bound};
use crate::spawn::{self, SpawnError};

const SIGNALS: Token = Token(0);
const RAW_SIGNALS: Token = Token(1);
const LISTENER: Token = Token(2);
const CHILD_NOTIFY: Token = Token(3);
const FIRST_CHECK: usize = 16;
/// Room for this many readiness checks before the connections' tokens.
pub const MAX_CHECKS: usize = 64;
const FIRST_CONNECTION: usize = FIRST_CHECK + MAX_CHECKS;

/// Everything `run` needs, validated.
pub struct Config {
    pub listen: Option<SocketAddr>,
    pub limits: Limits,
    pub policy: Policy,
    pub readiness: Readiness,
    /// `--drain-idle-port`.
    pub drain_ports: Vec<u16>,
    /// `--socket`, bound before the child starts.
    pub sockets: Vec<Bound>,
    pub subreaper: bool,
    pub command: Vec<OsString>,
}

/// The readiness-check options.
pub struct Readiness {
    pub checks: Vec<Check>,
    pub notify: bool,
    pub interval: Duration,
    pub timeout: Duration,
    pub startup_timeout: Duration,
}

/// A failure that stops lastcall before or instead of supervising.
#[derive(Debug)]
pub enum Fatal {
    Spawn(SpawnError),
    Bind { addr: SocketAddr, err: io::Error },
    Setup { what: &'static str, err: io::Error },
}

impl Fatal {
    pub fn exit_code(&self) -> u8 {
        match self {
            Fatal::Spawn(e) => e.exit_code(),
            // lastcall itself failed, as `env` and `timeout` report it.
            Fatal::Bind { .. } | Fatal::Setup { .. } => 125,
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
            Fatal::Setup { what, err } => write!(f, "{what}: {err}"),
        }
    }
}

/// Supervises `config.command` to the end; returns lastcall's exit code.
pub fn run(config: Config) -> Result<u8, Fatal> {
    let setup = |what| move |err| Fatal::Setup { what, err };
    // Read before any handler is installed: the child gets exactly this back.
    Inherited::record();
    signals::prepare_own_mask();
    let mut signals =
        Signals::new(signals::handled()).map_err(setup("installing signal handlers"))?;
    let mut raw = RawSignals::install().map_err(setup("installing signal handlers"))?;
    // Declared after the plumbing, so dropped before it on an early return.
    let quiet = BlockOnDrop;
    let poll = Poll::new().map_err(setup("creating the event loop"))?;
    let registry = poll.registry();
    registry
        .register(&mut signals, SIGNALS, Interest::READABLE)
        .map_err(setup("watching signals"))?;
    registry
        .register(raw.source(), RAW_SIGNALS, Interest::READABLE)
        .map_err(setup("watching signals"))?;
    let endpoint = match config.listen {
        Some(addr) => {
            let bind = |err| Fatal::Bind { addr, err };
            let mut endpoint =
                Endpoint::bind(addr, config.limits, FIRST_CONNECTION).map_err(bind)?;
            endpoint.register(registry, LISTENER).map_err(bind)?;
            Some(endpoint)
        }
        None => None,
    };
    let mut child_notify = match config.readiness.notify {
        true => Some(notify::Private::bind().map_err(setup("creating the notify socket"))?),
        false => None,
    };
    if let Some(private) = child_notify.as_mut() {
        registry
            .register(private.source(), CHILD_NOTIFY, Interest::READABLE)
            .map_err(setup("watching the notify socket"))?;
    }
    let systemd = notify::Systemd::from_env();
    claim_orphans(config.subreaper);

    let options = child_options(child_notify.as_ref(), systemd.is_some(), &config.sockets);
    let started = Instant::now();
    let pid = spawn::spawn(&config.command, &options).map_err(Fatal::Spawn)?;
    log::debug!("started child {pid}");
    let now = Instant::now();
    let r = config.readiness;
    let interval = r.interval;
    let gated = !r.checks.is_empty() || r.notify;
    let mut machine = Machine::new(config.policy, pid, now);
    if gated {
        machine = machine.with_checks();
    }
    let mut sup = Supervisor {
        _quiet: quiet,
        checker: Checker::new(r.checks, r.notify, r.interval, r.timeout, FIRST_CHECK, now),
        startup_deadline: gated.then(|| now + r.startup_timeout),
        startup_timeout: r.startup_timeout,
        ever_ready: false,
        drain_ports: config.drain_ports,
        ready_interval: interval,
        command: config.command,
        options,
        _sockets: config.sockets,
        machine,
        counters: Counters::new(started),
        poll,
        signals,
        raw,
        endpoint,
        child_notify,
        systemd: systemd.map(|s| SystemdState {
            next_ping: s.watchdog_every.map(|d| now + d),
            s,
            ready_sent: false,
            last_phase: "",
        }),
    };
    sup.tell_systemd(now);
    // A child that exited before the loop started is collected here, not missed.
    let mut exit = sup.reap();
    let mut events = Events::with_capacity(256);
    while exit.is_none() {
        sup.next_events(&mut events).map_err(setup("waiting for events"))?;
        exit = sup.handle_events(&events);
    }
    // Systemd hears the last status too.
    sup.tell_systemd(Instant::now());
    Ok(exit.unwrap_or_default())
}

/// The child's environment: lastcall's own, with NOTIFY_SOCKET pointing at the private socket
/// (`--ready-notify`) or removed when it is lastcall's to use; the socket-activation variables
/// for `--socket`, or LISTEN_PID rewritten to the child's pid when systemd's fds were meant for
/// lastcall.
fn child_options(
    private: Option<&notify::Private>,
    lastcall_notifies: bool,
    sockets: &[Bound],
) -> spawn::Options {
    let inherited_activation =
        std::env::var("LISTEN_PID").is_ok_and(|pid| pid.trim() == std::process::id().to_string());
    let own_sockets = !sockets.is_empty();
    if private.is_none() && !lastcall_notifies && !inherited_activation && !own_sockets {
        return spawn::Options::default();
    }
    let drop_notify = private.is_some() || lastcall_notifies;
    let mut env: Vec<OsString> = std::env::vars_os()
        .filter(|(key, _)| {
            let listen = key == "LISTEN_PID"
                || (own_sockets && (key == "LISTEN_FDS" || key == "LISTEN_FDNAMES"));
            !(key == "NOTIFY_SOCKET" && drop_notify)
                && !(listen && (own_sockets || inherited_activation))
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
        user: None,
    }
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

struct SystemdState {
    s: notify::Systemd,
    next_ping: Option<Instant>,
    ready_sent: bool,
    last_phase: &'static str,
}

struct Supervisor {
    /// First, so that it drops first: see [`BlockOnDrop`].
    _quiet: BlockOnDrop,
    machine: Machine,
    counters: Counters,
    checker: Checker,
    /// When an app that never became ready is reported as such (once).
    startup_deadline: Option<Instant>,
    startup_timeout: Duration,
    ever_ready: bool,
    drain_ports: Vec<u16>,
    ready_interval: Duration,
    /// How a reload starts a new child: as the first one.
    command: Vec<OsString>,
    options: spawn::Options,
    /// Held for the children: a reload's new child gets the same sockets.
    _sockets: Vec<Bound>,
    poll: Poll,
    signals: Signals,
    raw: RawSignals,
    endpoint: Option<Endpoint>,
    child_notify: Option<notify::Private>,
    systemd: Option<SystemdState>,
}

impl Supervisor {
    /// Sleeps until an event or the earliest deadline.
    fn next_events(&mut self, events: &mut Events) -> io::Result<()> {
        let deadline = [
            self.machine.deadline(),
            self.endpoint.as_ref().and_then(Endpoint::deadline),
            self.checker.deadline(),
            self.startup_deadline,
            self.systemd.as_ref().and_then(|s| s.next_ping),
            self.settle_deadline(),
        ]
        .into_iter()
        .flatten()
        .min();
        let timeout = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            // epoll_wait may sleep past its timeout by 0.1% (the kernel's slack for it, up to
            // 100 ms), and mio rounds up to whole milliseconds: ask for that much less. The
            // turn that wakes early finds nothing due and waits out the rest, short enough to
            // be on time.
            let slack = left / 1000 + Duration::from_millis(1);
            if left > slack * 2 { left - slack } else { left }
        });
        match self.poll.poll(events, timeout) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            other => other,
        }
    }

    /// Handles one batch of events; `Some(code)` when lastcall should exit.
    fn handle_events(&mut self, events: &Events) -> Option<u8> {
        // Signals first, so that a request in the same batch already sees the drain.
        let mut pending: Vec<Sig> = Vec::new();
        if events.iter().any(|e| e.token() == SIGNALS) {
            pending.extend(self.signals.pending().map(Sig));
        }
        if events.iter().any(|e| e.token() == RAW_SIGNALS) {
            pending.extend(self.raw.pending());
        }
        for sig in pending {
            let code = if sig == SIGCHLD {
                self.reap()
            } else {
                log::debug!("received {sig}");
                self.counters.received(sig);
                self.step(Input::Signal(sig))
            };
            if code.is_some() {
                return code;
            }
        }
        let now = Instant::now();
        let mut verdicts = Vec::new();
        let mut new_ready = false;
        let registry = self.poll.registry();
        for event in events.iter() {
            match event.token() {
                SIGNALS | RAW_SIGNALS | LISTENER => {}
                CHILD_NOTIFY => {
                    let messages = self.child_notify.as_mut().map(|n| n.receive());
                    for (said, sender) in messages.unwrap_or_default() {
                        // A reload's new child speaks for itself; an old one being stopped
                        // (STOPPING=1) does not speak for the app any more. A sender that is
                        // gone is taken for the new child during a reload, as the old one
                        // was ready already.
                        let new = self.machine.starting().map(|(pid, _)| pid);
                        let main = self.machine.child();
                        let under = |root: Option<nix::unistd::Pid>| match sender {
                            Sender::Pid(pid) => root.is_some_and(|r| reaper::descends_from(pid, r)),
                            Sender::Gone => root.is_some(),
                        };
                        if under(new) {
                            new_ready |= said == Said::Ready;
                        } else if under(main) {
                            verdicts.push(self.checker.on_notify(said == Said::Ready));
                        }
                    }
                }
                token if self.checker.owns(token) => {
                    verdicts.push(self.checker.on_event(registry, token))
                }
                _ => {}
            }
        }
        verdicts.push(self.checker.on_tick(registry, now));
        for verdict in verdicts {
            self.take_verdict(verdict, now);
        }
        let registry = self.poll.registry();
        if let Some(endpoint) = self.endpoint.as_mut() {
            let view = View {
                machine: &self.machine,
                counters: &self.counters,
                checker: &self.checker,
                now,
            };
            for event in events.iter() {
                match event.token() {
                    LISTENER => endpoint.accept(registry, now),
                    token if endpoint.owns(token) => endpoint.on_event(registry, event, &view),
                    _ => {}
                }
            }
            endpoint.expire(registry, now);
            if endpoint.take_probed() {
                self.step(Input::Probed);
            }
        }
        if self.startup_deadline.is_some_and(|t| t <= now) {
            self.startup_deadline = None;
            if !self.ever_ready && matches!(self.machine.phase(), Phase::Running { .. }) {
                log::warn!(
                    "the app is not ready {} after start ({}); it keeps running, unready",
                    show(self.startup_timeout),
                    self.checker.failing().unwrap_or_default()
                );
            }
        }
        // Without --ready-notify, a reload's new child is ready once it has lived through a
        // readiness interval with the checks passing (they cannot tell the two children
        // apart on a shared socket; the notify protocol can).
        if self.settle_deadline().is_some_and(|t| t <= now) && self.machine.is_ready() {
            new_ready = true;
        }
        if new_ready {
            let code = self.step(Input::NewReady);
            if code.is_some() {
                return code;
            }
        }
        let code = self.step(Input::Tick);
        self.tell_systemd(now);
        code
    }

    /// Feeds a change of the checks' verdict to the machine, logging it once.
    fn take_verdict(&mut self, verdict: Verdict, now: Instant) {
        let Verdict::Changed(ready, reason) = verdict else {
            return;
        };
        if ready && !self.ever_ready {
            let took = now.saturating_duration_since(self.counters.started);
            log::info!("the app is ready ({} after start)", show(took));
            self.ever_ready = true;
        } else if ready {
            log::info!("the app is ready again");
        } else {
            log::info!("the app is not ready: {}", reason.unwrap_or_default());
        }
        self.step(Input::AppReady(ready));
    }

    /// One reaping pass: the main child to the machine, check commands to the checker.
    fn reap(&mut self) -> Option<u8> {
        let reaped = reaper::reap();
        let others_left = reaped.children_left;
        let main = self.machine.child();
        let mut main_status = None;
        let mut others = 0;
        let now = Instant::now();
        for (pid, status) in reaped.exits {
            if Some(pid) == main {
                main_status = Some(status);
                continue;
            }
            others += 1;
            if self.machine.claims(pid) {
                log::debug!("reaped child {pid} of a reload, which {status}");
                self.step(Input::Exited { pid, status });
            } else if let Some(verdict) = self.checker.on_exit(pid, status) {
                self.take_verdict(verdict, now);
            } else {
                log::debug!("reaped process {pid}, which {status}");
                self.counters.reaped += 1;
            }
        }
        let mut code = None;
        if others > 0 {
            code = self.step(Input::OthersReaped { others_left });
        }
        if let Some(status) = main_status {
            code = code.or(self.step(Input::ChildExited { status, others_left }));
        }
        code
    }

    fn step(&mut self, input: Input) -> Option<u8> {
        let was_running = matches!(self.machine.phase(), Phase::Running { .. });
        let actions = self.machine.step(input, Instant::now());
        if was_running && !matches!(self.machine.phase(), Phase::Running { .. }) {
            // Readiness no longer matters, and a check must not hold a connection open
            // while the app's connections are counted.
            self.checker.stop(self.poll.registry());
        }
        let mut exit = None;
        for action in actions {
            match action {
                Action::Signal { sig, to } => {
                    deliver(sig, to);
                    self.counters.forwarded(sig);
                }
                Action::SpawnNew => {
                    let input = match spawn::spawn(&self.command, &self.options) {
                        Ok(pid) => {
                            log::debug!("started new child {pid}");
                            Input::Spawned(pid)
                        }
                        Err(e) => {
                            log::warn!("reload: {e}");
                            Input::SpawnFailed
                        }
                    };
                    exit = exit.or(self.step(input));
                }
                Action::CountConnections => {
                    let n = idle::count(&self.drain_ports);
                    exit = exit.or(self.step(Input::Connections(n)));
                }
                Action::Log(line) => log::info!("{line}"),
                Action::Exit(code) => exit = Some(code),
            }
        }
        exit
    }

    /// When a reload's new child counts as ready without the notify protocol.
    fn settle_deadline(&self) -> Option<Instant> {
        if self.child_notify.is_some() {
            return None;
        }
        self.machine.starting().map(|(_, since)| since + self.ready_interval)
    }

    /// READY=1 when /readyz would first answer 200, STOPPING=1 when the drain starts,
    /// STATUS= at each phase change, and the watchdog ping while the child lives.
    fn tell_systemd(&mut self, now: Instant) {
        let Some(sd) = self.systemd.as_mut() else {
            return;
        };
        let phase = self.machine.phase();
        if !sd.ready_sent && self.machine.is_ready() {
            sd.s.send("READY=1\nSTATUS=running, ready");
            sd.ready_sent = true;
            sd.last_phase = phase.name();
        }
        if phase.name() != sd.last_phase {
            if sd.last_phase == "running" {
                // Once, when lastcall starts to go down, whatever the reason.
                sd.s.send("STOPPING=1");
            }
            let status = match phase {
                Phase::Running { .. } if !self.machine.is_ready() => {
                    "STATUS=running, waiting for the app to be ready".to_string()
                }
                Phase::Running { .. } => "STATUS=running, ready".to_string(),
                Phase::Draining { .. } => {
                    "STATUS=draining: unready, waiting out the preStop delay".to_string()
                }
                Phase::Stopping { .. } => {
                    "STATUS=stopping: stop signal sent, waiting for the child".to_string()
                }
                Phase::Killing { .. } => {
                    "STATUS=killing: grace period over, SIGKILL sent".to_string()
                }
                Phase::Reaping { .. } => {
                    "STATUS=child exited; stopping the processes it left".to_string()
                }
                Phase::Exited { code } => format!("STATUS=exiting with {code}"),
            };
            sd.s.send(&status);
            sd.last_phase = phase.name();
        }
        if let Some(at) = sd.next_ping.filter(|&at| at <= now) {
            if self.machine.is_live() {
                sd.s.send("WATCHDOG=1");
            }
            let every = sd.s.watchdog_every.unwrap_or(Duration::from_secs(1));
            // Skip missed pings rather than bursting them.
            sd.next_ping = Some((at + every).max(now + every / 2));
        }
    }
}

fn deliver(sig: Sig, to: Target) {
    let result = match to {
        Target::Child(pid) => signals::send(pid.as_raw(), sig),
        // The child may have left its group (setsid, setpgid): then it alone gets the signal.
        Target::Group(pid) => match signals::send(-pid.as_raw(), sig) {
            Err(Errno::ESRCH) => signals::send(pid.as_raw(), sig),
            other => other,
        },
        Target::Descendants => {
            reaper::signal_descendants(sig);
            Ok(())
        }
    };
    match result {
        Ok(()) => log::debug!("sent {sig} to {to:?}"),
        Err(e) => log::debug!("sending {sig} to {to:?} failed: {e}"),
    }
}
