//! What every init does, and what tini does in one file: take signals, start the child,
//! reap every process that ends, turn how the child ended into an exit status, and the one
//! loop that waits for all of it.
//!
//! Never here: a decision (that is [`crate::machine`]'s), HTTP, netlink, or a file of the
//! platform's. The loop holds the other wings and carries out what the machine asks.

pub mod child;
pub mod fatal;
pub mod fd_limit;
pub mod reaper;
pub mod signals;
pub mod spawn;
pub mod status;
pub mod supervisor;
