//! Waiting for the app's dependencies before the child starts (`--wait-for`,
//! `--wait-for-exec`): when the wait is over, when it has run out, and what a SIGTERM or
//! SIGINT during it means.
//!
//! The loop probes each dependency with the readiness checks' machinery and brings what each
//! said at its last attempt as [`Input::Awaited`](super::Input::Awaited). A dependency counts
//! as up from the first attempt it passes: the child starts once every one has been up. The
//! machine stays in [`Phase::Waiting`] until then; `/livez` answers 200 and `/readyz` 503.

use std::time::{Duration, Instant};

use log::Level;
use nix::unistd::Pid;

use super::{Action, Machine, Phase, log};
use crate::init::signals::{Class, Sig, class};
use crate::init::status::ChildStatus;
use crate::show;

/// lastcall's exit status when a dependency never came up within `--wait-timeout` (and
/// `--on-wait-timeout exit`): the status `timeout(1)` gives a command that ran out of time.
pub const WAIT_TIMED_OUT: u8 = 124;

/// `--on-wait-timeout`: what to do when `--wait-timeout` passes with a dependency still down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnWaitTimeout {
    /// Exit with [`WAIT_TIMED_OUT`]; the child never starts.
    Exit,
    /// Start the child anyway, with a warning.
    Start,
}

/// One dependency as the wait sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dep {
    /// How the command line named it: `tcp://127.0.0.1:15021`, `exec 'pg_isready'`.
    pub name: String,
    /// How long after the wait began it first answered; `None` while it has not.
    pub up_after: Option<Duration>,
    /// Why its last attempt failed, if it has not come up.
    pub failing: Option<String>,
}

/// The wait, from lastcall's start to the child's.
#[derive(Clone, Debug)]
pub struct Deps {
    /// When the wait began: when lastcall started.
    pub since: Instant,
    pub deps: Vec<Dep>,
    /// The wait is over (all up, or timed out): when, and the child was asked for.
    pub over: Option<Instant>,
    /// The first line, saying what is awaited, was said.
    announced: bool,
}

impl Deps {
    pub(super) fn new(names: &[String], since: Instant) -> Deps {
        let deps = names
            .iter()
            .map(|name| Dep { name: name.clone(), up_after: None, failing: None })
            .collect();
        Deps { since, deps, over: None, announced: false }
    }

    /// The dependencies not up yet, by name, each with why its last attempt failed.
    fn down(&self) -> String {
        let down: Vec<String> = self
            .deps
            .iter()
            .filter(|d| d.up_after.is_none())
            .map(|d| match &d.failing {
                Some(why) => format!("{} ({why})", d.name),
                None => format!("{} (no answer yet)", d.name),
            })
            .collect();
        down.join(", ")
    }
}

impl Deps {
    /// How long `dep` was waited for: until it came up, else until the wait was over, else
    /// until `now`.
    pub fn waited(&self, dep: &Dep, now: Instant) -> Duration {
        dep.up_after
            .unwrap_or_else(|| self.over.unwrap_or(now).saturating_duration_since(self.since))
    }
}

impl Machine {
    /// A machine that waits for `policy.wait`'s dependencies before it asks for the child
    /// ([`Action::StartChild`]); the clock starts at `now`. With none to wait for, it is the
    /// machine of a child that could not be started ([`Input::NotStarted`](super::Input)).
    pub fn waiting(policy: super::Policy, now: Instant) -> Machine {
        let until = now + policy.wait_timeout;
        let mut m = Machine::new(policy, Pid::from_raw(0), now);
        m.deps = Some(Deps::new(&m.policy.wait, now));
        m.phase = Phase::Waiting { since: now, until };
        m
    }

    /// The first step of a wait says what it waits for, once.
    pub(super) fn announce_wait(&mut self, out: &mut Vec<Action>) {
        let Some(deps) = self.deps.as_mut().filter(|d| !d.announced && !d.deps.is_empty()) else {
            return;
        };
        deps.announced = true;
        let names: Vec<&str> = deps.deps.iter().map(|d| d.name.as_str()).collect();
        out.push(log(
            Level::Info,
            format!(
                "waiting for {} before starting the child (timeout {})",
                names.join(", "),
                show::duration(self.policy.wait_timeout)
            ),
        ));
    }

    /// What each dependency said at its last attempt, in the order of the command line.
    pub(super) fn on_awaited(
        &mut self,
        results: Vec<Result<(), String>>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Phase::Waiting { .. } = self.phase else {
            return;
        };
        let Some(deps) = self.deps.as_mut().filter(|d| d.over.is_none()) else {
            return;
        };
        let waited = now.saturating_duration_since(deps.since);
        for (dep, result) in deps.deps.iter_mut().zip(results) {
            if dep.up_after.is_some() {
                continue;
            }
            match result {
                Ok(()) => {
                    dep.up_after = Some(waited);
                    dep.failing = None;
                    out.push(log(
                        Level::Info,
                        format!("{} is up after {}", dep.name, show::duration(waited)),
                    ));
                }
                Err(why) => dep.failing = Some(why),
            }
        }
        if deps.deps.iter().all(|d| d.up_after.is_some()) {
            deps.over = Some(now);
            out.push(log(
                Level::Info,
                format!(
                    "every dependency is up after {}: starting the child",
                    show::duration(waited)
                ),
            ));
            out.push(Action::StartChild);
        }
    }

    /// The wait's deadline: give up, or start the child anyway.
    pub(super) fn wait_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Phase::Waiting { until, .. } = self.phase else {
            return;
        };
        let Some(deps) = self.deps.as_mut().filter(|d| d.over.is_none() && now >= until) else {
            return;
        };
        deps.over = Some(now);
        let waited = show::duration(now.saturating_duration_since(deps.since));
        let down = deps.down();
        match self.policy.on_wait_timeout {
            OnWaitTimeout::Exit => {
                out.push(log(
                    Level::Error,
                    format!(
                        "gave up after {waited}: never came up: {down}; the child was not \
                         started, exiting with {WAIT_TIMED_OUT}"
                    ),
                ));
                let why = format!("dependency not up after {waited}: {down}");
                self.exit_with(WAIT_TIMED_OUT, why, out);
            }
            OnWaitTimeout::Start => {
                out.push(log(
                    Level::Warn,
                    format!(
                        "not up after {waited}: {down}; starting the child anyway \
                         (--on-wait-timeout start)"
                    ),
                ));
                out.push(Action::StartChild);
            }
        }
    }

    /// A signal during the wait: SIGTERM or SIGINT ends it at once, with the status a child
    /// killed by that signal would have given; there is no child for the others to reach.
    pub(super) fn signal_while_waiting(&mut self, sig: Sig, now: Instant, out: &mut Vec<Action>) {
        let Some(deps) = self.deps.as_ref() else {
            return;
        };
        if class(sig) != Class::Drain {
            out.push(log(Level::Debug, format!("received {sig} while waiting: no child to reach")));
            return;
        }
        let waited = show::duration(now.saturating_duration_since(deps.since));
        let code = ChildStatus::Signaled(sig).exit_code(&self.policy.success_exit);
        let down = deps.down();
        out.push(log(
            Level::Info,
            format!(
                "received {sig} after {waited} waiting for {down}: the child was not started, \
                 exiting with {code}"
            ),
        ));
        let why = format!("stopped by {sig} after {waited} waiting for {down}; child not started");
        self.exit_with(code, why, out);
    }

    /// The child asked for by [`Action::StartChild`] runs: the app's start begins now.
    pub(super) fn on_started(&mut self, pid: Pid, now: Instant) {
        if !matches!(self.phase, Phase::Waiting { .. }) {
            return;
        }
        self.phase = Phase::Running { pid, since: now };
        self.gate = super::gate::Gate::new(&self.policy, now);
    }

    /// The main child could not be started: lastcall exits as it would have without a
    /// child, and the `--on-exit` hooks still run (a sidecar waits for them all the same).
    pub(super) fn not_started(&mut self, code: u8, why: String, out: &mut Vec<Action>) {
        if let Phase::Waiting { .. } = self.phase {
            self.exit_with(code, why, out);
        }
    }

    /// The wait, for `/metrics` and `?verbose`: `None` when nothing was awaited.
    pub fn dependencies(&self) -> Option<&Deps> {
        self.deps.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{Input, Policy};
    use super::*;
    use crate::init::signals::SIGTERM;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn policy(on_timeout: OnWaitTimeout) -> Policy {
        Policy {
            wait: vec!["tcp://127.0.0.1:15021".into(), "exec 'true'".into()],
            wait_timeout: secs(10),
            on_wait_timeout: on_timeout,
            ..Policy::for_tests()
        }
    }

    fn run(on_timeout: OnWaitTimeout) -> Run {
        let mut r = Run::new(policy(on_timeout));
        r.m = Machine::waiting(r.m.policy.clone(), r.t0);
        r
    }

    fn refused() -> Result<(), String> {
        Err("Connection refused (os error 111)".into())
    }

    #[test]
    fn the_child_starts_once_every_dependency_has_answered() {
        let mut r = run(OnWaitTimeout::Exit);
        let first = r.logs(Input::Tick, Level::Info);
        assert_eq!(
            first,
            ["waiting for tcp://127.0.0.1:15021, exec 'true' before starting the child \
              (timeout 10.0s)"]
        );
        assert!(r.m.is_live() && !r.m.is_ready(), "live, not ready, while waiting");
        assert_eq!(r.m.deadline(), Some(r.t0 + secs(10)));
        assert_eq!(r.at(ms(100)).step(Input::Awaited(vec![refused(), Ok(())])), vec![]);
        // Once up, a dependency stays up: the wait is for the first answer.
        let logs = r.at(ms(1_300)).all(Input::Awaited(vec![Ok(()), refused()]));
        assert!(logs.contains(&Action::StartChild), "{logs:?}");
        let deps = r.m.dependencies().unwrap();
        let after: Vec<_> = deps.deps.iter().map(|d| d.up_after).collect();
        assert_eq!(after, [Some(ms(1_300)), Some(ms(100))]);
        // Asked for once.
        assert_eq!(r.at(ms(1_400)).step(Input::Awaited(vec![Ok(()), Ok(())])), vec![]);
        assert_eq!(r.at(secs(11)).step(Input::Tick), vec![], "no timeout once over");
        r.at(ms(1_310)).step(Input::Started(PID));
        assert_eq!(r.m.phase(), Phase::Running { pid: PID, since: r.t0 + ms(1_310) });
        assert!(r.m.is_ready(), "no checks: ready once running");
    }

    #[test]
    fn a_dependency_that_never_answers_ends_the_run_with_124() {
        let mut r = run(OnWaitTimeout::Exit);
        r.step(Input::Tick);
        r.at(ms(500)).step(Input::Awaited(vec![refused(), Ok(())]));
        assert_eq!(r.at(ms(9_999)).step(Input::Tick), vec![]);
        let out = r.at(secs(10)).all(Input::Tick);
        assert_eq!(r.m.exit_code(), Some(WAIT_TIMED_OUT));
        assert!(!out.contains(&Action::StartChild));
        let error = logged(&out, Level::Error);
        assert_eq!(
            error,
            ["gave up after 10.0s: never came up: tcp://127.0.0.1:15021 (Connection refused \
              (os error 111)); the child was not started, exiting with 124"]
        );
        assert!(out.contains(&Action::Ended(
            "dependency not up after 10.0s: tcp://127.0.0.1:15021 (Connection refused (os error \
             111))"
                .into()
        )));
    }

    #[test]
    fn on_wait_timeout_start_starts_the_child_with_a_warning() {
        let mut r = run(OnWaitTimeout::Start);
        let out = r.at(secs(10)).all(Input::Tick);
        assert!(out.contains(&Action::StartChild));
        let warned = out.iter().any(|a| {
            matches!(a, Action::Log(Level::Warn, line, _)
                if line.contains("(no answer yet)") && line.contains("starting the child anyway"))
        });
        assert!(warned, "{out:?}");
        assert_eq!(r.m.exit_code(), None);
        assert_eq!(r.m.deadline(), None, "no second timeout");
    }

    #[test]
    fn sigterm_during_the_wait_exits_at_once_as_the_signal_would() {
        let mut r = run(OnWaitTimeout::Exit);
        let out = r.at(secs(2)).all(Input::Signal(SIGTERM));
        assert_eq!(r.m.exit_code(), Some(143));
        assert!(!out.iter().any(|a| matches!(a, Action::Signal { .. } | Action::StartChild)));
        assert!(
            out.contains(&Action::Ended(
                "stopped by SIGTERM after 2.0s waiting for tcp://127.0.0.1:15021 (no answer yet), \
             exec 'true' (no answer yet); child not started"
                    .into()
            ))
        );
        // --success-exit applies as to a child killed by the signal.
        let mut r = Run::new(Policy { success_exit: vec![130], ..policy(OnWaitTimeout::Exit) });
        r.m = Machine::waiting(r.m.policy.clone(), r.t0);
        r.step(Input::Signal(sig(libc::SIGINT)));
        assert_eq!(r.m.exit_code(), Some(0));
        // Other signals have no child to reach.
        let mut r = run(OnWaitTimeout::Exit);
        assert_eq!(r.step(Input::Signal(sig(libc::SIGHUP))), vec![]);
        assert_eq!(r.m.exit_code(), None);
    }

    #[test]
    fn the_exit_hooks_run_on_every_way_out() {
        let with_hooks = |p: Policy| Policy { on_exit: true, ..p };
        let hooks = |out: &[Action]| out.iter().filter(|a| **a == Action::OnExit).count();
        // A timed-out wait and a SIGTERM during it.
        let mut r = Run::new(with_hooks(policy(OnWaitTimeout::Exit)));
        r.m = Machine::waiting(r.m.policy.clone(), r.t0);
        assert_eq!(hooks(&r.at(secs(10)).all(Input::Tick)), 1);
        let mut r = Run::new(with_hooks(policy(OnWaitTimeout::Exit)));
        r.m = Machine::waiting(r.m.policy.clone(), r.t0);
        assert_eq!(hooks(&r.all(Input::Signal(SIGTERM))), 1);
        // A child that ran: after the last process is reaped, after the termination message.
        let mut r = Run::new(with_hooks(Policy::for_tests()));
        let exits = vec![(PID, ChildStatus::Exited(3))];
        assert_eq!(hooks(&r.all(Input::Reaped { exits, children_left: true })), 0);
        let out = r.at(secs(1)).all(Input::Reaped { exits: vec![], children_left: false });
        assert_eq!(hooks(&out), 1);
        let ended = out.iter().position(|a| matches!(a, Action::Ended(_)));
        let hooked = out.iter().position(|a| *a == Action::OnExit);
        assert!(ended < hooked, "{out:?}");
        assert_eq!(r.m.exit_code(), Some(3), "hooks never change the status");
        // A child that cannot be started, once the wait is over or with nothing to wait for:
        // the status and message it gives, then the hooks.
        for wait in [vec!["exec 'true'".to_string()], vec![]] {
            let p = Policy { wait, ..with_hooks(policy(OnWaitTimeout::Exit)) };
            let mut r = Run::new(p.clone());
            r.m = Machine::waiting(p, r.t0);
            if !r.m.policy.wait.is_empty() {
                assert!(r.all(Input::Awaited(vec![Ok(())])).contains(&Action::StartChild));
            }
            let why = "exec failed: /app: not found".to_string();
            let out = r.all(Input::NotStarted { code: 127, why: why.clone() });
            assert_eq!(out, [Action::Ended(why), Action::OnExit]);
            assert_eq!(r.m.exit_code(), Some(127));
        }
        // None asked for: none run.
        let mut r = Run::new(Policy::for_tests());
        assert_eq!(
            hooks(&r.all(Input::Reaped {
                exits: vec![(PID, ChildStatus::Exited(0))],
                children_left: false
            })),
            0
        );
    }
}
