//! lastcall's integration tests: the real binary, real processes, real signals.
//!
//! Each module tests one part of the contract; `support` has what they share. Children are
//! `sh` scripts that report what they saw through marker files in the test's temp dir.

mod cli;
mod drain;
mod drain_idle;
mod endpoint;
mod exhaustion;
mod exit;
mod exit_reasons;
mod haproxy;
mod hostile;
mod lb_drain;
mod lb_edge;
mod notify;
mod packaging;
mod race;
mod readiness;
mod reaping;
mod reload;
mod restart;
mod sidecars;
mod signals;
mod support;
mod systemd;
mod transparency;
mod tty;
mod wakeups;
