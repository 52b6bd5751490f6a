//! lastcall: tini + drain. See README.md for what it does and ARCHITECTURE.md for how.
//!
//! `main` is the only place that prints a fatal error and picks the exit code.

mod activity;
mod checks;
mod cli;
mod diag;
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
mod show;
mod signals;
mod sockets;
mod spawn;
mod status;
mod supervisor;
mod termination;
mod users;

use std::io::Write;
use std::process::ExitCode;

use cli::Early;

/// Exit status for a bad command line, as clap and most tools use it.
const USAGE: u8 = 2;

fn main() -> ExitCode {
    let config = match cli::parse() {
        Ok(config) => config,
        Err(Early::Print(help)) => {
            let _ = help.print();
            return ExitCode::SUCCESS;
        }
        Err(Early::Usage(line)) => return fail(USAGE, &line),
    };
    // One write per line on stderr, so that lines do not interleave with the child's output.
    logger::init(config.log_format, config.log_level);
    let termination_log = config.termination_log.clone();
    match supervisor::run(config) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            termination::record(termination_log.as_deref(), &e.termination_message());
            // Through the logger, so that it is a JSON line with --log-format json.
            log::error!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Before the logger is set up (the command line is what says how to log): plain text.
fn fail(code: u8, message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "lastcall: {message}");
    ExitCode::from(code)
}
