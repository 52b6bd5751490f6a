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
    init_logging(config.log_level);
    match supervisor::run(config) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(e.exit_code(), &e.to_string()),
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "lastcall: {message}");
    ExitCode::from(code)
}

/// Log lines go to stderr as `lastcall: message`, one write per line so they do not
/// interleave with the child's output mid-line.
fn init_logging(level: log::LevelFilter) {
    logger::init(logger::Format::Text, level);
}
