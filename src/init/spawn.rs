//! Starting the child: the only code that runs between the fork and `exec`.
//!
//! The child is put in its own process group, takes the terminal's foreground if lastcall
//! had it, and gets back the signal mask and the file-descriptor limit lastcall inherited
//! (lastcall changes no disposition), so that it sees what it would see without lastcall.
//! Each of those steps is a small function below; none of them allocates. With `--user`,
//! the child drops root last, just before `exec`, and with it every capability: the
//! inheritable and ambient sets too.
//!
//! The fork is a `clone` with `CLONE_VM | CLONE_VFORK`, as `posix_spawn` does it: the child
//! runs on a stack of its own in lastcall's memory, and lastcall waits until it has exec'd or
//! exited. No page table is copied and no page is copy-on-write, and a failure (the `exec`,
//! or a call of the switch to `--user`) is written by the child straight into a [`Report`]
//! that lastcall reads once the child is gone, so that it can tell "not found" (127) from
//! "not executable" (126) from a program that ran.

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::init::fd_limit;
use crate::init::signals::{self, Inherited};
use crate::platform::users::Credentials;

/// Why the child could not be started.
#[derive(Debug)]
pub enum SpawnError {
    /// `exec` failed in the child: the program is missing or cannot be run.
    Exec { program: String, errno: Errno },
    /// Switching to `--user` failed in the child (`call` is the system call that failed).
    User { user: String, call: &'static str, errno: Errno },
    /// lastcall itself failed (no stack for the child, no fork, or the child could not be
    /// given its sockets).
    Os { what: &'static str, errno: Errno },
}

/// The shell's codes for a program that could not be run: 127 for "not found", 126 for
/// "found but cannot run" (and for a `--user` that could not be switched to).
pub fn exec_failure_code(errno: Errno) -> u8 {
    match errno {
        Errno::ENOENT | Errno::ENOTDIR => 127,
        _ => 126,
    }
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnError::Exec { program, errno } => {
                write!(f, "cannot run '{program}': {}", errno.desc())
            }
            SpawnError::User { user, call, errno } => {
                write!(f, "cannot switch to user '{user}': {call}: {}", errno.desc())
            }
            SpawnError::Os { what, errno } => write!(f, "{what} failed: {}", errno.desc()),
        }
    }
}

/// How to start a process; the default is the supervised child.
#[derive(Default)]
pub struct Options {
    /// The environment, if not lastcall's own.
    pub env: Option<Vec<OsString>>,
    /// A variable set to the child's own pid, which only the child knows (`LISTEN_PID`).
    pub own_pid_var: Option<&'static str>,
    /// Stdin, stdout and stderr on /dev/null, and no terminal (readiness commands).
    pub quiet: bool,
    /// Descriptors the child gets as 3, 4, ... in this order (socket activation).
    pub pass_fds: Vec<RawFd>,
    /// Who the child runs as (`--user`); lastcall's own user if none.
    pub user: Option<Credentials>,
}

/// What failed in the child, sent after the errno as an index: the `exec`, or a call of the
/// switch to `--user`; or [`FAILED_PASS_FDS`], one past them.
const CALLS: [&str; 7] = ["exec", "setgroups", "setgid", "setuid", "capget", "capset", "prctl"];
const FAILED_EXEC: i32 = 0;
/// Moving a `--socket` to 3 onward failed: lastcall's failure, not the command's.
const FAILED_PASS_FDS: i32 = CALLS.len() as i32;

/// Starts `argv` as the supervised child and returns its pid once it has exec'd.
pub fn spawn(argv: &[OsString], options: &Options) -> Result<Pid, SpawnError> {
    let os = |what| move |errno| SpawnError::Os { what, errno };
    // Built before the fork so that the child only makes system calls.
    let args = c_strings(argv.iter());
    let argv_ptrs = pointers(&args);
    let env = options.env.as_ref().map(|vars| c_strings(vars.iter()));
    // `NAME=` and room for any pid, completed by the child: only it knows its pid.
    let mut own_pid: Option<Box<[u8]>> = options.own_pid_var.map(|name| {
        let mut slot = format!("{name}=").into_bytes();
        slot.resize(slot.len() + 24, 0);
        slot.into_boxed_slice()
    });
    let own_pid_ptr = own_pid.as_mut().map(|slot| (slot.as_mut_ptr(), slot.len()));
    let env_ptrs = env.as_ref().map(|vars| {
        let mut ptrs = pointers(vars);
        if let Some((slot, _)) = own_pid_ptr {
            ptrs.insert(ptrs.len() - 1, slot.cast_const().cast());
        }
        ptrs
    });
    let null = if options.quiet {
        Some(std::fs::OpenOptions::new().read(true).write(true).open("/dev/null").map_err(|e| {
            SpawnError::Os {
                what: "opening /dev/null",
                errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            }
        })?)
    } else {
        None
    };

    // Asked before the fork: once the child has moved to its own group, lastcall could no
    // longer tell.
    let foreground = !options.quiet && had_foreground();
    let stack = Stack::new(argv_ptrs.len()).map_err(os("allocating the child's stack"))?;
    let report = Report { errno: AtomicI32::new(0), call: AtomicI32::new(NONE) };
    let child = Child {
        argv: &argv_ptrs,
        env: env_ptrs.as_deref(),
        own_pid: own_pid_ptr,
        null: null.as_ref().map(AsRawFd::as_raw_fd),
        foreground,
        pass_fds: &options.pass_fds,
        user: options.user.as_ref(),
        report: &report,
        // What the child hands back, prepared here: the child only makes system calls.
        inherited: &signals::inherited(),
        nofile: fd_limit::inherited(),
    };
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
    // SAFETY: lastcall is single-threaded and, with CLONE_VFORK, stopped until the child has
    // exec'd or exited, so nothing else runs in this memory meanwhile. The child runs only
    // `child_main` on its own stack, which makes system calls, writes only to `report` and
    // the own-pid slot, and never returns. The signals lastcall takes are blocked (no handler
    // exists), so none is acted on in the child before it restores the inherited mask.
    let pid =
        unsafe { libc::clone(run_child, stack.top(), flags, (&raw const child).cast_mut().cast()) };
    drop(stack);
    if pid < 0 {
        return Err(SpawnError::Os { what: "fork", errno: Errno::last() });
    }
    let errno = Errno::from_raw(report.errno.load(Ordering::Relaxed));
    match report.call.load(Ordering::Relaxed) {
        NONE => Ok(Pid::from_raw(pid)),
        FAILED_EXEC => {
            Err(SpawnError::Exec { program: argv[0].to_string_lossy().into_owned(), errno })
        }
        FAILED_PASS_FDS => {
            Err(SpawnError::Os { what: "passing the --socket descriptors to the child", errno })
        }
        call => Err(SpawnError::User {
            user: options.user.as_ref().map(|u| u.name.clone()).unwrap_or_default(),
            call: CALLS.get(call as usize).copied().unwrap_or("set*id"),
            errno,
        }),
    }
}

/// What failed in the child, written by it before it exits: an errno and an index in
/// [`CALLS`], or [`NONE`] when the child exec'd.
struct Report {
    errno: AtomicI32,
    call: AtomicI32,
}

const NONE: i32 = -1;

/// The child's stack, mapped for one spawn. Its size is `posix_spawn`'s rule: 32 KiB, plus
/// room for the argument pointers, which `execvp` copies onto the stack to run a script
/// with the shell; doubled, for the few frames of `child_main` beside it.
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

impl Stack {
    fn new(pointers: usize) -> Result<Stack, Errno> {
        let len = (64 * 1024 + 2 * pointers * size_of::<usize>()).next_multiple_of(4096);
        // SAFETY: a fresh private mapping, unmapped in `drop`.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        Ok(Stack { base, len })
    }

    /// The stack grows down: the child starts at the top.
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping, which is what `clone` takes.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours, and the child no longer runs on it (CLONE_VFORK).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// The child's entry point, on its own stack.
extern "C" fn run_child(child: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `spawn` passes a `Child` that outlives the child (lastcall waits for it).
    child_main(unsafe { &*child.cast::<Child>() })
}

/// Starts a readiness command: its own process group, quiet, lastcall's environment.
pub fn spawn_check(argv: &[OsString]) -> Result<Pid, SpawnError> {
    spawn(argv, &Options { quiet: true, ..Options::default() })
}

fn c_strings<'a>(items: impl Iterator<Item = &'a OsString>) -> Vec<CString> {
    // Strings from the OS (argv, environ) hold no NUL; one from elsewhere is cut at it.
    items
        .map(|s| {
            let bytes = s.as_bytes();
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            CString::new(&bytes[..end]).unwrap_or_default()
        })
        .collect()
}

fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect()
}

fn restore_mask(mask: &libc::sigset_t) {
    // SAFETY: `mask` is an initialised sigset_t.
    unsafe {
        libc::sigprocmask(libc::SIG_SETMASK, mask, std::ptr::null_mut());
    }
}

/// What the child needs, all prepared before the fork.
struct Child<'a> {
    argv: &'a [*const libc::c_char],
    env: Option<&'a [*const libc::c_char]>,
    /// The `NAME=` buffer (pointer, length) in `env`, to complete with the child's pid.
    own_pid: Option<(*mut u8, usize)>,
    null: Option<RawFd>,
    /// lastcall's group had the terminal's foreground: the child takes it.
    foreground: bool,
    pass_fds: &'a [RawFd],
    user: Option<&'a Credentials>,
    report: &'a Report,
    inherited: &'a Inherited,
    /// The file-descriptor limit lastcall inherited, if it raised its own.
    nofile: Option<libc::rlimit>,
}

/// Gives the child the soft file-descriptor limit lastcall inherited (one system call: the
/// hard limit is known).
fn restore_fd_limit(limit: &libc::rlimit) {
    // SAFETY: plain libc call on an initialised rlimit.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, limit) };
}

/// Everything the child does before `exec`. Never returns.
fn child_main(child: &Child) -> ! {
    own_process_group();
    if child.foreground {
        take_terminal();
    }
    if let Some(fd) = child.null {
        quiet_stdio(fd);
    }
    // Under lastcall's raised limit: every descriptor below the child's own may be taken by
    // lastcall (its connections), and the copies are made above them. A child missing one of
    // the sockets its LISTEN_FDS counts is not started.
    if pass_fds(child.pass_fds).is_err() {
        fail(child.report, FAILED_PASS_FDS, 125);
    }
    if let Some(limit) = &child.nofile {
        restore_fd_limit(limit);
    }
    restore_mask(&child.inherited.mask);
    if let Some((slot, len)) = child.own_pid {
        // SAFETY: the buffer was allocated before the fork with this length, and nothing
        // else refers to it in the child.
        set_own_pid(unsafe { std::slice::from_raw_parts_mut(slot, len) });
    }
    if let Some(user) = child.user
        && let Err(call) = switch_user(user)
    {
        fail(child.report, call, 126);
    }
    // SAFETY: `argv` and `env` are null-terminated arrays of pointers to NUL-terminated
    // strings that outlive this call.
    unsafe {
        match child.env {
            Some(env) => libc::execvpe(child.argv[0], child.argv.as_ptr(), env.as_ptr()),
            None => libc::execvp(child.argv[0], child.argv.as_ptr()),
        }
    };
    let code = i32::from(exec_failure_code(Errno::last()));
    fail(child.report, FAILED_EXEC, code)
}

/// Tells the parent errno and what failed, and leaves.
fn fail(report: &Report, what: i32, code: i32) -> ! {
    report.errno.store(Errno::last_raw(), Ordering::Relaxed);
    report.call.store(what, Ordering::Relaxed);
    // SAFETY: leaving without running any of the parent's atexit handlers or destructors.
    unsafe { libc::_exit(code) }
}

/// Drops root for `--user`: the inheritable and ambient capabilities first, then the
/// groups, the gid, the uid, since each step needs the privilege the next one gives up.
/// Returns which call failed (its index in [`CALLS`]), with errno still set.
fn switch_user(user: &Credentials) -> Result<(), i32> {
    clear_inheritable_capabilities()?;
    // SAFETY: plain libc calls; `groups` was built before the fork and is only read here.
    unsafe {
        if libc::setgroups(user.groups.len(), user.groups.as_ptr()) != 0 {
            return Err(1);
        }
        if libc::setgid(user.gid) != 0 {
            return Err(2);
        }
        if libc::setuid(user.uid) != 0 {
            return Err(3);
        }
    }
    Ok(())
}

/// `capget`'s and `capset`'s header.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// One of the two halves (capabilities 0-31, 32-63) of the three sets, in version 3.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapSets {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets, as two [`CapSets`].
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Empties the inheritable and ambient sets. `setuid` to a non-root uid empties the
/// permitted, effective and ambient sets, but not the inheritable one: a capability left in
/// it would be effective again in a program whose file grants it inheritable (`cap_x=ei`).
/// The permitted and effective sets stay, for `setgroups`, `setgid` and `setuid`.
fn clear_inheritable_capabilities() -> Result<(), i32> {
    let mut header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
    let mut sets = [CapSets { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: raw system calls on a header and two sets on this stack, as the kernel's
    // version 3 lays them out; pid 0 is this process.
    unsafe {
        if libc::syscall(libc::SYS_capget, &raw mut header, sets.as_mut_ptr()) != 0 {
            return Err(4);
        }
        for half in &mut sets {
            half.inheritable = 0;
        }
        if libc::syscall(libc::SYS_capset, &raw const header, sets.as_ptr()) != 0 {
            return Err(5);
        }
        // EINVAL: a kernel before 4.3, which has no ambient set to clear.
        // The variadic arguments are unsigned longs to the kernel, unused ones zero.
        let (clear_all, unused) =
            (libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0 as libc::c_ulong);
        let cleared = libc::prctl(libc::PR_CAP_AMBIENT, clear_all, unused, unused, unused);
        if cleared != 0 && Errno::last() != Errno::EINVAL {
            return Err(6);
        }
    }
    Ok(())
}

/// Writes the pid in decimal after `NAME=`, NUL-terminated, without allocating.
fn set_own_pid(slot: &mut [u8]) {
    let start = slot.iter().position(|&b| b == 0).unwrap_or(slot.len());
    // SAFETY: plain libc call.
    let mut pid = unsafe { libc::getpid() } as u32;
    let mut digits = [0u8; 10];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (pid % 10) as u8;
        n += 1;
        pid /= 10;
        if pid == 0 {
            break;
        }
    }
    for i in 0..n {
        slot[start + i] = digits[n - 1 - i];
    }
    slot[start + n] = 0;
}

/// Puts `fds` at 3, 4, ... without CLOEXEC. They are first copied above every target, so
/// that placing one never closes another that is still to be placed. Stops at the first
/// call that fails, with errno set.
fn pass_fds(fds: &[RawFd]) -> Result<(), ()> {
    let mut high = [-1; crate::platform::sockets::MAX_SOCKETS];
    let above = 3 + fds.len() as RawFd;
    for (slot, &fd) in high.iter_mut().zip(fds) {
        // SAFETY: plain libc call; the copy is CLOEXEC, so a leftover never leaks.
        *slot = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above) };
        if *slot < 0 {
            return Err(());
        }
    }
    for (i, &fd) in high.iter().take(fds.len()).enumerate() {
        // SAFETY: plain libc call; dup2 leaves the target without CLOEXEC.
        if unsafe { libc::dup2(fd, 3 + i as RawFd) } < 0 {
            return Err(());
        }
    }
    Ok(())
}

fn quiet_stdio(null: RawFd) {
    for fd in 0..3 {
        // SAFETY: plain libc call; dup2 leaves the new fd without CLOEXEC, as stdio must be.
        unsafe { libc::dup2(null, fd) };
    }
}

/// Whether lastcall's process group is the foreground of a terminal on stdin. A lastcall
/// started in the background (`lastcall app &`) must not steal the terminal from the shell.
fn had_foreground() -> bool {
    // SAFETY: plain libc calls; failures (no tty) are answers, not errors.
    unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() }
}

fn own_process_group() {
    // SAFETY: plain libc call.
    unsafe { libc::setpgid(0, 0) };
}

/// Makes the child's group the terminal's foreground, so that it reads the terminal and gets
/// Ctrl-C itself. SIGTTOU is still blocked here, so this works from what was a background
/// group.
/// Failure (ENOTTY, ENXIO on some platforms) leaves the child without the terminal, as tini does.
fn take_terminal() {
    // SAFETY: plain libc calls.
    unsafe { libc::tcsetpgrp(0, libc::getpid()) };
}

#[cfg(test)]
mod tests {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::AtomicUsize;

    use nix::sys::wait::{WaitStatus, waitpid};

    use super::*;

    /// Runs `script` with `/bin/sh -c`, started by [`spawn`] with `options` made quiet (the
    /// terminal is the test runner's), waits for that child only (other tests' children are
    /// theirs), and returns its pid and what the script wrote on its stdout.
    fn run(script: &str, options: Options) -> (Pid, String) {
        static RUN: AtomicUsize = AtomicUsize::new(0);
        let n = RUN.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lastcall-spawn-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Writable by a child that dropped root.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let out = dir.join("out");
        let script = format!("exec >'{}'; {script}", out.display());
        let argv: Vec<OsString> = vec!["/bin/sh".into(), "-c".into(), script.into()];
        let pid = spawn(&argv, &Options { quiet: true, ..options }).expect("spawned");
        assert_eq!(waitpid(pid, None), Ok(WaitStatus::Exited(pid, 0)));
        let text = std::fs::read_to_string(&out).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        (pid, text)
    }

    /// The fields after `key:` in `/proc/<pid>/status`-like text.
    fn field<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
        let line = text.lines().find(|l| l.split(':').next() == Some(key));
        line.expect(key).split_once(':').unwrap().1.split_whitespace().collect()
    }

    /// `path` opened as lastcall opens everything, CLOEXEC, at 100 or above: clear of 3, 4 and
    /// whatever else the test runner holds.
    fn high_fd(path: &str) -> OwnedFd {
        let file = std::fs::File::open(path).unwrap();
        // SAFETY: plain libc call; the copy is owned below.
        let fd = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
        assert!(fd >= 100, "{}", std::io::Error::last_os_error());
        // SAFETY: `fd` was just opened and is not owned elsewhere.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    #[test]
    fn passed_fds_are_at_3_onward_and_no_cloexec_fd_is_inherited() {
        let (full, zero, kept) =
            (high_fd("/dev/full"), high_fd("/dev/zero"), high_fd("/dev/random"));
        let [full, zero, kept] = [&full, &zero, &kept].map(|fd| fd.as_raw_fd());
        let options = Options { pass_fds: vec![full, zero], ..Options::default() };
        let script = format!(
            r#"for fd in 0 2 3 4 {full} {zero} {kept}; do echo "$fd $(readlink /proc/$$/fd/$fd)"; done"#
        );
        let (_, out) = run(&script, options);
        let expected = format!(
            "0 /dev/null\n2 /dev/null\n3 /dev/full\n4 /dev/zero\n{full} \n{zero} \n{kept} \n"
        );
        assert_eq!(out, expected, "in order at 3 onward; the CLOEXEC originals stay behind");
    }

    #[test]
    fn a_socket_that_cannot_be_passed_fails_the_spawn() {
        // A descriptor no process holds, far above any test's: copying it fails (EBADF).
        let options = Options { pass_fds: vec![1 << 20], quiet: true, ..Options::default() };
        // The failed child is left unreaped, as in `an_exec_failure_says_which`.
        let err = spawn(&["/bin/true".into()], &options).expect_err("no child without its socket");
        assert!(
            matches!(err, SpawnError::Os { errno: Errno::EBADF, .. }),
            "{err:?}: not the socket's failure"
        );
        assert_eq!(
            err.to_string(),
            "passing the --socket descriptors to the child failed: Bad file number"
        );
        assert_eq!(crate::init::fatal::Fatal::Spawn(err).exit_code(), 125);
    }

    #[test]
    fn the_child_gets_the_environment_given_with_its_own_pid_and_leads_its_group() {
        let given = ["PATH=/usr/bin:/bin", "A=1", "B=two words"];
        let env = Some(given.iter().map(OsString::from).collect());
        let options = Options { env, own_pid_var: Some("LISTEN_PID"), ..Options::default() };
        let (pid, out) = run("env; cat /proc/$$/stat", options);
        let mut lines: Vec<&str> = out.lines().collect();
        let stat = lines.pop().unwrap();
        // The shell adds PWD of its own.
        let mut seen: Vec<String> =
            lines.into_iter().filter(|l| !l.starts_with("PWD=")).map(String::from).collect();
        let mut expected: Vec<String> = given.iter().map(|v| v.to_string()).collect();
        expected.push(format!("LISTEN_PID={pid}"));
        seen.sort();
        expected.sort();
        assert_eq!(seen, expected);
        // The fields after the command's name: state, parent, process group.
        let after_name: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        assert_eq!(after_name[2], pid.to_string(), "its own process group");

        // No environment given: lastcall's own.
        let (_, out) = run("env", Options::default());
        let path = std::env::var("PATH").unwrap_or_default();
        assert!(out.lines().any(|l| l == format!("PATH={path}")), "{out}");
    }

    /// The signal mask in `/proc/<pid>/status` form: bit n-1 for signal n.
    fn bits(mask: &libc::sigset_t) -> u64 {
        // SAFETY: plain libc call on an initialised sigset_t.
        let member = |sig: i32| unsafe { libc::sigismember(mask, sig) } == 1;
        (1..=64).filter(|&sig| member(sig)).map(|sig| 1u64 << (sig - 1)).sum()
    }

    #[test]
    fn the_child_gets_the_inherited_signal_mask_not_lastcalls() {
        // A thread of its own: a mask set here is this thread's alone, and the child's start.
        std::thread::spawn(|| {
            // SAFETY: plain libc calls on local sigset_t values.
            let mine = unsafe {
                let mut winch: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut winch);
                libc::sigaddset(&mut winch, libc::SIGWINCH);
                libc::pthread_sigmask(libc::SIG_BLOCK, &winch, std::ptr::null_mut());
                // Records the inherited mask (if no test did before) and blocks lastcall's.
                let _signals = signals::Signals::open().unwrap();
                let mut mine: libc::sigset_t = std::mem::zeroed();
                libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mine);
                bits(&mine)
            };
            let inherited = bits(&signals::inherited().mask);
            assert_ne!(mine, inherited, "lastcall blocks what it takes");
            assert!(mine & (1 << (libc::SIGTERM - 1)) != 0);
            let (_, status) = run("exec cat /proc/self/status", Options::default());
            let blocked = u64::from_str_radix(field(&status, "SigBlk")[0], 16).unwrap();
            assert_eq!(blocked, inherited, "{blocked:x} != {inherited:x}");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_child_gets_back_the_fd_limit_lastcall_inherited() {
        // SAFETY: plain libc calls on a local rlimit.
        let limit = |set: Option<libc::rlimit>| unsafe {
            let mut limit: libc::rlimit = std::mem::zeroed();
            if let Some(new) = set {
                assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &new), 0);
            }
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
            (limit.rlim_cur, limit.rlim_max)
        };
        let (soft, hard) = limit(None);
        if hard == libc::RLIM_INFINITY {
            eprintln!("skipped: an unlimited hard RLIMIT_NOFILE is not one lastcall raises to");
            return;
        }
        // Below the hard limit, as a container's 1024 is, so that there is one to give back.
        let inherited = match soft < hard {
            true => soft,
            false => limit(Some(libc::rlimit { rlim_cur: hard - 1, rlim_max: hard })).0,
        };
        assert_eq!(fd_limit::raise(), hard);
        assert_eq!(limit(None), (hard, hard), "lastcall's own, raised");
        let (_, limits) = run("exec cat /proc/self/limits", Options::default());
        let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
        let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
        assert_eq!(numbers, [inherited.to_string(), hard.to_string()]);
    }

    #[test]
    fn the_child_runs_with_the_users_credentials() {
        // SAFETY: plain libc call.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: only root can switch to another user");
            return;
        }
        let user = Credentials {
            uid: 65534,
            gid: 65533,
            groups: vec![65533, 4242, 4343],
            home: None,
            name: "nobody".into(),
        };
        let options = Options { user: Some(user), ..Options::default() };
        let (_, status) = run("exec cat /proc/self/status", options);
        // Real, effective, saved and filesystem ids alike; root's groups are gone.
        assert_eq!(field(&status, "Uid"), ["65534"; 4]);
        assert_eq!(field(&status, "Gid"), ["65533"; 4]);
        assert_eq!(field(&status, "Groups"), ["4242", "4343", "65533"], "as the kernel sorts them");
    }

    #[test]
    fn an_exec_failure_says_which() {
        // The failed child is left unreaped (its pid is not known here), as a zombie until
        // the test binary exits: reaping any child could take another test's.
        let exec = |program: &str| match spawn_check(&[program.into()]) {
            Err(SpawnError::Exec { program, errno }) => (program, errno),
            other => panic!("{other:?}"),
        };
        assert_eq!(exec("/no/such/program"), ("/no/such/program".into(), Errno::ENOENT));
        assert_eq!(exec("/etc/passwd"), ("/etc/passwd".into(), Errno::EACCES));
        assert_eq!(exec_failure_code(Errno::ENOENT), 127);
        assert_eq!(exec_failure_code(Errno::EACCES), 126);
    }
}
