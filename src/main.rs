//! lastcall: tini + drain. See README.md for what it does and ARCHITECTURE.md for how.
//!
//! `main` is the only place that prints a fatal error and picks the exit code.

mod checks;
mod cli;
mod http;
mod idle;
mod logger;
mod machine;
#[cfg(test)]
mod manpage;
mod metrics;
mod notify;
mod oom;
mod reaper;
mod signals;
mod sockets;
mod spawn;
mod status;
mod supervisor;
mod termination;
mod users;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

use cli::{Args, Listen};
use machine::Policy;
use supervisor::Config;

/// Exit status for a bad command line, as clap and most tools use it.
const USAGE: u8 = 2;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(USAGE, &one_line(&e)),
    };
    if args.command.is_empty() {
        return fail(USAGE, "no command given (usage: lastcall [OPTIONS] [--] COMMAND [ARGS...])");
    }
    let checks: Vec<checks::Check> =
        [args.ready_tcp, args.ready_http, args.ready_exec].into_iter().flatten().collect();
    if checks.len() > supervisor::MAX_CHECKS {
        let max = supervisor::MAX_CHECKS;
        return fail(USAGE, &format!("{} readiness checks given; at most {max}", checks.len()));
    }
    if args.socket.len() > sockets::MAX_SOCKETS {
        let (n, max) = (args.socket.len(), sockets::MAX_SOCKETS);
        return fail(USAGE, &format!("{n} sockets given; at most {max}"));
    }
    let reload_signal = match (args.reload_signal, args.socket.is_empty()) {
        (Some(_), true) => {
            return fail(
                USAGE,
                "--reload-signal needs --socket (without it, signals are forwarded)",
            );
        }
        (sig, false) => Some(sig.unwrap_or(signals::Sig(libc::SIGHUP))),
        (None, true) => None,
    };
    init_logging(args.log_level);
    // Bound before the child starts; failing to is fatal, like the endpoint's address.
    let sockets = match sockets::bind_all(&args.socket) {
        Ok(bound) => bound,
        Err(e) => return fail(125, &e),
    };
    let config = Config {
        listen: match args.listen {
            Listen::Off => None,
            Listen::On(addr) => Some(addr),
        },
        policy: Policy {
            prestop: args.prestop_delay,
            grace: args.grace_period,
            stop_signal: args.stop_signal,
            group: args.group,
            success_exit: args.success_exit,
            in_kubernetes: std::env::var_os("KUBERNETES_SERVICE_HOST")
                .is_some_and(|v| !v.is_empty()),
            drain_idle: !args.drain_idle_port.is_empty(),
            drain_min: args.drain_min,
            reload_signal,
            startup_timeout: args.startup_timeout,
        },
        readiness: supervisor::Readiness {
            checks,
            notify: args.ready_notify,
            interval: args.ready_interval,
            timeout: args.ready_timeout,
            startup_timeout: args.startup_timeout,
        },
        drain_ports: args.drain_idle_port,
        sockets,
        limits: http::Limits {
            max_connections: args.max_connections,
            request_timeout: args.request_timeout,
            idle_timeout: args.idle_timeout,
        },
        subreaper: !args.no_subreaper,
        command: args.command,
    };
    match supervisor::run(config) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(e.exit_code(), &e.to_string()),
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "lastcall: {message}");
    ExitCode::from(code)
}

/// clap's first line says what is wrong and names the option and value; the rest (usage,
/// tips) is left to `--help`.
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("invalid command line");
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

/// Log lines go to stderr as `lastcall: message`, one write per line so they do not
/// interleave with the child's output mid-line.
fn init_logging(level: log::LevelFilter) {
    logger::init(logger::Format::Text, level);
}
