//! The drain's eyes on the app: which TCP ports are the app's, and how busy its connections
//! on them are, read through socket diagnostics (netlink), else from /proc.
//!
//! Never here: a decision about when the drain ends (the machine's), or an import of the
//! machine or the command line. The machine asks for a read and gets a small summary back.

pub mod activity;
pub mod diag;
pub mod eyes;
