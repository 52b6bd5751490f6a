//! Signal numbers, names, and the explicit lists of what lastcall does with each.
//!
//! Every signal falls in exactly one class (see [`class`]): taken (a drain trigger, SIGCHLD,
//! or forwarded to the child), ignored by lastcall itself, or left alone. Taken and ignored
//! signals are blocked before any other code of lastcall's runs; taken ones are read from one
//! signalfd ([`Signals`]), ignored ones never. lastcall changes no disposition, so the child
//! has the inherited ones as they were; it gets back the mask lastcall inherited, which
//! [`inherited`] says. Signals go out through [`deliver`], to where the machine says.

use std::fmt;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::init::reaper;
use crate::machine::Target;

/// A signal number. Not `nix::sys::signal::Signal`, which cannot name real-time signals.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Sig(pub i32);

pub const SIGTERM: Sig = Sig(libc::SIGTERM);
pub const SIGKILL: Sig = Sig(libc::SIGKILL);
pub const SIGCHLD: Sig = Sig(libc::SIGCHLD);

/// The standard signals by name, without the `SIG` prefix.
const NAMES: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("IOT", libc::SIGIOT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("POLL", libc::SIGPOLL),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

fn rtmin() -> i32 {
    libc::SIGRTMIN()
}

fn rtmax() -> i32 {
    libc::SIGRTMAX()
}

/// Every signal number a process can be sent on this system, standard and real-time.
pub fn all() -> impl Iterator<Item = Sig> {
    (1..=31).chain(rtmin()..=rtmax()).map(Sig)
}

/// `kill(2)` for any signal, real-time ones included. A negative `pid` names a process group.
pub fn send(pid: i32, sig: Sig) -> Result<(), nix::errno::Errno> {
    // SAFETY: plain libc call.
    let rc = unsafe { libc::kill(pid, sig.0) };
    nix::errno::Errno::result(rc).map(drop)
}

/// Sends `sig` where the machine said; a failure is logged, as the target may be gone.
pub fn deliver(sig: Sig, to: Target) {
    let result = match to {
        Target::Child(pid) => send(pid.as_raw(), sig),
        Target::Group(pid) => {
            let group = send(-pid.as_raw(), sig);
            // The child may have left its group (setsid, setpgid): it gets the signal too.
            match nix::unistd::getpgid(Some(pid)) {
                Ok(pgid) if pgid == pid => group,
                _ => send(pid.as_raw(), sig),
            }
        }
        Target::Descendants => {
            reaper::signal_descendants(sig);
            Ok(())
        }
    };
    match result {
        Ok(()) => log::debug!("sent {sig} to {to}"),
        Err(e) => log::debug!("sending {sig} to {to} failed: {e}"),
    }
}

/// What lastcall does with a signal it receives.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Class {
    /// SIGTERM, SIGINT: start (or hurry) the drain.
    Drain,
    /// SIGCHLD: reap.
    Child,
    /// Sent on to the child as it arrives, in every phase.
    Forward,
    /// Ignored by lastcall: SIGTTIN and SIGTTOU, which would otherwise stop it (or, with a
    /// handler, loop) when it writes its log to a terminal it does not own in the foreground.
    /// They are blocked and never read: to the terminal code a blocked SIGTTIN or SIGTTOU is
    /// an ignored one, and the child's disposition stays untouched.
    Ignore,
    /// Not touched: SIGKILL and SIGSTOP cannot be caught.
    Default,
}

pub fn class(sig: Sig) -> Class {
    match sig.0 {
        libc::SIGTERM | libc::SIGINT => Class::Drain,
        libc::SIGCHLD => Class::Child,
        libc::SIGTTIN | libc::SIGTTOU => Class::Ignore,
        libc::SIGKILL | libc::SIGSTOP => Class::Default,
        _ => Class::Forward,
    }
}

impl fmt::Display for Sig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((name, _)) = NAMES.iter().find(|(_, n)| *n == self.0) {
            return write!(f, "SIG{name}");
        }
        let (min, max) = (rtmin(), rtmax());
        if (min..=max).contains(&self.0) {
            return match self.0 - min {
                0 => write!(f, "SIGRTMIN"),
                _ if self.0 == max => write!(f, "SIGRTMAX"),
                off => write!(f, "SIGRTMIN+{off}"),
            };
        }
        write!(f, "signal {}", self.0)
    }
}

/// Parses `TERM`, `SIGTERM`, `sigterm`, `15`, `RTMIN+3`, `SIGRTMAX-1`.
impl FromStr for Sig {
    type Err = String;

    fn from_str(text: &str) -> Result<Sig, String> {
        let bad = || format!("'{text}' is not a signal name or number (try TERM, SIGINT or 15)");
        let trimmed = text.trim();
        if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
            let n = trimmed.parse::<i32>().unwrap_or(0);
            return if all().any(|s| s.0 == n) { Ok(Sig(n)) } else { Err(bad()) };
        }
        let upper = trimmed.to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        if let Some(&(_, n)) = NAMES.iter().find(|(known, _)| *known == name) {
            return Ok(Sig(n));
        }
        let rt = |base: i32, rest: &str| -> Option<i32> {
            // Digits only: i32's parser would take `RTMIN++1` as `RTMIN+1`.
            let offset = |digits: &str| -> Option<i32> {
                let all_digits = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
                all_digits.then(|| digits.parse().ok()).flatten()
            };
            let n = match rest.as_bytes().first() {
                None => base,
                Some(b'+') => base + offset(&rest[1..])?,
                Some(b'-') => base - offset(&rest[1..])?,
                Some(_) => return None,
            };
            (rtmin()..=rtmax()).contains(&n).then_some(n)
        };
        let n = if let Some(rest) = name.strip_prefix("RTMIN") {
            rt(rtmin(), rest)
        } else if let Some(rest) = name.strip_prefix("RTMAX") {
            rt(rtmax(), rest)
        } else {
            None
        };
        n.map(Sig).ok_or_else(bad)
    }
}

/// The signals lastcall takes itself, through [`Signals`]: every one it drains on, reaps
/// on, or forwards. They are blocked from lastcall's first instruction on, so none is lost
/// or acted on by default before the event loop reads it.
fn taken(sig: Sig) -> bool {
    matches!(class(sig), Class::Drain | Class::Child | Class::Forward)
}

fn set_of(wanted: impl Fn(Sig) -> bool) -> libc::sigset_t {
    // SAFETY: plain libc calls on a local sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in all().filter(|s| wanted(*s)) {
            libc::sigaddset(&mut set, sig.0);
        }
        set
    }
}

fn taken_set() -> libc::sigset_t {
    set_of(taken)
}

/// The inherited mask, one bit per signal number (bit n-1 for n).
static INHERITED_MASK: AtomicU64 = AtomicU64::new(0);
static RECORDED: AtomicBool = AtomicBool::new(false);

/// Records the mask lastcall inherited and blocks the signals it takes and those it ignores,
/// in one `sigprocmask`. Runs once: from `.preinit_array` before any other code of
/// lastcall's, and again, doing nothing, from [`Signals::open`].
fn record_and_block() {
    if RECORDED.swap(true, Ordering::Relaxed) {
        return;
    }
    let set = set_of(|sig| taken(sig) || class(sig) == Class::Ignore);
    // SAFETY: plain libc calls on local, initialised values; nothing here allocates.
    unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        let mut mask = 0u64;
        for sig in all() {
            if libc::sigismember(&old, sig.0) == 1 {
                mask |= bit(sig.0);
            }
        }
        INHERITED_MASK.store(mask, Ordering::Relaxed);
    }
}

fn bit(signo: i32) -> u64 {
    1u64.checked_shl((signo - 1) as u32).unwrap_or(0)
}

/// PID 1 drops a signal it has no handler for: as the first code of lastcall's, this blocks
/// them so that the kernel queues them instead (a blocked signal is never ignored).
#[cfg(not(test))]
extern "C" fn take_early() {
    record_and_block();
}

#[cfg(not(test))]
#[used]
#[unsafe(link_section = ".preinit_array")]
static TAKE_EARLY: extern "C" fn() = take_early;

/// The signal state lastcall was started with, to hand back to the child unchanged. Only
/// the mask: lastcall changes no disposition.
pub struct Inherited {
    /// The signal mask at start-up.
    pub mask: libc::sigset_t,
}

/// What lastcall inherited (an empty mask if nothing was recorded).
pub fn inherited() -> Inherited {
    let bits = INHERITED_MASK.load(Ordering::Relaxed);
    // SAFETY: plain libc calls on a local sigset_t.
    let mask = unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut mask);
        for sig in all().filter(|s| bits & bit(s.0) != 0) {
            libc::sigaddset(&mut mask, sig.0);
        }
        mask
    };
    Inherited { mask }
}

/// The one path by which signals reach lastcall: a signalfd over the signals it takes, read
/// by the event loop. No handler runs; real-time signals come one by one as the kernel
/// queued them; a synchronous fault of lastcall's own (SEGV, BUS, FPE, ILL) still kills it,
/// as the kernel does not let a blocked fault be queued.
pub struct Signals {
    fd: OwnedFd,
    own_pid: u32,
}

impl Signals {
    pub fn open() -> std::io::Result<Signals> {
        record_and_block();
        let set = taken_set();
        // SAFETY: plain libc call; the new fd is owned below.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is not owned elsewhere.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Signals { fd, own_pid: std::process::id() })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Appends the signals waiting, in the kernel's order (standard ones first, lowest
    /// number first; real-time ones one by one), until none is left or `limit` were taken.
    /// True when some may be left.
    pub fn read(&mut self, limit: usize, into: &mut Vec<Sig>) -> bool {
        const BATCH: usize = 32;
        const SIZE: usize = std::mem::size_of::<libc::signalfd_siginfo>();
        // Not zeroed: a 4 KiB memset would be two thirds of the instructions of a signal's turn.
        let mut buf = [const { MaybeUninit::<libc::signalfd_siginfo>::uninit() }; BATCH];
        let mut taken = 0;
        while taken < limit {
            // SAFETY: reads at most the buffer's size into it.
            let n = unsafe {
                libc::read(self.fd(), buf.as_mut_ptr().cast(), std::mem::size_of_val(&buf))
            };
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            if n <= 0 {
                return false;
            }
            let got = n as usize / SIZE;
            for info in &buf[..got] {
                // SAFETY: the kernel filled the first `got` entries.
                let info = unsafe { info.assume_init_ref() };
                taken += 1;
                // Writing its log to a closed pipe raises SIGPIPE in lastcall itself, sent
                // by its own pid: that one is not the child's.
                let own = info.ssi_code == libc::SI_USER && info.ssi_pid == self.own_pid;
                if info.ssi_signo == libc::SIGPIPE as u32 && own {
                    continue;
                }
                into.push(Sig(info.ssi_signo as i32));
            }
            // A short read took all there was: no second read to hear EAGAIN. A signal
            // queued after it wakes the poll again (the kernel notifies the signalfd's
            // waiters on every signal, which is a new edge for epoll).
            if got < BATCH {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Option<i32>) {
        assert_eq!(text.parse::<Sig>().ok().map(|s| s.0), expected, "{text}");
    }

    #[test]
    fn parses_names_numbers_and_case() {
        check("TERM", Some(15));
        check("SIGTERM", Some(15));
        check("sigterm", Some(15));
        check("term", Some(15));
        check("15", Some(15));
        check("9", Some(9));
        check("+9", None);
        check("hup", Some(1));
        check("RTMIN", Some(rtmin()));
        check("SIGRTMIN+2", Some(rtmin() + 2));
        check("rtmax-1", Some(rtmax() - 1));
        check("RTMAX+1", None);
        check("RTMIN++1", None);
        check("RTMIN+-1", None);
        check("RTMIN+ 1", None);
        check("RTMIN+", None);
        check("0", None);
        check("65", None);
        check("32", None);
        check("TERMS", None);
        check("", None);
        check("SIG", None);
    }

    #[test]
    fn names_round_trip() {
        for sig in all() {
            let name = sig.to_string();
            assert_eq!(name.parse::<Sig>(), Ok(sig), "{name}");
        }
        assert_eq!(Sig(libc::SIGTERM).to_string(), "SIGTERM");
        assert_eq!(Sig(rtmin() + 1).to_string(), "SIGRTMIN+1");
        assert_eq!(Sig(rtmax()).to_string(), "SIGRTMAX");
    }

    #[test]
    fn classes() {
        assert_eq!(class(SIGTERM), Class::Drain);
        assert_eq!(class(Sig(libc::SIGINT)), Class::Drain);
        assert_eq!(class(SIGCHLD), Class::Child);
        assert_eq!(class(Sig(libc::SIGHUP)), Class::Forward);
        assert_eq!(class(Sig(libc::SIGWINCH)), Class::Forward);
        assert_eq!(class(Sig(rtmin())), Class::Forward);
        assert_eq!(class(SIGKILL), Class::Default);
        assert_eq!(class(Sig(libc::SIGSEGV)), Class::Forward);
        assert!(taken(Sig(libc::SIGSEGV)) && taken(Sig(rtmax())) && taken(SIGCHLD));
        assert!(!taken(SIGKILL) && !taken(Sig(libc::SIGTTIN)) && !taken(Sig(libc::SIGSTOP)));
        assert_eq!(class(Sig(libc::SIGTTOU)), Class::Ignore);
    }
}
