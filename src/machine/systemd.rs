//! What systemd hears when lastcall runs as a `Type=notify` service: READY=1 when `/readyz`
//! would first answer 200, STOPPING=1 once when lastcall starts to go down, STATUS= at each
//! phase change and when a child it said was not ready yet becomes ready (a restart's new
//! child), and the watchdog ping while the child lives.

use std::time::{Duration, Instant};

use super::{Action, Phase};

pub struct Report {
    ready_sent: bool,
    /// The phase the last STATUS= named ("" before the first).
    last_phase: &'static str,
    /// The last STATUS= said the running app was not ready yet.
    waiting_said: bool,
    /// How often to ping the watchdog, and when next.
    watchdog: Option<(Duration, Instant)>,
}

impl Report {
    pub fn new(watchdog: Option<Duration>, started: Instant) -> Report {
        Report {
            ready_sent: false,
            last_phase: "",
            waiting_said: false,
            watchdog: watchdog.map(|every| (every, started + every)),
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.watchdog.map(|(_, next)| next)
    }

    /// Says what changed since the last call.
    pub fn tell(
        &mut self,
        phase: &Phase,
        ready: bool,
        live: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if !self.ready_sent && ready {
            out.push(Action::Systemd("READY=1\nSTATUS=running, ready".into()));
            self.ready_sent = true;
            self.last_phase = phase.name();
            self.waiting_said = false;
        }
        if phase.name() != self.last_phase {
            let up = |name: &str| name == "running" || name == "restarting";
            if up(self.last_phase) && !up(phase.name()) {
                // Once, when lastcall starts to go down, whatever the reason.
                out.push(Action::Systemd("STOPPING=1".into()));
            }
            out.push(Action::Systemd(format!("STATUS={}", status(phase, ready))));
            self.last_phase = phase.name();
            self.waiting_said = matches!(phase, Phase::Running { .. }) && !ready;
        } else if self.waiting_said && ready {
            // A restart's new child said to wait is ready: READY=1 went out long ago, and
            // the status must not keep saying it waits.
            out.push(Action::Systemd(format!("STATUS={}", status(phase, ready))));
            self.waiting_said = false;
        }
        if let Some((every, at)) = self.watchdog.filter(|&(_, at)| at <= now) {
            if live {
                out.push(Action::Systemd("WATCHDOG=1".into()));
            }
            // Skip missed pings rather than bursting them.
            self.watchdog = Some((every, (at + every).max(now + every / 2)));
        }
    }
}

fn status(phase: &Phase, ready: bool) -> String {
    let text = match phase {
        Phase::Waiting { .. } => "waiting for the app's dependencies",
        Phase::Running { .. } if !ready => "running, waiting for the app to be ready",
        Phase::Running { .. } => "running, ready",
        Phase::Draining { .. } => "draining: unready, waiting out the preStop delay",
        Phase::Stopping { .. } => "stopping: stop signal sent, waiting for the child",
        Phase::Killing { .. } => "killing: grace period over, SIGKILL sent",
        Phase::Reaping { .. } => "child exited; stopping the processes it left",
        Phase::Restarting { .. } => "child exited; restarting it",
        Phase::Exited { code } => return format!("exiting with {code}"),
    };
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use nix::unistd::Pid;

    use super::super::{Input, Policy, Prestop, Restart, RestartOn};
    use super::*;
    use crate::init::signals::SIGTERM;
    use crate::init::status::ChildStatus;

    fn told(actions: Vec<Action>) -> Vec<String> {
        actions
            .into_iter()
            .filter_map(|a| match a {
                Action::Systemd(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    fn under_systemd(checks: bool, watchdog: Option<Duration>) -> Policy {
        Policy {
            systemd: true,
            watchdog,
            checks,
            prestop: Prestop::Fixed(secs(5)),
            ..Policy::for_tests()
        }
    }

    #[test]
    fn ready_at_once_without_checks_then_each_phase() {
        let mut r = Run::new(under_systemd(false, None));
        assert_eq!(told(r.all(Input::Tick)), ["READY=1\nSTATUS=running, ready"]);
        assert!(told(r.all(Input::Tick)).is_empty(), "said once");
        assert_eq!(
            told(r.all(Input::Signal(SIGTERM))),
            ["STOPPING=1", "STATUS=draining: unready, waiting out the preStop delay"]
        );
        assert_eq!(
            told(r.at(secs(5)).all(Input::Tick)),
            ["STATUS=stopping: stop signal sent, waiting for the child"]
        );
        assert_eq!(
            told(r.at(secs(25)).all(Input::Tick)),
            ["STATUS=killing: grace period over, SIGKILL sent"]
        );
        let exits = vec![(PID, ChildStatus::Signaled(crate::init::signals::SIGKILL))];
        assert_eq!(
            told(r.all(Input::Reaped { exits, children_left: false })),
            ["STATUS=exiting with 137"]
        );
    }

    #[test]
    fn ready_only_once_the_checks_pass() {
        let mut r = Run::new(under_systemd(true, None));
        assert_eq!(told(r.all(Input::Tick)), ["STATUS=running, waiting for the app to be ready"]);
        let pass = Input::Checks { pass: true, failing: None };
        assert_eq!(told(r.all(pass)), ["READY=1\nSTATUS=running, ready"]);
        let fail = Input::Checks { pass: false, failing: Some("x".into()) };
        assert!(told(r.all(fail)).is_empty(), "no STATUS for readiness changes");
    }

    #[test]
    fn a_restarted_child_is_said_ready_once_its_checks_pass() {
        let restart = Restart { when: RestartOn::OnFailure, ..Restart::DEFAULT };
        let mut r = Run::new(Policy { restart, ..under_systemd(true, None) });
        r.all(Input::Tick);
        r.all(Input::Checks { pass: true, failing: None });
        let crash = vec![(PID, ChildStatus::Exited(1))];
        assert_eq!(
            told(r.at(secs(1)).all(Input::Reaped { exits: crash, children_left: false })),
            ["STATUS=child exited; restarting it"]
        );
        r.at(Duration::from_millis(1_100)).all(Input::Tick);
        assert_eq!(
            told(r.all(Input::Spawned(Pid::from_raw(43)))),
            ["STATUS=running, waiting for the app to be ready"]
        );
        assert_eq!(
            told(r.all(Input::Checks { pass: true, failing: None })),
            ["STATUS=running, ready"],
            "not left saying it waits"
        );
    }

    #[test]
    fn stopping_is_said_when_the_child_exits_on_its_own() {
        let mut r = Run::new(under_systemd(false, None));
        r.all(Input::Tick);
        let exits = vec![(PID, ChildStatus::Exited(0))];
        assert_eq!(
            told(r.all(Input::Reaped { exits, children_left: true })),
            ["STOPPING=1", "STATUS=child exited; stopping the processes it left"]
        );
    }

    #[test]
    fn watchdog_pings_while_the_child_lives_and_skips_missed_ones() {
        let mut r = Run::new(under_systemd(false, Some(secs(2))));
        assert_eq!(r.m.deadline(), Some(r.t0 + secs(2)));
        assert!(!told(r.at(secs(1)).all(Input::Tick)).contains(&"WATCHDOG=1".to_string()));
        assert!(told(r.at(secs(2)).all(Input::Tick)).contains(&"WATCHDOG=1".to_string()));
        assert_eq!(r.m.deadline(), Some(r.t0 + secs(4)));
        // Woken late: one ping, and the next half an interval on.
        assert_eq!(told(r.at(secs(10)).all(Input::Tick)), ["WATCHDOG=1"]);
        assert_eq!(r.m.deadline(), Some(r.t0 + secs(11)));
        let exits = vec![(PID, ChildStatus::Exited(0))];
        r.all(Input::Reaped { exits, children_left: true });
        assert!(
            !told(r.at(secs(11)).all(Input::Tick)).contains(&"WATCHDOG=1".to_string()),
            "no ping once the child is gone"
        );
    }
}
