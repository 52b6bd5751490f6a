//! The readiness gate: whether the app is ready, by its checks and its own word, and what the
//! operator hears of it (each change once, and a warning if it never becomes ready).

use std::time::Instant;

use log::Level;

use super::{Action, Policy};
use crate::show;

pub struct Gate {
    /// `/readyz` has been requested (it makes `--prestop-delay auto` choose a delay).
    pub probed: bool,
    /// The `--ready-*` checks all pass (true when there are none).
    checks: bool,
    /// The first failing check and why, as the checker last said.
    failing: Option<String>,
    /// `--ready-notify`: the child's last word (`None` when not used).
    notify: Option<bool>,
    /// The app has been ready at least once.
    ever_ready: bool,
    started: Instant,
    /// When an app that never became ready is reported as such (once).
    warn_at: Option<Instant>,
    startup_timeout: std::time::Duration,
    /// What `started` was: the first start, or a restart.
    after: &'static str,
}

impl Gate {
    pub fn new(policy: &Policy, started: Instant) -> Gate {
        let gated = policy.checks || policy.notify;
        Gate {
            probed: false,
            checks: !policy.checks,
            failing: None,
            notify: policy.notify.then_some(false),
            // With nothing to wait for, the app is ready from its start.
            ever_ready: !gated,
            started,
            warn_at: gated.then(|| started + policy.startup_timeout),
            startup_timeout: policy.startup_timeout,
            after: "start",
        }
    }

    /// A restart's new child runs: unready until its checks pass and it speaks again.
    pub fn restarted(&mut self, policy: &Policy, now: Instant) {
        *self = Gate { probed: self.probed, after: "the restart", ..Gate::new(policy, now) };
    }

    /// The app has been ready since the child (or the restart's new child) started.
    pub fn ever_ready(&self) -> bool {
        self.ever_ready
    }

    pub fn ready(&self) -> bool {
        self.checks && self.notify != Some(false)
    }

    pub fn notified(&self) -> Option<bool> {
        self.notify
    }

    /// Why the app is not ready: the first failing check, else the child's silence.
    fn failing(&self) -> Option<String> {
        if !self.checks {
            return Some(self.failing.clone().unwrap_or_default());
        }
        (self.notify == Some(false))
            .then(|| "--ready-notify: no READY=1 from the child (or STOPPING=1 since)".to_string())
    }

    pub fn on_checks(
        &mut self,
        pass: bool,
        failing: Option<String>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let was = self.ready();
        self.checks = pass;
        self.failing = failing;
        self.log_change(was, now, out);
    }

    /// `READY=1` (true) or `STOPPING=1` (false) from the child.
    pub fn on_notify(&mut self, ready: bool, now: Instant, out: &mut Vec<Action>) {
        let was = self.ready();
        if self.notify.is_some() {
            self.notify = Some(ready);
        }
        self.log_change(was, now, out);
    }

    fn log_change(&mut self, was: bool, now: Instant, out: &mut Vec<Action>) {
        let ready = self.ready();
        if ready == was {
            return;
        }
        let line = if ready && !self.ever_ready {
            self.ever_ready = true;
            let took = now.saturating_duration_since(self.started);
            format!("the app is ready ({} after {})", show::duration(took), self.after)
        } else if ready {
            "the app is ready again".to_string()
        } else {
            format!("the app is not ready: {}", self.failing().unwrap_or_default())
        };
        out.push(super::info(line));
    }

    /// The startup warning, once, if the app has never been ready while the child runs.
    pub fn on_tick(&mut self, running: bool, now: Instant, out: &mut Vec<Action>) {
        if self.warn_at.is_none_or(|t| t > now) {
            return;
        }
        self.warn_at = None;
        if !self.ever_ready && running {
            out.push(super::log(
                Level::Warn,
                format!(
                    "the app is not ready {} after {} ({}); it keeps running, unready",
                    show::duration(self.startup_timeout),
                    self.after,
                    self.failing().unwrap_or_default()
                ),
            ));
        }
    }

    /// The startup warning's time, while it can still matter.
    pub fn deadline(&self, running: bool) -> Option<Instant> {
        self.warn_at.filter(|_| running && !self.ever_ready)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{Input, Phase, Policy};
    use super::*;
    use crate::init::signals::SIGTERM;

    fn checked() -> Policy {
        Policy { checks: true, startup_timeout: secs(60), ..Policy::for_tests() }
    }

    fn checks(pass: bool, failing: &str) -> Input {
        Input::Checks { pass, failing: (!pass).then(|| failing.to_string()) }
    }

    #[test]
    fn readiness_follows_the_checks() {
        let mut r = Run::new(checked());
        assert!(!r.m.is_ready() && r.m.is_live(), "unready until the checks pass");
        r.step(checks(true, ""));
        assert!(r.m.is_ready());
        r.step(checks(false, "x"));
        assert!(!r.m.is_ready());
        r.step(checks(true, ""));
        r.step(Input::Signal(SIGTERM));
        assert!(!r.m.is_ready(), "the drain wins over passing checks");
    }

    #[test]
    fn each_change_is_logged_once() {
        let mut r = Run::new(checked());
        let first = "--ready-tcp 127.0.0.1:1: not checked yet";
        assert!(
            r.logs(checks(false, first), Level::Info).is_empty(),
            "starting unready is no change"
        );
        let refused = "--ready-tcp 127.0.0.1:1: Connection refused";
        assert!(r.logs(checks(false, refused), Level::Info).is_empty(), "a new reason, no change");
        assert_eq!(
            r.at(secs(2)).logs(checks(true, ""), Level::Info),
            ["the app is ready (2.0s after start)"]
        );
        assert_eq!(
            r.logs(checks(false, refused), Level::Info),
            ["the app is not ready: --ready-tcp 127.0.0.1:1: Connection refused"]
        );
        assert_eq!(r.logs(checks(true, ""), Level::Info), ["the app is ready again"]);
    }

    #[test]
    fn the_startup_warning_comes_once_and_only_if_never_ready() {
        let mut r = Run::new(checked());
        r.step(checks(false, "--ready-http http://x/: status 500"));
        assert_eq!(r.m.deadline(), Some(r.t0 + secs(60)));
        assert!(r.at(secs(59)).logs(Input::Tick, Level::Warn).is_empty());
        assert_eq!(
            r.at(secs(60)).logs(Input::Tick, Level::Warn),
            [
                "the app is not ready 60.0s after start (--ready-http http://x/: status 500); it keeps running, unready"
            ]
        );
        assert_eq!(r.m.deadline(), None, "once");
        assert!(r.at(secs(61)).logs(Input::Tick, Level::Warn).is_empty());

        let mut ready_in_time = Run::new(checked());
        ready_in_time.at(secs(1)).step(checks(true, ""));
        assert_eq!(ready_in_time.m.deadline(), None, "nothing to warn about");
        assert!(ready_in_time.at(secs(60)).logs(Input::Tick, Level::Warn).is_empty());

        let mut draining = Run::new(checked());
        draining.step(Input::Signal(SIGTERM));
        assert!(matches!(draining.m.phase(), Phase::Draining { .. }));
        assert!(draining.at(secs(60)).logs(Input::Tick, Level::Warn).is_empty());
    }

    #[test]
    fn notify_gates_alongside_the_checks() {
        let policy = Policy { notify: true, ..checked() };
        let mut r = Run::new(policy);
        let from = PID;
        r.step(checks(true, ""));
        assert!(!r.m.is_ready(), "the checks pass, the child has not spoken");
        assert_eq!(r.m.notified(), Some(false));
        assert_eq!(
            r.at(secs(1)).logs(Input::Notify { ready: true, from }, Level::Info),
            ["the app is ready (1.0s after start)"]
        );
        assert_eq!(
            r.logs(Input::Notify { ready: false, from }, Level::Info),
            [
                "the app is not ready: --ready-notify: no READY=1 from the child (or STOPPING=1 since)"
            ]
        );
        r.step(Input::Notify { ready: true, from });
        assert_eq!(
            r.logs(
                checks(false, "--ready-exec 'x': the command exited with status 1"),
                Level::Info
            ),
            ["the app is not ready: --ready-exec 'x': the command exited with status 1"],
            "a failing check is named before the child's word"
        );
    }

    #[test]
    fn notify_from_elsewhere_is_not_the_apps_word() {
        let policy = Policy { notify: true, ..Policy::for_tests() };
        let mut r = Run::new(policy);
        let stranger = nix::unistd::Pid::from_raw(1234);
        r.step(Input::Notify { ready: true, from: stranger });
        assert!(!r.m.is_ready(), "a process under another of lastcall's children");
        r.step(Input::Notify { ready: true, from: PID });
        assert!(r.m.is_ready());
    }
}
