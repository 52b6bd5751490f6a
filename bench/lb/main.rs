//! The load-balancer benchmarks: the scenarios of the tests' `support::lb`, run with other
//! settings and more rounds, their figures written to a file rather than asserted.
//!
//! - `cargo bench --bench lb -- rolling WRAPPER APP LOG`: the rolling restart behind HAProxy,
//!   WRAPPER `lastcall` or `tini`, APP `graceful` or `abrupt` (dies at once on SIGTERM).
//!   LOG gets `req START_MS END_MS OUTCOME PATH` per request, `event T_MS WHAT` per restart
//!   step, then `summary ...` (bench/run's chart and table).
//! - `cargo bench --bench lb -- drain MODE ROUNDS LOG [SCENARIO...]`: the drain scenarios
//!   and its edge cases (all, or the ones named), MODE `fixed:SECS` (`--prestop-delay SECS
//!   --drain-idle-port off`), `aware:SECS` (the request-aware drain, SECS its upper bound;
//!   `aware:5` is no drain option at all in the `kube-*` cases, lastcall's default there) or
//!   `tini` (`--prestop-delay 0`: the app gets SIGTERM at once, as under tini), each backend
//!   stopped, or each edge case run, ROUNDS times. A line `SCENARIO MODE REQUESTS FAILED
//!   DRAIN,DRAIN,...` (seconds) per scenario is appended to LOG (bench/drain's table and
//!   chart).
//!
//! The summary of each run goes to stderr. Exits 1 when a tool is missing, 2 on a usage error.

/// `pub`: the harness is the tests' as a whole; the benchmarks use a part of it.
#[path = "../../tests/it/support/mod.rs"]
pub mod support;

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use support::lb::drain::{self, Drain, SCENARIOS};
use support::lb::edge::{self, CASES};
use support::lb::rolling::{self, Rolled, Setup, Step};

const USAGE: &str = "usage: lb rolling lastcall|tini graceful|abrupt LOG
       lb drain fixed:SECS|aware:SECS|tini ROUNDS LOG [SCENARIO...]";

fn main() -> ExitCode {
    // `cargo bench` adds `--bench` to the arguments.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let done = match args.as_slice() {
        ["rolling", wrapper, app, log] => {
            let other = match *wrapper {
                "lastcall" => None,
                "tini" => Some("tini"),
                _ => return usage(&format!("{wrapper}: expected lastcall or tini")),
            };
            let abrupt = match *app {
                "graceful" => false,
                "abrupt" => true,
                _ => return usage(&format!("{app}: expected graceful or abrupt")),
            };
            rolling::run(&Setup { other, abrupt }).map(|rolled| write(log, &roll_log(&rolled)))
        }
        ["drain", mode, rounds, log, names @ ..] => {
            let Some(drain) = parse_drain(mode) else {
                return usage(&format!("{mode}: expected fixed:SECS, aware:SECS or tini"));
            };
            let Ok(rounds) = rounds.parse() else {
                return usage(&format!("{rounds}: expected a number of rounds"));
            };
            let known = |n: &str| SCENARIOS.iter().any(|s| s.name == n) || edge::case(n).is_some();
            if let Some(name) = names.iter().find(|n| !known(n)) {
                return usage(&format!("{name}: no such scenario"));
            }
            let all = SCENARIOS.iter().map(|s| s.name).chain(CASES.iter().map(|c| c.name));
            let chosen = all.filter(|n| names.is_empty() || names.contains(n));
            let mut done = Some(());
            for name in chosen {
                let figures = match SCENARIOS.iter().find(|s| s.name == name) {
                    Some(scenario) => drain::run(scenario, drain, rounds),
                    None => edge::case(name).and_then(|case| edge::run(case, drain, rounds)),
                };
                let Some(f) = figures else {
                    done = None;
                    break;
                };
                let drains: Vec<String> =
                    f.drains.iter().map(|d| format!("{:.2}", d.as_secs_f64())).collect();
                let (requests, failed) = (f.requests, f.failed.len());
                append(log, &format!("{name} {mode} {requests} {failed} {}\n", drains.join(",")));
            }
            done
        }
        _ => return usage("expected rolling or drain and their arguments"),
    };
    match done {
        Some(()) => ExitCode::SUCCESS,
        None => {
            eprintln!("lb: a tool this benchmark needs is missing (see above)");
            ExitCode::from(1)
        }
    }
}

fn usage(what: &str) -> ExitCode {
    eprintln!("lb: {what}\n{USAGE}");
    ExitCode::from(2)
}

/// `fixed:3`, `aware:10` (seconds, a trailing `s` allowed), `tini`.
fn parse_drain(mode: &str) -> Option<Drain> {
    if mode == "tini" {
        return Some(Drain { delay: Duration::ZERO, aware: false });
    }
    let (kind, secs) = mode.split_once(':')?;
    let secs: f64 = secs.trim_end_matches('s').parse().ok()?;
    let delay = Duration::try_from_secs_f64(secs).ok()?;
    match kind {
        "fixed" => Some(Drain { delay, aware: false }),
        "aware" => Some(Drain { delay, aware: true }),
        _ => None,
    }
}

/// The rolling restart's log: `req START_MS END_MS OUTCOME PATH` per request, `event T_MS
/// WHAT` per restart step, then `summary ...`.
fn roll_log(rolled: &Rolled) -> String {
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let mut text = String::new();
    for r in &rolled.requests {
        let outcome = if r.ok() { "ok".to_string() } else { r.outcome.replace(' ', "_") };
        let _ = writeln!(text, "req {:.1} {:.1} {outcome} {}", ms(&r.start), ms(&r.end), r.path);
    }
    for (t, name, step) in &rolled.events {
        let what = match step {
            Step::Sigterm => format!("sigterm {name}"),
            Step::Exited(code) => format!("exited {name} {code}"),
            Step::Up => format!("up {name}"),
        };
        let _ = writeln!(text, "event {:.1} {what}", ms(t));
    }
    let _ = writeln!(text, "summary {}", rolled.summary.lines().next().unwrap_or(""));
    text
}

fn write(path: &str, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("writing {path}: {e}"));
}

fn append(path: &str, text: &str) {
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {path}: {e}"));
    file.write_all(text.as_bytes()).unwrap_or_else(|e| panic!("writing {path}: {e}"));
}
