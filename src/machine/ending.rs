//! Why the run ended: the termination message, and which SIGKILLs were the kernel's.
//!
//! A process the OOM killer ends dies of SIGKILL like one `kill -9` ended. The loop reads
//! the memory cgroup's OOM-kill counter when a reaping pass holds a death by SIGKILL and
//! brings what it read as [`Input::OomKills`](super::Input::OomKills), just before that
//! pass; the new kills are laid on that pass's SIGKILL deaths, the main child's first. A
//! SIGKILL of lastcall's own (after the grace period, or a third signal) is never taken for
//! the kernel's: in those phases, new kills are reported as other processes'.
//!
//! When the main child ends, one match on the phase it ended in ([`ChildEnd`]) gives both
//! the log line's words and the [`Ending`] the machine keeps; when lastcall exits, it says
//! that in one line ([`Action::Ended`]) for `--termination-log`.

use std::fmt;
use std::time::{Duration, Instant};

use log::Level;
use nix::unistd::Pid;

use super::{Action, Machine, Phase, log};
use crate::init::signals::{SIGKILL, Sig};
use crate::init::status::ChildStatus;
use crate::show::{self, format_bytes};

/// How the main child ended, as the termination message tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// It ended with no shutdown under way: on its own, or by someone else's signal.
    Own(ChildStatus),
    /// The kernel's OOM killer killed it; the memory limit, in bytes, if there is one.
    Oom { limit: Option<u64> },
    /// It ended during the drain, before the stop signal.
    DuringDrain { status: ChildStatus, drained: Duration },
    /// It ended `took` after the stop signal `stop`, which came `drained` after the drain
    /// began.
    AfterStop { status: ChildStatus, stop: Sig, drained: Duration, took: Duration },
    /// lastcall's SIGKILL, when the grace period was over.
    GraceExpired { grace: Duration },
    /// lastcall's SIGKILL, on a third SIGTERM or SIGINT (`sig`).
    Hurried { sig: Sig },
    /// It ended after lastcall's SIGKILL, but not of it.
    AfterKill { status: ChildStatus },
}

/// `exited 3`, `killed by SIGSEGV`: short, as in the termination message.
struct Short(ChildStatus);

impl fmt::Display for Short {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            ChildStatus::Exited(code) => write!(f, "exited {code}"),
            ChildStatus::Signaled(sig) => write!(f, "killed by {sig}"),
        }
    }
}

impl fmt::Display for Ending {
    /// The termination message: one short line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = show::duration;
        match *self {
            Ending::Own(status) => write!(f, "child {}", Short(status)),
            Ending::Oom { limit: None } => write!(f, "child killed by the kernel's OOM killer"),
            Ending::Oom { limit: Some(bytes) } => write!(
                f,
                "child killed by the kernel's OOM killer (memory limit {})",
                format_bytes(bytes)
            ),
            Ending::DuringDrain { status, drained } => write!(
                f,
                "child {} during the drain, before the stop signal (drain {})",
                Short(status),
                d(drained)
            ),
            // Killed by the stop signal itself: "after SIGTERM" would say it twice.
            Ending::AfterStop { status: ChildStatus::Signaled(sig), stop, drained, took }
                if sig == stop =>
            {
                write!(f, "child killed by {sig} (drain {}, stopped {} later)", d(drained), d(took))
            }
            Ending::AfterStop { status, stop, drained, took } => write!(
                f,
                "child {} after {stop} (drain {}, stopped {} later)",
                Short(status),
                d(drained),
                d(took)
            ),
            Ending::GraceExpired { grace } => {
                write!(f, "child killed by SIGKILL: grace period of {} expired", d(grace))
            }
            Ending::Hurried { sig } => write!(f, "child killed by SIGKILL: {sig} received 3 times"),
            Ending::AfterKill { status } => write!(f, "child {} after SIGKILL", Short(status)),
        }
    }
}

/// The main child's end as the phase it ended in tells it.
pub(super) struct ChildEnd {
    /// The termination message's end (an OOM kill of the child overrides it).
    pub ending: Ending,
    /// The log line's: `child exited with status 0 2.0s after the stop signal (7.0s of drain)`.
    pub shown: String,
    /// How long the child took to end once asked: after the stop signal, after SIGKILL, or
    /// the drain so far; `None` when it was not asked.
    pub took: Option<Duration>,
    /// When the processes left behind get SIGKILL; `None`: at once.
    pub kill_at: Option<Instant>,
}

/// What the OOM-kill counter said, and what is made of it.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Oom {
    /// Kills read for the coming reaping pass, not yet laid on a process.
    pending: u64,
    pub(super) limit: Option<u64>,
    /// Every kill read since start: `lastcall_oom_kills_total`.
    pub(super) total: u64,
    /// The main child was one of them.
    pub(super) main: bool,
}

impl Oom {
    pub(super) fn on_kills(&mut self, new: u64, limit: Option<u64>) {
        self.pending += new;
        self.total += new;
        self.limit = limit;
    }

    /// ` (memory limit 256 MiB)`, or nothing without a limit.
    fn limit_text(&self) -> String {
        self.limit.map(|b| format!(" (memory limit {})", format_bytes(b))).unwrap_or_default()
    }
}

impl Machine {
    /// Lays the kills just read on this pass's deaths by SIGKILL, the main child's first,
    /// and warns of each; kills left over were of processes lastcall cannot name.
    pub(super) fn attribute_oom_kills(
        &mut self,
        exits: &[(Pid, ChildStatus)],
        out: &mut Vec<Action>,
    ) {
        if self.oom.pending == 0 {
            return;
        }
        // After lastcall's own SIGKILL, a death by SIGKILL is no sign of the kernel's.
        let killing = match self.phase {
            Phase::Killing { .. } => true,
            Phase::Reaping { kill_at, .. } => kill_at.is_none(),
            _ => false,
        };
        let main = self.child();
        let mut victims: Vec<Pid> = exits
            .iter()
            .filter(|(_, status)| !killing && *status == ChildStatus::Signaled(SIGKILL))
            .map(|&(pid, _)| pid)
            .collect();
        victims.sort_by_key(|&pid| Some(pid) != main);
        let limit = self.oom.limit_text();
        for pid in victims.into_iter().take(self.oom.pending as usize) {
            self.oom.pending -= 1;
            let who = if Some(pid) == main {
                self.oom.main = true;
                "child"
            } else {
                "process"
            };
            out.push(log(
                Level::Warn,
                format!("{who} {pid} was killed by the kernel's OOM killer{limit}"),
            ));
        }
        let others = std::mem::take(&mut self.oom.pending);
        if others > 0 {
            out.push(log(
                Level::Warn,
                format!(
                    "the kernel's OOM killer killed {others} other process(es) in lastcall's \
                     memory cgroup{limit}"
                ),
            ));
        }
    }

    /// The main child's end, read once from the phase it ended in: the termination message
    /// and the log line say the same end.
    pub(super) fn child_end(&self, status: ChildStatus, now: Instant) -> ChildEnd {
        let d = show::duration;
        let since = |at: Instant| now.saturating_duration_since(at);
        match self.phase {
            Phase::Running { .. } => ChildEnd {
                ending: Ending::Own(status),
                shown: format!("child {status}"),
                took: None,
                kill_at: Some(now + self.policy.grace),
            },
            Phase::Draining { drain, .. } => {
                let drained = since(drain.started);
                ChildEnd {
                    ending: Ending::DuringDrain { status, drained },
                    shown: format!(
                        "child {status} during the preStop delay ({} of drain)",
                        d(drained)
                    ),
                    took: Some(drained),
                    kill_at: Some(now + self.policy.grace),
                }
            }
            Phase::Stopping { since: stopped, deadline, drain, .. } => {
                let took = since(stopped);
                ChildEnd {
                    ending: Ending::AfterStop {
                        status,
                        stop: self.stop_signal(Some(drain.trigger)),
                        drained: stopped.saturating_duration_since(drain.started),
                        took,
                    },
                    shown: format!(
                        "child {status} {} after the stop signal ({} of drain)",
                        d(took),
                        d(since(drain.started))
                    ),
                    took: Some(took),
                    // The shutdown as a whole keeps the bound it was given.
                    kill_at: Some(deadline),
                }
            }
            Phase::Killing { since: killed, drain, .. } => {
                let took = since(killed);
                let ending = match status {
                    ChildStatus::Signaled(SIGKILL) if drain.signals >= 3 => {
                        Ending::Hurried { sig: drain.trigger }
                    }
                    ChildStatus::Signaled(SIGKILL) => {
                        Ending::GraceExpired { grace: self.policy.grace }
                    }
                    _ => Ending::AfterKill { status },
                };
                ChildEnd {
                    ending,
                    shown: format!(
                        "child {status} {} after SIGKILL ({} of drain)",
                        d(took),
                        d(since(drain.started))
                    ),
                    took: Some(took),
                    kill_at: None,
                }
            }
            // The child is gone in these: not its end.
            Phase::Reaping { .. } | Phase::Exited { .. } => ChildEnd {
                ending: Ending::Own(status),
                shown: format!("child {status}"),
                took: None,
                kill_at: None,
            },
        }
    }

    /// The last step: lastcall exits with `code`, and says why.
    pub(super) fn exit(&mut self, code: u8, out: &mut Vec<Action>) {
        self.phase = Phase::Exited { code };
        let why = match self.ending {
            Some(ending) => ending.to_string(),
            None => format!("exiting with {code}"),
        };
        out.push(Action::Ended(why));
    }

    /// OOM kills seen in lastcall's memory cgroup since start.
    pub fn oom_kills(&self) -> u64 {
        self.oom.total
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{Input, Policy, Prestop};
    use super::*;
    use crate::init::signals::SIGTERM;

    const SIGINT: Sig = Sig(libc::SIGINT);

    /// What lastcall writes to the termination log at the end of the run.
    fn ended(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Ended(why) => Some(why.clone()),
                _ => None,
            })
            .collect()
    }

    fn exits(status: ChildStatus, left: bool) -> Input {
        Input::Reaped { exits: vec![(PID, status)], children_left: left }
    }

    fn policy() -> Policy {
        Policy { prestop: Prestop::Fixed(secs(5)), ..Policy::for_tests() }
    }

    #[test]
    fn a_clean_stop_says_the_drain_and_the_stop() {
        let mut r = Run::new(policy());
        r.step(Input::Signal(SIGTERM));
        r.at(secs(5)).step(Input::Tick);
        let out = r.at(Duration::from_millis(6_200)).all(exits(ChildStatus::Exited(0), false));
        assert_eq!(ended(&out), ["child exited 0 after SIGTERM (drain 5.0s, stopped 1.2s later)"]);
        // Killed by the stop signal itself.
        let mut r = Run::new(policy());
        r.step(Input::Signal(SIGINT));
        r.step(Input::Signal(SIGINT));
        let out = r.at(Duration::from_millis(3)).all(exits(ChildStatus::Signaled(SIGINT), false));
        assert_eq!(ended(&out), ["child killed by SIGINT (drain 0ms, stopped 3ms later)"]);
    }

    #[test]
    fn an_escalation_says_why_sigkill_came() {
        let mut r = Run::new(policy());
        r.step(Input::Signal(SIGTERM));
        r.at(secs(5)).step(Input::Tick);
        r.at(secs(25)).step(Input::Tick);
        let out = r.all(exits(ChildStatus::Signaled(SIGKILL), false));
        assert_eq!(ended(&out), ["child killed by SIGKILL: grace period of 20.0s expired"]);
        // The second signal forwarded during the grace period does not count as a third.
        let mut r = Run::new(Policy { prestop: Prestop::Fixed(Duration::ZERO), ..policy() });
        r.step(Input::Signal(SIGTERM));
        r.step(Input::Signal(SIGTERM));
        r.at(secs(20)).step(Input::Tick);
        let out = r.all(exits(ChildStatus::Signaled(SIGKILL), false));
        assert_eq!(ended(&out), ["child killed by SIGKILL: grace period of 20.0s expired"]);

        let mut r = Run::new(policy());
        for _ in 0..3 {
            r.step(Input::Signal(SIGINT));
        }
        let out = r.all(exits(ChildStatus::Signaled(SIGKILL), false));
        assert_eq!(ended(&out), ["child killed by SIGKILL: SIGINT received 3 times"]);
        // Already gone when SIGKILL came.
        let mut r = Run::new(policy());
        for _ in 0..3 {
            r.step(Input::Signal(SIGTERM));
        }
        assert_eq!(
            ended(&r.all(exits(ChildStatus::Exited(1), false))),
            ["child exited 1 after SIGKILL"]
        );
    }

    #[test]
    fn a_child_that_ends_on_its_own_or_during_the_drain() {
        let mut r = Run::new(policy());
        assert_eq!(ended(&r.all(exits(ChildStatus::Exited(3), false))), ["child exited 3"]);
        let mut r = Run::new(policy());
        let segv = Sig(libc::SIGSEGV);
        assert_eq!(
            ended(&r.all(exits(ChildStatus::Signaled(segv), false))),
            ["child killed by SIGSEGV"]
        );
        let mut r = Run::new(policy());
        r.step(Input::Signal(SIGTERM));
        let out = r.at(Duration::from_millis(2_100)).all(exits(ChildStatus::Exited(0), false));
        assert_eq!(
            ended(&out),
            ["child exited 0 during the drain, before the stop signal (drain 2.1s)"]
        );
    }

    #[test]
    fn the_message_waits_for_the_last_process() {
        let mut r = Run::new(policy());
        r.step(Input::Signal(SIGTERM));
        r.at(secs(5)).step(Input::Tick);
        let out = r.at(secs(6)).all(exits(ChildStatus::Signaled(SIGTERM), true));
        assert!(ended(&out).is_empty(), "others remain: lastcall does not exit yet");
        let last = Input::Reaped {
            exits: vec![(Pid::from_raw(77), ChildStatus::Exited(0))],
            children_left: false,
        };
        let out = r.at(secs(9)).all(last);
        assert_eq!(ended(&out), ["child killed by SIGTERM (drain 5.0s, stopped 1.0s later)"]);
        assert_eq!(r.m.exit_code(), Some(143));
    }

    #[test]
    fn an_oom_kill_of_the_child_is_warned_and_told() {
        let mut r = Run::new(policy());
        assert_eq!(r.m.oom_kills(), 0);
        assert!(r.all(Input::OomKills { new: 1, limit: Some(256 << 20) }).is_empty());
        let out = r.all(exits(ChildStatus::Signaled(SIGKILL), false));
        let warned: Vec<&Action> =
            out.iter().filter(|a| matches!(a, Action::Log(Level::Warn, ..))).collect();
        assert_eq!(
            warned,
            [&log(
                Level::Warn,
                "child 42 was killed by the kernel's OOM killer (memory limit 256 MiB)".into()
            )]
        );
        assert_eq!(ended(&out), ["child killed by the kernel's OOM killer (memory limit 256 MiB)"]);
        assert_eq!((r.m.oom_kills(), r.m.exit_code()), (1, Some(137)));
        // Without a limit (an ancestor's cannot be seen), nothing is made up.
        let mut r = Run::new(policy());
        r.step(Input::OomKills { new: 1, limit: None });
        let out = r.all(exits(ChildStatus::Signaled(SIGKILL), false));
        assert_eq!(ended(&out), ["child killed by the kernel's OOM killer"]);
    }

    #[test]
    fn oom_kills_go_to_sigkill_deaths_the_main_child_first() {
        let mut r = Run::new(policy());
        let worker = Pid::from_raw(77);
        let other = Pid::from_raw(78);
        r.step(Input::OomKills { new: 1, limit: None });
        // An orphan that exited normally is no victim; the one killed is.
        let pass = Input::Reaped {
            exits: vec![(other, ChildStatus::Exited(0)), (worker, ChildStatus::Signaled(SIGKILL))],
            children_left: true,
        };
        assert_eq!(r.logs(pass, Level::Warn), ["process 77 was killed by the kernel's OOM killer"]);
        assert!(r.m.is_live(), "the child runs on");
        // Two kills, one process to name: the other is said as a count.
        r.step(Input::OomKills { new: 2, limit: Some(64 << 20) });
        let pass = Input::Reaped {
            exits: vec![
                (other, ChildStatus::Signaled(SIGKILL)),
                (PID, ChildStatus::Signaled(SIGKILL)),
            ],
            children_left: false,
        };
        assert_eq!(
            r.logs(pass, Level::Warn),
            [
                "child 42 was killed by the kernel's OOM killer (memory limit 64 MiB)",
                "process 78 was killed by the kernel's OOM killer (memory limit 64 MiB)",
            ]
        );
        assert_eq!(r.m.oom_kills(), 3);
        // No kills read: a SIGKILL is just a SIGKILL.
        let mut r = Run::new(policy());
        let out = r.all(exits(ChildStatus::Signaled(SIGKILL), false));
        assert_eq!(ended(&out), ["child killed by SIGKILL"]);
    }

    #[test]
    fn lastcalls_own_sigkill_is_never_taken_for_the_kernels() {
        let mut r = Run::new(policy());
        r.step(Input::Signal(SIGTERM));
        r.at(secs(5)).step(Input::Tick);
        r.at(secs(25)).step(Input::Tick);
        r.step(Input::OomKills { new: 1, limit: None });
        let out = r.all(exits(ChildStatus::Signaled(SIGKILL), false));
        assert_eq!(ended(&out), ["child killed by SIGKILL: grace period of 20.0s expired"]);
        let warned: Vec<String> = out
            .iter()
            .filter_map(|a| match a {
                Action::Log(Level::Warn, line, _) => Some(line.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            warned,
            ["the kernel's OOM killer killed 1 other process(es) in lastcall's memory cgroup"]
        );
        assert_eq!(r.m.oom_kills(), 1, "counted all the same");
    }
}
