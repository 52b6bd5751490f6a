//! What lastcall counts, and its Prometheus text exposition (format 0.0.4) for `/metrics`.

use std::fmt::Write;
use std::time::{Duration, Instant};

use crate::endpoint::checks::{Checker, Outcome};
use crate::endpoint::http::{HttpCounters, Pages, Standing};
use crate::machine::{DrainEnd, Machine, Phase};
use crate::show;

/// Everything `/metrics` and `?verbose` show, borrowed for one turn of the loop.
pub struct View<'a> {
    pub machine: &'a Machine,
    pub checker: &'a Checker,
    pub now: Instant,
}

impl Pages for View<'_> {
    fn metrics(&self, http: &HttpCounters) -> String {
        self.render(http)
    }

    fn verbose(&self) -> String {
        self.explain()
    }
}

impl View<'_> {
    /// The Prometheus text exposition.
    pub fn render(&self, http: &HttpCounters) -> String {
        let mut out = String::with_capacity(2048);
        family(&mut out, "lastcall_build_info", "gauge", "Always 1; the version as a label.");
        let _ = writeln!(
            out,
            "lastcall_build_info{{version=\"{}\"}} 1",
            escape(env!("CARGO_PKG_VERSION"))
        );
        let phase = self.machine.phase();
        family(
            &mut out,
            "lastcall_phase",
            "gauge",
            "1 for the phase lastcall is in, 0 for the others.",
        );
        for name in Phase::NAMES {
            let on = u8::from(name == phase.name());
            let _ = writeln!(out, "lastcall_phase{{phase=\"{name}\"}} {on}");
        }
        family(&mut out, "lastcall_ready", "gauge", "1 while /readyz answers 200.");
        let _ = writeln!(out, "lastcall_ready {}", u8::from(self.machine.is_ready()));
        family(&mut out, "lastcall_child_pid", "gauge", "The child's pid; 0 once it has exited.");
        let pid = self.machine.child().map_or(0, |p| p.as_raw());
        let _ = writeln!(out, "lastcall_child_pid {pid}");
        family(&mut out, "lastcall_uptime_seconds", "gauge", "Seconds since lastcall started.");
        let uptime = self.now.saturating_duration_since(self.machine.started());
        let _ = writeln!(out, "lastcall_uptime_seconds {:.3}", uptime.as_secs_f64());

        let stats = self.machine.stats();
        let signals = [
            ("lastcall_signals_received_total", "Signals lastcall received, by name.", false),
            (
                "lastcall_signals_forwarded_total",
                "Signals lastcall sent to the child or its descendants, by name.",
                true,
            ),
        ];
        for (name, help, forwarded) in signals {
            family(&mut out, name, "counter", help);
            for (sig, received, sent) in stats.signals() {
                let n = if forwarded { sent } else { received };
                if n > 0 {
                    let _ = writeln!(out, "{name}{{signal=\"{sig}\"}} {n}");
                }
            }
        }
        family(
            &mut out,
            "lastcall_zombies_reaped_total",
            "counter",
            "Processes other than the child that lastcall reaped.",
        );
        let _ = writeln!(out, "lastcall_zombies_reaped_total {}", stats.reaped);
        family(
            &mut out,
            "lastcall_oom_kills_total",
            "counter",
            "Processes the kernel's OOM killer killed in lastcall's memory cgroup since start.",
        );
        let _ = writeln!(out, "lastcall_oom_kills_total {}", self.machine.oom_kills());

        family(
            &mut out,
            "lastcall_probes_total",
            "counter",
            "Requests to /readyz and /livez, by path and status code.",
        );
        for (r, path) in ["/readyz", "/livez"].iter().enumerate() {
            for (s, code) in [200, 503].iter().enumerate() {
                let n = http.probes[r][s];
                let _ =
                    writeln!(out, "lastcall_probes_total{{path=\"{path}\",code=\"{code}\"}} {n}");
            }
        }
        family(&mut out, "lastcall_http_connections", "gauge", "Open connections to the endpoint.");
        let _ = writeln!(out, "lastcall_http_connections {}", http.open);
        family(
            &mut out,
            "lastcall_http_connections_rejected_total",
            "counter",
            "Connections closed at once: the maximum was open and none could make room.",
        );
        let _ = writeln!(out, "lastcall_http_connections_rejected_total {}", http.rejected);
        family(
            &mut out,
            "lastcall_http_connections_evicted_total",
            "counter",
            "Connections closed to make room for a new one when the maximum was open, by reason.",
        );
        for reason in Standing::ALL {
            let n = http.evicted[reason as usize];
            let _ = writeln!(
                out,
                "lastcall_http_connections_evicted_total{{reason=\"{}\"}} {n}",
                reason.label()
            );
        }
        family(
            &mut out,
            "lastcall_http_connections_dropped_total",
            "counter",
            "Connections closed for a timeout, bad input, or unread answers.",
        );
        let _ = writeln!(out, "lastcall_http_connections_dropped_total {}", http.dropped);

        if self.checker.is_active() || self.machine.notified().is_some() {
            family(
                &mut out,
                "lastcall_check_passing",
                "gauge",
                "1 if the readiness check passed last time it ran, 0 if it failed or has not run.",
            );
            for (name, outcome) in self.checks() {
                let pass = u8::from(*outcome == Outcome::Pass);
                let _ =
                    writeln!(out, "lastcall_check_passing{{check=\"{}\"}} {pass}", escape(&name));
            }
        }
        if let Some(deps) = self.machine.dependencies() {
            family(
                &mut out,
                "lastcall_dependency_up",
                "gauge",
                "1 once the awaited dependency (--wait-for, --wait-for-exec) has answered.",
            );
            for dep in &deps.deps {
                let up = u8::from(dep.up_after.is_some());
                let _ = writeln!(
                    out,
                    "lastcall_dependency_up{{dependency=\"{}\"}} {up}",
                    escape(&dep.name)
                );
            }
            family(
                &mut out,
                "lastcall_dependency_wait_seconds",
                "gauge",
                "How long lastcall waited for the dependency: until it answered, else so far.",
            );
            for dep in &deps.deps {
                let waited = deps.waited(dep, self.now).as_secs_f64();
                let _ = writeln!(
                    out,
                    "lastcall_dependency_wait_seconds{{dependency=\"{}\"}} {waited:.3}",
                    escape(&dep.name)
                );
            }
        }
        let last = self.machine.last_shutdown();
        if let Some(seen) = last.seen {
            family(
                &mut out,
                "lastcall_app_connections",
                "gauge",
                "The app's connections at the last read of the drain: busy (a request TCP shows \
                 unanswered), unsure (the app wrote last: answered, or an answer paused), idle.",
            );
            for (state, n) in [("busy", seen.busy), ("unsure", seen.unsure), ("idle", seen.idle)] {
                let _ = writeln!(out, "lastcall_app_connections{{state=\"{state}\"}} {n}");
            }
        }
        if let Some(e) = last.evidence {
            family(
                &mut out,
                "lastcall_last_drain_silence_seconds",
                "gauge",
                "What ended the last drain early: how long no request came (observed), and how \
                 long the rule needed (needed).",
            );
            for (kind, d) in [("observed", e.silence), ("needed", e.needed)] {
                let _ = writeln!(
                    out,
                    "lastcall_last_drain_silence_seconds{{kind=\"{kind}\"}} {:.3}",
                    d.as_secs_f64()
                );
            }
            if let Some(rate) = e.rate {
                family(
                    &mut out,
                    "lastcall_last_drain_arrival_rate",
                    "gauge",
                    "The cautious rate of requests (per second) the last drain's early end \
                     assumed, from the arrivals it saw.",
                );
                let _ = writeln!(out, "lastcall_last_drain_arrival_rate {rate:.3}");
            }
            if e.probers > 0 {
                family(
                    &mut out,
                    "lastcall_last_drain_probers_told",
                    "gauge",
                    "The fewest 503 answers a prober of the last drain had when it ended early.",
                );
                let _ = writeln!(out, "lastcall_last_drain_probers_told {}", e.told);
            }
        }
        if let Some(ended) = last.ended {
            family(
                &mut out,
                "lastcall_last_drain_end",
                "gauge",
                "Why the last preStop phase ended: 1 for the reason, 0 for the others.",
            );
            for reason in DrainEnd::ALL {
                let v = u8::from(reason == ended);
                let _ =
                    writeln!(out, "lastcall_last_drain_end{{reason=\"{}\"}} {v}", reason.name());
            }
        }

        let (reloads, failed) = self.machine.reload_counts();
        family(
            &mut out,
            "lastcall_reloads_total",
            "counter",
            "Reloads that swapped in a ready new child.",
        );
        let _ = writeln!(out, "lastcall_reloads_total {reloads}");
        family(
            &mut out,
            "lastcall_reload_failures_total",
            "counter",
            "Reloads whose new child exited, failed to start, or was not ready in time.",
        );
        let _ = writeln!(out, "lastcall_reload_failures_total {failed}");

        let restarts = self.machine.restarts();
        family(
            &mut out,
            "lastcall_restarts_total",
            "counter",
            "Children started again after the child ended (--restart).",
        );
        let _ = writeln!(out, "lastcall_restarts_total {}", restarts.total);
        if let Some(status) = restarts.last_exit {
            family(
                &mut out,
                "lastcall_child_last_exit_status",
                "gauge",
                "How the last child to end ended: its exit status, or 128+N for signal N.",
            );
            let _ = writeln!(out, "lastcall_child_last_exit_status {}", status.code());
        }
        if let Some(backoff) = restarts.backoff {
            family(
                &mut out,
                "lastcall_restart_backoff_seconds",
                "gauge",
                "The backoff of the restart under way, or of the last one.",
            );
            let _ = writeln!(out, "lastcall_restart_backoff_seconds {:.3}", backoff.as_secs_f64());
        }

        let timings = [
            (
                "lastcall_last_drain_seconds",
                "The last shutdown's preStop phase: from the drain's start to the stop signal.",
                last.drain,
            ),
            (
                "lastcall_last_grace_seconds",
                "The last shutdown's grace phase: from the stop signal to the child's exit.",
                last.grace,
            ),
        ];
        for (name, help, value) in timings {
            if let Some(d) = value {
                family(&mut out, name, "gauge", help);
                let _ = writeln!(out, "{name} {:.3}", d.as_secs_f64());
            }
        }
        out
    }

    /// The short explanation `?verbose` adds to a probe's answer.
    pub fn explain(&self) -> String {
        let phase = self.machine.phase();
        let pid = self.machine.child().map_or("none".to_string(), |p| p.to_string());
        let in_phase =
            phase.since().map_or(Duration::ZERO, |t| self.now.saturating_duration_since(t));
        let mut text = format!(
            "phase: {}\nchild pid: {pid}\ntime in phase: {}\n",
            phase.name(),
            show::duration(in_phase)
        );
        if let Phase::Restarting { at, left, .. } = phase {
            let backoff = self.machine.restarts().backoff.unwrap_or_default();
            let _ = write!(
                text,
                "restart: backoff {}, new child in {}",
                show::duration(backoff),
                show::duration(at.saturating_duration_since(self.now))
            );
            text.push_str(if left { " once the old child's processes are gone\n" } else { "\n" });
        }
        let restarts = self.machine.restarts();
        if restarts.total > 0 || restarts.last_exit.is_some() {
            let last = restarts.last_exit.map_or("none".to_string(), |s| s.to_string());
            let _ = writeln!(text, "restarts: {}; last child exit: {last}", restarts.total);
        }
        for (name, outcome) in self.checks() {
            let result = match outcome {
                Outcome::Unknown => "not run yet".to_string(),
                Outcome::Pass => "pass".to_string(),
                Outcome::Fail(why) => format!("fail: {why}"),
            };
            let _ = writeln!(text, "check {name}: {result}");
        }
        if let Some(deps) = self.machine.dependencies() {
            for dep in &deps.deps {
                let waited = show::duration(deps.waited(dep, self.now));
                let _ = match (&dep.up_after, &dep.failing) {
                    (Some(_), _) => writeln!(text, "awaited {}: up after {waited}", dep.name),
                    (None, Some(why)) => {
                        writeln!(text, "awaited {}: down for {waited}: {why}", dep.name)
                    }
                    (None, None) => writeln!(text, "awaited {}: no answer for {waited}", dep.name),
                };
            }
        }
        let last = self.machine.last_shutdown();
        if let Some(seen) = last.seen {
            let (busy, unsure, idle) = (seen.busy, seen.unsure, seen.idle);
            let _ = writeln!(text, "app connections: {busy} busy, {unsure} unsure, {idle} idle");
        }
        if let Some(ended) = last.ended {
            let _ = writeln!(text, "last drain ended: {}", ended.name());
        }
        if let Some(e) = last.evidence {
            let _ = write!(
                text,
                "last drain's evidence: no request for {} ({} needed)",
                show::duration(e.silence),
                show::duration(e.needed)
            );
            if let Some(rate) = e.rate {
                let _ = write!(text, ", arrivals at {rate:.1}/s or more");
            }
            if e.probers > 0 {
                let _ = write!(text, ", probers told {} times", e.told);
            }
            text.push('\n');
        }
        text
    }

    /// Each check and its last result, `--ready-notify` (the child's own word) last.
    fn checks(&self) -> impl Iterator<Item = (String, &Outcome)> {
        let notify = self.machine.notified().map(|ready| {
            let outcome = if ready { &Outcome::Pass } else { &Outcome::Unknown };
            ("--ready-notify".to_string(), outcome)
        });
        self.checker.results().chain(notify)
    }
}

/// A label value as the exposition format wants it: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::status::ChildStatus;
    use crate::machine::Input;

    /// A checker with no check to run.
    fn no_checks(now: Instant) -> crate::endpoint::checks::Checker {
        let second = Duration::from_secs(1);
        crate::endpoint::checks::Checker::new(vec![], second, second, 16, now)
    }

    /// Checks the text against the exposition format's line grammar: every sample belongs
    /// to a family declared by HELP and TYPE lines before it, and its value is a number.
    fn well_formed(text: &str) {
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                declared.push(parts.next().unwrap().to_string());
                assert!(matches!(parts.next(), Some("gauge" | "counter")), "{line}");
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect(line);
            let name = series.split('{').next().unwrap();
            assert!(declared.iter().any(|d| d == name), "undeclared: {line}");
            assert!(value.parse::<f64>().is_ok(), "bad value: {line}");
            assert!(name.starts_with("lastcall_"), "{line}");
        }
    }

    #[test]
    fn exposition_is_well_formed_and_counts() {
        let t0 = Instant::now();
        let mut m = Machine::for_tests(t0);
        let hup = crate::init::signals::Sig(libc::SIGHUP);
        m.step(Input::Signal(hup), t0);
        m.step(Input::Signal(hup), t0);
        let orphans = (100..103).map(|p| (nix::unistd::Pid::from_raw(p), ChildStatus::Exited(0)));
        m.step(Input::Reaped { exits: orphans.collect(), children_left: true }, t0);
        let mut http = HttpCounters::default();
        http.probes[0][0] = 7;
        let checker = no_checks(t0);
        let view = View { machine: &m, checker: &checker, now: t0 + Duration::from_millis(1500) };
        let text = view.render(&http);
        well_formed(&text);
        for line in [
            "lastcall_phase{phase=\"running\"} 1",
            "lastcall_phase{phase=\"draining\"} 0",
            "lastcall_child_pid 42",
            "lastcall_uptime_seconds 1.500",
            "lastcall_signals_received_total{signal=\"SIGHUP\"} 2",
            "lastcall_signals_forwarded_total{signal=\"SIGHUP\"} 2",
            "lastcall_zombies_reaped_total 3",
            "lastcall_oom_kills_total 0",
            concat!("lastcall_build_info{version=\"", env!("CARGO_PKG_VERSION"), "\"} 1"),
            "lastcall_probes_total{path=\"/readyz\",code=\"200\"} 7",
            "lastcall_probes_total{path=\"/readyz\",code=\"503\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("last_drain"), "no shutdown yet");

        m.step(Input::Signal(crate::init::signals::SIGTERM), t0 + Duration::from_secs(1));
        m.step(Input::Tick, t0 + Duration::from_secs(6));
        let view = View { machine: &m, checker: &checker, now: t0 + Duration::from_secs(7) };
        let text = view.render(&http);
        well_formed(&text);
        assert!(text.contains("lastcall_phase{phase=\"stopping\"} 1"));
        assert!(text.contains("lastcall_last_drain_seconds 5.000"));
        assert!(text.contains("lastcall_last_drain_end{reason=\"delay\"} 1"));
        assert!(text.contains("lastcall_last_drain_end{reason=\"app_idle\"} 0"));
        assert_eq!(
            view.explain(),
            "phase: stopping\nchild pid: 42\ntime in phase: 1.0s\nlast drain ended: delay\n"
        );
        m.step(Input::OomKills { new: 2, since: t0, limit: None }, t0 + Duration::from_secs(7));
        let text = View { machine: &m, checker: &checker, now: t0 }.render(&http);
        assert!(text.lines().any(|l| l == "lastcall_oom_kills_total 2"), "{text}");
    }

    #[test]
    fn an_early_end_shows_its_evidence() {
        use crate::machine::{AppSummary, Policy, Probe, ReadBy};
        let t0 = Instant::now();
        let policy = Policy { drain_idle: true, ..Policy::for_tests() };
        let mut m = Machine::new(policy, nix::unistd::Pid::from_raw(42), t0);
        let probe = Probe { from: [10, 0, 0, 1].into(), ready: true, kubelet: false, lb: None };
        m.step(Input::Probed(probe), t0);
        m.step(Input::Probed(probe), t0);
        m.step(Input::Signal(crate::init::signals::SIGTERM), t0);
        m.step(Input::AppPorts(vec![8080]), t0);
        for _ in 0..3 {
            m.step(Input::Probed(Probe { ready: false, ..probe }), t0);
        }
        let read = AppSummary {
            busy: 0,
            unsure: 0,
            idle: 2,
            unsure_from: Default::default(),
            last_activity: None,
            rhythm: Default::default(),
            by: ReadBy::Sockets,
        };
        m.step(Input::AppRead(Ok(read)), t0 + Duration::from_millis(1200));
        let checker = no_checks(t0);
        let view = View { machine: &m, checker: &checker, now: t0 + Duration::from_secs(2) };
        let text = view.render(&HttpCounters::default());
        well_formed(&text);
        for line in [
            "lastcall_app_connections{state=\"busy\"} 0",
            "lastcall_app_connections{state=\"unsure\"} 0",
            "lastcall_app_connections{state=\"idle\"} 2",
            "lastcall_last_drain_end{reason=\"app_idle\"} 1",
            "lastcall_last_drain_silence_seconds{kind=\"observed\"} 1.200",
            "lastcall_last_drain_silence_seconds{kind=\"needed\"} 1.000",
            "lastcall_last_drain_probers_told 3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("arrival_rate"), "probers, not the rhythm, ended it");
        assert!(view.explain().ends_with(
            "app connections: 0 busy, 0 unsure, 2 idle\nlast drain ended: app_idle\nlast \
             drain's evidence: no request for 1.2s (1.0s needed), probers told 3 times\n"
        ));
    }
}
