//! Why the run ended: the termination message, and which SIGKILLs were the kernel's.
//!
//! A process the OOM killer ends dies of SIGKILL like one `kill -9` ended; only the memory
//! cgroup's OOM-kill counter tells, and it says how many, not whom or when. The loop reads it
//! after each reaping pass's `waitpid`s and at the start of every other turn, and brings a
//! rise as [`Input::OomKills`](super::Input::OomKills): `new` kills that happened between the
//! previous read (`since`) and now. The kernel counts a kill before its victim dies, and the
//! victim's death reaches a reaping pass within [`KILL_TO_REAP`]; so a death by SIGKILL in a
//! pass is laid on kills counted at most that long before the pass, the main child first.
//! Kills counted earlier were of processes lastcall never reaped (the app's own children):
//! they are said as other processes', never laid on a later death. The claim is plain when
//! the kills cannot have happened long before the pass (the read before them is within
//! [`KILL_TO_REAP`]) and every SIGKILL death of the pass has a kill of its own; otherwise
//! the process was *probably* the kernel's. A SIGKILL of lastcall's own (after the grace
//! period, or a third signal) is never taken for the kernel's.
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
    /// A kill by the OOM killer was counted when it died of SIGKILL, but the counter cannot
    /// tell that the kill was its.
    ProbablyOom { limit: Option<u64> },
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
            Ending::ProbablyOom { limit: None } => {
                write!(f, "child probably killed by the kernel's OOM killer")
            }
            Ending::ProbablyOom { limit: Some(bytes) } => write!(
                f,
                "child probably killed by the kernel's OOM killer (memory limit {})",
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

/// How long a process the OOM killer chose may take to die and be reaped: it frees its memory
/// first, and its SIGCHLD wakes the loop at once.
pub(super) const KILL_TO_REAP: Duration = Duration::from_secs(1);

/// What the OOM-kill counter said, and what is made of it.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Oom {
    /// Kills read, not yet laid on a process nor said as others'.
    unclaimed: u64,
    /// The read before the oldest of them: they happened after it.
    since: Option<Instant>,
    /// The read that counted the newest of them.
    counted: Option<Instant>,
    pub(super) limit: Option<u64>,
    /// Every kill read since start: `lastcall_oom_kills_total`.
    pub(super) total: u64,
    /// The main child was one of them: its end, as the termination message tells it.
    main: Option<Ending>,
}

impl Oom {
    pub(super) fn on_kills(
        &mut self,
        new: u64,
        since: Instant,
        limit: Option<u64>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.limit = limit;
        self.expire(now, out);
        self.unclaimed += new;
        self.total += new;
        self.since = Some(self.since.map_or(since, |s| s.min(since)));
        self.counted = Some(now);
    }

    /// Kills counted too long ago to be the death of anything reaped from now on are said
    /// as other processes'.
    fn expire(&mut self, now: Instant, out: &mut Vec<Action>) {
        let old = self.counted.is_some_and(|at| now.saturating_duration_since(at) > KILL_TO_REAP);
        if old {
            self.say_others(out);
        }
    }

    /// The kills left unclaimed were of processes lastcall cannot name.
    fn say_others(&mut self, out: &mut Vec<Action>) {
        let others = std::mem::take(&mut self.unclaimed);
        (self.since, self.counted) = (None, None);
        if others > 0 {
            out.push(log(
                Level::Warn,
                format!(
                    "the kernel's OOM killer killed {others} other process(es) in lastcall's \
                     memory cgroup{}",
                    self.limit_text()
                ),
            ));
        }
    }

    /// ` (memory limit 256 MiB)`, or nothing without a limit.
    fn limit_text(&self) -> String {
        self.limit.map(|b| format!(" (memory limit {})", format_bytes(b))).unwrap_or_default()
    }
}

impl Machine {
    /// Lays the kills counted for this pass on its deaths by SIGKILL, the main child's first,
    /// and warns of each; see the module's doc for which kills and how sure.
    pub(super) fn attribute_oom_kills(
        &mut self,
        exits: &[(Pid, ChildStatus)],
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.oom.expire(now, out);
        if self.oom.unclaimed == 0 {
            return;
        }
        // After lastcall's own SIGKILL, a death by SIGKILL is no sign of the kernel's.
        let killing = match self.phase {
            Phase::Killing { .. } => true,
            Phase::Reaping { kill_at, .. } => kill_at.is_none(),
            Phase::Restarting { left, kill_at, .. } => left && kill_at.is_none(),
            _ => false,
        };
        let main = self.child();
        let mut victims: Vec<Pid> = exits
            .iter()
            .filter(|(_, status)| !killing && *status == ChildStatus::Signaled(SIGKILL))
            .map(|&(pid, _)| pid)
            .collect();
        if victims.is_empty() {
            return;
        }
        victims.sort_by_key(|&pid| Some(pid) != main);
        let recent =
            self.oom.since.is_some_and(|s| now.saturating_duration_since(s) <= KILL_TO_REAP);
        let sure = recent && victims.len() as u64 <= self.oom.unclaimed;
        let was = if sure { "was" } else { "was probably" };
        let limit = self.oom.limit_text();
        for pid in victims.into_iter().take(self.oom.unclaimed as usize) {
            self.oom.unclaimed -= 1;
            let who = if Some(pid) == main {
                let limit = self.oom.limit;
                let end = if sure { Ending::Oom { limit } } else { Ending::ProbablyOom { limit } };
                self.oom.main = Some(end);
                "child"
            } else {
                "process"
            };
            out.push(log(
                Level::Warn,
                format!("{who} {pid} {was} killed by the kernel's OOM killer{limit}"),
            ));
        }
        self.oom.say_others(out);
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
            Phase::Waiting { .. }
            | Phase::Reaping { .. }
            | Phase::Restarting { .. }
            | Phase::Exited { .. } => ChildEnd {
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
        self.oom.say_others(out);
        let why = match self.ending {
            Some(ending) => ending.to_string(),
            None => format!("exiting with {code}"),
        };
        let why = self.with_restarts(why);
        self.exit_with(code, why, out);
    }

    /// lastcall exits with `code`, and says `why`; then the `--on-exit` hooks run.
    pub(super) fn exit_with(&mut self, code: u8, why: String, out: &mut Vec<Action>) {
        self.phase = Phase::Exited { code };
        out.push(Action::Ended(why));
        if self.policy.on_exit {
            out.push(Action::OnExit);
        }
    }

    /// How the main child ended: as the phase it ended in tells it (`from_phase`), unless the
    /// OOM killer killed it, surely or probably.
    pub(super) fn ending_of(&self, from_phase: Ending) -> Ending {
        self.oom.main.unwrap_or(from_phase)
    }

    /// The child that was restarted was said already: its OOM kill is not a later one's.
    pub(super) fn forget_oom_end(&mut self) {
        self.oom.main = None;
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
        assert!(r.all(Input::OomKills { new: 1, since: r.now, limit: Some(256 << 20) }).is_empty());
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
        r.step(Input::OomKills { new: 1, since: r.now, limit: None });
        let out = r.all(exits(ChildStatus::Signaled(SIGKILL), false));
        assert_eq!(ended(&out), ["child killed by the kernel's OOM killer"]);
    }

    #[test]
    fn oom_kills_go_to_sigkill_deaths_the_main_child_first() {
        let mut r = Run::new(policy());
        let worker = Pid::from_raw(77);
        let other = Pid::from_raw(78);
        r.step(Input::OomKills { new: 1, since: r.now, limit: None });
        // An orphan that exited normally is no victim; the one killed is.
        let pass = Input::Reaped {
            exits: vec![(other, ChildStatus::Exited(0)), (worker, ChildStatus::Signaled(SIGKILL))],
            children_left: true,
        };
        assert_eq!(r.logs(pass, Level::Warn), ["process 77 was killed by the kernel's OOM killer"]);
        assert!(r.m.is_live(), "the child runs on");
        // Two kills, one process to name: the other is said as a count.
        r.step(Input::OomKills { new: 2, since: r.now, limit: Some(64 << 20) });
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

    /// The warnings of some actions.
    fn warned(out: &[Action]) -> Vec<String> {
        out.iter()
            .filter_map(|a| match a {
                Action::Log(Level::Warn, line, _) => Some(line.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_kill_counted_before_the_death_is_not_laid_on_it() {
        // The review's case: a worker the app reaps itself is OOM-killed; a turn (a probe)
        // reads the counter; 2s later the child dies of an operator's `kill -9`.
        let mut r = Run::new(policy());
        let t0 = r.t0;
        let out = r.at(secs(1)).all(Input::OomKills { new: 1, since: t0, limit: None });
        assert!(out.is_empty(), "not yet said: a death may still come for it");
        let out = r.at(secs(3)).all(exits(ChildStatus::Signaled(SIGKILL), false));
        assert_eq!(
            warned(&out),
            ["the kernel's OOM killer killed 1 other process(es) in lastcall's memory cgroup"]
        );
        assert_eq!(ended(&out), ["child killed by SIGKILL"]);
        assert_eq!(r.m.oom_kills(), 1);
        // No read between the worker's kill and the child's death: the counter cannot tell.
        let mut r = Run::new(policy());
        let t0 = r.t0;
        r.at(secs(3)).step(Input::OomKills { new: 1, since: t0, limit: Some(64 << 20) });
        let out = r.all(exits(ChildStatus::Signaled(SIGKILL), false));
        assert_eq!(
            warned(&out),
            ["child 42 was probably killed by the kernel's OOM killer (memory limit 64 MiB)"]
        );
        assert_eq!(
            ended(&out),
            ["child probably killed by the kernel's OOM killer (memory limit 64 MiB)"]
        );
    }

    #[test]
    fn a_kill_counted_just_before_the_death_is_its_own() {
        // A turn read the kill while the victim was still dying; the read before was recent.
        let mut r = Run::new(policy());
        let since = r.t0 + Duration::from_millis(9_900);
        r.at(secs(10)).step(Input::OomKills { new: 1, since, limit: None });
        let out =
            r.at(Duration::from_millis(10_300)).all(exits(ChildStatus::Signaled(SIGKILL), false));
        assert_eq!(warned(&out), ["child 42 was killed by the kernel's OOM killer"]);
        assert_eq!(ended(&out), ["child killed by the kernel's OOM killer"]);
        // One kill, two deaths by SIGKILL: which one is not known.
        let mut r = Run::new(policy());
        r.at(secs(10)).step(Input::OomKills { new: 1, since, limit: None });
        let pass = Input::Reaped {
            exits: vec![
                (Pid::from_raw(77), ChildStatus::Signaled(SIGKILL)),
                (PID, ChildStatus::Signaled(SIGKILL)),
            ],
            children_left: false,
        };
        let out = r.all(pass);
        assert_eq!(warned(&out), ["child 42 was probably killed by the kernel's OOM killer"]);
        assert_eq!(ended(&out), ["child probably killed by the kernel's OOM killer"]);
    }

    #[test]
    fn lastcalls_own_sigkill_is_never_taken_for_the_kernels() {
        let mut r = Run::new(policy());
        r.step(Input::Signal(SIGTERM));
        r.at(secs(5)).step(Input::Tick);
        r.at(secs(25)).step(Input::Tick);
        r.step(Input::OomKills { new: 1, since: r.now, limit: None });
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
