//! The supervisor's decisions: a pure state machine, no syscalls, no clock reads.
//!
//! The event loop feeds it [`Input`]s with the current time and carries out the [`Action`]s it
//! returns. Everything about *when* to signal whom lives here, so it is tested with an
//! injected clock and no sleeping. The phase carries its own data: a pid only exists in the
//! phases where the child is alive.

use std::fmt;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::signals::{self, Class, SIGKILL, SIGTERM, Sig};
use crate::status::ChildStatus;

/// The preStop delay used by `--prestop-delay auto` when a load balancer may be routing to us.
pub const AUTO_PRESTOP: Duration = Duration::from_secs(5);

/// `--prestop-delay`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Prestop {
    Fixed(Duration),
    Auto,
}

/// What the options say about stopping; fixed for the whole run.
#[derive(Clone, Debug)]
pub struct Policy {
    pub prestop: Prestop,
    pub grace: Duration,
    /// `--stop-signal`; `None`: pass on the signal that started the drain (SIGTERM from
    /// `docker stop` and the kubelet, SIGINT from Ctrl-C), as the child would see it without
    /// lastcall.
    pub stop_signal: Option<Sig>,
    /// Signal the child's whole process group, not just the child.
    pub group: bool,
    pub success_exit: Vec<u8>,
    /// KUBERNETES_SERVICE_HOST was set at start-up.
    pub in_kubernetes: bool,
    /// `--drain-idle-port` was given: the preStop phase ends early once the app's
    /// connections are gone and `drain_min` has passed.
    pub drain_idle: bool,
    pub drain_min: Duration,
    /// `--reload-signal` (only with `--socket`): start a new child, then drain the old one.
    pub reload_signal: Option<Sig>,
    /// How long a new child may take to become ready before the reload counts as failed.
    pub startup_timeout: Duration,
}

#[cfg(test)]
impl Machine {
    /// The command line's defaults, child pid 42, started at `t0`, for tests.
    pub fn for_tests(t0: Instant) -> Machine {
        Machine::new(Policy::for_tests(), Pid::from_raw(42), t0)
    }
}

#[cfg(test)]
impl Policy {
    /// The command line's defaults, for tests.
    pub fn for_tests() -> Policy {
        Policy {
            prestop: Prestop::Fixed(Duration::from_secs(5)),
            grace: Duration::from_secs(20),
            stop_signal: None,
            group: false,
            success_exit: vec![],
            in_kubernetes: false,
            drain_idle: false,
            drain_min: Duration::from_secs(1),
            reload_signal: None,
            startup_timeout: Duration::from_secs(60),
        }
    }
}

/// How often the app's connections are counted during an idle-aware drain.
pub const COUNT_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    /// The child runs; `/readyz` is 200.
    Running { pid: Pid, since: Instant },
    /// Unready, waiting out the preStop delay so that load balancers stop routing; with
    /// `--drain-idle-port`, the app's connections are counted at `count_at`.
    Draining { pid: Pid, since: Instant, until: Instant, count_at: Option<Instant> },
    /// The stop signal was sent; SIGKILL at `deadline`.
    Stopping { pid: Pid, since: Instant, deadline: Instant },
    /// SIGKILL was sent; waiting for the child to be reaped.
    Killing { pid: Pid, since: Instant },
    /// The child is gone but other processes under lastcall remain: they were sent the stop
    /// signal, and get SIGKILL at `kill_at` (`None`: already sent).
    Reaping { status: ChildStatus, since: Instant, kill_at: Option<Instant> },
    /// Nothing is left; lastcall exits with `code`.
    Exited { code: u8 },
}

impl Phase {
    /// Every phase's name, for `/metrics` (one gauge each).
    pub const NAMES: [&'static str; 6] =
        ["running", "draining", "stopping", "killing", "reaping", "exited"];

    pub fn name(&self) -> &'static str {
        let i = match self {
            Phase::Running { .. } => 0,
            Phase::Draining { .. } => 1,
            Phase::Stopping { .. } => 2,
            Phase::Killing { .. } => 3,
            Phase::Reaping { .. } => 4,
            Phase::Exited { .. } => 5,
        };
        Phase::NAMES[i]
    }

    /// When the phase began (`None` for the last one, which lasts no time).
    pub fn since(&self) -> Option<Instant> {
        match *self {
            Phase::Running { since, .. }
            | Phase::Draining { since, .. }
            | Phase::Stopping { since, .. }
            | Phase::Killing { since, .. }
            | Phase::Reaping { since, .. } => Some(since),
            Phase::Exited { .. } => None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Input {
    /// lastcall received a signal (never SIGCHLD: that is the reaper's).
    Signal(Sig),
    /// The main child was reaped; `others_left` says whether lastcall still has children.
    ChildExited { status: ChildStatus, others_left: bool },
    /// Other processes were reaped.
    OthersReaped { others_left: bool },
    /// A reload's new child was started.
    Spawned(Pid),
    /// A reload's new child could not be started.
    SpawnFailed,
    /// A reload's new child is ready.
    NewReady,
    /// A child other than the main one that the machine [claims](Machine::claims) was reaped:
    /// a reload's new child, or an old one being stopped.
    Exited { pid: Pid, status: ChildStatus },
    /// `/readyz` was requested (it makes `--prestop-delay auto` choose a delay).
    Probed,
    /// The readiness checks of the app now pass (or fail).
    AppReady(bool),
    /// The app's established connections on the `--drain-idle-port` ports, as counted.
    Connections(usize),
    /// Time passed; a deadline may be due.
    Tick,
}

/// Whom a signal goes to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Target {
    Child(Pid),
    /// The child's process group, whose id is the child's pid.
    Group(Pid),
    /// Every process still under lastcall after the child is gone.
    Descendants,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Action {
    Signal {
        sig: Sig,
        to: Target,
    },
    /// Count the app's connections and report them as [`Input::Connections`].
    CountConnections,
    /// Start a new child on the same sockets; report it as [`Input::Spawned`] or
    /// [`Input::SpawnFailed`].
    SpawnNew,
    /// A step of the shutdown worth telling the operator (logged at info).
    Log(String),
    Exit(u8),
}

pub struct Machine {
    policy: Policy,
    phase: Phase,
    probed: bool,
    /// The readiness checks pass (true when there are none).
    app_ready: bool,
    /// The app's connection count last reported, to log it as it falls.
    connections: Option<usize>,
    /// A reload's new child, while it starts: (pid, started, deadline to be ready).
    starting: Option<(Pid, Instant, Instant)>,
    /// A reload signal arrived during a reload: one more reload follows it.
    reload_queued: bool,
    /// Children being stopped after a reload (old ones, or new ones that failed), and when
    /// they get SIGKILL (`None`: sent).
    retiring: Vec<(Pid, Option<Instant>)>,
    reloads: u64,
    reload_failures: u64,
    /// SIGTERM/SIGINT received so far: the first drains, the second hurries, the third kills.
    drain_signals: u32,
    drain_started: Option<Instant>,
    /// The signal that started the drain.
    trigger: Option<Sig>,
    /// When the stop signal was sent.
    stop_sent: Option<Instant>,
    /// The last shutdown's preStop phase and grace phase, once each is over.
    last_drain: Option<Duration>,
    last_grace: Option<Duration>,
}

impl Machine {
    pub fn new(policy: Policy, pid: Pid, now: Instant) -> Machine {
        Machine {
            policy,
            phase: Phase::Running { pid, since: now },
            probed: false,
            app_ready: true,
            connections: None,
            starting: None,
            reload_queued: false,
            retiring: Vec::new(),
            reloads: 0,
            reload_failures: 0,
            drain_signals: 0,
            drain_started: None,
            trigger: None,
            stop_sent: None,
            last_drain: None,
            last_grace: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The last shutdown's preStop phase (drain start to stop signal) and grace phase (stop
    /// signal to the child's exit), once each is over.
    pub fn last_shutdown(&self) -> (Option<Duration>, Option<Duration>) {
        (self.last_drain, self.last_grace)
    }

    /// Starts unready until the readiness checks first pass (when there are checks).
    pub fn with_checks(mut self) -> Machine {
        self.app_ready = false;
        self
    }

    /// The app's connections at the last count of an idle-aware drain.
    pub fn connections(&self) -> Option<usize> {
        self.connections
    }

    /// What `/readyz` answers: ready while the checks pass, until the drain starts.
    pub fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Running { .. }) && self.app_ready
    }

    /// What `/livez` answers: the child is alive, drain or not.
    pub fn is_live(&self) -> bool {
        self.child().is_some()
    }

    /// When the machine next wants a [`Input::Tick`]; the event loop's poll timeout.
    pub fn deadline(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::Draining { until, count_at, .. } => {
                Some(count_at.map_or(until, |c| c.min(until)))
            }
            Phase::Stopping { deadline, .. } => Some(deadline),
            Phase::Reaping { kill_at, .. } => kill_at,
            _ => None,
        };
        let starting = self.starting.map(|(_, _, deadline)| deadline);
        let retiring = self.retiring.iter().filter_map(|(_, at)| *at).min();
        [phase, starting, retiring].into_iter().flatten().min()
    }

    /// A reload's new child while it starts, and when it was started.
    pub fn starting(&self) -> Option<(Pid, Instant)> {
        self.starting.map(|(pid, since, _)| (pid, since))
    }

    /// Whether `pid` is a reload's new or old child (not the main child).
    pub fn claims(&self, pid: Pid) -> bool {
        self.starting.is_some_and(|(p, ..)| p == pid)
            || self.retiring.iter().any(|(p, _)| *p == pid)
    }

    /// Reloads done, and reloads that failed.
    pub fn reload_counts(&self) -> (u64, u64) {
        (self.reloads, self.reload_failures)
    }

    /// The main child's pid while it is alive.
    pub fn child(&self) -> Option<Pid> {
        match self.phase {
            Phase::Running { pid, .. }
            | Phase::Draining { pid, .. }
            | Phase::Stopping { pid, .. }
            | Phase::Killing { pid, .. } => Some(pid),
            Phase::Reaping { .. } | Phase::Exited { .. } => None,
        }
    }

    pub fn step(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Signal(sig) => self.on_signal(sig, now, &mut out),
            Input::ChildExited { status, others_left } => {
                self.on_child_exit(status, others_left, now, &mut out)
            }
            Input::OthersReaped { others_left } => self.on_others_reaped(others_left, &mut out),
            Input::Probed => self.probed = true,
            Input::AppReady(ready) => self.app_ready = ready,
            Input::Connections(n) => self.on_connections(n, now, &mut out),
            Input::Tick => {
                self.on_tick(now, &mut out);
                self.reload_tick(now, &mut out);
            }
            Input::Spawned(pid) => {
                self.starting = Some((pid, now, now + self.policy.startup_timeout));
            }
            Input::SpawnFailed => self.reload_failed("could not be started", now, &mut out),
            Input::NewReady => self.promote(now, &mut out),
            Input::Exited { pid, status } => self.on_exited(pid, status, now, &mut out),
        }
        out
    }

    fn target(&self, pid: Pid) -> Target {
        if self.policy.group { Target::Group(pid) } else { Target::Child(pid) }
    }

    fn on_signal(&mut self, sig: Sig, now: Instant, out: &mut Vec<Action>) {
        if Some(sig) == self.policy.reload_signal {
            return self.reload(sig, out);
        }
        if signals::class(sig) != Class::Drain {
            if let Some(pid) = self.child() {
                out.push(Action::Signal { sig, to: self.target(pid) });
            }
            return;
        }
        self.drain_signals += 1;
        match (self.phase, self.drain_signals) {
            (Phase::Running { pid, .. }, _) => self.start_drain(pid, sig, now, out),
            (Phase::Draining { pid, until, .. }, 2) => {
                let left = until.saturating_duration_since(now);
                out.push(Action::Log(format!(
                    "received {sig} again: skipping the {} left of the preStop delay",
                    show(left)
                )));
                self.stop(pid, now, out);
            }
            // Nothing left to skip: the child sees the signal, as it would without lastcall.
            (Phase::Stopping { pid, .. }, 2) => {
                out.push(Action::Signal { sig, to: self.target(pid) });
            }
            (Phase::Draining { pid, .. } | Phase::Stopping { pid, .. }, _) => {
                out.push(Action::Log(format!("received {sig} a third time")));
                self.kill(pid, now, out);
            }
            (Phase::Reaping { kill_at: Some(_), status, since }, n) if n >= 3 => {
                out.push(Action::Log(format!("received {sig} a third time")));
                self.kill_descendants(status, since, out);
            }
            _ => {}
        }
    }

    fn start_drain(&mut self, pid: Pid, sig: Sig, now: Instant, out: &mut Vec<Action>) {
        self.drain_started = Some(now);
        self.trigger = Some(sig);
        if let Some((new, ..)) = self.starting.take() {
            out.push(Action::Log(format!("reload abandoned: stopping new child {new}")));
            self.retire(new, now, out);
        }
        self.reload_queued = false;
        let (delay, why) = match self.policy.prestop {
            Prestop::Fixed(d) => (d, "--prestop-delay"),
            Prestop::Auto if self.policy.in_kubernetes => {
                (AUTO_PRESTOP, "auto: KUBERNETES_SERVICE_HOST is set")
            }
            Prestop::Auto if self.probed => (AUTO_PRESTOP, "auto: /readyz has been probed"),
            Prestop::Auto => (Duration::ZERO, "auto: not in Kubernetes and /readyz never probed"),
        };
        out.push(Action::Log(format!(
            "received {sig}: draining, /readyz answers 503; preStop delay {} ({why})",
            show(delay)
        )));
        if delay.is_zero() {
            self.stop(pid, now, out);
        } else {
            // Counting starts at once: an app with no connections stops after --drain-min.
            let count_at = self.policy.drain_idle.then_some(now);
            self.phase = Phase::Draining { pid, since: now, until: now + delay, count_at };
        }
    }

    fn stop(&mut self, pid: Pid, now: Instant, out: &mut Vec<Action>) {
        let sig = self.stop_signal();
        let to = self.target(pid);
        out.push(Action::Log(format!(
            "sending {sig} to {} after {} of drain; SIGKILL in {}",
            DisplayTarget(to),
            show(self.since_drain(now)),
            show(self.policy.grace)
        )));
        out.push(Action::Signal { sig, to });
        self.stop_sent = Some(now);
        self.last_drain = Some(self.since_drain(now));
        self.phase = Phase::Stopping { pid, since: now, deadline: now + self.policy.grace };
    }

    fn kill(&mut self, pid: Pid, now: Instant, out: &mut Vec<Action>) {
        out.push(Action::Log(format!(
            "sending SIGKILL to process group {pid} after {} of drain",
            show(self.since_drain(now))
        )));
        out.push(Action::Signal { sig: SIGKILL, to: Target::Group(pid) });
        self.phase = Phase::Killing { pid, since: now };
    }

    fn kill_descendants(&mut self, status: ChildStatus, since: Instant, out: &mut Vec<Action>) {
        out.push(Action::Log("sending SIGKILL to the remaining processes".into()));
        out.push(Action::Signal { sig: SIGKILL, to: Target::Descendants });
        self.phase = Phase::Reaping { status, since, kill_at: None };
    }

    fn on_child_exit(
        &mut self,
        status: ChildStatus,
        others_left: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let code = status.exit_code(&self.policy.success_exit);
        if let Some(sent) = self.stop_sent {
            self.last_grace = Some(now.saturating_duration_since(sent));
        }
        let shown = match self.phase {
            Phase::Stopping { since, .. } => format!(
                "child {status} {} after the stop signal ({} of drain)",
                show(now - since),
                show(self.since_drain(now))
            ),
            Phase::Killing { since, .. } => format!(
                "child {status} {} after SIGKILL ({} of drain)",
                show(now - since),
                show(self.since_drain(now))
            ),
            Phase::Draining { .. } => format!(
                "child {status} during the preStop delay ({} of drain)",
                show(self.since_drain(now))
            ),
            _ => format!("child {status}"),
        };
        let kill_at = match self.phase {
            Phase::Running { .. } | Phase::Draining { .. } => Some(now + self.policy.grace),
            // The shutdown as a whole keeps the bound it was given.
            Phase::Stopping { deadline, .. } => Some(deadline),
            _ => None,
        };
        if !others_left {
            // A child that simply finished is a normal run: nothing to say at info.
            if self.drain_started.is_some() {
                out.push(Action::Log(format!("{shown}; exiting with {code}")));
            }
            self.exit(code, out);
            return;
        }
        match kill_at {
            Some(at) => {
                let sig = self.stop_signal();
                out.push(Action::Log(format!(
                    "{shown}; other processes remain: sending them {sig}, SIGKILL in {}",
                    show(at.saturating_duration_since(now))
                )));
                out.push(Action::Signal { sig, to: Target::Descendants });
                self.phase = Phase::Reaping { status, since: now, kill_at: Some(at) };
            }
            None => {
                out.push(Action::Log(format!("{shown}; other processes remain")));
                self.kill_descendants(status, now, out);
            }
        }
    }

    fn on_others_reaped(&mut self, others_left: bool, out: &mut Vec<Action>) {
        let Phase::Reaping { status, kill_at, .. } = self.phase else {
            return;
        };
        if !others_left {
            let code = status.exit_code(&self.policy.success_exit);
            out.push(Action::Log(format!("all remaining processes reaped; exiting with {code}")));
            self.exit(code, out);
        } else if kill_at.is_none() {
            // Reaping a killed process can orphan its children onto us: they get SIGKILL too.
            out.push(Action::Signal { sig: SIGKILL, to: Target::Descendants });
        }
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        match self.phase {
            Phase::Draining { pid, until, .. } if now >= until => self.stop(pid, now, out),
            Phase::Draining { pid, since, until, count_at: Some(at) } if now >= at => {
                out.push(Action::CountConnections);
                // The count comes back as an input; no second request meanwhile.
                self.phase = Phase::Draining { pid, since, until, count_at: None };
            }
            Phase::Stopping { pid, deadline, .. } if now >= deadline => {
                out.push(Action::Log(format!(
                    "grace period of {} is over",
                    show(self.policy.grace)
                )));
                self.kill(pid, now, out)
            }
            Phase::Reaping { status, since, kill_at: Some(at) } if now >= at => {
                self.kill_descendants(status, since, out)
            }
            _ => {}
        }
    }

    fn on_connections(&mut self, n: usize, now: Instant, out: &mut Vec<Action>) {
        let Phase::Draining { pid, since, until, .. } = self.phase else {
            return;
        };
        if self.connections != Some(n) {
            out.push(Action::Log(format!("{n} connection(s) to the app still open")));
            self.connections = Some(n);
        }
        let earliest = since + self.policy.drain_min;
        if n == 0 && now >= earliest {
            out.push(Action::Log(format!(
                "the app is idle after {} of drain (--drain-min {})",
                show(self.since_drain(now)),
                show(self.policy.drain_min)
            )));
            self.stop(pid, now, out);
            return;
        }
        let next = now + COUNT_EVERY;
        let count_at = if n == 0 { next.min(earliest) } else { next };
        self.phase = Phase::Draining { pid, since, until, count_at: Some(count_at) };
    }

    fn reload(&mut self, sig: Sig, out: &mut Vec<Action>) {
        if !matches!(self.phase, Phase::Running { .. }) {
            out.push(Action::Log(format!("received {sig} while stopping: no reload")));
        } else if self.starting.is_some() {
            if !self.reload_queued {
                out.push(Action::Log(format!("received {sig} during a reload: one more follows")));
            }
            self.reload_queued = true;
        } else {
            out.push(Action::Log(format!("received {sig}: starting a new child")));
            out.push(Action::SpawnNew);
        }
    }

    /// The new child is ready: it becomes the main child, and the old one is stopped.
    fn promote(&mut self, now: Instant, out: &mut Vec<Action>) {
        let (Some((new, since, _)), Phase::Running { pid: old, .. }) = (self.starting, self.phase)
        else {
            return;
        };
        self.starting = None;
        self.reloads += 1;
        out.push(Action::Log(format!(
            "new child {new} is ready after {}: stopping old child {old}",
            show(now.saturating_duration_since(since))
        )));
        self.phase = Phase::Running { pid: new, since: now };
        self.retire(old, now, out);
        self.next_queued(out);
    }

    /// Sends `pid` the stop signal; SIGKILL follows after the grace period.
    fn retire(&mut self, pid: Pid, now: Instant, out: &mut Vec<Action>) {
        let sig = self.policy.stop_signal.unwrap_or(SIGTERM);
        out.push(Action::Signal { sig, to: self.target(pid) });
        self.retiring.push((pid, Some(now + self.policy.grace)));
    }

    fn reload_failed(&mut self, why: &str, now: Instant, out: &mut Vec<Action>) {
        self.reload_failures += 1;
        let old = self.child().map_or_else(String::new, |p| format!("; child {p} keeps serving"));
        out.push(Action::Log(format!("reload failed: the new child {why}{old}")));
        if let Some((new, ..)) = self.starting.take() {
            self.retire(new, now, out);
        }
        self.next_queued(out);
    }

    fn next_queued(&mut self, out: &mut Vec<Action>) {
        if std::mem::take(&mut self.reload_queued) && matches!(self.phase, Phase::Running { .. }) {
            out.push(Action::Log("starting the queued reload".into()));
            out.push(Action::SpawnNew);
        }
    }

    fn on_exited(&mut self, pid: Pid, status: ChildStatus, now: Instant, out: &mut Vec<Action>) {
        if self.starting.is_some_and(|(p, ..)| p == pid) {
            // Gone already: nothing to stop.
            self.starting = None;
            self.reload_failed(&status.to_string(), now, out);
        } else {
            self.retiring.retain(|(p, _)| *p != pid);
        }
    }

    fn reload_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.starting.is_some_and(|(_, _, deadline)| now >= deadline) {
            let why = format!("was not ready within {}", show(self.policy.startup_timeout));
            self.reload_failed(&why, now, out);
        }
        for (pid, kill_at) in &mut self.retiring {
            if kill_at.is_some_and(|at| now >= at) {
                *kill_at = None;
                out.push(Action::Signal { sig: SIGKILL, to: Target::Group(*pid) });
            }
        }
    }

    fn exit(&mut self, code: u8, out: &mut Vec<Action>) {
        self.phase = Phase::Exited { code };
        out.push(Action::Exit(code));
    }

    fn stop_signal(&self) -> Sig {
        self.policy.stop_signal.or(self.trigger).unwrap_or(SIGTERM)
    }

    fn since_drain(&self, now: Instant) -> Duration {
        self.drain_started.map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }
}

/// A duration the way an operator reads it in a log line: `250ms`, `6.2s`.
pub fn show(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

struct DisplayTarget(Target);

impl fmt::Display for DisplayTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Target::Child(pid) => write!(f, "child {pid}"),
            Target::Group(pid) => write!(f, "process group {pid}"),
            Target::Descendants => write!(f, "the remaining processes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::SIGTERM;

    const PID: Pid = Pid::from_raw(42);
    const SIGINT: Sig = Sig(libc::SIGINT);
    const SIGHUP: Sig = Sig(libc::SIGHUP);
    const SIGUSR2: Sig = Sig(libc::SIGUSR2);

    fn policy(prestop: Prestop) -> Policy {
        Policy { prestop, ..Policy::for_tests() }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A machine and a clock that only moves when the test says so.
    struct Run {
        m: Machine,
        t0: Instant,
        now: Instant,
    }

    impl Run {
        fn new(policy: Policy) -> Run {
            let t0 = Instant::now();
            Run { m: Machine::new(policy, PID, t0), t0, now: t0 }
        }

        fn at(&mut self, offset: Duration) -> &mut Run {
            self.now = self.t0 + offset;
            self
        }

        /// The non-log actions of one step.
        fn step(&mut self, input: Input) -> Vec<Action> {
            self.m
                .step(input, self.now)
                .into_iter()
                .filter(|a| !matches!(a, Action::Log(_)))
                .collect()
        }
    }

    fn signal(sig: Sig, to: Target) -> Vec<Action> {
        vec![Action::Signal { sig, to }]
    }

    #[test]
    fn forwards_other_signals_in_every_phase_with_the_child() {
        let mut r = Run::new(policy(Prestop::Fixed(secs(5))));
        assert_eq!(r.step(Input::Signal(SIGHUP)), signal(SIGHUP, Target::Child(PID)));
        r.step(Input::Signal(SIGTERM));
        assert!(matches!(r.m.phase(), Phase::Draining { .. }));
        assert_eq!(r.step(Input::Signal(SIGHUP)), signal(SIGHUP, Target::Child(PID)));
        r.at(secs(5)).step(Input::Tick);
        assert!(matches!(r.m.phase(), Phase::Stopping { .. }));
        assert_eq!(r.step(Input::Signal(SIGUSR2)), signal(SIGUSR2, Target::Child(PID)));
    }

    #[test]
    fn group_option_targets_the_process_group() {
        let mut r = Run::new(Policy { group: true, ..policy(Prestop::Fixed(Duration::ZERO)) });
        assert_eq!(r.step(Input::Signal(SIGHUP)), signal(SIGHUP, Target::Group(PID)));
        assert_eq!(r.step(Input::Signal(SIGTERM)), signal(SIGTERM, Target::Group(PID)));
    }

    #[test]
    fn full_drain_timeline() {
        let mut r = Run::new(policy(Prestop::Fixed(secs(5))));
        assert!(r.m.is_ready() && r.m.is_live());
        assert_eq!(r.m.deadline(), None, "idle: no wake-ups");

        assert_eq!(r.at(secs(10)).step(Input::Signal(SIGTERM)), vec![]);
        assert!(!r.m.is_ready() && r.m.is_live());
        assert_eq!(r.m.deadline(), Some(r.t0 + secs(15)));

        // A tick before the deadline changes nothing.
        assert_eq!(r.at(secs(14)).step(Input::Tick), vec![]);
        assert_eq!(r.at(secs(15)).step(Input::Tick), signal(SIGTERM, Target::Child(PID)));
        assert_eq!(r.m.deadline(), Some(r.t0 + secs(35)));

        assert_eq!(r.at(secs(34)).step(Input::Tick), vec![]);
        assert_eq!(r.at(secs(35)).step(Input::Tick), signal(SIGKILL, Target::Group(PID)));
        assert_eq!(r.m.deadline(), None);
        assert!(r.m.is_live());

        let killed = ChildStatus::Signaled(SIGKILL);
        let end = r.at(secs(36)).step(Input::ChildExited { status: killed, others_left: false });
        assert_eq!(end, vec![Action::Exit(137)]);
        assert!(!r.m.is_live());
        assert_eq!(r.m.last_shutdown(), (Some(secs(5)), Some(secs(21))));
    }

    #[test]
    fn zero_delay_stops_at_once_with_the_trigger_signal() {
        let mut r = Run::new(policy(Prestop::Fixed(Duration::ZERO)));
        assert_eq!(r.step(Input::Signal(SIGINT)), signal(SIGINT, Target::Child(PID)));
        let mut r = Run::new(Policy { stop_signal: Some(SIGUSR2), ..policy(Prestop::Auto) });
        assert_eq!(r.step(Input::Signal(SIGINT)), signal(SIGUSR2, Target::Child(PID)));
    }

    #[test]
    fn second_signal_skips_the_delay_third_kills() {
        let mut r = Run::new(policy(Prestop::Fixed(secs(30))));
        assert_eq!(r.step(Input::Signal(SIGTERM)), vec![]);
        assert_eq!(r.at(secs(1)).step(Input::Signal(SIGTERM)), signal(SIGTERM, Target::Child(PID)));
        assert_eq!(r.m.deadline(), Some(r.t0 + secs(21)), "grace counts from the stop signal");
        assert_eq!(r.at(secs(2)).step(Input::Signal(SIGINT)), signal(SIGKILL, Target::Group(PID)));
        assert!(matches!(r.m.phase(), Phase::Killing { .. }));
    }

    #[test]
    fn second_signal_during_grace_is_forwarded() {
        let mut r = Run::new(policy(Prestop::Fixed(Duration::ZERO)));
        assert_eq!(r.step(Input::Signal(SIGINT)), signal(SIGINT, Target::Child(PID)));
        assert_eq!(r.step(Input::Signal(SIGTERM)), signal(SIGTERM, Target::Child(PID)));
        assert_eq!(r.step(Input::Signal(SIGTERM)), signal(SIGKILL, Target::Group(PID)));
    }

    /// The preStop delay `auto` picks; `None` when it stops at once.
    fn auto_delay(in_kubernetes: bool, probed: bool) -> Option<Duration> {
        let mut r = Run::new(Policy { in_kubernetes, ..policy(Prestop::Auto) });
        if probed {
            r.step(Input::Probed);
        }
        r.step(Input::Signal(SIGTERM));
        match r.m.phase() {
            Phase::Draining { until, .. } => Some(until - r.t0),
            Phase::Stopping { .. } => None,
            other => panic!("unexpected phase {other:?}"),
        }
    }

    #[test]
    fn auto_prestop_delay() {
        assert_eq!(auto_delay(false, false), None, "plain: no delay");
        assert_eq!(auto_delay(true, false), Some(AUTO_PRESTOP), "Kubernetes");
        assert_eq!(auto_delay(false, true), Some(AUTO_PRESTOP), "/readyz probed");
        assert_eq!(auto_delay(true, true), Some(AUTO_PRESTOP));
    }

    #[test]
    fn child_exit_ends_every_phase_promptly() {
        let exited = ChildStatus::Exited(3);
        for (name, prepare) in [
            ("running", vec![]),
            ("draining", vec![Input::Signal(SIGTERM)]),
            ("stopping", vec![Input::Signal(SIGTERM), Input::Signal(SIGTERM)]),
            (
                "killing",
                vec![Input::Signal(SIGTERM), Input::Signal(SIGTERM), Input::Signal(SIGTERM)],
            ),
        ] {
            let mut r = Run::new(policy(Prestop::Fixed(secs(5))));
            for input in prepare {
                r.step(input);
            }
            let out = r.step(Input::ChildExited { status: exited, others_left: false });
            assert_eq!(out, vec![Action::Exit(3)], "{name}");
            assert_eq!(r.m.phase(), Phase::Exited { code: 3 }, "{name}");
        }
    }

    #[test]
    fn success_exit_maps_the_code() {
        let mut r = Run::new(Policy { success_exit: vec![143], ..policy(Prestop::Auto) });
        let status = ChildStatus::Signaled(SIGTERM);
        let out = r.step(Input::ChildExited { status, others_left: false });
        assert_eq!(out, vec![Action::Exit(0)]);
    }

    #[test]
    fn leftover_descendants_are_stopped_then_killed_then_reaped() {
        let mut r = Run::new(policy(Prestop::Auto));
        let status = ChildStatus::Exited(0);
        let out = r.at(secs(1)).step(Input::ChildExited { status, others_left: true });
        assert_eq!(out, signal(SIGTERM, Target::Descendants));
        assert!(!r.m.is_live() && !r.m.is_ready());
        assert_eq!(r.m.deadline(), Some(r.t0 + secs(21)));
        // Some leave, some stay: keep waiting.
        assert_eq!(r.step(Input::OthersReaped { others_left: true }), vec![]);
        assert_eq!(r.at(secs(21)).step(Input::Tick), signal(SIGKILL, Target::Descendants));
        // A killed process's own orphans arrive later: they get SIGKILL too.
        assert_eq!(
            r.step(Input::OthersReaped { others_left: true }),
            signal(SIGKILL, Target::Descendants)
        );
        assert_eq!(r.step(Input::OthersReaped { others_left: false }), vec![Action::Exit(0)]);
    }

    #[test]
    fn leftovers_keep_the_shutdown_deadline() {
        let mut r = Run::new(policy(Prestop::Fixed(Duration::ZERO)));
        r.step(Input::Signal(SIGTERM));
        let status = ChildStatus::Signaled(SIGTERM);
        let out = r.at(secs(15)).step(Input::ChildExited { status, others_left: true });
        assert_eq!(out, signal(SIGTERM, Target::Descendants));
        assert_eq!(r.m.deadline(), Some(r.t0 + secs(20)), "not a fresh grace period");
        assert_eq!(r.at(secs(20)).step(Input::Tick), signal(SIGKILL, Target::Descendants));
        assert_eq!(r.step(Input::OthersReaped { others_left: false }), vec![Action::Exit(143)]);
    }

    #[test]
    fn leftovers_after_sigkill_are_killed_at_once() {
        let mut r = Run::new(policy(Prestop::Fixed(Duration::ZERO)));
        for _ in 0..3 {
            r.step(Input::Signal(SIGTERM));
        }
        let status = ChildStatus::Signaled(SIGKILL);
        let out = r.step(Input::ChildExited { status, others_left: true });
        assert_eq!(out, signal(SIGKILL, Target::Descendants));
        assert_eq!(r.m.deadline(), None);
    }

    #[test]
    fn no_forwarding_once_the_child_is_gone() {
        let mut r = Run::new(policy(Prestop::Auto));
        let status = ChildStatus::Exited(0);
        r.step(Input::ChildExited { status, others_left: true });
        assert_eq!(r.step(Input::Signal(SIGHUP)), vec![]);
    }

    #[test]
    fn readiness_follows_the_checks() {
        let mut r = Run::new(policy(Prestop::Auto));
        r.m = Machine::new(policy(Prestop::Auto), PID, r.t0).with_checks();
        assert!(!r.m.is_ready() && r.m.is_live(), "unready until the checks pass");
        r.step(Input::AppReady(true));
        assert!(r.m.is_ready());
        r.step(Input::AppReady(false));
        assert!(!r.m.is_ready());
        r.step(Input::AppReady(true));
        r.step(Input::Signal(SIGINT));
        assert!(!r.m.is_ready(), "the drain wins over passing checks");
    }

    fn idle_policy() -> Policy {
        Policy { drain_idle: true, drain_min: secs(1), ..policy(Prestop::Fixed(secs(30))) }
    }

    #[test]
    fn drain_until_idle_waits_for_connections_to_close() {
        let mut r = Run::new(idle_policy());
        r.step(Input::Signal(SIGTERM));
        assert_eq!(r.m.deadline(), Some(r.t0), "counts at once");
        assert_eq!(r.step(Input::Tick), vec![Action::CountConnections]);
        assert_eq!(r.m.deadline(), Some(r.t0 + secs(30)), "no new count until this one is in");
        assert_eq!(r.step(Input::Connections(3)), vec![]);
        assert_eq!(r.m.deadline(), Some(r.t0 + COUNT_EVERY));
        r.at(secs(2));
        assert_eq!(r.step(Input::Tick), vec![Action::CountConnections]);
        assert_eq!(r.step(Input::Connections(1)), vec![]);
        r.at(secs(5));
        assert_eq!(r.step(Input::Tick), vec![Action::CountConnections]);
        assert_eq!(r.step(Input::Connections(0)), signal(SIGTERM, Target::Child(PID)));
        assert_eq!(r.m.last_shutdown().0, Some(secs(5)));
    }

    #[test]
    fn drain_until_idle_honours_the_minimum_and_the_upper_bound() {
        let mut r = Run::new(idle_policy());
        r.step(Input::Signal(SIGTERM));
        r.step(Input::Tick);
        // Idle at once: the stop signal still waits for --drain-min.
        assert_eq!(r.step(Input::Connections(0)), vec![]);
        assert_eq!(r.m.deadline(), Some(r.t0 + COUNT_EVERY));
        r.at(secs(1));
        assert_eq!(r.step(Input::Tick), vec![Action::CountConnections]);
        assert_eq!(r.step(Input::Connections(0)), signal(SIGTERM, Target::Child(PID)));

        // Never idle: the preStop delay is the upper bound.
        let mut r = Run::new(idle_policy());
        r.step(Input::Signal(SIGTERM));
        r.step(Input::Tick);
        r.step(Input::Connections(5));
        assert_eq!(r.at(secs(30)).step(Input::Tick), signal(SIGTERM, Target::Child(PID)));
    }

    const NEW: Pid = Pid::from_raw(43);
    const NEWER: Pid = Pid::from_raw(44);
    const SIGHUP_RELOAD: Sig = Sig(libc::SIGHUP);

    fn reload_policy() -> Policy {
        Policy {
            reload_signal: Some(SIGHUP_RELOAD),
            startup_timeout: secs(10),
            ..policy(Prestop::Fixed(secs(5)))
        }
    }

    #[test]
    fn reload_starts_a_new_child_then_stops_the_old_one() {
        let mut r = Run::new(reload_policy());
        assert_eq!(r.step(Input::Signal(SIGHUP_RELOAD)), vec![Action::SpawnNew], "not forwarded");
        r.at(secs(1)).step(Input::Spawned(NEW));
        assert!(r.m.claims(NEW) && r.m.is_ready(), "the old child serves meanwhile");
        assert_eq!(r.m.deadline(), Some(r.t0 + secs(11)), "the startup timeout");
        assert_eq!(r.at(secs(2)).step(Input::NewReady), signal(SIGTERM, Target::Child(PID)));
        assert_eq!(r.m.child(), Some(NEW));
        assert!(r.m.is_ready(), "ready throughout");
        assert_eq!(r.m.reload_counts(), (1, 0));
        // The old child gets SIGKILL after the grace period, then is reaped; nothing ends.
        assert_eq!(r.at(secs(22)).step(Input::Tick), signal(SIGKILL, Target::Group(PID)));
        let status = ChildStatus::Signaled(SIGKILL);
        assert_eq!(r.step(Input::Exited { pid: PID, status }), vec![]);
        assert!(!r.m.claims(PID));
        assert_eq!(r.m.deadline(), None);
        // The new child is the one the drain stops.
        r.step(Input::Signal(SIGTERM));
        assert_eq!(r.at(secs(30)).step(Input::Tick), signal(SIGTERM, Target::Child(NEW)));
    }

    #[test]
    fn failed_reloads_keep_the_old_child() {
        let mut r = Run::new(reload_policy());
        r.step(Input::Signal(SIGHUP_RELOAD));
        r.step(Input::Spawned(NEW));
        // The new child exits at once.
        assert_eq!(r.step(Input::Exited { pid: NEW, status: ChildStatus::Exited(1) }), vec![]);
        assert_eq!((r.m.child(), r.m.reload_counts()), (Some(PID), (0, 1)));
        assert!(r.m.is_ready());
        // The next one never becomes ready: stopped at the startup timeout.
        r.step(Input::Signal(SIGHUP_RELOAD));
        r.at(secs(1)).step(Input::Spawned(NEWER));
        assert_eq!(r.at(secs(11)).step(Input::Tick), signal(SIGTERM, Target::Child(NEWER)));
        assert_eq!((r.m.child(), r.m.reload_counts()), (Some(PID), (0, 2)));
        assert!(r.m.claims(NEWER), "still to be reaped");
        // And a new child that cannot even be started.
        r.step(Input::Signal(SIGHUP_RELOAD));
        assert_eq!(r.step(Input::SpawnFailed), vec![]);
        assert_eq!(r.m.reload_counts(), (0, 3));
    }

    #[test]
    fn a_reload_signal_during_a_reload_is_queued_once() {
        let mut r = Run::new(reload_policy());
        r.step(Input::Signal(SIGHUP_RELOAD));
        r.step(Input::Spawned(NEW));
        assert_eq!(r.step(Input::Signal(SIGHUP_RELOAD)), vec![]);
        assert_eq!(r.step(Input::Signal(SIGHUP_RELOAD)), vec![]);
        let out = r.step(Input::NewReady);
        assert_eq!(
            out,
            vec![Action::Signal { sig: SIGTERM, to: Target::Child(PID) }, Action::SpawnNew]
        );
        r.step(Input::Spawned(NEWER));
        assert_eq!(r.step(Input::NewReady), signal(SIGTERM, Target::Child(NEW)), "only one more");
    }

    #[test]
    fn a_drain_abandons_a_reload() {
        let mut r = Run::new(reload_policy());
        r.step(Input::Signal(SIGHUP_RELOAD));
        r.step(Input::Spawned(NEW));
        assert_eq!(r.step(Input::Signal(SIGTERM)), signal(SIGTERM, Target::Child(NEW)));
        assert_eq!(r.m.starting(), None);
        assert_eq!(r.step(Input::NewReady), vec![], "too late");
        assert_eq!(r.step(Input::Signal(SIGHUP_RELOAD)), vec![], "no reload while stopping");
    }

    #[test]
    fn shutdown_is_logged_with_timings() {
        let mut r = Run::new(policy(Prestop::Fixed(secs(5))));
        let logs = |actions: Vec<Action>| -> Vec<String> {
            actions
                .into_iter()
                .filter_map(|a| match a {
                    Action::Log(line) => Some(line),
                    _ => None,
                })
                .collect()
        };
        let now = r.t0;
        let first = logs(r.m.step(Input::Signal(SIGTERM), now));
        assert_eq!(
            first,
            [
                "received SIGTERM: draining, /readyz answers 503; preStop delay 5.0s (--prestop-delay)"
            ]
        );
        let second = logs(r.m.step(Input::Tick, now + secs(5)));
        assert_eq!(second, ["sending SIGTERM to child 42 after 5.0s of drain; SIGKILL in 20.0s"]);
        let status = ChildStatus::Exited(0);
        let last = logs(r.m.step(Input::ChildExited { status, others_left: false }, now + secs(7)));
        assert_eq!(
            last,
            [
                "child exited with status 0 2.0s after the stop signal (7.0s of drain); exiting with 0"
            ]
        );
        // A normal run says nothing at info.
        let mut quiet = Run::new(policy(Prestop::Auto));
        assert!(
            logs(quiet.m.step(Input::ChildExited { status, others_left: false }, now)).is_empty()
        );
    }
}
