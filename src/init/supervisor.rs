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
//! An action that brings an input back (a reload's or a restart's new child, a connection
//! count) queues it, and the queue is empty before the next step of the turn: no recursion.
//!
//! With `--wait-for`, the child starts when the machine asks ([`Action::StartChild`]); until
//! then the dependencies are probed in step 3 like the readiness checks, by a checker of
//! their own. When the machine says lastcall exits, the `--on-exit` hooks run one after the
//! other before [`run`] returns ([`Supervisor::tell_sidecars`]), each bounded.

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};

use crate::cli::Config;
use crate::drain::eyes;
use crate::endpoint::checks::{self, Check, Checker, MAX_CHECKS};
use crate::endpoint::hooks::{self, Hook, Posted};
use crate::endpoint::http::{Endpoint, Happened, Snapshot};
use crate::endpoint::metrics::View;
use crate::init::child::{self, Spawner};
use crate::init::fatal::{Fatal, setup};
use crate::init::fd_limit;
use crate::init::reaper;
use crate::init::signals::{self, SIGCHLD, SIGKILL, Sig, Signals};
use crate::init::spawn;
use crate::init::status::ChildStatus;
use crate::machine::{Action, Fields, Input, Machine};
use crate::platform::logger::{self, Field};
use crate::platform::notify::{self, Said};
use crate::platform::oom::OomWatch;
use crate::platform::sockets::{self, Bound};
use crate::platform::termination;

const SIGNALS: Token = Token(0);
const LISTENER: Token = Token(2);
const CHILD_NOTIFY: Token = Token(3);
/// The most signals taken in one turn: a flood of them must not starve the rest of the loop
/// (the kernel keeps the others queued; the next turn comes at once).
const SIGNALS_PER_TURN: usize = 1024;
/// The most notify datagrams read in one turn: a flood costs bounded time and memory.
const NOTIFY_PER_TURN: usize = 64;
/// How often a turn that reaps nothing reads the OOM-kill counter at most: well inside the
/// second within which the machine lays a kill on a death.
const OOM_LOOK_EVERY: Duration = Duration::from_millis(10);
/// How often an awaited dependency is tried: the wait's granularity. A refused connect
/// costs microseconds, so a proxy that comes up is seen within this.
const WAIT_EVERY: Duration = Duration::from_millis(100);
/// How long one attempt at an awaited dependency may take before it counts as down.
const WAIT_ATTEMPT: Duration = Duration::from_secs(1);
/// How long a killed hook command or left-over probe may take to be reaped at the end.
const REAP_AT_END: Duration = Duration::from_secs(1);
const FIRST_CHECK: usize = 16;
const FIRST_DEP: usize = FIRST_CHECK + MAX_CHECKS;
const FIRST_CONNECTION: usize = FIRST_DEP + MAX_CHECKS;

/// Supervises `config.command` to the end; returns lastcall's exit code.
pub fn run(config: Config) -> Result<u8, Fatal> {
    let started = Instant::now();
    fd_limit::warn_if_short(&config, fd_limit::raise());
    // Bound before the child starts; failing to is fatal, like the endpoint's address.
    let sockets = sockets::bind_all(&config.sockets).map_err(Fatal::Sockets)?;
    let signals = Signals::open().map_err(setup("taking signals"))?;
    let poll = Poll::new().map_err(setup("creating the event loop"))?;
    poll.registry()
        .register(&mut SourceFd(&signals.fd()), SIGNALS, Interest::READABLE)
        .map_err(setup("watching signals"))?;
    let endpoint = listen(&config, poll.registry())?;
    let child_notify = private_notify(config.policy.notify, poll.registry())?;
    reaper::claim_orphans(config.subreaper);

    let held: Vec<_> = sockets.iter().map(Bound::fd).collect();
    let eyes = eyes::Eyes::new(config.drain_ports, &held);
    let given = child::Given {
        own_pid: std::process::id(),
        private_notify: child_notify.as_ref().map(|p| p.env_value.as_str()),
        lastcall_notifies: config.systemd.is_some(),
        sockets: &sockets,
        user: config.user,
    };
    let options = child::options(std::env::vars_os(), given);
    let spawner = Spawner::new(config.command, options, sockets);
    let ready = ReadyChecks {
        checks: config.checks,
        interval: config.policy.ready_interval,
        timeout: config.check_timeout,
    };
    let deps = Checker::new(config.wait, WAIT_EVERY, WAIT_ATTEMPT, FIRST_DEP, started);
    let restart_checks = ready.clone();
    let (machine, checker, later, oom, failed) = if deps.is_active() {
        let machine = Machine::waiting(config.policy, started);
        (machine, ready.checker(started, true), Some(ready), watch_oom(), None)
    } else {
        match spawner.spawn() {
            Ok(pid) => {
                log::debug!("started child {pid}");
                let oom = watch_oom();
                let machine = Machine::new(config.policy, pid, started);
                (machine, ready.checker(started, false), None, oom, None)
            }
            // Nothing to wait for, and the child cannot start: the machine ends the run.
            Err(e) => {
                let machine = Machine::waiting(config.policy, started);
                (machine, ready.checker(started, true), None, watch_oom(), Some(e))
            }
        }
    };
    let mut supervisor = Supervisor {
        machine,
        poll,
        events: Events::with_capacity(256),
        signals,
        more: Woke::default(),
        endpoint,
        checker,
        later,
        restart_checks,
        deps,
        awaited: Vec::new(),
        child_notify,
        systemd: config.systemd,
        eyes,
        spawner,
        oom,
        termination_log: config.termination_log,
        hooks: config.hooks,
        hook_timeout: config.hook_timeout,
        hooks_due: false,
    };
    let code = match failed {
        Some(e) => {
            let input = not_started(e);
            supervisor.feed(input);
            Ok(supervisor.machine.exit_code().unwrap_or(125))
        }
        None => supervisor.supervise(),
    };
    supervisor.finish();
    code.map_err(setup("waiting for events"))
}

/// The main child could not be started: said now, at the error level, and brought to the
/// machine, which ends the run with the status and termination message of [`Fatal::Spawn`].
fn not_started(e: spawn::SpawnError) -> Input {
    let fatal = Fatal::Spawn(e);
    log::error!("{fatal}");
    Input::NotStarted { code: fatal.exit_code(), why: fatal.termination_message() }
}

/// The `--ready-*` checks, to start once the child runs.
#[derive(Clone)]
struct ReadyChecks {
    checks: Vec<Check>,
    interval: Duration,
    timeout: Duration,
}

impl ReadyChecks {
    /// Their checker, started at `now`; with nothing to check while `held`.
    fn checker(&self, now: Instant, held: bool) -> Checker {
        let checks = if held { Vec::new() } else { self.checks.clone() };
        Checker::new(checks, self.interval, self.timeout, FIRST_CHECK, now)
    }
}

/// Starts counting the OOM kills in lastcall's memory cgroup: kills before this are not this
/// run's. Called once the child runs, not before: it is not worth delaying the child's start,
/// and a child killed within the microseconds before this read would only go unclaimed
/// (never be wrongly claimed).
fn watch_oom() -> OomWatch {
    let oom = OomWatch::start();
    match oom.cgroup() {
        Some(cgroup) => log::debug!(
            "watching OOM kills in {} (memory limit {})",
            cgroup.dir.display(),
            oom.limit_text().as_deref().unwrap_or("none")
        ),
        None => log::debug!("no memory cgroup to watch for OOM kills"),
    }
    oom
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

/// What woke the loop, sorted in one pass over the events.
#[derive(Default)]
struct Woke {
    signals: bool,
    /// A reaping pass is due without a SIGCHLD: the first turn's, for a child that exited
    /// before the loop began.
    reap: bool,
    notify: bool,
    /// Events on the awaited dependencies' sockets.
    deps: Vec<Token>,
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
    /// The readiness checks, held while lastcall waits for the dependencies.
    later: Option<ReadyChecks>,
    /// The readiness checks, started afresh for a restart's new child.
    restart_checks: ReadyChecks,
    /// The awaited dependencies' probes (none without `--wait-for`), and what the machine
    /// was last told of them.
    deps: Checker,
    awaited: Vec<Result<(), String>>,
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
    /// `--on-exit`, `--on-exit-exec`, and how long each may take.
    hooks: Vec<Hook>,
    hook_timeout: Duration,
    /// The machine asked for the hooks ([`Action::OnExit`]).
    hooks_due: bool,
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
            self.deps.deadline(),
        ]
        .into_iter()
        .flatten()
        .min();
        let carried = self.more.signals || self.more.notify || self.more.endpoint;
        let timeout = if carried {
            Some(Duration::ZERO)
        } else {
            deadline.map(|d| sleep_for(d.saturating_duration_since(Instant::now())))
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
                token if self.deps.owns(token) => woke.deps.push(token),
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
        // A turn that reaps reads the counter in its reaping pass; any other reads it here,
        // so that kills of processes lastcall never reaps (the app's own children) are
        // counted before a later death, not laid on it. At most every OOM_LOOK_EVERY: a
        // busy endpoint's turns do not each pay for a file read.
        let reaping = woke.reap || received.contains(&SIGCHLD);
        if !reaping && !self.oom.read_within(OOM_LOOK_EVERY, Instant::now()) {
            self.look_for_oom_kills();
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
        if self.deps.is_active() {
            let registry = self.poll.registry();
            for &token in &woke.deps {
                self.deps.on_event(registry, token);
            }
            self.deps.on_tick(registry, Instant::now());
            self.tell_awaited();
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
        let mut probed = false;
        for (pid, status) in reaped.exits {
            match self.checker.on_exit(pid, status) {
                checks::Exit::Mine(Some(report)) => self.feed(checks_input(report)),
                checks::Exit::Mine(None) => {}
                checks::Exit::NotMine => match self.deps.on_exit(pid, status) {
                    checks::Exit::Mine(_) => probed = true,
                    checks::Exit::NotMine => exits.push((pid, status)),
                },
            }
        }
        if probed {
            self.tell_awaited();
        }
        if collected > 0 {
            // The kernel's OOM killer kills with SIGKILL: only its counter tells. Read after
            // the deaths were collected (it counts the kills behind them) and before the
            // machine hears of them.
            self.look_for_oom_kills();
            self.feed(Input::Reaped { exits, children_left: reaped.children_left });
        }
    }

    /// What the awaited dependencies said, when it changed since the machine last heard.
    fn tell_awaited(&mut self) {
        let now: Vec<Result<(), String>> = self.deps.outcomes().collect();
        if now != self.awaited {
            self.awaited = now.clone();
            self.feed(Input::Awaited(now));
        }
    }

    /// The wait is over: the child starts, its readiness checks with it; the dependencies
    /// are not probed any more.
    fn start_child(&mut self) -> Option<Input> {
        self.deps.stop(self.poll.registry());
        match self.spawner.spawn() {
            Ok(pid) => {
                if let Some(ready) = self.later.take() {
                    self.checker = ready.checker(Instant::now(), false);
                }
                Some(Input::Started(pid))
            }
            Err(e) => Some(not_started(e)),
        }
    }

    /// The end of the run: probes still in flight are killed and reaped (nothing started
    /// under lastcall outlives it), then the hooks run if the machine asked for them.
    fn finish(&mut self) {
        self.deps.stop(self.poll.registry());
        self.checker.stop(self.poll.registry());
        self.wait_for_exit(None, Instant::now() + REAP_AT_END);
        if self.hooks_due {
            self.tell_sidecars();
        }
    }

    /// Runs the `--on-exit` hooks in order, each bounded by `--on-exit-timeout`, each logged
    /// with what it answered. What they answer changes nothing of lastcall's exit.
    fn tell_sidecars(&mut self) {
        let hooks = std::mem::take(&mut self.hooks);
        for hook in &hooks {
            let start = Instant::now();
            let deadline = start + self.hook_timeout;
            let took = || crate::show::duration(start.elapsed());
            match hook {
                Hook::Post { addr, host, path, .. } => {
                    match hooks::post(*addr, host, path, deadline) {
                        Posted::Answered(line) => log::info!("on-exit {hook}: {line} ({})", took()),
                        Posted::Gone => log::info!(
                            "on-exit {hook}: connection refused, the sidecar is already gone"
                        ),
                        Posted::TimedOut => log::warn!(
                            "on-exit {hook}: no answer within {}",
                            crate::show::duration(self.hook_timeout)
                        ),
                        Posted::Failed(why) => log::warn!("on-exit {hook}: {why} ({})", took()),
                    }
                }
                Hook::Exec { command } => {
                    let argv = ["/bin/sh".into(), "-c".into(), command.into()];
                    let pid = match spawn::spawn_check(&argv) {
                        Ok(pid) => pid,
                        Err(e) => {
                            log::warn!("on-exit {hook}: {e}");
                            continue;
                        }
                    };
                    match self.wait_for_exit(Some(pid), deadline) {
                        Some(ChildStatus::Exited(0)) => {
                            log::info!("on-exit {hook}: exited with status 0 ({})", took())
                        }
                        Some(status) => log::warn!("on-exit {hook}: {status} ({})", took()),
                        None => {
                            // Its own process group: the command and what it started.
                            let _ = signals::send(-pid.as_raw(), SIGKILL);
                            log::warn!(
                                "on-exit {hook}: not done within {}: killed",
                                crate::show::duration(self.hook_timeout)
                            );
                            self.wait_for_exit(Some(pid), Instant::now() + REAP_AT_END);
                        }
                    }
                }
            }
        }
    }

    /// Reaps until `pid` has ended (its status), or with `None` until no child is left, or
    /// until `deadline`. Only SIGCHLD matters here: other signals are taken and dropped, the
    /// end being near and bounded.
    fn wait_for_exit(
        &mut self,
        pid: Option<nix::unistd::Pid>,
        deadline: Instant,
    ) -> Option<ChildStatus> {
        loop {
            let reaped = reaper::reap();
            if let Some(pid) = pid {
                if let Some(&(_, status)) = reaped.exits.iter().find(|(p, _)| *p == pid) {
                    return Some(status);
                }
            } else if !reaped.children_left {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.poll.poll(&mut self.events, Some(sleep_for(left))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
            let mut received = Vec::new();
            self.signals.read(SIGNALS_PER_TURN, &mut received);
            for sig in received.into_iter().filter(|&s| s != SIGCHLD) {
                log::debug!("received {sig} at the end of the run: dropped");
            }
        }
    }

    /// Reads the OOM-kill counter; a rise goes to the machine with the time of the previous
    /// read, after which those kills happened.
    fn look_for_oom_kills(&mut self) {
        let (new, since) = self.oom.new_kills(Instant::now());
        if new > 0 {
            self.feed(Input::OomKills { new, since, limit: self.oom.limit() });
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
            Action::Signal { sig, to } => signals::deliver(sig, to),
            Action::SpawnNew => {
                return Some(match self.spawner.spawn() {
                    Ok(pid) => Input::Spawned(pid),
                    Err(e) => Input::SpawnFailed(e.to_string()),
                });
            }
            Action::FindAppPorts => return Some(Input::AppPorts(self.eyes.find_ports())),
            Action::ReadApp => {
                let own = self.endpoint.as_ref().map_or(0, Endpoint::accepted);
                return Some(Input::AppRead(self.eyes.read(Instant::now(), own)));
            }
            Action::StopChecks => self.checker.stop(self.poll.registry()),
            Action::StartChecks => {
                self.checker.stop(self.poll.registry());
                let mut fresh = self.restart_checks.checker(Instant::now(), false);
                fresh.take_over(&mut self.checker);
                self.checker = fresh;
            }
            Action::Systemd(message) => {
                if let Some(systemd) = self.systemd.as_ref() {
                    systemd.send(&message);
                }
            }
            Action::Log(level, line, fields) => {
                logger::log_fields(level, &line, &step_fields(fields))
            }
            Action::Ended(why) => termination::record(self.termination_log.as_deref(), &why),
            Action::StartChild => return self.start_child(),
            Action::OnExit => self.hooks_due = true,
        }
        None
    }
}

/// A step's data as its JSON log line's fields, in this order; durations in seconds.
fn step_fields(fields: Fields) -> Vec<(&'static str, Field)> {
    let Fields { phase, pid, signal, delay, grace, status, took } = fields;
    [
        ("phase", phase.map(|phase| Field::Text(phase.to_string()))),
        ("pid", pid.map(|pid| Field::Int(pid.as_raw().into()))),
        ("signal", signal.map(|sig| Field::Text(sig.to_string()))),
        ("delay_s", delay.map(Field::Secs)),
        ("grace_s", grace.map(Field::Secs)),
        ("status", status.map(|status| Field::Int(status.into()))),
        ("took_s", took.map(Field::Secs)),
    ]
    .into_iter()
    .filter_map(|(key, value)| Some((key, value?)))
    .collect()
}

/// How long to ask the poll to sleep when the next deadline is `left` away.
fn sleep_for(left: Duration) -> Duration {
    // epoll_wait may sleep past its timeout by 0.1% (the kernel's slack for it, up to
    // 100 ms), and mio rounds up to whole milliseconds: ask for that much less. The
    // turn that wakes early finds nothing due and waits out the rest, short enough to
    // be on time.
    let slack = left / 1000 + Duration::from_millis(1);
    if left > slack * 2 { left - slack } else { left }
}

fn checks_input(report: checks::Report) -> Input {
    Input::Checks { pass: report.pass, failing: report.failing }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_poll_is_asked_for_less_than_the_deadline_by_the_kernels_slack() {
        let ms = Duration::from_millis;
        // 0.1% and the millisecond mio may add, taken off.
        assert_eq!(sleep_for(Duration::from_secs(10)), ms(10_000 - 10 - 1));
        assert_eq!(sleep_for(ms(100)), ms(100) - Duration::from_micros(1_100));
        // Too short to shorten: asked as it is, and on time either way.
        assert_eq!(sleep_for(ms(2)), ms(2));
        assert_eq!(sleep_for(Duration::ZERO), Duration::ZERO);
        for left in [ms(3), ms(50), ms(999), Duration::from_secs(3600)] {
            let asked = sleep_for(left);
            assert!(asked <= left && left - asked <= left / 1000 + ms(1), "{left:?}: {asked:?}");
        }
    }

    #[test]
    fn a_steps_fields_are_its_log_lines_fields_in_order() {
        let fields = Fields {
            phase: Some("stopping"),
            pid: Some(nix::unistd::Pid::from_raw(7465)),
            signal: Some(Sig(libc::SIGTERM)),
            delay: Some(Duration::from_secs(5)),
            grace: Some(Duration::from_secs(20)),
            status: Some(143),
            took: Some(Duration::from_millis(5_004)),
        };
        assert_eq!(
            step_fields(fields),
            [
                ("phase", Field::Text("stopping".into())),
                ("pid", Field::Int(7465)),
                ("signal", Field::Text("SIGTERM".into())),
                ("delay_s", Field::Secs(Duration::from_secs(5))),
                ("grace_s", Field::Secs(Duration::from_secs(20))),
                ("status", Field::Int(143)),
                ("took_s", Field::Secs(Duration::from_millis(5_004))),
            ]
        );
        let some = Fields { delay: None, took: None, pid: None, ..fields };
        let keys: Vec<&str> = step_fields(some).into_iter().map(|(key, _)| key).collect();
        assert_eq!(keys, ["phase", "signal", "grace_s", "status"]);
        assert_eq!(step_fields(Fields::NONE), []);
    }
}
