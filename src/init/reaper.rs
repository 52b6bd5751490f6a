//! Reaping and the process tree under lastcall.
//!
//! The only place that calls `waitpid`. SIGCHLD coalesces, so one wake-up may stand for many
//! exits: [`reap`] loops with `WNOHANG` until nothing is left to collect.

use std::collections::{HashMap, HashSet};

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::init::signals::{self, Sig};
use crate::init::status::ChildStatus;

/// What one reaping pass collected.
#[derive(Debug, Default)]
pub struct Reaped {
    /// Every process reaped, with how it ended.
    pub exits: Vec<(Pid, ChildStatus)>,
    /// Whether lastcall still has children after the pass.
    pub children_left: bool,
}

/// Collects every exited child, without blocking.
pub fn reap() -> Reaped {
    let mut reaped = Reaped::default();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                reaped.children_left = true;
                return reaped;
            }
            Ok(WaitStatus::Exited(pid, code)) => {
                reaped.exits.push((pid, ChildStatus::Exited(code)))
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                reaped.exits.push((pid, ChildStatus::Signaled(Sig(sig as i32))))
            }
            // Not asked for (no WUNTRACED/WCONTINUED); nothing to collect.
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            // ECHILD: no children at all.
            Err(_) => return reaped,
        }
    }
}

/// Orphans of the child's descendants must come to lastcall to be reaped: as PID 1 they do
/// anyway; otherwise lastcall registers as a child subreaper (without it, an orphan goes to
/// the real init, and lastcall cannot wait for it).
pub fn claim_orphans(subreaper: bool) {
    if std::process::id() == 1 {
        return;
    }
    if !subreaper {
        log::warn!(
            "not PID 1 and --no-subreaper given: zombie reaping won't work for orphaned \
             descendants (they go to the real init)"
        );
        return;
    }
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        log::warn!(
            "cannot become a child subreaper ({e}): orphaned descendants will not be reaped here"
        );
    }
}

/// Sends `sig` to every process under lastcall. As PID 1 of a PID namespace that is
/// `kill(-1)`: everything but lastcall. Otherwise the descendants are found in /proc.
pub fn signal_descendants(sig: Sig) {
    if std::process::id() == 1 {
        let _ = signals::send(-1, sig);
        return;
    }
    // A process may start another while the tree is read: read it again until a pass finds
    // nobody new (bounded; what is left is found when the next one is reaped).
    let mut sent: HashSet<Pid> = HashSet::new();
    for _ in 0..4 {
        let fresh: Vec<Pid> =
            descendants(Pid::this()).into_iter().filter(|p| !sent.contains(p)).collect();
        if fresh.is_empty() {
            return;
        }
        for pid in fresh {
            let _ = signals::send(pid.as_raw(), sig);
            sent.insert(pid);
        }
    }
}

/// Every process whose chain of parents leads to `root`, read from /proc.
pub fn descendants(root: Pid) -> Vec<Pid> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if let Some(ppid) = parent_of(pid) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    let mut todo = vec![root.as_raw()];
    while let Some(parent) = todo.pop() {
        for &child in children.get(&parent).map(Vec::as_slice).unwrap_or(&[]) {
            if seen.insert(child) {
                found.push(Pid::from_raw(child));
                todo.push(child);
            }
        }
    }
    found
}

/// The child of lastcall's that `pid` is, or is under; `None` when `pid` is not under
/// lastcall (or is lastcall itself).
pub fn child_above(pid: i32) -> Option<Pid> {
    let own = Pid::this().as_raw();
    let mut at = pid;
    // Bounded: a chain of parents is finite, but /proc can change under us.
    for _ in 0..4096 {
        match parent_of(at) {
            Some(parent) if parent == own && at != own => return Some(Pid::from_raw(at)),
            Some(parent) if parent > 0 && parent != at => at = parent,
            _ => return None,
        }
    }
    None
}

/// The parent pid from /proc/PID/stat. The command name (field 2) may hold spaces and
/// parentheses, so the fields are counted from its closing parenthesis.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}
