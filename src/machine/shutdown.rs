//! The shutdown: the phases from running to exited, what each one waits for, and how it ends.
//!
//! ```text
//! Running ─TERM/INT─► Draining ─delay over / app idle─► Stopping ─grace over─► Killing
//!    ├── the child exits (any phase) ──► Exited, or Reaping while other processes remain
//!    └── with --restart, it exits while running ──► Restarting ──► Running (see `restart`)
//! ```
//!
//! Each phase carries its own data: a pid only where the child lives, the drain's
//! bookkeeping only where there is a drain, the watch on the app only while draining. Each
//! step's log data names the phase the step leaves the machine in ([`Phase::name`]).

use std::time::{Duration, Instant};

use log::Level;
use nix::unistd::Pid;

use super::watch::{AppSummary, Rule, Watch};
use super::{Action, Ending, Fields, Machine, Prestop, Target, log, step};
use crate::init::signals::{SIGKILL, SIGTERM, Sig};
use crate::init::status::ChildStatus;
use crate::show;

/// The preStop delay used by `--prestop-delay auto` when a load balancer may be routing to us.
pub const AUTO_PRESTOP: Duration = Duration::from_secs(5);

/// How often the app's connections are read during a request-aware drain: the quiet window
/// is measured in these steps, and a read costs a few milliseconds (see `bench/drain`).
pub const COUNT_EVERY: Duration = Duration::from_millis(100);

/// Why the preStop phase ended, for `/metrics`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DrainEnd {
    /// The request-aware drain found the app idle and its probers told.
    AppIdle,
    /// The preStop delay ran out.
    Delay,
    /// A second SIGTERM/SIGINT skipped the rest of it.
    Signal,
    /// The child exited during it.
    ChildExited,
    /// There was no delay to wait.
    NoDelay,
}

impl DrainEnd {
    pub const ALL: [DrainEnd; 5] = [
        DrainEnd::AppIdle,
        DrainEnd::Delay,
        DrainEnd::Signal,
        DrainEnd::ChildExited,
        DrainEnd::NoDelay,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DrainEnd::AppIdle => "app_idle",
            DrainEnd::Delay => "delay",
            DrainEnd::Signal => "signal",
            DrainEnd::ChildExited => "child_exited",
            DrainEnd::NoDelay => "no_delay",
        }
    }
}

/// A drain in progress: what started it and how far it got.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Drain {
    pub started: Instant,
    /// The signal that started it (the stop signal, unless `--stop-signal` says otherwise).
    pub trigger: Sig,
    /// SIGTERM/SIGINT received so far: the first drains, the second hurries, the third kills.
    pub signals: u32,
    /// When the stop signal was sent.
    pub stopped: Option<Instant>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    /// No child yet: waiting for the app's dependencies until `until` (see [`super::deps`]).
    Waiting { since: Instant, until: Instant },
    /// The child runs; `/readyz` follows the app's readiness.
    Running { pid: Pid, since: Instant },
    /// Unready, waiting out the preStop delay so that load balancers stop routing; in a
    /// request-aware drain (`watch`), the app's connections are read at `count_at`.
    Draining {
        pid: Pid,
        drain: Drain,
        until: Instant,
        count_at: Option<Instant>,
        watch: Option<Watch>,
    },
    /// The stop signal was sent at `since`; SIGKILL at `deadline`.
    Stopping { pid: Pid, since: Instant, deadline: Instant, drain: Drain },
    /// SIGKILL was sent; waiting for the child to be reaped.
    Killing { pid: Pid, since: Instant, drain: Drain },
    /// The child is gone but other processes under lastcall remain: they were sent the stop
    /// signal, and get SIGKILL at `kill_at` (`None`: already sent). `signals` counts
    /// SIGTERM/SIGINT, the drain's included: the third kills at once.
    Reaping { status: ChildStatus, since: Instant, kill_at: Option<Instant>, signals: u32 },
    /// The child ended with `status` at `since` while running, and is started again (see
    /// [`super::restart`]) at `at`, once no process is `left` under lastcall: those were sent
    /// the stop signal, and get SIGKILL at `kill_at` (`None`: sent, or none left).
    Restarting {
        status: ChildStatus,
        since: Instant,
        at: Instant,
        left: bool,
        kill_at: Option<Instant>,
    },
    /// Nothing is left; lastcall exits with `code`.
    Exited { code: u8 },
}

impl Phase {
    /// Every phase's name, for `/metrics` (one gauge each).
    pub const NAMES: [&'static str; 8] = [
        "waiting",
        "running",
        "draining",
        "stopping",
        "killing",
        "reaping",
        "exited",
        "restarting",
    ];

    pub fn name(&self) -> &'static str {
        let i = match self {
            Phase::Waiting { .. } => 0,
            Phase::Running { .. } => 1,
            Phase::Draining { .. } => 2,
            Phase::Stopping { .. } => 3,
            Phase::Killing { .. } => 4,
            Phase::Reaping { .. } => 5,
            Phase::Exited { .. } => 6,
            Phase::Restarting { .. } => 7,
        };
        Phase::NAMES[i]
    }

    /// When the phase began (`None` for the last one, which lasts no time).
    pub fn since(&self) -> Option<Instant> {
        match *self {
            Phase::Waiting { since, .. }
            | Phase::Running { since, .. }
            | Phase::Stopping { since, .. }
            | Phase::Killing { since, .. }
            | Phase::Reaping { since, .. }
            | Phase::Restarting { since, .. } => Some(since),
            Phase::Draining { drain, .. } => Some(drain.started),
            Phase::Exited { .. } => None,
        }
    }

    /// The main child's pid, in the phases where it is alive.
    pub fn pid(&self) -> Option<Pid> {
        match *self {
            Phase::Running { pid, .. }
            | Phase::Draining { pid, .. }
            | Phase::Stopping { pid, .. }
            | Phase::Killing { pid, .. } => Some(pid),
            Phase::Waiting { .. }
            | Phase::Reaping { .. }
            | Phase::Restarting { .. }
            | Phase::Exited { .. } => None,
        }
    }

    /// The drain, in the phases that have one.
    pub(super) fn drain(&self) -> Option<Drain> {
        match *self {
            Phase::Draining { drain, .. }
            | Phase::Stopping { drain, .. }
            | Phase::Killing { drain, .. } => Some(drain),
            _ => None,
        }
    }

    /// When the phase wants a tick.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match *self {
            Phase::Draining { until, count_at, .. } => {
                Some(count_at.map_or(until, |c| c.min(until)))
            }
            Phase::Stopping { deadline, .. } => Some(deadline),
            Phase::Reaping { kill_at, .. } => kill_at,
            Phase::Restarting { left: true, kill_at, .. } => kill_at,
            Phase::Restarting { at, .. } => Some(at),
            _ => None,
        }
    }
}

impl Machine {
    /// A shutdown step at info, with its data, said in the phase the machine is in now (set
    /// the new phase first).
    fn said(&self, line: String, fields: Fields) -> Action {
        step(line, Fields { phase: Some(self.phase.name()), ..fields })
    }

    /// SIGTERM or SIGINT: the first drains, the second skips the rest of the preStop delay
    /// (or reaches the child, once the stop signal is sent), the third kills.
    pub(super) fn on_drain_signal(&mut self, sig: Sig, now: Instant, out: &mut Vec<Action>) {
        match &mut self.phase {
            Phase::Running { pid, .. } => {
                let pid = *pid;
                self.start_drain(pid, sig, now, out);
            }
            Phase::Draining { pid, drain, until, .. } => {
                drain.signals += 1;
                let (pid, drain, left) = (*pid, *drain, until.saturating_duration_since(now));
                out.push(self.said(
                    format!(
                        "received {sig} again: skipping the {} left of the preStop delay",
                        show::duration(left)
                    ),
                    Fields { pid: Some(pid), signal: Some(sig), ..Fields::NONE },
                ));
                self.stop(pid, drain, DrainEnd::Signal, now, out);
            }
            Phase::Stopping { pid, drain, .. } => {
                drain.signals += 1;
                let (pid, drain) = (*pid, *drain);
                if drain.signals == 2 {
                    // Nothing left to skip: the child sees the signal, as it would without
                    // lastcall.
                    out.push(Action::Signal { sig, to: self.target(pid) });
                } else {
                    let fields = Fields { pid: Some(pid), signal: Some(sig), ..Fields::NONE };
                    out.push(self.said(format!("received {sig} a third time"), fields));
                    self.kill(pid, drain, now, out);
                }
            }
            Phase::Reaping { status, since, kill_at, signals } => {
                *signals += 1;
                if *signals >= 3 && kill_at.is_some() {
                    let (status, since, signals) = (*status, *since, *signals);
                    let fields = Fields { signal: Some(sig), ..Fields::NONE };
                    out.push(self.said(format!("received {sig} a third time"), fields));
                    self.kill_descendants(status, since, signals, out);
                }
            }
            Phase::Restarting { .. } => self.restart_stopped(sig, now, out),
            Phase::Waiting { .. } | Phase::Killing { .. } | Phase::Exited { .. } => {}
        }
    }

    fn start_drain(&mut self, pid: Pid, sig: Sig, now: Instant, out: &mut Vec<Action>) {
        self.abandon_reload(now, out);
        let (delay, why) = match self.policy.prestop {
            // /readyz has answered 503 since the crash: nothing routed here is to be waited for.
            _ if self.restarts.total > 0 && !self.gate.ever_ready() => {
                (Duration::ZERO, "the restarted child has not been ready yet")
            }
            Prestop::Fixed(d) => (d, "--prestop-delay"),
            Prestop::Auto if self.policy.in_kubernetes => {
                (AUTO_PRESTOP, "auto: KUBERNETES_SERVICE_HOST is set")
            }
            Prestop::Auto if self.gate.probed => (AUTO_PRESTOP, "auto: /readyz has been probed"),
            Prestop::Auto => (Duration::ZERO, "auto: not in Kubernetes and /readyz never probed"),
        };
        let drain = Drain { started: now, trigger: sig, signals: 1, stopped: None };
        let watch = (self.policy.drain_idle && !delay.is_zero()).then(Watch::default);
        self.phase = Phase::Draining { pid, drain, until: now + delay, count_at: None, watch };
        out.push(self.said(
            format!(
                "received {sig}: draining, /readyz answers 503; preStop delay {} ({why})",
                show::duration(delay)
            ),
            Fields { pid: Some(pid), signal: Some(sig), delay: Some(delay), ..Fields::NONE },
        ));
        (self.last.seen, self.last.evidence) = (None, None);
        if delay.is_zero() {
            self.stop(pid, drain, DrainEnd::NoDelay, now, out);
        } else if watch.is_some() {
            self.probers.start_drain(now);
            out.push(Action::FindAppPorts);
        }
    }

    fn rule(&self) -> Rule {
        let p = &self.policy;
        let in_kubernetes = p.in_kubernetes;
        Rule { quiet: p.drain_quiet, probes: p.drain_probes, min: p.drain_min, in_kubernetes }
    }

    /// The ports a request-aware drain watches: reading starts at once, and an app with no
    /// connections stops after `--drain-min`.
    pub(super) fn on_app_ports(&mut self, ports: Vec<u16>, out: &mut Vec<Action>) {
        let Phase::Draining { watch: Some(watch), .. } = &mut self.phase else {
            return;
        };
        watch.ports = Some(ports.len());
        if ports.is_empty() {
            out.push(log(
                Level::Info,
                "the drain found no TCP port the app listens on: the preStop delay runs in full"
                    .into(),
            ));
        } else {
            let list: Vec<String> = ports.iter().map(u16::to_string).collect();
            out.push(log(
                Level::Info,
                format!(
                    "the drain watches the app's connections on port{} {}",
                    if ports.len() == 1 { "" } else { "s" },
                    list.join(", ")
                ),
            ));
            out.push(Action::ReadApp);
        }
    }

    /// A read of the app's connections (or why it failed): the preStop phase ends once the
    /// watch's rule has its evidence; else the next read is due in [`COUNT_EVERY`].
    pub(super) fn on_app_read(
        &mut self,
        read: Result<AppSummary, String>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Phase::Draining { pid, drain, until, watch: Some(mut watch), .. } = self.phase else {
            return;
        };
        match read {
            Ok(seen) => {
                let counts = |s: &AppSummary| (s.busy, s.unsure, s.idle);
                if self.last.seen.as_ref().map(counts) != Some(counts(&seen)) {
                    out.push(log(
                        Level::Debug,
                        format!(
                            "the app's connections: {} busy, {} unsure, {} idle",
                            seen.busy, seen.unsure, seen.idle
                        ),
                    ));
                }
                self.last.seen = Some(seen);
                (watch.seen, watch.failed) = (Some(seen), false);
            }
            Err(e) => {
                out.push(log(Level::Debug, format!("reading the app's connections: {e}")));
                watch.failed = true;
            }
        }
        let count_at = Some(now + COUNT_EVERY);
        self.phase = Phase::Draining { pid, drain, until, count_at, watch: Some(watch) };
        if let Some((line, evidence)) = watch.ended(&self.probers, self.rule(), drain.started, now)
        {
            self.last.evidence = Some(evidence);
            let took = Some(now.saturating_duration_since(drain.started));
            out.push(self.said(line, Fields { pid: Some(pid), took, ..Fields::NONE }));
            self.stop(pid, drain, DrainEnd::AppIdle, now, out);
        }
    }

    /// The stop signal: `--stop-signal`, else the one that started the drain.
    pub(super) fn stop_signal(&self, trigger: Option<Sig>) -> Sig {
        self.policy.stop_signal.or(trigger).unwrap_or(SIGTERM)
    }

    fn stop(
        &mut self,
        pid: Pid,
        mut drain: Drain,
        why: DrainEnd,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.last.ended = Some(why);
        let sig = self.stop_signal(Some(drain.trigger));
        let to = self.target(pid);
        let drained = now.saturating_duration_since(drain.started);
        drain.stopped = Some(now);
        self.last.drain = Some(drained);
        self.phase = Phase::Stopping { pid, since: now, deadline: now + self.policy.grace, drain };
        out.push(self.said(
            format!(
                "sending {sig} to {to} after {} of drain; SIGKILL in {}",
                show::duration(drained),
                show::duration(self.policy.grace)
            ),
            Fields {
                pid: Some(pid),
                signal: Some(sig),
                grace: Some(self.policy.grace),
                took: Some(drained),
                ..Fields::NONE
            },
        ));
        out.push(Action::Signal { sig, to });
    }

    /// SIGKILL to the child's process group and to every other process under lastcall: a
    /// child that left its group (setsid, setpgid) dies all the same.
    fn kill(&mut self, pid: Pid, drain: Drain, now: Instant, out: &mut Vec<Action>) {
        let drained = now.saturating_duration_since(drain.started);
        self.phase = Phase::Killing { pid, since: now, drain };
        out.push(self.said(
            format!(
                "sending SIGKILL to process group {pid} and every process under lastcall after {} \
                 of drain",
                show::duration(drained)
            ),
            Fields { pid: Some(pid), signal: Some(SIGKILL), took: Some(drained), ..Fields::NONE },
        ));
        out.extend(kill_all(pid));
    }

    fn kill_descendants(
        &mut self,
        status: ChildStatus,
        since: Instant,
        signals: u32,
        out: &mut Vec<Action>,
    ) {
        self.phase = Phase::Reaping { status, since, kill_at: None, signals };
        let fields = Fields { signal: Some(SIGKILL), ..Fields::NONE };
        out.push(self.said("sending SIGKILL to the remaining processes".into(), fields));
        out.push(Action::Signal { sig: SIGKILL, to: Target::Descendants });
    }

    /// The main child was reaped: lastcall exits with its status, once nothing else is left.
    pub(super) fn on_child_exit(
        &mut self,
        status: ChildStatus,
        others_left: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if self.restart_on_exit(status, others_left, now, out) {
            return;
        }
        let code = status.exit_code(&self.policy.success_exit);
        let end = self.child_end(status, now);
        let (pid, drain) = (self.phase.pid(), self.phase.drain());
        self.ending = Some(self.ending_of(end.ending));
        if let Ending::DuringDrain { .. } = end.ending {
            self.last.ended = Some(DrainEnd::ChildExited);
        }
        if let Some(sent) = drain.and_then(|d| d.stopped) {
            self.last.grace = Some(now.saturating_duration_since(sent));
        }
        let fields = Fields { pid, status: Some(status.code()), took: end.took, ..Fields::NONE };
        let shown = end.shown;
        if !others_left {
            self.phase = Phase::Exited { code };
            // A child that simply finished is a normal run: nothing to say at info.
            if drain.is_some() {
                out.push(self.said(format!("{shown}; exiting with {code}"), fields));
            }
            self.exit(code, out);
            return;
        }
        let signals = drain.map_or(0, |d| d.signals);
        self.phase = Phase::Reaping { status, since: now, kill_at: end.kill_at, signals };
        match end.kill_at {
            Some(at) => {
                let sig = self.stop_signal(drain.map(|d| d.trigger));
                let grace = at.saturating_duration_since(now);
                out.push(self.said(
                    format!(
                        "{shown}; other processes remain: sending them {sig}, SIGKILL in {}",
                        show::duration(grace)
                    ),
                    Fields { signal: Some(sig), grace: Some(grace), ..fields },
                ));
                out.push(Action::Signal { sig, to: Target::Descendants });
            }
            None => {
                out.push(self.said(format!("{shown}; other processes remain"), fields));
                self.kill_descendants(status, now, signals, out);
            }
        }
    }

    /// Processes other than the main child were reaped: once none is left after the child,
    /// lastcall exits.
    pub(super) fn on_others_reaped(&mut self, others_left: bool, out: &mut Vec<Action>) {
        let Phase::Reaping { status, kill_at, .. } = self.phase else {
            return;
        };
        if !others_left {
            let code = status.exit_code(&self.policy.success_exit);
            self.phase = Phase::Exited { code };
            let fields = Fields { status: Some(status.code()), ..Fields::NONE };
            let line = format!("all remaining processes reaped; exiting with {code}");
            out.push(self.said(line, fields));
            self.exit(code, out);
        } else if kill_at.is_none() {
            // Reaping a killed process can orphan its children onto us: they get SIGKILL too.
            out.push(Action::Signal { sig: SIGKILL, to: Target::Descendants });
        }
    }

    pub(super) fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        match self.phase {
            Phase::Draining { pid, drain, until, watch, .. } if now >= until => {
                let delay = until.saturating_duration_since(drain.started);
                if let Some(watch) = watch {
                    let why = watch.not_ended(&self.probers, self.rule(), drain.started, now);
                    let line = format!("preStop delay of {} reached {why}", show::duration(delay));
                    let fields = Fields { pid: Some(pid), delay: Some(delay), ..Fields::NONE };
                    out.push(self.said(line, fields));
                }
                self.stop(pid, drain, DrainEnd::Delay, now, out)
            }
            Phase::Draining { pid, drain, until, count_at: Some(at), watch } if now >= at => {
                out.push(Action::ReadApp);
                // The read comes back as an input; no second request meanwhile.
                self.phase = Phase::Draining { pid, drain, until, count_at: None, watch };
            }
            Phase::Stopping { pid, deadline, drain, .. } if now >= deadline => {
                out.push(self.said(
                    format!("grace period of {} is over", show::duration(self.policy.grace)),
                    Fields { pid: Some(pid), grace: Some(self.policy.grace), ..Fields::NONE },
                ));
                self.kill(pid, drain, now, out)
            }
            Phase::Reaping { status, since, kill_at: Some(at), signals } if now >= at => {
                self.kill_descendants(status, since, signals, out)
            }
            _ => {}
        }
    }
}

/// SIGKILL to the group of child `pid`, then to every process under lastcall.
fn kill_all(pid: Pid) -> [Action; 2] {
    [
        Action::Signal { sig: SIGKILL, to: Target::Group(pid) },
        Action::Signal { sig: SIGKILL, to: Target::Descendants },
    ]
}

#[cfg(test)]
mod tests {
    use log::Level;

    use super::super::testing::*;
    use super::super::watch::Rhythm;
    use super::super::{Input, Policy, Probe, ReadBy};
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const SIGINT: Sig = Sig(libc::SIGINT);
    const SIGHUP: Sig = Sig(libc::SIGHUP);
    const SIGUSR2: Sig = Sig(libc::SIGUSR2);

    fn policy(prestop: Prestop) -> Policy {
        Policy { prestop, ..Policy::for_tests() }
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
        assert_eq!(r.at(secs(35)).step(Input::Tick), kill_all(PID));
        assert_eq!(r.m.deadline(), None);
        assert!(r.m.is_live());

        let end = r.at(secs(36)).child_exits(ChildStatus::Signaled(SIGKILL));
        assert_eq!(end, vec![]);
        assert_eq!(r.m.exit_code(), Some(137));
        assert!(!r.m.is_live());
        let last = r.m.last_shutdown();
        assert_eq!((last.drain, last.grace), (Some(secs(5)), Some(secs(21))));
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
        assert_eq!(r.at(secs(2)).step(Input::Signal(SIGINT)), kill_all(PID));
        assert!(matches!(r.m.phase(), Phase::Killing { .. }));
    }

    #[test]
    fn second_signal_during_grace_is_forwarded() {
        let mut r = Run::new(policy(Prestop::Fixed(Duration::ZERO)));
        assert_eq!(r.step(Input::Signal(SIGINT)), signal(SIGINT, Target::Child(PID)));
        assert_eq!(r.step(Input::Signal(SIGTERM)), signal(SIGTERM, Target::Child(PID)));
        assert_eq!(r.step(Input::Signal(SIGTERM)), kill_all(PID));
    }

    /// The preStop delay `auto` picks; `None` when it stops at once.
    fn auto_delay(in_kubernetes: bool, probed: bool) -> Option<Duration> {
        let mut r = Run::new(Policy { in_kubernetes, ..policy(Prestop::Auto) });
        if probed {
            r.step(Input::Probed(probe(false)));
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
            assert_eq!(r.child_exits(exited), vec![], "{name}");
            assert_eq!(r.m.phase(), Phase::Exited { code: 3 }, "{name}");
            assert_eq!(r.m.exit_code(), Some(3), "{name}");
        }
    }

    #[test]
    fn success_exit_maps_the_code() {
        let mut r = Run::new(Policy { success_exit: vec![143], ..policy(Prestop::Auto) });
        r.child_exits(ChildStatus::Signaled(SIGTERM));
        assert_eq!(r.m.exit_code(), Some(0));
    }

    fn reaped(others_left: bool) -> Input {
        Input::Reaped {
            exits: vec![(Pid::from_raw(99), ChildStatus::Exited(0))],
            children_left: others_left,
        }
    }

    fn main_exit(status: ChildStatus) -> Input {
        Input::Reaped { exits: vec![(PID, status)], children_left: true }
    }

    #[test]
    fn leftover_descendants_are_stopped_then_killed_then_reaped() {
        let mut r = Run::new(policy(Prestop::Auto));
        let out = r.at(secs(1)).step(main_exit(ChildStatus::Exited(0)));
        assert_eq!(out, signal(SIGTERM, Target::Descendants));
        assert!(!r.m.is_live() && !r.m.is_ready());
        assert_eq!(r.m.deadline(), Some(r.t0 + secs(21)));
        // Some leave, some stay: keep waiting.
        assert_eq!(r.step(reaped(true)), vec![]);
        assert_eq!(r.at(secs(21)).step(Input::Tick), signal(SIGKILL, Target::Descendants));
        // A killed process's own orphans arrive later: they get SIGKILL too.
        assert_eq!(r.step(reaped(true)), signal(SIGKILL, Target::Descendants));
        assert_eq!(r.step(reaped(false)), vec![]);
        assert_eq!(r.m.exit_code(), Some(0));
    }

    #[test]
    fn a_pass_that_reaped_only_check_commands_ends_the_wait() {
        let mut r = Run::new(policy(Prestop::Auto));
        r.step(main_exit(ChildStatus::Exited(0)));
        let only_checks = Input::Reaped { exits: vec![], children_left: false };
        assert_eq!(r.step(only_checks), vec![]);
        assert_eq!(r.m.exit_code(), Some(0));
    }

    #[test]
    fn leftovers_keep_the_shutdown_deadline() {
        let mut r = Run::new(policy(Prestop::Fixed(Duration::ZERO)));
        r.step(Input::Signal(SIGTERM));
        let out = r.at(secs(15)).step(main_exit(ChildStatus::Signaled(SIGTERM)));
        assert_eq!(out, signal(SIGTERM, Target::Descendants));
        assert_eq!(r.m.deadline(), Some(r.t0 + secs(20)), "not a fresh grace period");
        assert_eq!(r.at(secs(20)).step(Input::Tick), signal(SIGKILL, Target::Descendants));
        r.step(reaped(false));
        assert_eq!(r.m.exit_code(), Some(143));
    }

    #[test]
    fn leftovers_after_sigkill_are_killed_at_once() {
        let mut r = Run::new(policy(Prestop::Fixed(Duration::ZERO)));
        for _ in 0..3 {
            r.step(Input::Signal(SIGTERM));
        }
        let out = r.step(main_exit(ChildStatus::Signaled(SIGKILL)));
        assert_eq!(out, signal(SIGKILL, Target::Descendants));
        assert_eq!(r.m.deadline(), None);
    }

    #[test]
    fn a_third_signal_while_leftovers_are_stopped_kills_them() {
        let mut r = Run::new(policy(Prestop::Auto));
        r.step(main_exit(ChildStatus::Exited(0)));
        assert_eq!(r.step(Input::Signal(SIGTERM)), vec![]);
        assert_eq!(r.step(Input::Signal(SIGTERM)), vec![]);
        assert_eq!(r.step(Input::Signal(SIGTERM)), signal(SIGKILL, Target::Descendants));
        // The drain's own signals count: the child was stopped by the first of three.
        let mut r = Run::new(policy(Prestop::Fixed(Duration::ZERO)));
        r.step(Input::Signal(SIGTERM));
        r.step(main_exit(ChildStatus::Signaled(SIGTERM)));
        assert_eq!(r.step(Input::Signal(SIGTERM)), vec![]);
        assert_eq!(r.step(Input::Signal(SIGTERM)), signal(SIGKILL, Target::Descendants));
    }

    #[test]
    fn no_forwarding_of_hup_after_sigkill_to_the_group() {
        let mut r = Run::new(policy(Prestop::Fixed(Duration::ZERO)));
        for _ in 0..3 {
            r.step(Input::Signal(SIGTERM));
        }
        assert_eq!(r.step(Input::Signal(SIGTERM)), vec![], "killing: nothing more to do");
        assert_eq!(r.step(Input::Signal(SIGHUP)), signal(SIGHUP, Target::Child(PID)));
    }

    fn idle_policy() -> Policy {
        Policy { drain_idle: true, drain_min: secs(1), ..policy(Prestop::Fixed(secs(30))) }
    }

    fn probe(kubelet: bool) -> Probe {
        Probe { from: "10.0.0.1".parse().unwrap(), ready: true, kubelet, lb: None }
    }

    /// A read by socket diagnostics: `busy` and `idle` connections, the last request at
    /// `last`, no arrival during the drain.
    fn read(busy: usize, idle: usize, last: Option<Instant>) -> Input {
        Input::AppRead(Ok(AppSummary { busy, idle, last_activity: last, ..summary() }))
    }

    fn summary() -> AppSummary {
        AppSummary {
            busy: 0,
            unsure: 0,
            idle: 0,
            unsure_from: Default::default(),
            last_activity: None,
            rhythm: Default::default(),
            by: ReadBy::Sockets,
        }
    }

    /// A count from /proc: `n` open connections, each taken as busy.
    fn counted(n: usize) -> Input {
        Input::AppRead(Ok(AppSummary { busy: n, by: ReadBy::Counted, ..summary() }))
    }

    /// A request-aware drain, started at t0, watching port 8080; with `prober`, 10.0.0.1
    /// probed `/readyz` twice before it, and is told three times at once.
    fn watching(policy: Policy, prober: bool) -> Run {
        let mut r = Run::new(policy);
        if prober {
            r.step(Input::Probed(probe(false)));
            r.step(Input::Probed(probe(false)));
        }
        assert_eq!(r.step(Input::Signal(SIGTERM)), vec![Action::FindAppPorts]);
        assert_eq!(r.step(Input::AppPorts(vec![8080])), vec![Action::ReadApp]);
        if prober {
            for _ in 0..3 {
                r.step(Input::Probed(Probe { ready: false, ..probe(false) }));
            }
        }
        r
    }

    /// Reads again at `at` (the tick asks for it), giving `read`.
    fn read_at(r: &mut Run, at: Duration, read: Input) -> Vec<Action> {
        assert_eq!(r.at(at).step(Input::Tick), vec![Action::ReadApp]);
        r.step(read)
    }

    #[test]
    fn idle_connections_do_not_hold_the_drain() {
        let mut r = watching(idle_policy(), true);
        let pooled = read(0, 2, Some(r.t0));
        assert_eq!(r.step(pooled.clone()), vec![], "--drain-min first");
        assert_eq!(r.m.deadline(), Some(r.t0 + COUNT_EVERY));
        assert_eq!(r.at(secs(1)).step(Input::Tick), vec![Action::ReadApp]);
        assert_eq!(
            r.logs(pooled, Level::Info)[0],
            "load balancers let go: probers told 3 times, no request for 1.0s, 0 busy of 2 \
             connections, after 1.0s of drain"
        );
        assert!(matches!(r.m.phase(), Phase::Stopping { .. }));
        let last = r.m.last_shutdown();
        assert_eq!(last.ended, Some(DrainEnd::AppIdle));
        assert_eq!(last.seen.map(|s| (s.busy, s.idle)), Some((0, 2)));
        let evidence = last.evidence.unwrap();
        assert_eq!((evidence.silence, evidence.needed, evidence.rate), (secs(1), secs(1), None));
        assert_eq!((evidence.probers, evidence.told), (1, 3));
    }

    #[test]
    fn a_busy_connection_then_a_recent_request_hold_the_drain() {
        let mut r = watching(idle_policy(), true);
        let t0 = r.t0;
        r.step(read(1, 0, Some(t0)));
        for t in [1, 2, 3] {
            assert_eq!(read_at(&mut r, secs(t), read(1, 0, Some(t0))), vec![], "busy at {t}s");
        }
        // Answered, after a request at 3.5 s: quiet for --drain-quiet first.
        let answered = read(0, 1, Some(r.t0 + ms(3_500)));
        assert_eq!(read_at(&mut r, ms(3_500), answered.clone()), vec![]);
        assert_eq!(read_at(&mut r, ms(4_400), answered.clone()), vec![]);
        assert_eq!(read_at(&mut r, ms(4_500), answered), signal(SIGTERM, Target::Child(PID)));
    }

    #[test]
    fn the_upper_bound_says_what_held_the_drain() {
        let mut r = watching(idle_policy(), true);
        r.step(read(1, 1, None));
        let logs = r.at(secs(30)).logs(Input::Tick, Level::Info);
        assert_eq!(logs[0], "preStop delay of 30.0s reached with 1 busy connection");
        assert_eq!(r.m.last_shutdown().ended, Some(DrainEnd::Delay));
        assert_eq!(r.m.last_shutdown().evidence, None);
        let mut r = watching(idle_policy(), true);
        r.step(read(0, 3, Some(r.t0 + ms(29_500))));
        assert_eq!(
            r.at(secs(30)).logs(Input::Tick, Level::Info)[0],
            "preStop delay of 30.0s reached with 0 busy of 3 connections, last request 500ms ago"
        );
        let mut r = watching(idle_policy(), true);
        r.step(Input::AppRead(Ok(AppSummary { unsure: 2, ..summary() })));
        assert_eq!(
            r.at(secs(30)).logs(Input::Tick, Level::Info)[0],
            "preStop delay of 30.0s reached with 2 connections the app wrote last on (an answer \
             paused mid-stream looks the same as a finished one)"
        );
        let mut r = watching(idle_policy(), false);
        r.step(read(0, 3, None));
        assert_eq!(
            r.at(secs(30)).logs(Input::Tick, Level::Info)[0],
            "preStop delay of 30.0s reached with too little traffic seen to tell that it \
             stopped (0 arrivals in the drain, no request seen in 30.0s)"
        );
    }

    #[test]
    fn without_a_prober_the_drain_ends_on_the_traffics_rhythm() {
        // Outside Kubernetes, nobody probes: 40 arrivals at 20/s, the last at 2 s.
        let mut r = watching(idle_policy(), false);
        let t0 = r.t0;
        let rhythm = Rhythm {
            arrivals: 40,
            first: Some(t0 + ms(50)),
            last: Some(t0 + secs(2)),
            longest_gap: ms(200),
        };
        let seen = |last| {
            Input::AppRead(Ok(AppSummary { idle: 1, last_activity: last, rhythm, ..summary() }))
        };
        r.step(seen(Some(t0 + secs(2))));
        assert_eq!(read_at(&mut r, ms(2_900), seen(Some(t0 + secs(2)))), vec![], "quiet first");
        assert_eq!(
            r.logs(Input::Tick, Level::Info),
            Vec::<String>::new(),
            "the next read is not due yet"
        );
        r.at(secs(3)).step(Input::Tick);
        let logs = r.logs(seen(Some(t0 + secs(2))), Level::Info);
        assert_eq!(
            logs[0],
            "traffic stopped: no request for 1.0s (1.0s needed after 40 arrivals at 13.6/s or \
             more), 0 busy of 1 connection, after 3.0s of drain"
        );
        let evidence = r.m.last_shutdown().evidence.unwrap();
        assert!(evidence.rate.is_some_and(|r| (13.0..14.0).contains(&r)));
    }

    #[test]
    fn in_kubernetes_the_rhythm_counts_even_with_probers() {
        let policy = Policy { in_kubernetes: true, ..idle_policy() };
        let mut r = watching(policy, true);
        let idle = read(0, 1, Some(r.t0));
        r.step(idle.clone());
        assert_eq!(
            r.at(secs(30)).logs(Input::Tick, Level::Info)[0],
            "preStop delay of 30.0s reached with too little traffic seen to tell that it \
             stopped (0 arrivals in the drain, last request 30.0s ago)"
        );
    }

    #[test]
    fn the_drain_waits_until_every_prober_was_told() {
        let mut r = Run::new(idle_policy());
        for t in [0, 2, 4] {
            r.at(secs(t)).step(Input::Probed(probe(false)));
        }
        // The kubelet is not waited for.
        let kubelet = Probe { from: "10.0.0.9".parse().unwrap(), ..probe(true) };
        r.step(Input::Probed(kubelet));
        r.step(Input::Probed(kubelet));
        r.at(secs(5)).step(Input::Signal(SIGTERM));
        r.step(Input::AppPorts(vec![8080]));
        r.step(read(0, 1, None));
        let told = Probe { ready: false, ..probe(false) };
        for t in [6, 7] {
            r.at(secs(t)).step(Input::Probed(told));
            assert_eq!(read_at(&mut r, secs(t), read(0, 1, None)), vec![], "told fewer than 3");
        }
        assert_eq!(
            r.at(secs(35)).logs(Input::Tick, Level::Info)[0],
            "preStop delay of 30.0s reached with a prober told 2 of 3 times"
        );

        let mut r = Run::new(idle_policy());
        for t in [0, 2] {
            r.at(secs(t)).step(Input::Probed(probe(false)));
        }
        r.at(secs(3)).step(Input::Signal(SIGTERM));
        r.step(Input::AppPorts(vec![8080]));
        r.step(read(0, 0, None));
        for t in [4, 5, 6] {
            r.at(secs(t)).step(Input::Probed(told));
        }
        assert_eq!(r.step(Input::Tick), vec![Action::ReadApp]);
        assert_eq!(
            r.logs(read(0, 0, None), Level::Info)[0],
            "load balancers let go: probers told 3 times, no request seen, 0 busy of 0 \
             connections, after 3.0s of drain"
        );
    }

    #[test]
    fn without_ports_the_delay_runs_in_full() {
        let mut r = Run::new(idle_policy());
        r.step(Input::Signal(SIGTERM));
        let logs = r.logs(Input::AppPorts(vec![]), Level::Info);
        assert_eq!(
            logs,
            ["the drain found no TCP port the app listens on: the preStop delay runs in full"]
        );
        assert_eq!(r.m.deadline(), Some(r.t0 + secs(30)));
        assert_eq!(
            r.at(secs(30)).logs(Input::Tick, Level::Info)[0],
            "preStop delay of 30.0s reached with no port of the app's to watch"
        );
    }

    #[test]
    fn the_drain_watches_the_ports_it_was_told() {
        let mut r = Run::new(idle_policy());
        r.step(Input::Signal(SIGTERM));
        assert_eq!(
            r.logs(Input::AppPorts(vec![8080, 8443]), Level::Info),
            ["the drain watches the app's connections on ports 8080, 8443"]
        );
        assert_eq!(
            r.at(secs(30)).logs(Input::Tick, Level::Info)[0],
            "preStop delay of 30.0s reached without a read of the app's connections"
        );
    }

    #[test]
    fn a_count_from_proc_holds_the_drain_while_any_connection_is_open() {
        let mut r = watching(idle_policy(), true);
        assert_eq!(r.logs(counted(2), Level::Warn), Vec::<String>::new(), "the drain warns");
        r.at(secs(1)).step(Input::Tick);
        r.step(counted(2));
        assert!(matches!(r.m.phase(), Phase::Draining { .. }), "open connections hold it");
        r.at(secs(2)).step(Input::Tick);
        assert_eq!(
            r.logs(counted(0), Level::Info)[0],
            "load balancers let go: probers told 3 times, no connection open, after 2.0s of drain"
        );
        let mut r = watching(idle_policy(), true);
        r.step(counted(2));
        assert_eq!(
            r.at(secs(30)).logs(Input::Tick, Level::Info)[0],
            "preStop delay of 30.0s reached with 2 open connections"
        );
    }

    #[test]
    fn a_failed_read_is_tried_again() {
        let mut r = watching(idle_policy(), true);
        let failed = Input::AppRead(Err("no buffer".into()));
        assert_eq!(r.logs(failed, Level::Debug), ["reading the app's connections: no buffer"]);
        assert_eq!(r.m.deadline(), Some(r.t0 + COUNT_EVERY));
        assert_eq!(read_at(&mut r, secs(1), read(0, 0, None)), signal(SIGTERM, Target::Child(PID)));
    }

    #[test]
    fn every_drain_says_why_it_ended() {
        let ended = |r: &Run| r.m.last_shutdown().ended;
        let mut r = Run::new(policy(Prestop::Fixed(secs(5))));
        r.step(Input::Signal(SIGTERM));
        r.at(secs(5)).step(Input::Tick);
        assert_eq!(ended(&r), Some(DrainEnd::Delay));
        let mut r = Run::new(policy(Prestop::Fixed(secs(5))));
        r.step(Input::Signal(SIGTERM));
        r.step(Input::Signal(SIGTERM));
        assert_eq!(ended(&r), Some(DrainEnd::Signal));
        let mut r = Run::new(policy(Prestop::Fixed(secs(5))));
        r.step(Input::Signal(SIGTERM));
        r.child_exits(ChildStatus::Exited(0));
        assert_eq!(ended(&r), Some(DrainEnd::ChildExited));
        let mut r = Run::new(policy(Prestop::Fixed(Duration::ZERO)));
        r.step(Input::Signal(SIGTERM));
        assert_eq!(ended(&r), Some(DrainEnd::NoDelay));
    }

    #[test]
    fn connection_counts_are_logged_as_they_change() {
        let mut r = watching(idle_policy(), true);
        let said = r.logs(read(0, 2, None), Level::Debug);
        assert_eq!(said, ["the app's connections: 0 busy, 0 unsure, 2 idle"]);
        r.at(ms(100)).step(Input::Tick);
        assert!(r.logs(read(0, 2, None), Level::Debug).is_empty(), "no change");
        r.at(ms(200)).step(Input::Tick);
        assert_eq!(
            r.logs(read(1, 1, None), Level::Debug),
            ["the app's connections: 1 busy, 0 unsure, 1 idle"]
        );
    }

    /// The data of each info line of one step.
    fn fields(r: &mut Run, input: Input) -> Vec<Fields> {
        r.all(input)
            .into_iter()
            .filter_map(|a| match a {
                Action::Log(Level::Info, _, fields) => Some(fields),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn shutdown_steps_carry_their_data() {
        let mut r = Run::new(policy(Prestop::Fixed(secs(5))));
        let (pid, none) = (Some(PID), Fields::NONE);
        assert_eq!(
            fields(&mut r, Input::Signal(SIGTERM)),
            [Fields {
                phase: Some("draining"),
                pid,
                signal: Some(SIGTERM),
                delay: Some(secs(5)),
                ..none
            }]
        );
        assert_eq!(
            fields(r.at(secs(5)), Input::Tick),
            [Fields {
                phase: Some("stopping"),
                pid,
                signal: Some(SIGTERM),
                grace: Some(secs(20)),
                took: Some(secs(5)),
                ..none
            }]
        );
        assert_eq!(
            fields(r.at(secs(25)), Input::Tick),
            [
                Fields { phase: Some("stopping"), pid, grace: Some(secs(20)), ..none },
                Fields {
                    phase: Some("killing"),
                    pid,
                    signal: Some(SIGKILL),
                    took: Some(secs(25)),
                    ..none
                },
            ]
        );
        let exits = vec![(PID, ChildStatus::Signaled(SIGKILL))];
        assert_eq!(
            fields(r.at(secs(26)), Input::Reaped { exits, children_left: false }),
            [Fields { phase: Some("exited"), pid, status: Some(137), took: Some(secs(1)), ..none }]
        );
        // Leftovers: the child's end, then the last of the others.
        let mut r = Run::new(policy(Prestop::Fixed(Duration::ZERO)));
        r.step(Input::Signal(SIGTERM));
        let exits = vec![(PID, ChildStatus::Exited(0))];
        assert_eq!(
            fields(r.at(secs(2)), Input::Reaped { exits, children_left: true }),
            [Fields {
                phase: Some("reaping"),
                pid,
                signal: Some(SIGTERM),
                grace: Some(secs(18)),
                status: Some(0),
                took: Some(secs(2)),
                ..none
            }]
        );
        assert_eq!(
            fields(&mut r, reaped(false)),
            [Fields { phase: Some("exited"), status: Some(0), ..none }]
        );
    }

    #[test]
    fn shutdown_is_logged_with_timings() {
        let mut r = Run::new(policy(Prestop::Fixed(secs(5))));
        assert_eq!(
            r.logs(Input::Signal(SIGTERM), Level::Info),
            [
                "received SIGTERM: draining, /readyz answers 503; preStop delay 5.0s (--prestop-delay)"
            ]
        );
        assert_eq!(
            r.at(secs(5)).logs(Input::Tick, Level::Info),
            ["sending SIGTERM to child 42 after 5.0s of drain; SIGKILL in 20.0s"]
        );
        let exits = vec![(PID, ChildStatus::Exited(0))];
        assert_eq!(
            r.at(secs(7)).logs(Input::Reaped { exits, children_left: false }, Level::Info),
            [
                "child exited with status 0 2.0s after the stop signal (7.0s of drain); exiting with 0"
            ]
        );
        // A normal run says nothing at info.
        let mut quiet = Run::new(policy(Prestop::Auto));
        let exits = vec![(PID, ChildStatus::Exited(0))];
        assert!(quiet.logs(Input::Reaped { exits, children_left: false }, Level::Info).is_empty());
    }
}
