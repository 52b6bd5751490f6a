//! lastcall: tini + drain. See README.md for what it does and ARCHITECTURE.md for how.
//!
//! `lastcall` is the only place that prints a fatal error and picks the exit code.
//!
//! lastcall is its own C `main`, without Rust's runtime start-up (`no_main`). That start-up
//! sets SIGPIPE to ignored, which the child must not inherit, and installs SIGSEGV and SIGBUS
//! handlers on an alternate stack to report stack overflows, with the stack's bounds read
//! from /proc/self/maps: 20 system calls, 100k instructions and 8 KiB of memory for handlers
//! that can never run here, as lastcall blocks both signals from its first instruction and the
//! kernel resets a blocked fault to its default. What is left of that start-up and matters
//! to lastcall is done in `main`: stdio opened on /dev/null if it was closed. This needs
//! glibc, which hands argc and argv to `.init_array` functions, which is how
//! `std::env::args` works without Rust's start-up, and which runs the `.preinit_array` hook
//! that blocks signals before any other code. Other C libraries (musl) run neither, so a
//! build for them is refused below rather than shipped without its early signal block.

#![cfg_attr(not(test), no_main)]

// musl runs no `.preinit_array` and hands `.init_array` no arguments: such a build would
// start with signals unblocked and SIGPIPE ignored for the child. The static build for
// images is glibc's (`-C target-feature=+crt-static`, see README's Building and installing).
#[cfg(not(target_env = "gnu"))]
compile_error!(
    "lastcall needs glibc (target_env = \"gnu\"): musl and other C libraries do not run its \
     .preinit_array signal block; build for x86_64-unknown-linux-gnu, static with \
     RUSTFLAGS='-C target-feature=+crt-static'"
);

mod cli;
mod drain;
mod endpoint;
mod init;
mod machine;
#[cfg(test)]
mod manpage;
mod platform;
mod show;

use std::io::Write;

use cli::Early;
use init::supervisor;
use platform::{logger, termination};

/// Exit status for a bad command line, as clap and most tools use it.
const USAGE: u8 = 2;

/// The process's entry point, called by the C library's start-up.
#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    open_closed_stdio();
    // `exit` flushes stdout (for --help) as returning from Rust's own main would.
    std::process::exit(lastcall().into())
}

/// Runs lastcall; returns its exit code.
#[cfg_attr(test, allow(dead_code))]
fn lastcall() -> u8 {
    let config = match cli::parse() {
        Ok(config) => config,
        Err(Early::Print(help)) => {
            let _ = help.print();
            return 0;
        }
        Err(Early::Usage(line)) => return fail(USAGE, &line),
    };
    // One write per line on stderr, so that lines do not interleave with the child's output.
    logger::init(config.log_format, config.log_level);
    let termination_log = config.termination_log.clone();
    match supervisor::run(config) {
        Ok(code) => code,
        Err(e) => {
            termination::record(termination_log.as_deref(), &e.termination_message());
            // Through the logger, so that it is a JSON line with --log-format json.
            log::error!("{e}");
            e.exit_code()
        }
    }
}

/// Before the logger is set up (the command line is what says how to log): plain text.
fn fail(code: u8, message: &str) -> u8 {
    let _ = writeln!(std::io::stderr(), "lastcall: {message}");
    code
}

/// Opens /dev/null on any of fds 0, 1 and 2 that lastcall was started without, as Rust's
/// runtime would have: otherwise the next socket lastcall opens would take that number, and
/// its log (fd 2) could end up on an HTTP connection. One `poll` when all three are open.
#[cfg_attr(test, allow(dead_code))]
fn open_closed_stdio() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd { fd, events: 0, revents: 0 });
    // SAFETY: plain libc calls on a local array; the fds opened are stdio's and stay open.
    unsafe {
        let polled = libc::poll(fds.as_mut_ptr(), 3, 0) >= 0;
        for pollfd in fds {
            let closed = if polled {
                pollfd.revents & libc::POLLNVAL != 0
            } else {
                libc::fcntl(pollfd.fd, libc::F_GETFD) < 0
            };
            // Lowest number first: the open takes the closed one.
            if closed && libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) < 0 {
                libc::abort();
            }
        }
    }
}
