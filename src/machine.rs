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
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    /// The child runs; `/readyz` is 200.
    Running { pid: Pid, since: Instant },
    /// Unready, waiting out the preStop delay so that load balancers stop routing.
    Draining { pid: Pid, since: Instant, until: Instant },
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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Input {
    /// lastcall received a signal (never SIGCHLD: that is the reaper's).
    Signal(Sig),
    /// The main child was reaped; `others_left` says whether lastcall still has children.
    ChildExited { status: ChildStatus, others_left: bool },
    /// Other processes were reaped.
    OthersReaped { others_left: bool },
    /// `/readyz` was requested (it makes `--prestop-delay auto` choose a delay).
    Probed,
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
    Signal { sig: Sig, to: Target },
    /// A step of the shutdown worth telling the operator (logged at info).
    Log(String),
    Exit(u8),
}

pub struct Machine {
    policy: Policy,
    phase: Phase,
    probed: bool,
    /// SIGTERM/SIGINT received so far: the first drains, the second hurries, the third kills.
    drain_signals: u32,
    drain_started: Option<Instant>,
    /// The signal that started the drain.
    trigger: Option<Sig>,
}

impl Machine {
    pub fn new(policy: Policy, pid: Pid, now: Instant) -> Machine {
        Machine {
            policy,
            phase: Phase::Running { pid, since: now },
            probed: false,
            drain_signals: 0,
            drain_started: None,
            trigger: None,
        }
    }

    #[cfg(test)]
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// What `/readyz` answers: ready until the drain starts.
    pub fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Running { .. })
    }

    /// What `/livez` answers: the child is alive, drain or not.
    pub fn is_live(&self) -> bool {
        self.child().is_some()
    }

    /// When the machine next wants a [`Input::Tick`]; the event loop's poll timeout.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Draining { until, .. } => Some(until),
            Phase::Stopping { deadline, .. } => Some(deadline),
            Phase::Reaping { kill_at, .. } => kill_at,
            _ => None,
        }
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
            Input::Tick => self.on_tick(now, &mut out),
        }
        out
    }

    fn target(&self, pid: Pid) -> Target {
        if self.policy.group {
            Target::Group(pid)
        } else {
            Target::Child(pid)
        }
    }

    fn on_signal(&mut self, sig: Sig, now: Instant, out: &mut Vec<Action>) {
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
        let (delay, why) = match self.policy.prestop {
            Prestop::Fixed(d) => (d, "--prestop-delay"),
            Prestop::Auto if self.policy.in_kubernetes => {
                (AUTO_PRESTOP, "auto: KUBERNETES_SERVICE_HOST is set")
            }
            Prestop::Auto if self.probed => (AUTO_PRESTOP, "auto: /readyz has been probed"),
            Prestop::Auto => (
                Duration::ZERO,
                "auto: not in Kubernetes and /readyz never probed",
            ),
        };
        out.push(Action::Log(format!(
            "received {sig}: draining, /readyz answers 503; preStop delay {} ({why})",
            show(delay)
        )));
        if delay.is_zero() {
            self.stop(pid, now, out);
        } else {
            self.phase = Phase::Draining { pid, since: now, until: now + delay };
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
            out.push(Action::Log(format!(
                "all remaining processes reaped; exiting with {code}"
            )));
            self.exit(code, out);
        } else if kill_at.is_none() {
            // Reaping a killed process can orphan its children onto us: they get SIGKILL too.
            out.push(Action::Signal { sig: SIGKILL, to: Target::Descendants });
        }
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        match self.phase {
            Phase::Draining { pid, until, .. } if now >= until => self.stop(pid, now, out),
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
