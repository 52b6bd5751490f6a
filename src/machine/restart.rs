//! Restarts (`--restart on-failure|always`): a child that ends on its own while running is
//! started again after a backoff, on the same `--socket`s, until a budget runs out.
//!
//! ```text
//! Running ─child ends, within budget─► Restarting{at} ─backoff over, nothing left─► Running
//!                                          │  TERM/INT ──► Exited (or Reaping while processes remain)
//! ```
//!
//! The backoff of a restart is the first delay doubled for each restart already made within
//! the window, up to the cap; a child that stays up for a whole window so starts again from
//! the first delay. The budget is the same count: a child that ends with `limit` restarts
//! made within the window is not restarted, and lastcall exits with its status. Processes
//! the old child left behind are stopped as at the end of a run (the stop signal, SIGKILL
//! after the grace period) and the new child starts only once they are all gone. Only a
//! child that ends in [`Phase::Running`] is restarted: once a drain has begun, an exit is
//! the end.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use log::Level;
use nix::unistd::Pid;

use super::{Action, Ending, Fields, Machine, Phase, Target, log};
use crate::init::signals::{SIGKILL, Sig};
use crate::init::status::ChildStatus;
use crate::show;

/// `--restart`: which ends of the child start it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartOn {
    Never,
    /// A non-zero exit code (after `--success-exit`), which a death by signal always has.
    OnFailure,
    Always,
}

/// `--restart` and its limits; fixed for the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Restart {
    pub when: RestartOn,
    /// `--restart-delay`: the backoff of the first restart within the window.
    pub delay: Duration,
    /// `--restart-max-delay`: the backoff's cap.
    pub max_delay: Duration,
    /// `--restart-limit`: restarts allowed within the window.
    pub limit: u32,
    /// `--restart-window`.
    pub window: Duration,
}

impl Restart {
    /// The backoff before a restart when `made` restarts were made within the window.
    pub fn backoff(&self, made: usize) -> Duration {
        let doublings = u32::try_from(made).unwrap_or(u32::MAX).min(32);
        self.delay.saturating_mul(1u32 << doublings.min(31)).min(self.max_delay)
    }
}

/// Why restarts ended the run, for the termination message.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Gave {
    /// `made` restarts within the window, the first `span` before the last end.
    Up { made: usize, span: Duration },
    /// A drain signal came while the child was being restarted.
    Stopped(Sig),
    /// The new child could not be started.
    Failed(String),
}

/// The restarts, beside the phase.
#[derive(Default)]
pub struct Restarts {
    /// When each restart within the window was made, oldest first.
    recent: VecDeque<Instant>,
    /// Restarts made since start.
    pub total: u64,
    /// How the last child to end ended (the main child; not a reload's).
    pub last_exit: Option<ChildStatus>,
    /// The backoff of the restart under way or of the last one.
    pub backoff: Option<Duration>,
    /// How the child being restarted ended, as the termination message would say it.
    ended: Option<Ending>,
    gave: Option<Gave>,
}

impl Restarts {
    fn forget_before(&mut self, now: Instant, window: Duration) {
        while self.recent.front().is_some_and(|&t| now.saturating_duration_since(t) >= window) {
            self.recent.pop_front();
        }
    }
}

impl Machine {
    /// The main child ended with `status`: restarted when it was running and the policy and
    /// the budget allow it (true), else the run ends as without `--restart` (false).
    pub(super) fn restart_on_exit(
        &mut self,
        status: ChildStatus,
        others_left: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        self.restarts.last_exit = Some(status);
        let Phase::Running { pid, since } = self.phase else {
            return false;
        };
        let r = self.policy.restart;
        let failed = status.exit_code(&self.policy.success_exit) != 0;
        match r.when {
            RestartOn::Never => return false,
            RestartOn::OnFailure if !failed => return false,
            RestartOn::OnFailure | RestartOn::Always => {}
        }
        let ending = self.ending_of(Ending::Own(status));
        let ran = show::duration(now.saturating_duration_since(since));
        self.restarts.forget_before(now, r.window);
        let made = self.restarts.recent.len();
        if made >= r.limit as usize {
            let span = self.restarts.recent.front().map_or(Duration::ZERO, |&t| now - t);
            out.push(log(
                Level::Error,
                format!(
                    "child {pid} {status} after {ran}; restart budget exhausted: {made} \
                     restart(s) in the last {} (--restart-limit {} in {}); not restarting",
                    show::duration(span),
                    r.limit,
                    humantime::format_duration(r.window)
                ),
            ));
            self.restarts.gave = Some(Gave::Up { made, span });
            return false;
        }
        self.forget_oom_end();
        self.abandon_reload(now, out);
        let delay = r.backoff(made);
        self.restarts.backoff = Some(delay);
        self.restarts.ended = Some(ending);
        let kill_at = others_left.then(|| now + self.policy.grace);
        self.phase =
            Phase::Restarting { status, since: now, at: now + delay, left: others_left, kill_at };
        let fields = Fields {
            pid: Some(pid),
            status: Some(status.code()),
            delay: Some(delay),
            ..Fields::NONE
        };
        out.push(self.restart_said(
            format!(
                "child {pid} {status} after {ran}: restarting it in {} (restart {} of at most {} \
                 in {})",
                show::duration(delay),
                made + 1,
                r.limit,
                humantime::format_duration(r.window)
            ),
            fields,
        ));
        if others_left {
            let sig = self.stop_signal(None);
            out.push(self.restart_said(
                format!(
                    "other processes remain: sending them {sig}, SIGKILL in {}; the new child \
                     starts once they are gone",
                    show::duration(self.policy.grace)
                ),
                Fields { signal: Some(sig), grace: Some(self.policy.grace), ..Fields::NONE },
            ));
            out.push(Action::Signal { sig, to: Target::Descendants });
        }
        true
    }

    fn restart_said(&self, line: String, fields: Fields) -> Action {
        Action::Log(Level::Info, line, Fields { phase: Some(self.phase.name()), ..fields })
    }

    /// The backoff is over and nothing of the old child is left: start the new one.
    pub(super) fn restart_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Phase::Restarting { status, since, at, left, kill_at } = self.phase else {
            return;
        };
        if left {
            if kill_at.is_some_and(|k| now >= k) {
                self.phase = Phase::Restarting { status, since, at, left, kill_at: None };
                let fields = Fields { signal: Some(SIGKILL), ..Fields::NONE };
                out.push(
                    self.restart_said("sending SIGKILL to the remaining processes".into(), fields),
                );
                out.push(Action::Signal { sig: SIGKILL, to: Target::Descendants });
            }
        } else if now >= at {
            out.push(Action::SpawnNew);
        }
    }

    /// A reaping pass while restarting: once nothing is left, the new child may start.
    pub(super) fn restart_reaped(
        &mut self,
        others_left: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Phase::Restarting { status, since, at, left: true, kill_at } = self.phase else {
            return;
        };
        if others_left {
            if kill_at.is_none() {
                // Reaping a killed process can orphan its children onto us: they get SIGKILL too.
                out.push(Action::Signal { sig: SIGKILL, to: Target::Descendants });
            }
            return;
        }
        self.phase = Phase::Restarting { status, since, at, left: false, kill_at: None };
        out.push(log(Level::Debug, "the old child's processes are all gone".into()));
        self.restart_tick(now, out);
    }

    /// The restart's new child runs: unready until the readiness checks (restarted now) and
    /// its own word say otherwise. Returns false when no restart was asked for.
    pub(super) fn restart_spawned(
        &mut self,
        pid: Pid,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        let Phase::Restarting { since, .. } = self.phase else {
            return false;
        };
        self.restarts.recent.push_back(now);
        self.restarts.total += 1;
        self.phase = Phase::Running { pid, since: now };
        self.gate.restarted(&self.policy, now);
        out.push(self.restart_said(
            format!(
                "started child {pid}, restart {} ({} after the old child ended)",
                self.restarts.total,
                show::duration(now.saturating_duration_since(since))
            ),
            Fields { pid: Some(pid), ..Fields::NONE },
        ));
        out.push(Action::StartChecks);
        true
    }

    /// The restart's new child could not be started: lastcall exits with the old child's
    /// status. Returns false when no restart was asked for.
    pub(super) fn restart_failed(&mut self, why: &str, out: &mut Vec<Action>) -> bool {
        let Phase::Restarting { status, .. } = self.phase else {
            return false;
        };
        let code = status.exit_code(&self.policy.success_exit);
        out.push(log(
            Level::Error,
            format!("the child could not be started again: {why}; exiting with {code}"),
        ));
        self.restarts.gave = Some(Gave::Failed(why.to_string()));
        self.ending = self.restarts.ended;
        self.exit(code, out);
        true
    }

    /// SIGTERM or SIGINT while restarting: no new child; lastcall exits with the old child's
    /// status once the processes it left are gone (they have the stop signal already).
    pub(super) fn restart_stopped(&mut self, sig: Sig, now: Instant, out: &mut Vec<Action>) {
        let Phase::Restarting { status, left, kill_at, .. } = self.phase else {
            return;
        };
        let code = status.exit_code(&self.policy.success_exit);
        self.restarts.gave = Some(Gave::Stopped(sig));
        self.ending = self.restarts.ended;
        let fields = Fields { signal: Some(sig), status: Some(status.code()), ..Fields::NONE };
        if left {
            self.phase = Phase::Reaping { status, since: now, kill_at, signals: 1 };
            out.push(self.restart_said(
                format!("received {sig} while restarting: no new child; waiting for the remaining processes"),
                fields,
            ));
        } else {
            self.phase = Phase::Exited { code };
            out.push(self.restart_said(
                format!("received {sig} while restarting: no new child; exiting with {code}"),
                fields,
            ));
            self.exit(code, out);
        }
    }

    /// The termination message `why`, with what the restarts add to it.
    pub(super) fn with_restarts(&self, why: String) -> String {
        let total = self.restarts.total;
        let r = self.policy.restart;
        match &self.restarts.gave {
            Some(Gave::Up { made, span }) => format!(
                "{why} after {total} restart(s): restart budget exhausted ({made} in {}; at most \
                 {} in {})",
                show::duration(*span),
                r.limit,
                humantime::format_duration(r.window)
            ),
            Some(Gave::Stopped(sig)) if total > 0 => {
                format!("{why}, then {sig} while restarting it ({total} restart(s) before)")
            }
            Some(Gave::Stopped(sig)) => format!("{why}, then {sig} while restarting it"),
            Some(Gave::Failed(e)) => format!("{why}; restart {} failed: {e}", total + 1),
            None if total > 0 => format!("{why} ({total} restart(s) before)"),
            None => why,
        }
    }

    /// Restarts made since start.
    pub fn restarts(&self) -> &Restarts {
        &self.restarts
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

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn restarting(when: RestartOn) -> Policy {
        Policy {
            restart: Restart { when, ..Restart::DEFAULT },
            prestop: Prestop::Fixed(secs(5)),
            ..Policy::for_tests()
        }
    }

    fn crash(pid: Pid) -> Input {
        Input::Reaped { exits: vec![(pid, ChildStatus::Exited(1))], children_left: false }
    }

    /// Crashes child `pid` at `at`, then ticks until the new child `new` is asked for and
    /// started; returns when it was asked for.
    fn crash_and_restart(r: &mut Run, pid: Pid, at: Duration, new: Pid) -> Duration {
        assert_eq!(r.at(at).step(crash(pid)), vec![]);
        let Some(due) = r.m.deadline() else { panic!("no backoff deadline") };
        let after = due - r.t0;
        assert_eq!(r.at(after - ms(1)).step(Input::Tick), vec![], "not before the backoff");
        assert_eq!(r.at(after).step(Input::Tick), vec![Action::SpawnNew]);
        r.step(Input::Spawned(new));
        after - at
    }

    #[test]
    fn on_failure_restarts_with_a_doubling_backoff_and_the_window_resets_it() {
        let mut r = Run::new(restarting(RestartOn::OnFailure));
        assert_eq!(crash_and_restart(&mut r, PID, secs(1), NEW), ms(100));
        assert_eq!(r.m.phase(), Phase::Running { pid: NEW, since: r.t0 + ms(1_100) });
        assert_eq!(crash_and_restart(&mut r, NEW, secs(2), NEWER), ms(200));
        assert_eq!(crash_and_restart(&mut r, NEWER, secs(3), NEW), ms(400));
        assert_eq!(r.m.restarts().total, 3);
        // Up for a whole window since the last restart: the first delay again.
        let later = secs(3) + ms(400) + secs(600);
        assert_eq!(crash_and_restart(&mut r, NEW, later, NEWER), ms(100));
    }

    #[test]
    fn the_backoff_is_capped() {
        let r = Restart { max_delay: secs(1), ..Restart::DEFAULT };
        let delays: Vec<Duration> = (0..6).map(|n| r.backoff(n)).collect();
        assert_eq!(delays, [ms(100), ms(200), ms(400), ms(800), secs(1), secs(1)]);
        assert_eq!(Restart::DEFAULT.backoff(usize::MAX), secs(300), "no overflow");
    }

    #[test]
    fn which_ends_restart() {
        let ends = |when, status| {
            let mut r = Run::new(Policy { success_exit: vec![143], ..restarting(when) });
            r.step(Input::Reaped { exits: vec![(PID, status)], children_left: false });
            matches!(r.m.phase(), Phase::Restarting { .. })
        };
        let (ok, bad, segv) = (
            ChildStatus::Exited(0),
            ChildStatus::Exited(3),
            ChildStatus::Signaled(Sig(libc::SIGSEGV)),
        );
        let mapped = ChildStatus::Signaled(SIGTERM);
        assert!(!ends(RestartOn::Never, bad));
        assert!(!ends(RestartOn::OnFailure, ok) && !ends(RestartOn::OnFailure, mapped), "success");
        assert!(ends(RestartOn::OnFailure, bad) && ends(RestartOn::OnFailure, segv));
        assert!(ends(RestartOn::Always, ok) && ends(RestartOn::Always, bad));
    }

    #[test]
    fn readiness_and_liveness_follow_the_restart() {
        let policy = Policy { checks: true, ..restarting(RestartOn::OnFailure) };
        let mut r = Run::new(policy);
        r.step(Input::Checks { pass: true, failing: None });
        assert!(r.m.is_ready());
        let out = r.at(secs(1)).all(crash(PID));
        assert!(out.contains(&Action::StopChecks));
        assert!(!r.m.is_ready() && r.m.is_live(), "503 and 200 during the backoff");
        r.at(ms(1_100)).step(Input::Tick);
        let out = r.all(Input::Spawned(NEW));
        assert!(out.contains(&Action::StartChecks), "{out:?}");
        assert!(!r.m.is_ready(), "unready until the checks pass again");
        assert_eq!(
            r.at(ms(1_600)).logs(Input::Checks { pass: true, failing: None }, Level::Info),
            ["the app is ready (500ms after the restart)"]
        );
        assert!(r.m.is_ready());
    }

    #[test]
    fn the_budget_ends_a_crash_loop_with_the_childs_status() {
        let mut r = Run::new(restarting(RestartOn::OnFailure));
        let mut pid = PID;
        let mut at = secs(1);
        for n in 0..5 {
            let new = Pid::from_raw(100 + n);
            at += crash_and_restart(&mut r, pid, at, new) + ms(50);
            pid = new;
        }
        assert_eq!(r.m.restarts().total, 5);
        let out = r.at(at).all(crash(pid));
        let errors = logged(&out, Level::Error);
        assert_eq!(
            errors,
            ["child 104 exited with status 1 after 50ms; restart budget exhausted: 5 restart(s) \
              in the last 3.2s (--restart-limit 5 in 10m); not restarting"]
        );
        assert_eq!(r.m.exit_code(), Some(1));
        assert_eq!(
            ended(&out),
            ["child exited 1 after 5 restart(s): restart budget exhausted (5 in 3.2s; at most 5 \
              in 10m)"]
        );
    }

    #[test]
    fn a_drain_signal_while_restarting_ends_at_once_with_no_new_child() {
        let mut r = Run::new(restarting(RestartOn::OnFailure));
        crash_and_restart(&mut r, PID, secs(1), NEW);
        r.at(secs(2)).step(crash(NEW));
        let out = r.at(ms(2_050)).all(Input::Signal(SIGTERM));
        assert!(!out.iter().any(|a| matches!(a, Action::SpawnNew | Action::Signal { .. })));
        assert_eq!(r.m.exit_code(), Some(1), "the child's status");
        assert_eq!(
            ended(&out),
            ["child exited 1, then SIGTERM while restarting it (1 restart(s) before)"]
        );
        assert_eq!(r.at(secs(3)).step(Input::Tick), vec![], "no new child after it");
    }

    #[test]
    fn the_old_childs_processes_go_before_the_new_child_starts() {
        let mut r = Run::new(restarting(RestartOn::OnFailure));
        let left =
            Input::Reaped { exits: vec![(PID, ChildStatus::Exited(1))], children_left: true };
        assert_eq!(r.at(secs(1)).step(left), signal(SIGTERM, Target::Descendants));
        assert_eq!(r.m.deadline(), Some(r.t0 + secs(21)), "their grace, not the backoff");
        assert_eq!(r.at(secs(2)).step(Input::Tick), vec![], "the backoff is over; they are not");
        let orphan = Pid::from_raw(77);
        let one_gone =
            Input::Reaped { exits: vec![(orphan, ChildStatus::Exited(0))], children_left: true };
        assert_eq!(r.step(one_gone), vec![]);
        assert_eq!(r.at(secs(21)).step(Input::Tick), signal(SIGKILL, Target::Descendants));
        let all_gone =
            Input::Reaped { exits: vec![(orphan, ChildStatus::Exited(0))], children_left: false };
        assert_eq!(r.step(all_gone), vec![Action::SpawnNew]);
        r.step(Input::Spawned(NEW));
        assert_eq!(r.m.child(), Some(NEW));
        // Gone before the backoff ends: the backoff is waited out.
        let mut r = Run::new(restarting(RestartOn::OnFailure));
        let left =
            Input::Reaped { exits: vec![(PID, ChildStatus::Exited(1))], children_left: true };
        r.at(secs(1)).step(left);
        assert_eq!(r.at(ms(1_050)).step(reaped_last()), vec![]);
        assert_eq!(r.m.deadline(), Some(r.t0 + ms(1_100)));
        assert_eq!(r.at(ms(1_100)).step(Input::Tick), vec![Action::SpawnNew]);
    }

    fn reaped_last() -> Input {
        Input::Reaped {
            exits: vec![(Pid::from_raw(77), ChildStatus::Exited(0))],
            children_left: false,
        }
    }

    #[test]
    fn a_drain_signal_while_old_processes_remain_waits_only_for_them() {
        let mut r = Run::new(restarting(RestartOn::OnFailure));
        let left =
            Input::Reaped { exits: vec![(PID, ChildStatus::Exited(1))], children_left: true };
        r.at(secs(1)).step(left);
        assert_eq!(r.at(secs(2)).step(Input::Signal(SIGTERM)), vec![]);
        assert!(matches!(r.m.phase(), Phase::Reaping { .. }));
        assert_eq!(r.step(reaped_last()), vec![], "no new child");
        assert_eq!(r.m.exit_code(), Some(1));
    }

    #[test]
    fn a_failed_start_ends_the_run_with_the_old_status() {
        let mut r = Run::new(restarting(RestartOn::Always));
        r.at(secs(1)).step(Input::Reaped {
            exits: vec![(PID, ChildStatus::Signaled(Sig(libc::SIGSEGV)))],
            children_left: false,
        });
        r.at(ms(1_100)).step(Input::Tick);
        let out = r.all(Input::SpawnFailed("cannot run 'app': not found".into()));
        assert_eq!(r.m.exit_code(), Some(139));
        assert_eq!(
            ended(&out),
            ["child killed by SIGSEGV; restart 1 failed: cannot run 'app': not found"]
        );
    }

    #[test]
    fn no_restart_once_a_drain_has_begun() {
        let mut r = Run::new(restarting(RestartOn::Always));
        r.step(Input::Signal(SIGTERM));
        r.child_exits(ChildStatus::Exited(1));
        assert_eq!(r.m.exit_code(), Some(1));
    }

    #[test]
    fn a_restarted_child_never_ready_is_stopped_without_a_prestop_delay() {
        let policy = Policy { checks: true, ..restarting(RestartOn::OnFailure) };
        let mut r = Run::new(policy);
        crash_and_restart(&mut r, PID, secs(1), NEW);
        assert_eq!(r.at(secs(2)).step(Input::Signal(SIGTERM)), signal(SIGTERM, Target::Child(NEW)));
        // Once ready again, it drains as the first child did.
        let policy = Policy { checks: true, ..restarting(RestartOn::OnFailure) };
        let mut r = Run::new(policy);
        crash_and_restart(&mut r, PID, secs(1), NEW);
        r.step(Input::Checks { pass: true, failing: None });
        assert_eq!(r.at(secs(2)).step(Input::Signal(SIGTERM)), vec![]);
        assert!(matches!(r.m.phase(), Phase::Draining { .. }));
        assert_eq!(r.at(secs(7)).step(Input::Tick), signal(SIGTERM, Target::Child(NEW)));
        let out = r.at(secs(8)).all(crash(NEW));
        assert_eq!(r.m.exit_code(), Some(1), "no restart in a drain");
        assert_eq!(
            ended(&out),
            ["child exited 1 after SIGTERM (drain 5.0s, stopped 1.0s later) (1 restart(s) before)"]
        );
    }

    #[test]
    fn a_restarted_child_without_checks_is_ready_at_once_and_drains_with_the_delay() {
        let mut r = Run::new(restarting(RestartOn::OnFailure));
        crash_and_restart(&mut r, PID, secs(1), NEW);
        assert!(r.m.is_ready(), "/readyz 200 as soon as it runs: routers send it traffic");
        assert_eq!(r.at(secs(2)).step(Input::Signal(SIGTERM)), vec![]);
        assert!(matches!(r.m.phase(), Phase::Draining { .. }), "{:?}", r.m.phase());
        assert_eq!(r.at(secs(7)).step(Input::Tick), signal(SIGTERM, Target::Child(NEW)));
    }

    #[test]
    fn a_crash_abandons_a_reload_and_no_reload_while_restarting() {
        let hup = Sig(libc::SIGHUP);
        let policy = Policy { reload_signal: Some(hup), ..restarting(RestartOn::OnFailure) };
        let mut r = Run::new(policy);
        r.step(Input::Signal(hup));
        r.step(Input::Spawned(NEW));
        let out = r.at(secs(1)).step(Input::Reaped {
            exits: vec![(PID, ChildStatus::Exited(1))],
            children_left: true,
        });
        assert_eq!(
            out,
            [signal(SIGTERM, Target::Child(NEW)), signal(SIGTERM, Target::Descendants)].concat()
        );
        assert_eq!(
            r.logs(Input::Signal(hup), Level::Info),
            [
                "received SIGHUP while the child restarts: no reload (the restart starts a new child)"
            ]
        );
        let new_gone = Input::Reaped {
            exits: vec![(NEW, ChildStatus::Signaled(SIGTERM))],
            children_left: false,
        };
        assert_eq!(r.at(ms(1_100)).step(new_gone), vec![Action::SpawnNew]);
        r.step(Input::Spawned(NEWER));
        assert_eq!(r.m.child(), Some(NEWER));
        assert_eq!(r.m.reload_counts(), (0, 0));
    }
}
