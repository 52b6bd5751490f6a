//! How a child ended, and the one rule that turns that into lastcall's exit code.

use std::fmt;

use crate::init::signals::Sig;

/// How a process ended, as `waitpid` reports it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ChildStatus {
    /// It called `exit(code)`.
    Exited(i32),
    /// It was killed by a signal.
    Signaled(Sig),
}

impl ChildStatus {
    /// The shell's convention, as tini and dumb-init use it: the exit code as is, 128+N for
    /// death by signal N.
    pub fn code(self) -> u8 {
        match self {
            ChildStatus::Exited(code) => (code & 0xff) as u8,
            ChildStatus::Signaled(sig) => (128 + sig.0).clamp(0, 255) as u8,
        }
    }

    /// lastcall's own exit code: [`Self::code`], with codes listed by `--success-exit` turned
    /// into 0.
    pub fn exit_code(self, success_exit: &[u8]) -> u8 {
        let code = self.code();
        if success_exit.contains(&code) { 0 } else { code }
    }
}

impl fmt::Display for ChildStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChildStatus::Exited(code) => write!(f, "exited with status {code}"),
            ChildStatus::Signaled(sig) => write!(f, "was killed by {sig}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_rule() {
        assert_eq!(ChildStatus::Exited(0).code(), 0);
        assert_eq!(ChildStatus::Exited(3).code(), 3);
        assert_eq!(ChildStatus::Exited(255).code(), 255);
        assert_eq!(ChildStatus::Signaled(Sig(libc::SIGTERM)).code(), 143);
        assert_eq!(ChildStatus::Signaled(Sig(libc::SIGKILL)).code(), 137);
        assert_eq!(ChildStatus::Signaled(Sig(libc::SIGINT)).code(), 130);
    }

    #[test]
    fn success_exit_maps_to_zero() {
        let term = ChildStatus::Signaled(Sig(libc::SIGTERM));
        assert_eq!(term.exit_code(&[143]), 0);
        assert_eq!(term.exit_code(&[1, 2]), 143);
        assert_eq!(ChildStatus::Exited(1).exit_code(&[1]), 0);
        assert_eq!(ChildStatus::Exited(0).exit_code(&[]), 0);
    }
}
