//! The drain's eyes on the app: which TCP ports are the app's, and how busy its connections
//! on them are, read through socket diagnostics (netlink), else from /proc.
//!
//! [`eyes`] is the wing's one face: the loop asks it for the app's ports when a drain begins
//! and for a summary of the app's connections at each read ([`eyes::AppSummary`]: busy, idle,
//! the last request, how it was read), and hands those to the machine. Behind it, [`diag`]
//! is the netlink codec, [`procfs`] reads /proc and holds the rule of which sockets are the
//! app's, and [`activity`] tells busy from idle across reads.
//!
//! Never here: a decision about when the drain ends (the machine's), or an import of the
//! machine or the command line (the `--drain-idle-port` choice, [`eyes::DrainPorts`], is
//! defined here for the command line to use).

pub mod activity;
pub mod diag;
pub mod eyes;
pub mod procfs;
