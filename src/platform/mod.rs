//! What lastcall speaks with its surroundings: systemd's notify protocol, socket activation
//! (`--socket`), the memory cgroup's OOM-kill counter, the termination message, the users
//! of `--user`, and the log lines.
//!
//! Never here: a decision (the machine's) or the event loop (init's). Each module reads or
//! writes one thing of the platform's, and says nothing when there is nothing to read.

pub mod logger;
pub mod notify;
pub mod oom;
pub mod sockets;
pub mod termination;
pub mod users;
