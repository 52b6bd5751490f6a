//! What lastcall tells the world about the app: the HTTP endpoint (`/readyz`, `/livez`,
//! `/metrics`) with its admission policy, the pages it serves, and the readiness checks
//! whose results `/readyz` follows; and the `--on-exit` hooks that tell the sidecars the app is
//! done.
//!
//! Never here: a decision about the child or the drain. The endpoint answers from a snapshot
//! the loop takes, and reports what it saw (a probe of `/readyz`) for the machine to weigh.

pub mod checks;
pub mod hooks;
pub mod http;
pub mod metrics;
