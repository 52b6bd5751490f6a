//! Telling an OOM kill from any other SIGKILL: lastcall's memory cgroup and its counters.
//!
//! A process the kernel's OOM killer ends dies of SIGKILL like one that `kill -9` ended; only
//! the memory cgroup's counter tells them apart. lastcall reads the counter at start and
//! whenever its loop looks ([`OomWatch`]), and hands each rise to the machine with the time
//! of the previous read; which deaths the kills are laid on is the machine's decision. The
//! cgroup is found as the kernel describes it, not at an assumed path:
//! `/proc/self/cgroup` gives the cgroup's path in each hierarchy, `/proc/self/mountinfo`
//! where (and which part of) each hierarchy is mounted.
//!
//! - cgroup v2: the `0::PATH` line, under the `cgroup2` mount (`/sys/fs/cgroup`, or
//!   `/sys/fs/cgroup/unified` on hybrid systems); counter `oom_kill` in `memory.events`
//!   (counting the cgroup's descendants too), limit `memory.max` (`max`: none).
//! - cgroup v1: the line whose controllers include `memory`, under the `cgroup` mount with the
//!   `memory` option; counter `oom_kill` in `memory.oom_control` (Linux 4.13 and later;
//!   counting this cgroup only, not its descendants), limit `memory.limit_in_bytes` (about
//!   2^63: none).
//!
//! Everything here answers `Option`: no cgroup, no memory controller, an old kernel or no
//! permission mean "don't know", never an error, and lastcall then claims nothing.
//!
//! Because the v1 counter is the cgroup's own, a test must run lastcall itself in the
//! limited cgroup, not only the memory hog. As root, with `D` our memory cgroup's directory:
//!
//! - v1 (done by hand on a hybrid Linux 6.18, where an OOM kill in `D/oomtest` raised
//!   `D/oomtest/memory.oom_control` from 0 to 1 and left `D`'s at 0): `mkdir D/oomtest`,
//!   `echo 32M > D/oomtest/memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes` where
//!   there is swap), then start a shell that writes its pid to `D/oomtest/cgroup.procs` and
//!   runs lastcall with a hog (`python3 -c "b = [bytearray(1 << 20) for _ in range(200)]"`):
//!   the hog dies of SIGKILL (137). Afterwards `rmdir D/oomtest` (once empty).
//! - v2 (not tried here: this machine's memory controller is on v1): a cgroup with processes
//!   cannot enable controllers for its children, so first move every pid of
//!   `D/cgroup.procs` into a new leaf `D/leaf`, then `echo +memory > D/cgroup.subtree_control`,
//!   `mkdir D/oomtest`, `echo 32M > D/oomtest/memory.max`, `echo 0 > D/oomtest/memory.swap.max`,
//!   and move the shell in as above; `oom_kill` in `D/oomtest/memory.events` (and, being
//!   hierarchical, in `D`'s) goes up. `D` needs `memory` in its `cgroup.controllers`. On a
//!   systemd host, `systemd-run --scope -p MemoryMax=32M -p MemorySwapMax=0 lastcall -- HOG`
//!   does the same.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::show::format_bytes;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// lastcall's memory cgroup: its directory, and the mount it is under (where the walk up
/// for an ancestor's limit stops).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryCgroup {
    pub version: Version,
    pub dir: PathBuf,
    mount_point: PathBuf,
}

/// One line of `/proc/self/mountinfo`, the fields this module needs.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    /// The part of the hierarchy that is mounted (`/` unless bind-mounted or namespaced).
    root: String,
    point: PathBuf,
    fstype: String,
    super_options: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_string();
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let value =
                    (d[0] - b'0') as u32 * 64 + (d[1] - b'0') as u32 * 8 + (d[2] - b'0') as u32;
                out.push(value as u8);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`.
fn parse_mount(line: &str) -> Option<Mount> {
    let (before, after) = line.split_once(" - ")?;
    let mut fields = before.split(' ');
    let root = fields.nth(3)?;
    let point = fields.next()?;
    let mut after = after.split(' ');
    let fstype = after.next()?;
    let super_options = after.nth(1)?;
    Some(Mount {
        root: unescape(root),
        point: PathBuf::from(unescape(point)),
        fstype: fstype.to_string(),
        super_options: super_options.to_string(),
    })
}

/// The cgroup v2 path: the `0::PATH` line.
fn v2_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|line| line.strip_prefix("0::"))
}

/// The v1 path of the hierarchy that has `controller`: `ID:CONTROLLERS:PATH`.
fn v1_path<'a>(proc_cgroup: &'a str, controller: &str) -> Option<&'a str> {
    proc_cgroup.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers.split(',').any(|c| c == controller).then_some(path)
    })
}

/// Where `path` (as `/proc/self/cgroup` gives it) is under `mount`: the mount shows the
/// hierarchy from its root down, so the path must be below that root. A path outside it
/// (`/../sibling` in a cgroup namespace) is not visible.
fn under_mount(mount: &Mount, path: &str) -> Option<PathBuf> {
    if !path.starts_with('/') || path.split('/').any(|part| part == "..") {
        return None;
    }
    let root = mount.root.trim_end_matches('/');
    let rest = path.strip_prefix(root)?;
    if !rest.is_empty() && !rest.starts_with('/') {
        return None; // `/docker/abc` is not under the root `/docker/ab`.
    }
    match rest.trim_start_matches('/') {
        "" => Some(mount.point.clone()),
        rest => Some(mount.point.join(rest)),
    }
}

/// Finds the memory cgroup from the two files' contents; `has` says whether a file exists
/// (it is a memory cgroup only if its control files are there).
fn find_in(
    proc_cgroup: &str,
    mountinfo: &str,
    has: impl Fn(&Path) -> bool,
) -> Option<MemoryCgroup> {
    // Only cgroup mounts are parsed: a container's mountinfo has dozens of others, and
    // unescaping them all would cost a fifth of lastcall's start-up instructions.
    let mounts: Vec<Mount> = mountinfo
        .lines()
        .filter(|line| line.contains(" - cgroup"))
        .filter_map(parse_mount)
        .collect();
    let candidates = |version, path: Option<&str>, file: &str| {
        let path = path?;
        mounts
            .iter()
            .filter(|m| match version {
                Version::V2 => m.fstype == "cgroup2",
                Version::V1 => {
                    m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == "memory")
                }
            })
            .filter_map(|m| Some((under_mount(m, path)?, m)))
            .find(|(dir, _)| has(&dir.join(file)))
            .map(|(dir, m)| MemoryCgroup { version, dir, mount_point: m.point.clone() })
    };
    // On a hybrid system the v2 hierarchy exists but the memory controller is on v1: its
    // directory has no memory.events, and v1 is tried next.
    candidates(Version::V2, v2_path(proc_cgroup), "memory.events")
        .or_else(|| candidates(Version::V1, v1_path(proc_cgroup, "memory"), "memory.oom_control"))
}

/// `oom_kill N` in `memory.events` (v2) or `memory.oom_control` (v1), same format.
fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix("oom_kill ")?.trim().parse().ok())
}

/// Limits at or above this are "none": v1 writes "unlimited" as the largest page-aligned
/// value below 2^63 (9223372036854771712 with 4 KiB pages), no machine has 4 EiB.
const UNLIMITED: u64 = 1 << 62;

/// A limit file's value: bytes, or None for `max`, "unlimited" or unreadable text.
fn parse_limit(text: &str) -> Option<u64> {
    text.trim().parse().ok().filter(|&n| n < UNLIMITED)
}

/// `hierarchical_memory_limit N` in v1's `memory.stat`: the smallest limit on the way up.
fn parse_hierarchical_limit(memory_stat: &str) -> Option<u64> {
    memory_stat
        .lines()
        .find_map(|line| parse_limit(line.strip_prefix("hierarchical_memory_limit ")?))
}

/// A small file of /proc or /sys, whole: one open and reads until the end, without the stat
/// and seek `read_to_string` makes to size its buffer (the kernel reports 0 for these).
fn read(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let mut buf = vec![0; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).ok()
}

impl MemoryCgroup {
    /// lastcall's own memory cgroup, if it has one it can see.
    pub fn find() -> Option<MemoryCgroup> {
        let proc_cgroup = read(Path::new("/proc/self/cgroup"))?;
        let mountinfo = read(Path::new("/proc/self/mountinfo"))?;
        find_in(&proc_cgroup, &mountinfo, Path::exists)
    }

    /// How many processes the OOM killer has killed in this cgroup so far.
    pub fn oom_kills(&self) -> Option<u64> {
        let file = match self.version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        };
        parse_oom_kill(&read(&self.dir.join(file))?)
    }

    /// The memory limit that applies: the smallest of this cgroup's and its ancestors' (as
    /// far up as the mount shows them), in bytes; None if there is none.
    pub fn limit(&self) -> Option<u64> {
        match self.version {
            Version::V1 => {
                let own =
                    read(&self.dir.join("memory.limit_in_bytes")).and_then(|t| parse_limit(&t));
                let stat = read(&self.dir.join("memory.stat"));
                let up = stat.and_then(|t| parse_hierarchical_limit(&t));
                own.into_iter().chain(up).min()
            }
            Version::V2 => {
                let mut limits = Vec::new();
                let mut dir = self.dir.as_path();
                while dir.starts_with(&self.mount_point) {
                    limits.extend(read(&dir.join("memory.max")).and_then(|t| parse_limit(&t)));
                    match dir.parent() {
                        Some(parent) if dir != self.mount_point => dir = parent,
                        _ => break,
                    }
                }
                limits.into_iter().min()
            }
        }
    }
}

/// Watches lastcall's cgroup for OOM kills: read at start, and again whenever the loop looks
/// (after each reaping pass's `waitpid`s, and at the start of other turns, at most every
/// 10 ms).
#[derive(Debug)]
pub struct OomWatch {
    cgroup: Option<MemoryCgroup>,
    seen: u64,
    /// When `seen` was read: new kills happened after it.
    read_at: Instant,
}

impl OomWatch {
    /// Finds the cgroup and reads the counter's starting value (kills before lastcall
    /// started are not lastcall's to report).
    pub fn start() -> OomWatch {
        let found = MemoryCgroup::find().and_then(|c| Some((c.oom_kills()?, c)));
        match found {
            Some((seen, cgroup)) => {
                OomWatch { cgroup: Some(cgroup), seen, read_at: Instant::now() }
            }
            None => OomWatch { cgroup: None, seen: 0, read_at: Instant::now() },
        }
    }

    /// How many OOM kills happened since the last look, made at the instant returned with
    /// them (0 if lastcall cannot tell); `now` becomes the last look.
    pub fn new_kills(&mut self, now: Instant) -> (u64, Instant) {
        let Some(count) = self.cgroup.as_ref().and_then(MemoryCgroup::oom_kills) else {
            return (0, self.read_at);
        };
        // A counter never goes down; a smaller value (a cgroup moved) starts a new baseline.
        let new = count.saturating_sub(self.seen);
        let since = std::mem::replace(&mut self.read_at, now);
        self.seen = count;
        (new, since)
    }

    /// Whether the counter was read less than `within` before `now`.
    pub fn read_within(&self, within: std::time::Duration, now: Instant) -> bool {
        now.saturating_duration_since(self.read_at) < within
    }

    /// The limit that applies, in bytes, if there is one.
    pub fn limit(&self) -> Option<u64> {
        self.cgroup.as_ref()?.limit()
    }

    /// The limit that applies, as people write it (`256 MiB`), if there is one.
    pub fn limit_text(&self) -> Option<String> {
        self.limit().map(format_bytes)
    }

    /// The cgroup being watched, if any (for a debug line at start).
    pub fn cgroup(&self) -> Option<&MemoryCgroup> {
        self.cgroup.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's kind: hybrid, memory on v1, our own cgroup a few levels down.
    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
4:memory:/process_api/5de260e0
3:cpuset:/
2:cpu,cpuacct:/
0::/
";
    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";

    /// A pure v2 host, a systemd service.
    const V2_CGROUP: &str = "0::/system.slice/app.service\n";
    const V2_MOUNTINFO: &str = "\
22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw
26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    /// A container with its own cgroup namespace: the path is `/`, the mount is the
    /// container's own part of the hierarchy.
    const NS_CGROUP: &str = "0::/\n";
    const NS_MOUNTINFO: &str = "\
500 480 0:120 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
507 500 0:125 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate
";

    /// A v1 container without a cgroup namespace: the hierarchy's part is bind-mounted.
    const V1_DOCKER_CGROUP: &str = "\
12:memory:/docker/0123abcd
11:cpu,cpuacct:/docker/0123abcd
1:name=systemd:/docker/0123abcd
";
    const V1_DOCKER_MOUNTINFO: &str = "\
600 590 0:50 /docker/0123abcd /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory
601 590 0:51 /docker/0123abcd /sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct
";

    fn all_exist(_: &Path) -> bool {
        true
    }

    fn cgroup(version: Version, dir: &str, mount_point: &str) -> Option<MemoryCgroup> {
        Some(MemoryCgroup { version, dir: dir.into(), mount_point: mount_point.into() })
    }

    #[test]
    fn hybrid_uses_v1_when_the_v2_directory_has_no_memory_files() {
        let v1_only = |p: &Path| !p.ends_with("memory.events");
        assert_eq!(
            find_in(HYBRID_CGROUP, HYBRID_MOUNTINFO, v1_only),
            cgroup(
                Version::V1,
                "/sys/fs/cgroup/memory/process_api/5de260e0",
                "/sys/fs/cgroup/memory"
            )
        );
        // Were memory on the unified hierarchy, it would be used.
        assert_eq!(
            find_in(HYBRID_CGROUP, HYBRID_MOUNTINFO, all_exist),
            cgroup(Version::V2, "/sys/fs/cgroup/unified", "/sys/fs/cgroup/unified")
        );
    }

    #[test]
    fn v2_host_and_cgroup_namespace() {
        assert_eq!(
            find_in(V2_CGROUP, V2_MOUNTINFO, all_exist),
            cgroup(Version::V2, "/sys/fs/cgroup/system.slice/app.service", "/sys/fs/cgroup")
        );
        assert_eq!(
            find_in(NS_CGROUP, NS_MOUNTINFO, all_exist),
            cgroup(Version::V2, "/sys/fs/cgroup", "/sys/fs/cgroup")
        );
        // The host's root cgroup has no memory.events: nothing to claim.
        let root_has_none = |p: &Path| p != Path::new("/sys/fs/cgroup/memory.events");
        assert_eq!(find_in(NS_CGROUP, NS_MOUNTINFO, root_has_none), None);
    }

    #[test]
    fn v1_bind_mounted_part_of_the_hierarchy() {
        assert_eq!(
            find_in(V1_DOCKER_CGROUP, V1_DOCKER_MOUNTINFO, all_exist),
            cgroup(Version::V1, "/sys/fs/cgroup/memory", "/sys/fs/cgroup/memory")
        );
        // Moved to a child cgroup after the mount was made: still under its root.
        let moved = "12:memory:/docker/0123abcd/worker\n";
        assert_eq!(
            find_in(moved, V1_DOCKER_MOUNTINFO, all_exist),
            cgroup(Version::V1, "/sys/fs/cgroup/memory/worker", "/sys/fs/cgroup/memory")
        );
        // Outside what is mounted: not visible.
        let elsewhere = "12:memory:/docker/0123abcdef\n";
        assert_eq!(find_in(elsewhere, V1_DOCKER_MOUNTINFO, all_exist), None);
    }

    #[test]
    fn no_cgroup_no_controller_no_claim() {
        assert_eq!(find_in("", "", all_exist), None);
        assert_eq!(find_in(V2_CGROUP, "", all_exist), None, "no mount");
        assert_eq!(find_in("", V2_MOUNTINFO, all_exist), None, "no cgroup line");
        assert_eq!(find_in("3:cpuset:/\n", HYBRID_MOUNTINFO, |_| true), None, "no memory line");
        assert_eq!(find_in(V2_CGROUP, V2_MOUNTINFO, |_| false), None, "no memory files");
        // A namespace whose process sits outside the namespace's root.
        assert_eq!(find_in("0::/../../other\n", NS_MOUNTINFO, all_exist), None);
        for garbage in ["::", "0::", "0::relative", "a:b", "\n\n", "0:memory", "x - y"] {
            let _ = find_in(garbage, garbage, all_exist);
            let _ = find_in(garbage, HYBRID_MOUNTINFO, all_exist);
        }
    }

    #[test]
    fn mountinfo_escapes_and_fields() {
        let line = r"99 1 0:40 / /mnt/with\040space\134x rw shared:1 master:2 - cgroup2 none rw";
        let mount = parse_mount(line).unwrap();
        assert_eq!(mount.point, Path::new("/mnt/with space\\x"));
        assert_eq!((mount.fstype.as_str(), mount.super_options.as_str()), ("cgroup2", "rw"));
        assert_eq!(unescape(r"\0"), r"\0", "a short escape stays as it is");
        assert_eq!(unescape(r"a\9999"), r"a\9999");
        assert_eq!(unescape(r"\377"), "\u{fffd}", "a byte that is not UTF-8");
        assert!(parse_mount("1 2 3").is_none());
    }

    #[test]
    fn counters_and_limits() {
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kill(events), Some(2));
        let control = "oom_kill_disable 0\nunder_oom 0\noom_kill 17\n";
        assert_eq!(parse_oom_kill(control), Some(17));
        // Before Linux 4.13, v1 had no counter: no claim.
        assert_eq!(parse_oom_kill("oom_kill_disable 0\nunder_oom 0\n"), None);
        assert_eq!(parse_oom_kill("oom_kill x\n"), None);

        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("268435456\n"), Some(268435456));
        assert_eq!(parse_limit("9223372036854771712\n"), None, "v1, 4 KiB pages");
        assert_eq!(parse_limit("9223372036854710272\n"), None, "v1, 64 KiB pages");
        assert_eq!(parse_limit("-1"), None);
        assert_eq!(parse_limit(""), None);
        let stat =
            "cache 0\nrss 1\nhierarchical_memory_limit 33554432\nhierarchical_memsw_limit 9\n";
        assert_eq!(parse_hierarchical_limit(stat), Some(33554432));
        assert_eq!(
            parse_hierarchical_limit("hierarchical_memory_limit 9223372036854771712\n"),
            None
        );
    }

    #[test]
    fn limits_read_from_files_and_ancestors() {
        let top = std::env::temp_dir().join(format!("lastcall-oom-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        let leaf = top.join("pod/container");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(top.join("memory.max"), "max\n").unwrap();
        std::fs::write(top.join("pod/memory.max"), "536870912\n").unwrap();
        std::fs::write(leaf.join("memory.max"), "max\n").unwrap();
        std::fs::write(leaf.join("memory.events"), "oom 1\noom_kill 4\n").unwrap();
        let v2 = MemoryCgroup { version: Version::V2, dir: leaf.clone(), mount_point: top.clone() };
        assert_eq!(v2.limit(), Some(536870912), "the pod's limit applies to the container");
        assert_eq!(v2.oom_kills(), Some(4));
        // Not above the mount: the file there is not the hierarchy's.
        let v2 = MemoryCgroup { mount_point: top.join("pod/container"), ..v2 };
        assert_eq!(v2.limit(), None);

        std::fs::write(leaf.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        std::fs::write(leaf.join("memory.stat"), "hierarchical_memory_limit 33554432\n").unwrap();
        std::fs::write(leaf.join("memory.oom_control"), "under_oom 0\noom_kill 1\n").unwrap();
        let v1 = MemoryCgroup { version: Version::V1, dir: leaf.clone(), mount_point: top.clone() };
        assert_eq!((v1.limit(), v1.oom_kills()), (Some(33554432), Some(1)));
        std::fs::write(leaf.join("memory.limit_in_bytes"), "16777216\n").unwrap();
        assert_eq!(v1.limit(), Some(16777216));
        std::fs::remove_dir_all(&top).unwrap();
        assert_eq!((v1.limit(), v1.oom_kills()), (None, None), "unreadable: no claim");
    }

    #[test]
    fn the_watch_counts_only_new_kills() {
        let dir = std::env::temp_dir().join(format!("lastcall-oomwatch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let events = dir.join("memory.events");
        std::fs::write(&events, "oom_kill 5\n").unwrap();
        let cgroup =
            MemoryCgroup { version: Version::V2, dir: dir.clone(), mount_point: dir.clone() };
        let t0 = Instant::now();
        let seen = cgroup.oom_kills().unwrap();
        let mut watch = OomWatch { seen, cgroup: Some(cgroup), read_at: t0 };
        let at = |ms| t0 + std::time::Duration::from_millis(ms);
        assert_eq!(watch.new_kills(at(1)), (0, t0), "kills before start are not ours");
        std::fs::write(&events, "oom_kill 7\n").unwrap();
        assert_eq!(watch.new_kills(at(2)), (2, at(1)), "two kills after the read at 1ms");
        assert_eq!(watch.new_kills(at(3)), (0, at(2)));
        std::fs::write(&events, "oom_kill 1\n").unwrap();
        assert_eq!(watch.new_kills(at(4)).0, 0, "a smaller value: new baseline");
        std::fs::write(&events, "oom_kill 2\n").unwrap();
        assert_eq!(watch.new_kills(at(5)), (1, at(4)));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(watch.new_kills(at(6)), (0, at(5)), "gone: no claim, no new look");
        let mut blind = OomWatch { cgroup: None, seen: 0, read_at: t0 };
        assert_eq!((blind.new_kills(at(1)).0, blind.limit_text()), (0, None));
    }

    #[test]
    fn this_machines_cgroup_reads_without_error() {
        // Whatever this machine has; the by-hand OOM proof runs this inside a limited cgroup
        // (`--nocapture` shows what was found).
        let watch = OomWatch::start();
        let found = watch.cgroup().map(|c| (c.version, c.dir.clone(), c.oom_kills(), c.limit()));
        println!("memory cgroup: {found:?}, limit {:?}", watch.limit_text());
        if let Some(cgroup) = watch.cgroup() {
            assert!(cgroup.dir.is_dir());
            assert!(cgroup.oom_kills().is_some());
        }
    }
}
