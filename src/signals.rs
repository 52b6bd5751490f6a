//! Signal numbers, names, and the explicit lists of what lastcall does with each.
//!
//! Every signal falls in exactly one class (see [`class`]): handled (a drain trigger, SIGCHLD,
//! or forwarded to the child), ignored by lastcall itself, or left alone. The child gets back
//! the dispositions and mask that lastcall inherited: [`Inherited`] records them at start-up.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicI32, Ordering};

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
        if let Ok(n) = trimmed.parse::<i32>() {
            return if all().any(|s| s.0 == n) { Ok(Sig(n)) } else { Err(bad()) };
        }
        let upper = trimmed.to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        if let Some(&(_, n)) = NAMES.iter().find(|(known, _)| *known == name) {
            return Ok(Sig(n));
        }
        let rt = |base: i32, rest: &str| -> Option<i32> {
            let n = match rest.as_bytes().first() {
                None => base,
                Some(b'+') => base + rest[1..].parse::<i32>().ok()?,
                Some(b'-') => base - rest[1..].parse::<i32>().ok()?,
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

/// The signal state lastcall was started with, to hand back to the child unchanged.
pub struct Inherited {
    /// The signal mask at start-up.
    pub mask: libc::sigset_t,
    /// Signals whose disposition was SIG_IGN at start-up.
    pub ignored: libc::sigset_t,
}

impl Inherited {
    /// Reads the mask and dispositions, once; later calls change nothing. Must run before
    /// lastcall installs any handler.
    pub fn record() -> &'static Inherited {
        INHERITED.get_or_init(Inherited::read)
    }

    fn read() -> Inherited {
        // SAFETY: plain libc calls on local, initialised sigset_t values.
        unsafe {
            let mut mask: libc::sigset_t = std::mem::zeroed();
            let mut ignored: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut mask);
            libc::sigemptyset(&mut ignored);
            libc::sigprocmask(libc::SIG_SETMASK, std::ptr::null(), &mut mask);
            for sig in all() {
                let mut old: libc::sigaction = std::mem::zeroed();
                let was_ignored = if sig.0 == libc::SIGPIPE {
                    // Rust's runtime sets SIGPIPE to SIG_IGN before main; what we inherited
                    // was read earlier, before it ran.
                    SIGPIPE_IGNORED_AT_EXEC.load(std::sync::atomic::Ordering::Relaxed)
                } else {
                    libc::sigaction(sig.0, std::ptr::null(), &mut old) == 0
                        && old.sa_sigaction == libc::SIG_IGN
                };
                if was_ignored {
                    libc::sigaddset(&mut ignored, sig.0);
                }
            }
            Inherited { mask, ignored }
        }
    }

    pub fn was_ignored(&self, sig: Sig) -> bool {
        // SAFETY: reads an initialised sigset_t.
        unsafe { libc::sigismember(&self.ignored, sig.0) == 1 }
    }
}

static INHERITED: std::sync::OnceLock<Inherited> = std::sync::OnceLock::new();

/// What [`Inherited::record`] read (an empty state if it was never called).
pub fn inherited() -> &'static Inherited {
    INHERITED.get_or_init(|| {
        // SAFETY: zeroed sigset_t values are empty sets on Linux.
        unsafe { std::mem::zeroed() }
    })
}

/// Unblocks the signals lastcall must receive, whatever mask it inherited, and ignores the
/// [`Class::Ignore`] ones. The child gets the inherited state back in `spawn`.
pub fn prepare_own_mask() {
    // SAFETY: plain libc calls on local, initialised values.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in all().filter(|s| class(*s) != Class::Default) {
            libc::sigaddset(&mut set, sig.0);
        }
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        for sig in all().filter(|s| class(*s) == Class::Ignore) {
            libc::signal(sig.0, libc::SIG_IGN);
        }
    }
}

/// The signals lastcall acts on itself, handled through signal-hook: SIGTERM, SIGINT, SIGCHLD.
pub fn handled() -> Vec<i32> {
    all().filter(|s| matches!(class(*s), Class::Drain | Class::Child)).map(|s| s.0).collect()
}

/// The signals lastcall only passes on go through [`RawSignals`] instead: a handler of a few
/// lines, where signal-hook would copy its whole table for every signal it registers
/// (registering the 60 of them was most of start-up's work).
fn raw(sig: Sig) -> bool {
    class(sig) == Class::Forward
}

/// Signals that could be lastcall's own fault: a handler that returns from a real fault runs
/// the faulting instruction again, forever. Sent by another process (`kill -SEGV`), they are
/// forwarded like any other; a real fault of lastcall's own still kills it.
pub const FAULTS: [i32; 3] = [libc::SIGSEGV, libc::SIGFPE, libc::SIGILL];

/// Where the raw handler writes the number of a signal to forward; -1 before set-up.
static RAW_PIPE: AtomicI32 = AtomicI32::new(-1);
/// lastcall's pid, for the handler to tell signals it raised itself.
static OWN_PID: AtomicI32 = AtomicI32::new(0);

/// One byte a delivery: real-time signals, which queue, are forwarded as often as they came.
extern "C" fn on_raw_signal(signo: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t. The rest are
    // async-signal-safe calls; errno is saved because the interrupted code may read it.
    unsafe {
        // A signal lastcall caused itself is not the child's: writing its log to a closed
        // pipe raises SIGPIPE with lastcall's own pid as the sender.
        if (*info).si_code == libc::SI_USER && (*info).si_pid() == OWN_PID.load(Ordering::Relaxed) {
            return;
        }
        // SI_USER, SI_QUEUE, SI_TKILL and the like are all <= 0: sent by a process. Only
        // SIGSEGV, SIGFPE and SIGILL can be lastcall's own fault.
        if (*info).si_code <= 0 || !FAULTS.contains(&signo) {
            let saved = *libc::__errno_location();
            let byte = signo as u8;
            libc::write(RAW_PIPE.load(Ordering::Relaxed), (&raw const byte).cast(), 1);
            *libc::__errno_location() = saved;
        } else {
            // lastcall itself faulted: with the default action back, the instruction faults
            // again and lastcall dies of it, as it would have without this handler.
            libc::signal(signo, libc::SIG_DFL);
        }
    }
}

/// The read end of the raw handler's pipe, for the event loop.
pub struct RawSignals {
    read: mio::net::UnixStream,
    _write: mio::net::UnixStream,
}

impl RawSignals {
    /// Installs the handler for every signal lastcall forwards.
    pub fn install() -> std::io::Result<RawSignals> {
        let (read, write) = mio::net::UnixStream::pair()?;
        RAW_PIPE.store(std::os::fd::AsRawFd::as_raw_fd(&write), Ordering::Relaxed);
        OWN_PID.store(std::process::id() as i32, Ordering::Relaxed);
        for signo in all().filter(|s| raw(*s)).map(|s| s.0) {
            // SAFETY: installs a handler that only makes async-signal-safe calls.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_raw_signal as *const () as usize;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                if libc::sigaction(signo, &action, std::ptr::null_mut()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        Ok(RawSignals { read, _write: write })
    }

    pub fn source(&mut self) -> &mut mio::net::UnixStream {
        &mut self.read
    }

    /// The signals received since the last call, in order.
    pub fn pending(&mut self) -> Vec<Sig> {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match std::io::Read::read(&mut self.read, &mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend(buf[..n].iter().map(|&b| Sig(i32::from(b)))),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return got,
            }
        }
    }
}

/// Blocks every signal when dropped. Dropped before the signal plumbing on every way out:
/// signal-hook's unregistering, interrupted by a signal on the same (only) thread, can spin
/// forever inside the handler.
pub struct BlockOnDrop;

impl Drop for BlockOnDrop {
    fn drop(&mut self) {
        // SAFETY: plain libc calls on a local, initialised sigset_t.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::sigprocmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
        }
    }
}

static SIGPIPE_IGNORED_AT_EXEC: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Runs from `.init_array`, before Rust's runtime sets SIGPIPE to SIG_IGN, so that the child
/// can be given the SIGPIPE disposition lastcall really inherited.
extern "C" fn record_sigpipe() {
    // SAFETY: sigaction with a null new action only reads.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut old) == 0 {
            SIGPIPE_IGNORED_AT_EXEC
                .store(old.sa_sigaction == libc::SIG_IGN, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

#[used]
#[unsafe(link_section = ".init_array")]
static RECORD_SIGPIPE: extern "C" fn() = record_sigpipe;

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
        check("hup", Some(1));
        check("RTMIN", Some(rtmin()));
        check("SIGRTMIN+2", Some(rtmin() + 2));
        check("rtmax-1", Some(rtmax() - 1));
        check("RTMAX+1", None);
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
        assert!(!handled().contains(&libc::SIGSEGV), "signal-hook refuses it");
        assert_eq!(handled(), [libc::SIGINT, libc::SIGTERM, libc::SIGCHLD]);
        assert_eq!(class(Sig(libc::SIGTTOU)), Class::Ignore);
    }
}
