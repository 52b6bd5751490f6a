//! The supervisor's decisions: a pure state machine, no syscalls, no clock reads.
//!
//! The event loop feeds it [`Input`]s with the current time and carries out the [`Action`]s it
//! returns. Everything about *when* to signal *whom*, what to log (and the data beside each
//! shutdown step), what to tell systemd, when a phase ends and why the run ended lives here,
//! so it is tested with an injected clock and no sleeping.
//!
//! It is made of these parts, each in its own file with its own tests:
//! - [`shutdown`]: the [`Phase`]s from running to exited, each carrying its own data;
//! - [`gate`]: whether the app is ready (checks, the child's own word), and what to log of it;
//! - [`reload`]: a new child on the same sockets, and the old ones being stopped;
//! - [`systemd`]: what systemd hears (READY=1, STOPPING=1, STATUS=, the watchdog);
//! - [`watch`]: when a request-aware drain may end: the app's connections, as the drain wing
//!   sums up each read ([`AppSummary`]), and the clients probing `/readyz`;
//! - [`ending`]: the termination message, and which deaths by SIGKILL were OOM kills;
//! - [`deps`]: the wait for the app's dependencies before the child starts;
//! - [`restart`]: a child that ends on its own started again, with a backoff and a budget.

mod deps;
mod ending;
mod gate;
mod reload;
mod restart;
mod shutdown;
mod systemd;
mod watch;

use std::fmt;
use std::time::{Duration, Instant};

use log::Level;
use nix::unistd::Pid;

use crate::init::signals::{Class, Sig, class};
use crate::init::status::ChildStatus;

pub use deps::{Deps, OnWaitTimeout};
pub use ending::Ending;
pub use restart::{Restart, RestartOn};
pub use shutdown::{DrainEnd, Phase};
pub use watch::{AppSummary, Evidence, Probe, ReadBy};

/// `--prestop-delay`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Prestop {
    Fixed(Duration),
    Auto,
}

/// What the options say; fixed for the whole run.
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
    /// `--drain-idle-port` is not `off`: the preStop phase ends early once the app is idle
    /// and its probers were told (see [`watch`]), and `drain_min` has passed.
    pub drain_idle: bool,
    pub drain_min: Duration,
    /// `--drain-quiet`: how long no bytes may move for the app to count as idle.
    pub drain_quiet: Duration,
    /// `--drain-probes`: the 503 answers each client probing `/readyz` must have had.
    pub drain_probes: u32,
    /// `--reload-signal` (only with `--socket`): start a new child, then drain the old one.
    pub reload_signal: Option<Sig>,
    /// `--ready-tcp`, `--ready-http` or `--ready-exec` were given: unready until they pass.
    pub checks: bool,
    /// `--ready-notify`: unready until the child says `READY=1`.
    pub notify: bool,
    /// `--ready-interval`: without `--ready-notify`, a reload's new child counts as ready
    /// once it has lived this long with the checks passing.
    pub ready_interval: Duration,
    /// `--startup-timeout`: when an app that never became ready is reported, and how long a
    /// reload's new child may take to become ready.
    pub startup_timeout: Duration,
    /// lastcall runs under systemd (`NOTIFY_SOCKET` set): it reports its state there.
    pub systemd: bool,
    /// How often to ping systemd's watchdog (half of `WATCHDOG_USEC`), if asked to.
    pub watchdog: Option<Duration>,
    /// `--wait-for`, `--wait-for-exec`: the dependencies awaited before the child starts, by
    /// name (used only by [`Machine::waiting`]).
    pub wait: Vec<String>,
    /// `--wait-timeout`.
    pub wait_timeout: Duration,
    /// `--on-wait-timeout`.
    pub on_wait_timeout: OnWaitTimeout,
    /// `--on-exit` or `--on-exit-exec` were given: the hooks run when lastcall exits.
    pub on_exit: bool,
    /// `--restart` and its backoff and budget.
    pub restart: Restart,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// lastcall received a signal (never SIGCHLD: reaping brings [`Input::Reaped`]).
    Signal(Sig),
    /// A reaping pass collected processes: how each ended (but the readiness checks'
    /// commands, which are the checker's), and whether lastcall has children left.
    Reaped { exits: Vec<(Pid, ChildStatus)>, children_left: bool },
    /// A reload's or a restart's new child was started.
    Spawned(Pid),
    /// A reload's or a restart's new child could not be started, and why.
    SpawnFailed(String),
    /// `/readyz` was answered (it makes `--prestop-delay auto` choose a delay, and the
    /// request-aware drain waits for the probers to hear 503).
    Probed(Probe),
    /// What the `--ready-*` checks say now: whether all pass, and the first failure.
    Checks { pass: bool, failing: Option<String> },
    /// A notify message (`--ready-notify`): `READY=1` (true) or `STOPPING=1`, from a process
    /// under lastcall's child `from` (or that child itself).
    Notify { ready: bool, from: Pid },
    /// The app's TCP ports to watch during the drain: those of `--drain-idle-port`, or for
    /// `auto` those its processes listen on (none found: empty).
    AppPorts(Vec<u16>),
    /// The app's connections on those ports at one read, in sum; or why the read failed.
    AppRead(Result<AppSummary, String>),
    /// lastcall's memory cgroup counted `new` more OOM kills since the previous read, made at
    /// `since` (the kills happened between then and now), and the memory limit that applies,
    /// in bytes, if there is one. Read after each reaping pass's `waitpid`s, just before its
    /// [`Input::Reaped`], and at the start of every other turn of the loop.
    OomKills { new: u64, since: Instant, limit: Option<u64> },
    /// What each awaited dependency said at its last attempt, in the order of
    /// [`Policy::wait`]; brought whenever that changes.
    Awaited(Vec<Result<(), String>>),
    /// The child asked for by [`Action::StartChild`] was started.
    Started(Pid),
    /// The main child could not be started (at start-up, or when the wait was over):
    /// lastcall exits with `code`, `why` being its termination message.
    NotStarted { code: u8, why: String },
    /// Time passed; a deadline may be due.
    Tick,
}

/// Whom a signal goes to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Target {
    Child(Pid),
    /// The child's process group, whose id is the child's pid.
    Group(Pid),
    /// Every process under lastcall (as PID 1, every process of its PID namespace), the
    /// child's whole tree and orphans included, whatever their process group.
    Descendants,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Action {
    Signal {
        sig: Sig,
        to: Target,
    },
    /// A drain begins: find the app's ports and report them as [`Input::AppPorts`].
    FindAppPorts,
    /// Read the app's connections on those ports and report them as [`Input::AppRead`].
    ReadApp,
    /// Start a new child on the same sockets (a reload's or a restart's); report it as
    /// [`Input::Spawned`] or [`Input::SpawnFailed`].
    SpawnNew,
    /// Start the readiness checks afresh: a restart's new child runs.
    StartChecks,
    /// Stop the readiness checks: readiness no longer matters once the child stops running,
    /// and a check must not hold a connection open while the app's connections are counted.
    StopChecks,
    /// One message to systemd's notify socket.
    Systemd(String),
    /// A line for the operator, and the step's data for structured logs.
    Log(Level, String, Fields),
    /// lastcall is about to exit: why, in one line, for `--termination-log`.
    Ended(String),
    /// The wait is over: start the child, and report it as [`Input::Started`], or as
    /// [`Input::NotStarted`] when it cannot be.
    StartChild,
    /// lastcall is about to exit and nothing is left under it: run the `--on-exit` hooks.
    OnExit,
}

/// The data of a shutdown step, beside its log line: `--log-format json` writes each as a
/// field of its own (`phase`, `pid`, `signal`, `delay_s`, `grace_s`, `status`, `took_s`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fields {
    /// The phase lastcall is in after the step ([`Phase::name`]).
    pub phase: Option<&'static str>,
    /// The child the step is about.
    pub pid: Option<Pid>,
    /// The signal received or sent.
    pub signal: Option<Sig>,
    /// The preStop delay chosen.
    pub delay: Option<Duration>,
    /// The grace period before SIGKILL.
    pub grace: Option<Duration>,
    /// The child's status by the exit-code rule (0-255, 128+N for signal N).
    pub status: Option<u8>,
    /// How long the step took: the drain before the stop signal, the child's stop after it.
    pub took: Option<Duration>,
}

impl Fields {
    pub const NONE: Fields = Fields {
        phase: None,
        pid: None,
        signal: None,
        delay: None,
        grace: None,
        status: None,
        took: None,
    };
}

/// A line for the operator at info: a step worth telling.
fn info(line: String) -> Action {
    Action::Log(Level::Info, line, Fields::NONE)
}

/// A shutdown step at info, with its data.
fn step(line: String, fields: Fields) -> Action {
    Action::Log(Level::Info, line, fields)
}

/// A line at `level` with no data of its own.
fn log(level: Level, line: String) -> Action {
    Action::Log(level, line, Fields::NONE)
}

/// Index room for every signal number (1..=64 on Linux).
const SIGNALS: usize = 65;

/// What lastcall counted, for `/metrics`.
#[derive(Clone, Debug)]
pub struct Stats {
    received: [u64; SIGNALS],
    forwarded: [u64; SIGNALS],
    /// Processes other than the child (and a reload's children) that lastcall reaped.
    pub reaped: u64,
}

impl Stats {
    fn new() -> Stats {
        Stats { received: [0; SIGNALS], forwarded: [0; SIGNALS], reaped: 0 }
    }

    /// Signals received and sent on, by number: `(signal, received, forwarded)`.
    pub fn signals(&self) -> impl Iterator<Item = (Sig, u64, u64)> + '_ {
        (0..SIGNALS).map(|n| (Sig(n as i32), self.received[n], self.forwarded[n]))
    }

    fn count(counts: &mut [u64; SIGNALS], sig: Sig) {
        if let Some(n) = usize::try_from(sig.0).ok().and_then(|i| counts.get_mut(i)) {
            *n += 1;
        }
    }
}

/// The last shutdown, as `/metrics` reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LastShutdown {
    /// From the drain's start to the stop signal.
    pub drain: Option<Duration>,
    /// From the stop signal to the child's exit.
    pub grace: Option<Duration>,
    /// The app's connections at the last read of a request-aware drain.
    pub seen: Option<AppSummary>,
    /// Why the drain ended.
    pub ended: Option<DrainEnd>,
    /// What showed that a request-aware drain could end early, when it did.
    pub evidence: Option<Evidence>,
}

pub struct Machine {
    policy: Policy,
    /// When lastcall started: its child, or without one yet, its wait for the dependencies.
    started: Instant,
    phase: Phase,
    gate: gate::Gate,
    reload: reload::Reload,
    systemd: Option<systemd::Report>,
    last: LastShutdown,
    stats: Stats,
    /// The clients probing `/readyz`, known before any drain.
    probers: watch::Probers,
    oom: ending::Oom,
    /// How the main child ended, once it has.
    ending: Option<Ending>,
    /// The wait for the dependencies, when there was one.
    deps: Option<Deps>,
    restarts: restart::Restarts,
}

impl Machine {
    /// A machine for child `pid`, started at `started`.
    pub fn new(policy: Policy, pid: Pid, started: Instant) -> Machine {
        Machine {
            gate: gate::Gate::new(&policy, started),
            systemd: policy.systemd.then(|| systemd::Report::new(policy.watchdog, started)),
            phase: Phase::Running { pid, since: started },
            reload: reload::Reload::default(),
            started,
            last: LastShutdown::default(),
            stats: Stats::new(),
            probers: watch::Probers::default(),
            oom: ending::Oom::default(),
            ending: None,
            deps: None,
            restarts: restart::Restarts::default(),
            policy,
        }
    }

    /// Handles one input at `now`; returns what to do, in order.
    pub fn step(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let was_running = matches!(self.phase, Phase::Running { .. });
        self.announce_wait(&mut out);
        match input {
            Input::Signal(sig) => self.on_signal(sig, now, &mut out),
            Input::Reaped { exits, children_left } => {
                self.on_reaped(exits, children_left, now, &mut out)
            }
            Input::Spawned(pid) => {
                if !self.restart_spawned(pid, now, &mut out) {
                    self.on_spawned(pid, now)
                }
            }
            Input::SpawnFailed(why) => {
                if !self.restart_failed(&why, &mut out) {
                    out.push(log(Level::Warn, format!("reload: {why}")));
                    self.reload_failed("could not be started", now, &mut out);
                }
            }
            Input::Probed(probe) => {
                self.gate.probed = true;
                self.probers.on_probe(probe, now);
            }
            Input::Checks { pass, failing } => {
                self.gate.on_checks(pass, failing, now, &mut out);
                self.settle(now, &mut out);
            }
            Input::Notify { ready, from } => self.on_notify(ready, from, now, &mut out),
            Input::AppPorts(ports) => self.on_app_ports(ports, &mut out),
            Input::AppRead(read) => self.on_app_read(read, now, &mut out),
            Input::OomKills { new, since, limit } => {
                self.oom.on_kills(new, since, limit, now, &mut out)
            }
            Input::Awaited(results) => self.on_awaited(results, now, &mut out),
            Input::Started(pid) => self.on_started(pid, now),
            Input::NotStarted { code, why } => self.not_started(code, why, &mut out),
            Input::Tick => {
                self.wait_tick(now, &mut out);
                self.on_tick(now, &mut out);
                self.reload_tick(now, &mut out);
                self.restart_tick(now, &mut out);
                let running = matches!(self.phase, Phase::Running { .. });
                self.gate.on_tick(running, now, &mut out);
            }
        }
        if was_running && !matches!(self.phase, Phase::Running { .. }) {
            out.push(Action::StopChecks);
        }
        for action in &out {
            if let Action::Signal { sig, .. } = action {
                Stats::count(&mut self.stats.forwarded, *sig);
            }
        }
        let (ready, live) = (self.is_ready(), self.is_live());
        if let Some(report) = self.systemd.as_mut() {
            report.tell(&self.phase, ready, live, now, &mut out);
        }
        out
    }

    fn on_signal(&mut self, sig: Sig, now: Instant, out: &mut Vec<Action>) {
        Stats::count(&mut self.stats.received, sig);
        if let Phase::Waiting { .. } = self.phase {
            return self.signal_while_waiting(sig, now, out);
        }
        if Some(sig) == self.policy.reload_signal {
            return self.reload(sig, out);
        }
        match class(sig) {
            Class::Drain => self.on_drain_signal(sig, now, out),
            _ => {
                if let Some(pid) = self.child() {
                    out.push(Action::Signal { sig, to: self.target(pid) });
                }
            }
        }
    }

    /// One reaping pass: the main child ends the run (or leaves others to stop), a reload's
    /// children are the reload's business, and the rest are orphans reaped as PID 1 does.
    fn on_reaped(
        &mut self,
        exits: Vec<(Pid, ChildStatus)>,
        others_left: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.attribute_oom_kills(&exits, now, out);
        let main = self.child();
        let mut main_status = None;
        let mut others = 0;
        for (pid, status) in exits {
            if Some(pid) == main {
                main_status = Some(status);
                continue;
            }
            others += 1;
            if self.reload.claims(pid) {
                out.push(log(
                    Level::Debug,
                    format!("reaped child {pid} of a reload, which {status}"),
                ));
                self.on_reload_child_exit(pid, status, now, out);
            } else {
                out.push(log(Level::Debug, format!("reaped process {pid}, which {status}")));
                self.stats.reaped += 1;
            }
        }
        // A pass that reaped only check commands still says whether anything is left.
        if others > 0 || main_status.is_none() {
            self.on_others_reaped(others_left, out);
            self.restart_reaped(others_left, now, out);
        }
        if let Some(status) = main_status {
            self.on_child_exit(status, others_left, now, out);
        }
    }

    /// A reload's new child speaks for itself; an old one being stopped (STOPPING=1) does not
    /// speak for the app any more.
    fn on_notify(&mut self, ready: bool, from: Pid, now: Instant, out: &mut Vec<Action>) {
        if self.reload.starting() == Some(from) {
            if ready {
                self.promote(now, out);
            }
        } else if self.child() == Some(from) {
            self.gate.on_notify(ready, now, out);
            self.settle(now, out);
        } else {
            out.push(log(
                Level::Debug,
                format!("notify message from under process {from}, not the app's; dropped"),
            ));
        }
    }

    fn target(&self, pid: Pid) -> Target {
        if self.policy.group { Target::Group(pid) } else { Target::Child(pid) }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// When lastcall started (the first child, or the wait before it).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The exit code, once the machine has decided that lastcall exits.
    pub fn exit_code(&self) -> Option<u8> {
        match self.phase {
            Phase::Exited { code } => Some(code),
            _ => None,
        }
    }

    /// What `/readyz` answers: ready while the app is, until the drain starts.
    pub fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Running { .. }) && self.gate.ready()
    }

    /// What `/livez` answers: the child is alive, drain or not, or lastcall waits to start
    /// it, or to start it again within the restart budget.
    pub fn is_live(&self) -> bool {
        self.child().is_some()
            || matches!(self.phase, Phase::Waiting { .. } | Phase::Restarting { .. })
    }

    /// The main child's pid while it is alive.
    pub fn child(&self) -> Option<Pid> {
        self.phase.pid()
    }

    /// `--ready-notify`'s state: `None` when not used, else whether the child said READY=1.
    pub fn notified(&self) -> Option<bool> {
        self.gate.notified()
    }

    pub fn last_shutdown(&self) -> LastShutdown {
        self.last
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Reloads done, and reloads that failed.
    pub fn reload_counts(&self) -> (u64, u64) {
        (self.reload.done, self.reload.failed)
    }

    /// When the machine next wants a [`Input::Tick`]; part of the event loop's poll timeout.
    pub fn deadline(&self) -> Option<Instant> {
        let running = matches!(self.phase, Phase::Running { .. });
        let wait = match self.phase {
            Phase::Waiting { until, .. } => {
                self.deps.as_ref().filter(|d| d.over.is_none()).map(|_| until)
            }
            _ => None,
        };
        [
            wait,
            self.phase.deadline(),
            self.reload.deadline(),
            self.gate.deadline(running),
            self.systemd.as_ref().and_then(systemd::Report::deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

impl fmt::Display for Input {
    /// One line per input, for the debug log of a loop turn.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Signal(sig) => write!(f, "received {sig}"),
            Input::Reaped { exits, children_left } => {
                write!(f, "reaped {} process(es); children left: {children_left}", exits.len())
            }
            Input::Spawned(pid) => write!(f, "started new child {pid}"),
            Input::SpawnFailed(why) => write!(f, "a new child could not be started: {why}"),
            Input::Probed(p) => {
                write!(f, "/readyz answered {} to {}", if p.ready { 200 } else { 503 }, p.from)
            }
            Input::Checks { pass, failing } => {
                write!(f, "checks pass: {pass}; failing: {}", failing.as_deref().unwrap_or("-"))
            }
            Input::Notify { ready, from } => write!(f, "notify ready={ready} from under {from}"),
            Input::AppPorts(ports) => write!(f, "the app's ports: {ports:?}"),
            Input::AppRead(Ok(read)) => {
                let n = read.busy + read.idle;
                match read.by {
                    ReadBy::Sockets => write!(f, "{n} app connection(s) read"),
                    ReadBy::Counted => write!(f, "{n} app connection(s) counted"),
                }
            }
            Input::AppRead(Err(e)) => write!(f, "reading the app's connections failed: {e}"),
            Input::OomKills { new, limit, .. } => {
                let limit = limit.map_or("none".to_string(), crate::show::format_bytes);
                write!(f, "{new} new OOM kill(s) in lastcall's memory cgroup (limit: {limit})")
            }
            Input::Awaited(results) => {
                let up = results.iter().filter(|r| r.is_ok()).count();
                write!(f, "{up} of {} awaited dependencies answer", results.len())
            }
            Input::Started(pid) => write!(f, "started child {pid}"),
            Input::NotStarted { code, why } => {
                write!(f, "the child was not started ({code}): {why}")
            }
            Input::Tick => write!(f, "tick"),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Child(pid) => write!(f, "child {pid}"),
            Target::Group(pid) => write!(f, "process group {pid}"),
            Target::Descendants => write!(f, "the remaining processes"),
        }
    }
}

/// A machine and a clock that only moves when the test says so: the driver of every test of
/// the machine's parts.
#[cfg(test)]
pub mod testing {
    use super::*;

    pub const PID: Pid = Pid::from_raw(42);

    pub fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    pub fn sig(n: i32) -> Sig {
        Sig(n)
    }

    /// What lastcall writes to the termination log at the end of the run, in `actions`.
    pub fn ended(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Ended(why) => Some(why.clone()),
                _ => None,
            })
            .collect()
    }

    /// The lines logged at exactly `level` in `actions`.
    pub fn logged(actions: &[Action], level: Level) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Log(l, line, _) if *l == level => Some(line.as_str()),
                _ => None,
            })
            .collect()
    }

    impl Policy {
        /// The command line's defaults (`--prestop-delay 5s`), for tests.
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
                drain_quiet: Duration::from_secs(1),
                drain_probes: 3,
                reload_signal: None,
                checks: false,
                notify: false,
                ready_interval: Duration::from_secs(1),
                startup_timeout: Duration::from_secs(60),
                systemd: false,
                watchdog: None,
                wait: vec![],
                wait_timeout: Duration::from_secs(60),
                on_wait_timeout: OnWaitTimeout::Exit,
                on_exit: false,
                restart: Restart::DEFAULT,
            }
        }
    }

    impl Restart {
        /// The command line's defaults: never; 100ms doubled up to 5m; 5 in 10m.
        pub const DEFAULT: Restart = Restart {
            when: RestartOn::Never,
            delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(300),
            limit: 5,
            window: Duration::from_secs(600),
        };
    }

    impl Machine {
        /// The command line's defaults, child pid 42, started at `t0`, for tests.
        pub fn for_tests(t0: Instant) -> Machine {
            Machine::new(Policy::for_tests(), PID, t0)
        }
    }

    pub struct Run {
        pub m: Machine,
        pub t0: Instant,
        pub now: Instant,
    }

    impl Run {
        pub fn new(policy: Policy) -> Run {
            let t0 = Instant::now();
            Run { m: Machine::new(policy, PID, t0), t0, now: t0 }
        }

        pub fn at(&mut self, offset: Duration) -> &mut Run {
            self.now = self.t0 + offset;
            self
        }

        /// Every action of one step.
        pub fn all(&mut self, input: Input) -> Vec<Action> {
            self.m.step(input, self.now)
        }

        /// The actions of one step that act on processes (no logs, no systemd, no checks).
        pub fn step(&mut self, input: Input) -> Vec<Action> {
            self.all(input)
                .into_iter()
                .filter(|a| {
                    !matches!(
                        a,
                        Action::Log(..)
                            | Action::Systemd(_)
                            | Action::StopChecks
                            | Action::StartChecks
                            | Action::Ended(_)
                            | Action::OnExit
                    )
                })
                .collect()
        }

        /// The log lines of one step at `level` or more severe.
        pub fn logs(&mut self, input: Input, level: Level) -> Vec<String> {
            self.all(input)
                .into_iter()
                .filter_map(|a| match a {
                    Action::Log(l, line, _) if l <= level => Some(line),
                    _ => None,
                })
                .collect()
        }

        /// The main child exits; nothing else is left.
        pub fn child_exits(&mut self, status: ChildStatus) -> Vec<Action> {
            self.step(Input::Reaped { exits: vec![(PID, status)], children_left: false })
        }
    }

    pub fn signal(sig: Sig, to: Target) -> Vec<Action> {
        vec![Action::Signal { sig, to }]
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::init::signals::{SIGKILL, SIGTERM};

    #[test]
    fn forwards_other_signals_in_every_phase_with_the_child() {
        let mut r = Run::new(Policy::for_tests());
        let hup = sig(libc::SIGHUP);
        assert_eq!(r.step(Input::Signal(hup)), signal(hup, Target::Child(PID)));
        r.step(Input::Signal(SIGTERM));
        assert!(matches!(r.m.phase(), Phase::Draining { .. }));
        assert_eq!(r.step(Input::Signal(hup)), signal(hup, Target::Child(PID)));
        r.at(secs(5)).step(Input::Tick);
        assert!(matches!(r.m.phase(), Phase::Stopping { .. }));
        let usr2 = sig(libc::SIGUSR2);
        assert_eq!(r.step(Input::Signal(usr2)), signal(usr2, Target::Child(PID)));
    }

    #[test]
    fn group_option_targets_the_process_group() {
        let policy =
            Policy { group: true, prestop: Prestop::Fixed(Duration::ZERO), ..Policy::for_tests() };
        let mut r = Run::new(policy);
        let hup = sig(libc::SIGHUP);
        assert_eq!(r.step(Input::Signal(hup)), signal(hup, Target::Group(PID)));
        assert_eq!(r.step(Input::Signal(SIGTERM)), signal(SIGTERM, Target::Group(PID)));
    }

    #[test]
    fn no_forwarding_once_the_child_is_gone() {
        let mut r = Run::new(Policy::for_tests());
        let exits = vec![(PID, ChildStatus::Exited(0))];
        r.step(Input::Reaped { exits, children_left: true });
        assert_eq!(r.step(Input::Signal(sig(libc::SIGHUP))), vec![]);
    }

    #[test]
    fn signals_are_counted() {
        let mut r = Run::new(Policy::for_tests());
        let hup = sig(libc::SIGHUP);
        r.step(Input::Signal(hup));
        r.step(Input::Signal(hup));
        let (_, received, forwarded) = r.m.stats().signals().nth(libc::SIGHUP as usize).unwrap();
        assert_eq!((received, forwarded), (2, 2));
        let kill = r.m.stats().signals().nth(SIGKILL.0 as usize).unwrap();
        assert_eq!((kill.1, kill.2), (0, 0));
    }

    #[test]
    fn orphans_are_counted_and_logged_at_debug() {
        let mut r = Run::new(Policy::for_tests());
        let orphan = Pid::from_raw(77);
        let exits = vec![(orphan, ChildStatus::Exited(0))];
        let logs = r.logs(Input::Reaped { exits, children_left: true }, Level::Debug);
        assert_eq!(logs, ["reaped process 77, which exited with status 0"]);
        assert_eq!(r.m.stats().reaped, 1);
        assert_eq!(r.m.phase(), Phase::Running { pid: PID, since: r.t0 }, "nothing else changes");
    }

    #[test]
    fn leaving_running_stops_the_checks_once() {
        let mut r = Run::new(Policy::for_tests());
        assert!(r.all(Input::Signal(SIGTERM)).contains(&Action::StopChecks));
        assert!(!r.at(secs(5)).all(Input::Tick).contains(&Action::StopChecks));
        let mut r = Run::new(Policy::for_tests());
        let exits = vec![(PID, ChildStatus::Exited(0))];
        assert!(r.all(Input::Reaped { exits, children_left: false }).contains(&Action::StopChecks));
    }

    #[test]
    fn an_idle_machine_asks_for_no_wake_up() {
        let r = Run::new(Policy::for_tests());
        assert_eq!(r.m.deadline(), None);
    }
}
