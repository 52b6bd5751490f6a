//! Reloads (`--reload-signal` with `--socket`): a new child starts on the same sockets, and
//! once it is ready it becomes the main child while the old one is stopped the usual way.
//! A new child that exits, cannot start, or is not ready in time is stopped instead, and
//! the old one keeps serving.

use std::time::Instant;

use nix::unistd::Pid;

use super::{Action, Machine, Phase, Target, info};
use crate::init::signals::{SIGKILL, Sig};
use crate::init::status::ChildStatus;
use crate::show;

/// The reload sub-state, beside the phase.
#[derive(Default)]
pub struct Reload {
    /// A new child, while it starts.
    starting: Option<Starting>,
    /// A reload signal arrived during a reload: one more reload follows it.
    queued: bool,
    /// Children being stopped after a reload: old ones, or new ones that failed.
    retiring: Vec<Retiring>,
    /// Reloads done.
    pub done: u64,
    /// Reloads that failed.
    pub failed: u64,
}

#[derive(Clone, Copy, Debug)]
struct Starting {
    pid: Pid,
    since: Instant,
    /// Not ready by then: the reload failed (`--startup-timeout`).
    deadline: Instant,
    /// Without `--ready-notify`: ready once it has lived this long with the checks passing
    /// (they cannot tell the two children apart on a shared socket; the notify protocol can).
    /// `None` once passed while the checks failed: the next pass of the checks decides.
    settle_at: Option<Instant>,
}

#[derive(Clone, Copy, Debug)]
struct Retiring {
    pid: Pid,
    /// SIGKILL then; `None`: sent.
    kill_at: Option<Instant>,
}

impl Reload {
    /// The new child, while it starts.
    pub fn starting(&self) -> Option<Pid> {
        self.starting.map(|s| s.pid)
    }

    /// Whether `pid` is a reload's new or old child (not the main child).
    pub fn claims(&self, pid: Pid) -> bool {
        self.starting.is_some_and(|s| s.pid == pid) || self.retiring.iter().any(|r| r.pid == pid)
    }

    pub fn deadline(&self) -> Option<Instant> {
        let starting = self.starting.map(|s| s.settle_at.map_or(s.deadline, |t| t.min(s.deadline)));
        let retiring = self.retiring.iter().filter_map(|r| r.kill_at).min();
        starting.into_iter().chain(retiring).min()
    }
}

impl Machine {
    pub(super) fn reload(&mut self, sig: Sig, out: &mut Vec<Action>) {
        if let Phase::Restarting { .. } = self.phase {
            out.push(info(format!(
                "received {sig} while the child restarts: no reload (the restart starts a new child)"
            )));
        } else if !matches!(self.phase, Phase::Running { .. }) {
            out.push(info(format!("received {sig} while stopping: no reload")));
        } else if self.reload.starting.is_some() {
            if !self.reload.queued {
                out.push(info(format!("received {sig} during a reload: one more follows")));
            }
            self.reload.queued = true;
        } else {
            out.push(info(format!("received {sig}: starting a new child")));
            out.push(Action::SpawnNew);
        }
    }

    pub(super) fn on_spawned(&mut self, pid: Pid, now: Instant) {
        let settle_at = (!self.policy.notify).then(|| now + self.policy.ready_interval);
        let deadline = now + self.policy.startup_timeout;
        self.reload.starting = Some(Starting { pid, since: now, deadline, settle_at });
    }

    /// Without `--ready-notify`, the new child is ready once settled with the app ready.
    pub(super) fn settle(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(starting) = self.reload.starting else {
            return;
        };
        if self.policy.notify || starting.settle_at.is_some_and(|t| t > now) {
            return;
        }
        if self.is_ready() {
            self.promote(now, out);
        } else if let Some(s) = self.reload.starting.as_mut() {
            // Passed while unready: no deadline to spin on; the checks' next pass decides.
            s.settle_at = None;
        }
    }

    /// The new child is ready: it becomes the main child, and the old one is stopped.
    pub(super) fn promote(&mut self, now: Instant, out: &mut Vec<Action>) {
        let (Some(new), Phase::Running { pid: old, .. }) = (self.reload.starting, self.phase)
        else {
            return;
        };
        self.reload.starting = None;
        self.reload.done += 1;
        out.push(info(format!(
            "new child {} is ready after {}: stopping old child {old}",
            new.pid,
            show::duration(now.saturating_duration_since(new.since))
        )));
        self.phase = Phase::Running { pid: new.pid, since: now };
        self.retire(old, now, out);
        self.next_queued(out);
    }

    /// A drain abandons a reload in progress: the new child is stopped.
    pub(super) fn abandon_reload(&mut self, now: Instant, out: &mut Vec<Action>) {
        if let Some(new) = self.reload.starting.take() {
            out.push(info(format!("reload abandoned: stopping new child {}", new.pid)));
            self.retire(new.pid, now, out);
        }
        self.reload.queued = false;
    }

    /// Sends `pid` the stop signal; SIGKILL follows after the grace period.
    fn retire(&mut self, pid: Pid, now: Instant, out: &mut Vec<Action>) {
        let sig = self.stop_signal(None);
        out.push(Action::Signal { sig, to: self.target(pid) });
        self.reload.retiring.push(Retiring { pid, kill_at: Some(now + self.policy.grace) });
    }

    pub(super) fn reload_failed(&mut self, why: &str, now: Instant, out: &mut Vec<Action>) {
        self.reload.failed += 1;
        let old = self.child().map_or_else(String::new, |p| format!("; child {p} keeps serving"));
        out.push(info(format!("reload failed: the new child {why}{old}")));
        if let Some(new) = self.reload.starting.take() {
            self.retire(new.pid, now, out);
        }
        self.next_queued(out);
    }

    fn next_queued(&mut self, out: &mut Vec<Action>) {
        if std::mem::take(&mut self.reload.queued) && matches!(self.phase, Phase::Running { .. }) {
            out.push(info("starting the queued reload".into()));
            out.push(Action::SpawnNew);
        }
    }

    pub(super) fn on_reload_child_exit(
        &mut self,
        pid: Pid,
        status: ChildStatus,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if self.reload.starting.is_some_and(|s| s.pid == pid) {
            // Gone already: nothing to stop.
            self.reload.starting = None;
            self.reload_failed(&status.to_string(), now, out);
        } else {
            self.reload.retiring.retain(|r| r.pid != pid);
        }
    }

    pub(super) fn reload_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        // A child that settled ready in time is not failed by the same tick.
        self.settle(now, out);
        if self.reload.starting.is_some_and(|s| now >= s.deadline) {
            let why =
                format!("was not ready within {}", show::duration(self.policy.startup_timeout));
            self.reload_failed(&why, now, out);
        }
        for retiring in &mut self.reload.retiring {
            if retiring.kill_at.is_some_and(|at| now >= at) {
                retiring.kill_at = None;
                out.push(Action::Signal { sig: SIGKILL, to: Target::Group(retiring.pid) });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use log::Level;

    use super::super::testing::*;
    use super::super::{Input, Policy, Prestop};
    use super::*;
    use crate::init::signals::SIGTERM;

    const NEW: Pid = Pid::from_raw(43);
    const NEWER: Pid = Pid::from_raw(44);
    const HUP: Sig = Sig(libc::SIGHUP);

    /// Reloads on SIGHUP, new children say READY=1 themselves.
    fn reload_policy() -> Policy {
        Policy {
            reload_signal: Some(HUP),
            startup_timeout: secs(10),
            notify: true,
            prestop: Prestop::Fixed(secs(5)),
            ..Policy::for_tests()
        }
    }

    fn new_ready(pid: Pid) -> Input {
        Input::Notify { ready: true, from: pid }
    }

    fn exited(pid: Pid, status: ChildStatus) -> Input {
        Input::Reaped { exits: vec![(pid, status)], children_left: true }
    }

    /// A machine whose app is ready (its own READY=1).
    fn ready_run(policy: Policy) -> Run {
        let mut r = Run::new(policy);
        r.step(new_ready(PID));
        assert!(r.m.is_ready());
        r
    }

    #[test]
    fn reload_starts_a_new_child_then_stops_the_old_one() {
        let mut r = ready_run(reload_policy());
        assert_eq!(r.step(Input::Signal(HUP)), vec![Action::SpawnNew], "not forwarded");
        r.at(secs(1)).step(Input::Spawned(NEW));
        assert!(r.m.reload.claims(NEW) && r.m.is_ready(), "the old child serves meanwhile");
        assert_eq!(r.m.deadline(), Some(r.t0 + secs(11)), "the startup timeout");
        assert_eq!(r.at(secs(2)).step(new_ready(NEW)), signal(SIGTERM, Target::Child(PID)));
        assert_eq!(r.m.child(), Some(NEW));
        assert!(r.m.is_ready(), "ready throughout");
        assert_eq!(r.m.reload_counts(), (1, 0));
        // The old child gets SIGKILL after the grace period, then is reaped; nothing ends.
        assert_eq!(r.at(secs(22)).step(Input::Tick), signal(SIGKILL, Target::Group(PID)));
        assert_eq!(r.step(exited(PID, ChildStatus::Signaled(SIGKILL))), vec![]);
        assert!(!r.m.reload.claims(PID));
        assert_eq!(r.m.deadline(), None);
        assert_eq!(r.m.stats().reaped, 0, "a reload's child is no orphan");
        // The new child is the one the drain stops.
        r.step(Input::Signal(SIGTERM));
        assert_eq!(r.at(secs(30)).step(Input::Tick), signal(SIGTERM, Target::Child(NEW)));
    }

    #[test]
    fn the_old_childs_word_does_not_promote() {
        let mut r = ready_run(reload_policy());
        r.step(Input::Signal(HUP));
        r.step(Input::Spawned(NEW));
        assert_eq!(r.step(new_ready(PID)), vec![], "the old child's READY=1");
        assert_eq!(r.m.child(), Some(PID));
        assert_eq!(r.step(Input::Notify { ready: false, from: NEW }), vec![]);
        assert_eq!(r.m.child(), Some(PID), "STOPPING=1 from the new child");
        assert_eq!(r.step(new_ready(NEW)), signal(SIGTERM, Target::Child(PID)));
    }

    #[test]
    fn failed_reloads_keep_the_old_child() {
        let mut r = ready_run(reload_policy());
        r.step(Input::Signal(HUP));
        r.step(Input::Spawned(NEW));
        // The new child exits at once.
        let logs = r.logs(exited(NEW, ChildStatus::Exited(1)), Level::Info);
        assert_eq!(
            logs,
            ["reload failed: the new child exited with status 1; child 42 keeps serving"]
        );
        assert_eq!((r.m.child(), r.m.reload_counts()), (Some(PID), (0, 1)));
        assert!(r.m.is_ready());
        // The next one never becomes ready: stopped at the startup timeout.
        r.step(Input::Signal(HUP));
        r.at(secs(1)).step(Input::Spawned(NEWER));
        assert_eq!(r.at(secs(11)).step(Input::Tick), signal(SIGTERM, Target::Child(NEWER)));
        assert_eq!((r.m.child(), r.m.reload_counts()), (Some(PID), (0, 2)));
        assert!(r.m.reload.claims(NEWER), "still to be reaped");
        // And a new child that cannot even be started.
        r.step(Input::Signal(HUP));
        let logs = r.logs(Input::SpawnFailed("cannot run 'x': not found".into()), Level::Warn);
        assert_eq!(logs, ["reload: cannot run 'x': not found"]);
        assert_eq!(r.m.reload_counts(), (0, 3));
    }

    #[test]
    fn a_reload_signal_during_a_reload_is_queued_once() {
        let mut r = ready_run(reload_policy());
        r.step(Input::Signal(HUP));
        r.step(Input::Spawned(NEW));
        assert_eq!(r.step(Input::Signal(HUP)), vec![]);
        assert_eq!(r.step(Input::Signal(HUP)), vec![]);
        let out = r.step(new_ready(NEW));
        assert_eq!(
            out,
            vec![Action::Signal { sig: SIGTERM, to: Target::Child(PID) }, Action::SpawnNew]
        );
        r.step(Input::Spawned(NEWER));
        assert_eq!(r.step(new_ready(NEWER)), signal(SIGTERM, Target::Child(NEW)), "only one more");
    }

    #[test]
    fn a_drain_abandons_a_reload() {
        let mut r = ready_run(reload_policy());
        r.step(Input::Signal(HUP));
        r.step(Input::Spawned(NEW));
        assert_eq!(r.step(Input::Signal(SIGTERM)), signal(SIGTERM, Target::Child(NEW)));
        assert_eq!(r.m.reload.starting(), None);
        assert_eq!(r.step(new_ready(NEW)), vec![], "too late");
        assert_eq!(r.step(Input::Signal(HUP)), vec![], "no reload while stopping");
    }

    /// Without --ready-notify: checks every second.
    fn settle_policy() -> Policy {
        Policy { notify: false, checks: true, ready_interval: secs(1), ..reload_policy() }
    }

    fn checks(pass: bool) -> Input {
        Input::Checks { pass, failing: (!pass).then(|| "x: status 500".to_string()) }
    }

    #[test]
    fn without_notify_a_new_child_is_ready_after_one_interval_of_passing_checks() {
        let mut r = Run::new(settle_policy());
        r.step(checks(true));
        r.step(Input::Signal(HUP));
        r.at(secs(3)).step(Input::Spawned(NEW));
        assert_eq!(r.m.deadline(), Some(r.t0 + secs(4)), "settles after --ready-interval");
        assert_eq!(r.at(secs(3) + secs(1) / 2).step(Input::Tick), vec![]);
        assert_eq!(r.at(secs(4)).step(Input::Tick), signal(SIGTERM, Target::Child(PID)));
        assert_eq!(r.m.child(), Some(NEW));
    }

    #[test]
    fn without_notify_a_new_child_waits_for_the_checks_without_spinning() {
        let mut r = Run::new(settle_policy());
        r.step(checks(true));
        r.step(Input::Signal(HUP));
        r.step(Input::Spawned(NEW));
        r.step(checks(false));
        assert_eq!(r.at(secs(1)).step(Input::Tick), vec![], "settled, but the checks fail");
        assert_eq!(r.m.deadline(), Some(r.t0 + secs(10)), "no deadline in the past");
        assert_eq!(r.at(secs(2)).step(checks(true)), signal(SIGTERM, Target::Child(PID)));
        assert_eq!(r.m.reload_counts(), (1, 0));
    }
}
