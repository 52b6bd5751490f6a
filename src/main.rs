//! lastcall: tini + drain. See README.md for what it does and ARCHITECTURE.md for how.
//!
//! `main` is the only place that prints a fatal error and picks the exit code.

mod activity;
mod checks;
mod cli;
mod diag;
mod http;
mod idle;
mod machine;
#[cfg(test)]
mod manpage;
mod metrics;
mod notify;
mod reaper;
mod show;
mod signals;
mod sockets;
mod spawn;
mod status;
mod supervisor;

use std::io::{LineWriter, Write};
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

/// Written where simplelog would put the time.
const PREFIX: &[simplelog::FormatItem<'static>] =
    &[simplelog::FormatItem::StringLiteral("lastcall:")];

/// Log lines go to stderr as `lastcall: message`, one write per line so they do not
/// interleave with the child's output mid-line.
fn init_logging(level: log::LevelFilter) {
    let config = simplelog::ConfigBuilder::new()
        .set_time_format_custom(PREFIX)
        .set_time_level(log::LevelFilter::Error)
        .set_max_level(log::LevelFilter::Debug)
        .set_thread_level(log::LevelFilter::Off)
        .set_target_level(log::LevelFilter::Off)
        .set_location_level(log::LevelFilter::Off)
        .build();
    let _ = simplelog::WriteLogger::init(level, config, LineWriter::new(std::io::stderr()));
}
