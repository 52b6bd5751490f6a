//! The event loop: one thread, one mio `Poll`, no periodic wake-ups.
//!
//! Waiting ([`Supervisor::next_events`]) is kept apart from deciding (the state machine's
//! `step`) and doing ([`Supervisor::execute`]). The poll timeout is the machine's next
//! deadline, so an idle lastcall sleeps in `epoll_wait` until something happens.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use mio::{Events, Interest, Poll, Token};
use nix::errno::Errno;
use signal_hook_mio::v1_0::Signals;

use crate::http::{Endpoint, Limits};
use crate::machine::{Action, Input, Machine, Policy, Target};
use crate::metrics::{Counters, View};
use crate::reaper;
use crate::signals::{self, FaultSignals, Inherited, SIGCHLD, Sig};
use crate::spawn::{self, SpawnError};

const SIGNALS: Token = Token(0);
const FAULT_SIGNALS: Token = Token(1);
const LISTENER: Token = Token(2);
const FIRST_CONNECTION: usize = 3;

/// Everything `run` needs, validated.
pub struct Config {
    pub listen: Option<SocketAddr>,
    pub limits: Limits,
    pub policy: Policy,
    pub subreaper: bool,
    pub command: Vec<OsString>,
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
    let inherited = Inherited::record();
    signals::prepare_own_mask();
    let mut signals =
        Signals::new(signals::handled()).map_err(setup("installing signal handlers"))?;
    let poll = Poll::new().map_err(setup("creating the event loop"))?;
    let mut faults = FaultSignals::install().map_err(setup("installing signal handlers"))?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)
        .map_err(setup("watching signals"))?;
    poll.registry()
        .register(faults.source(), FAULT_SIGNALS, Interest::READABLE)
        .map_err(setup("watching signals"))?;
    let mut endpoint = match config.listen {
        Some(addr) => {
            let bind = |err| Fatal::Bind { addr, err };
            let mut endpoint =
                Endpoint::bind(addr, config.limits, FIRST_CONNECTION).map_err(bind)?;
            endpoint.register(poll.registry(), LISTENER).map_err(bind)?;
            Some(endpoint)
        }
        None => None,
    };
    claim_orphans(config.subreaper);

    let started = Instant::now();
    let pid = spawn::spawn(&config.command, &inherited).map_err(Fatal::Spawn)?;
    log::debug!("started child {pid}");
    let mut sup = Supervisor {
        machine: Machine::new(config.policy, pid, Instant::now()),
        counters: Counters::new(started),
        poll,
        signals,
        faults,
        endpoint: endpoint.take(),
    };
    // A child that exited before the loop started is collected here, not missed.
    if let Some(code) = sup.reap() {
        return Ok(code);
    }
    let mut events = Events::with_capacity(64);
    loop {
        sup.next_events(&mut events)
            .map_err(setup("waiting for events"))?;
        if let Some(code) = sup.handle_events(&events) {
            return Ok(code);
        }
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
            "not PID 1 and --no-subreaper given: orphaned descendants go to the real init, \
             and zombie reaping of them won't happen here"
        );
        return;
    }
    if let Err(e) = reaper::become_subreaper() {
        log::warn!(
            "cannot become a child subreaper ({e}): orphaned descendants will not be reaped here"
        );
    }
}

struct Supervisor {
    machine: Machine,
    counters: Counters,
    poll: Poll,
    signals: Signals,
    faults: FaultSignals,
    endpoint: Option<Endpoint>,
}

impl Supervisor {
    /// Sleeps until an event or the machine's next deadline.
    fn next_events(&mut self, events: &mut Events) -> io::Result<()> {
        let endpoint = self.endpoint.as_ref().and_then(Endpoint::deadline);
        let deadline = match (self.machine.deadline(), endpoint) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        // mio rounds a timeout up to whole milliseconds, so a deadline is never woken early.
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
        if events.iter().any(|e| e.token() == FAULT_SIGNALS) {
            pending.extend(self.faults.pending());
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
        if let Some(endpoint) = self.endpoint.as_mut() {
            let view = View {
                machine: &self.machine,
                counters: &self.counters,
                now,
            };
            let registry = self.poll.registry();
            for event in events.iter() {
                match event.token() {
                    SIGNALS | FAULT_SIGNALS => {}
                    LISTENER => endpoint.accept(registry, now),
                    token if endpoint.owns(token) => endpoint.on_event(registry, event, &view),
                    token => log::debug!("event for unknown token {}", token.0),
                }
            }
            endpoint.expire(registry, now);
            if endpoint.take_probed() {
                self.step(Input::Probed);
            }
        }
        self.step(Input::Tick)
    }

    /// One reaping pass, fed to the machine.
    fn reap(&mut self) -> Option<u8> {
        let reaped = reaper::reap(self.machine.child());
        let others_left = reaped.children_left;
        let mut code = None;
        self.counters.reaped += reaped.others;
        if reaped.others > 0 {
            code = self.step(Input::OthersReaped { others_left });
        }
        if let Some(status) = reaped.main {
            code = code.or(self.step(Input::ChildExited {
                status,
                others_left,
            }));
        }
        code
    }

    fn step(&mut self, input: Input) -> Option<u8> {
        let actions = self.machine.step(input, Instant::now());
        let mut exit = None;
        for action in actions {
            match action {
                Action::Signal { sig, to } => {
                    deliver(sig, to);
                    self.counters.forwarded(sig);
                }
                Action::Log(line) => log::info!("{line}"),
                Action::Exit(code) => exit = Some(code),
            }
        }
        exit
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
