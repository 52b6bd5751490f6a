//! Telling the platform why: the termination message (`--termination-log`) for a clean stop,
//! an escalation, an OOM kill and an exec failure; a real OOM kill inside a memory cgroup
//! lastcall runs in; every JSON log line of a drain; and `--user`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{
    Json, LASTCALL, Running, TestDir, children_of, has_python, metric, parse_json_lines, probe,
    python3, required, send, spawn_listening,
};

fn is_root() -> bool {
    // SAFETY: plain libc call.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_clean_stop_is_told_with_the_drain_and_the_stop() {
    let dir = TestDir::new("termination_clean");
    let log = dir.join("termination-log");
    let lastcall = dir
        .lastcall()
        .args(["--listen", "off", "--prestop-delay", "300ms"])
        .args(["--termination-log", log.to_str().unwrap()])
        .sh("trap 'exit 0' TERM; mark ready; idle")
        .spawn_marked("ready");
    let out = lastcall.signal_and_wait(libc::SIGTERM);
    out.assert_code(0);
    let message = dir.read("termination-log");
    // `child exited 0 after SIGTERM (drain 300ms, stopped 12ms later)`; the times vary.
    let rest = message.strip_prefix("child exited 0 after SIGTERM (drain ");
    let drain = rest.and_then(|r| r.split_once(", stopped ")).and_then(|(d, _)| millis(d));
    out.check(
        drain.is_some_and(|ms| (300..5_000).contains(&ms))
            && message.ends_with(" later)")
            && !message.contains('\n'),
        format!("termination message {message:?}: expected a drain of 300ms or a little more"),
    );
}

/// `250ms` or `6.2s`, as lastcall shows durations, in milliseconds.
fn millis(shown: &str) -> Option<u64> {
    match shown.strip_suffix("ms") {
        Some(ms) => ms.parse().ok(),
        None => shown.strip_suffix('s')?.parse::<f64>().ok().map(|s| (s * 1000.0) as u64),
    }
}

#[test]
fn an_escalation_to_sigkill_is_told_as_such() {
    let dir = TestDir::new("termination_kill");
    let log = dir.join("termination-log");
    let lastcall = dir
        .lastcall()
        .args(["--listen", "off", "--prestop-delay", "0s", "--grace-period", "500ms"])
        .args(["--termination-log", log.to_str().unwrap()])
        .sh("trap '' TERM; mark ready; idle")
        .spawn_marked("ready");
    let out = lastcall.signal_and_wait(libc::SIGTERM);
    out.assert_code(137);
    let message = dir.read("termination-log");
    out.check(
        message == "child killed by SIGKILL: grace period of 500ms expired",
        format!("termination message {message:?}"),
    );
}

#[test]
fn an_exec_failure_is_told_and_a_bad_path_changes_nothing() {
    let dir = TestDir::new("termination_exec");
    let log = dir.join("termination-log");
    // An old message from a previous run is replaced, not appended to.
    dir.write("termination-log", "a much longer message left there by an earlier run");
    let out = dir
        .lastcall()
        .args(["--listen", "off", "--termination-log", log.to_str().unwrap()])
        .args(["--", "/nonexistent/app/server"])
        .run();
    out.assert_code(127);
    let message = dir.read("termination-log");
    out.check(
        message == "exec failed: /nonexistent/app/server: not found",
        format!("termination message {message:?}"),
    );
    // A path that cannot be written: the exit status is the child's, and nothing is said
    // at the default level.
    for path in ["/nonexistent/dir/termination-log", dir.path().to_str().unwrap()] {
        dir.lastcall()
            .args(["--listen", "off", "--termination-log", path])
            .sh("exit 3")
            .run()
            .assert_code(3)
            .assert_stderr_empty();
    }
    // Off: nothing written.
    fs::remove_file(&log).unwrap();
    dir.lastcall()
        .env("LASTCALL_TERMINATION_LOG", "off")
        .args(["--listen", "off"])
        .sh("exit 0")
        .run()
        .assert_code(0);
    assert!(!log.exists(), "--termination-log off wrote {log:?}");
}

/// The termination log is written after the child has gone: a file someone else put there
/// must neither hold up the exit nor redirect the write.
#[test]
fn a_fifo_at_the_termination_log_does_not_hold_up_the_exit() {
    let dir = TestDir::new("termination_fifo");
    // In a directory of its own: the failure report reads the test dir's files, and a read
    // of a FIFO without a writer would block too.
    fs::create_dir(dir.join("run")).unwrap();
    let log = dir.join("run/termination-log");
    nix::unistd::mkfifo(&log, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // No reader: an open that blocks would never return.
    let out = dir
        .lastcall()
        .args(["--listen", "off", "--termination-log", log.to_str().unwrap()])
        .sh("exit 3")
        .spawn()
        .wait_for(Duration::from_secs(5));
    out.assert_code(3);
    out.assert_stderr_has("it is a FIFO");
}

#[test]
fn a_symlink_at_the_termination_log_is_not_followed() {
    let dir = TestDir::new("termination_symlink");
    let precious = "root's own file: not the termination log\n";
    dir.write("precious", precious);
    fs::create_dir(dir.join("drop")).unwrap();
    let log = dir.join("drop/termination-log");
    // As root, the review's case: a child running as `nobody` owns the directory and plants
    // the link before it ends; otherwise the test plants it.
    let nobody = is_root()
        && Command::new("id").args(["-u", "nobody"]).output().is_ok_and(|o| o.status.success());
    let mut lastcall = dir.lastcall();
    if nobody {
        std::os::unix::fs::chown(dir.join("drop"), Some(65534), Some(65534)).unwrap();
        fs::set_permissions(dir.join("precious"), fs::Permissions::from_mode(0o600)).unwrap();
        lastcall = lastcall.args(["--user", "nobody"]);
    } else {
        std::os::unix::fs::symlink(dir.join("precious"), &log).unwrap();
    }
    let out = lastcall
        .args(["--listen", "off", "--termination-log", log.to_str().unwrap()])
        .sh(r#"[ -L "$DIR/drop/termination-log" ] || ln -s "$DIR/precious" "$DIR/drop/termination-log"
exit 0"#)
        .run();
    out.assert_code(0);
    let now = dir.read("precious");
    out.check(now == precious, format!("the link's target was written: {now:?}"));
    out.check(fs::symlink_metadata(&log).is_ok_and(|m| m.is_symlink()), "the link was planted");
    out.assert_stderr_has("it is a symbolic link");
}

/// The value of `key` in one parsed JSON line.
fn field<'a>(line: &'a [(String, Json)], key: &str) -> Option<&'a Json> {
    line.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

#[test]
fn every_json_line_of_a_full_drain_parses_with_the_steps_fields() {
    if !has_python() {
        return;
    }
    let dir = TestDir::new("json_drain");
    let mut lastcall = dir
        .lastcall()
        .env("LASTCALL_LOG_FORMAT", "json")
        .args(["--listen", "127.0.0.1:0", "--log-level", "debug"])
        .args(["--prestop-delay", "2s", "--grace-period", "5s"])
        // A child that takes a moment to stop, and a leftover that ignores SIGTERM: every
        // step of the shutdown, up to SIGKILL for the rest, is logged.
        .sh("trap 'sleep 0.1; exit 0' TERM; (trap '' TERM; mark left; idle) & mark ready; idle")
        .spawn();
    lastcall.wait_until("the child is ready", || dir.exists("ready") && dir.exists("left"));
    // One at a time: two SIGTERMs sent at once may arrive as one.
    lastcall.signal(libc::SIGTERM);
    lastcall.wait_stderr("\"phase\":\"draining\"");
    lastcall.signal(libc::SIGTERM);
    lastcall.wait_stderr("\"phase\":\"stopping\"");
    lastcall.wait_stderr("\"phase\":\"reaping\"");
    let out = lastcall.signal_and_wait(libc::SIGTERM);
    out.assert_code(0);
    let lines = parse_json_lines(&out.stderr);
    out.check(lines.len() >= 6, "expected the drain's lines");
    for line in &lines {
        let keys: Vec<&str> = line.iter().take(3).map(|(k, _)| k.as_str()).collect();
        out.check(keys == ["ts", "level", "msg"], format!("a line starts with {keys:?}"));
        let Some(Json::Str(ts)) = field(line, "ts") else { panic!("ts is no string: {line:?}") };
        // RFC 3339 in UTC with milliseconds: 2026-12-01T06:03:58.123Z.
        let shape = ts.len() == 24
            && ts.bytes().enumerate().all(|(i, b)| match i {
                4 | 7 => b == b'-',
                10 => b == b'T',
                13 | 16 => b == b':',
                19 => b == b'.',
                23 => b == b'Z',
                _ => b.is_ascii_digit(),
            });
        out.check(shape, format!("ts {ts:?}"));
        let level = field(line, "level");
        let levels = ["error", "warn", "info", "debug", "trace"];
        out.check(
            matches!(level, Some(Json::Str(l)) if levels.contains(&l.as_str())),
            format!("level {level:?}"),
        );
    }
    let step = |phase: &str, word: &str| -> &Vec<(String, Json)> {
        lines
            .iter()
            .find(|l| {
                field(l, "phase") == Some(&Json::Str(phase.into()))
                    && matches!(field(l, "msg"), Some(Json::Str(m)) if m.contains(word))
            })
            .unwrap_or_else(|| panic!("no {phase} line saying {word:?}\n{out}"))
    };
    let child = lastcall_child(&lines).unwrap_or_else(|| panic!("no child pid\n{out}"));
    let num = |line: &[(String, Json)], key: &str| match field(line, key) {
        Some(Json::Float(f)) => *f,
        other => panic!("{key} is {other:?} in {line:?}"),
    };
    let drain = step("draining", "received SIGTERM: draining");
    assert_eq!(field(drain, "pid"), Some(&Json::Int(child)));
    assert_eq!(field(drain, "signal"), Some(&Json::Str("SIGTERM".into())));
    assert_eq!(num(drain, "delay_s"), 2.0);
    let hurry = step("draining", "again");
    assert_eq!(field(hurry, "signal"), Some(&Json::Str("SIGTERM".into())));
    let stop = step("stopping", "sending SIGTERM");
    assert_eq!(field(stop, "pid"), Some(&Json::Int(child)));
    assert_eq!(num(stop, "grace_s"), 5.0);
    assert!(num(stop, "took_s") < 2.0, "the second SIGTERM skipped the delay: {stop:?}");
    let ended = step("reaping", "other processes remain");
    assert_eq!(field(ended, "status"), Some(&Json::Int(0)));
    assert!(num(ended, "took_s") >= 0.1, "the child took 0.1s to stop: {ended:?}");
    assert_eq!(field(ended, "signal"), Some(&Json::Str("SIGTERM".into())));
    assert!(num(ended, "grace_s") <= 5.0);
    let kill = step("reaping", "sending SIGKILL to the remaining processes");
    assert_eq!(field(kill, "signal"), Some(&Json::Str("SIGKILL".into())));
    let exit = step("exited", "all remaining processes reaped");
    assert_eq!(field(exit, "status"), Some(&Json::Int(0)));
}

/// The child's pid, from the debug line that says it was started.
fn lastcall_child(lines: &[Vec<(String, Json)>]) -> Option<i64> {
    lines.iter().find_map(|l| match field(l, "msg") {
        Some(Json::Str(m)) => m.strip_prefix("started child ")?.parse().ok(),
        _ => None,
    })
}

/// A memory cgroup of the test's own under the one the test runs in, limited to `limit`
/// bytes with no swap; removed when dropped (once its processes are gone).
struct MemoryCgroup {
    dir: PathBuf,
}

impl MemoryCgroup {
    /// Tries cgroup v1's memory hierarchy, then v2; says why neither works.
    fn create(name: &str, limit: u64) -> Result<MemoryCgroup, String> {
        let cgroups = fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
        let v1 = (|| {
            let path = cgroups.lines().find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
                controllers.split(',').any(|c| c == "memory").then_some(path)
            });
            let path = path.ok_or("no v1 memory hierarchy in /proc/self/cgroup")?;
            let mount = mount_of(&mountinfo, |fstype, options| {
                fstype == "cgroup" && options.split(',').any(|o| o == "memory")
            })
            .ok_or("no v1 memory hierarchy mounted")?;
            let dir = below(&mount, path)?.join(name);
            make(&dir)?;
            let group = MemoryCgroup { dir };
            group.set("memory.limit_in_bytes", limit)?;
            if group.dir.join("memory.memsw.limit_in_bytes").exists() {
                group.set("memory.memsw.limit_in_bytes", limit)?;
            }
            Ok::<_, String>(group)
        })();
        let v2 = || {
            let path = cgroups.lines().find_map(|l| l.strip_prefix("0::"));
            let path = path.ok_or("no v2 line in /proc/self/cgroup")?;
            let mount = mount_of(&mountinfo, |fstype, _| fstype == "cgroup2")
                .ok_or("no cgroup2 mounted")?;
            let parent = below(&mount, path)?;
            let control = fs::read_to_string(parent.join("cgroup.subtree_control"))
                .map_err(|e| format!("{}: {e}", parent.display()))?;
            if !control.split_whitespace().any(|c| c == "memory") {
                return Err(format!(
                    "{} does not enable the memory controller for its children",
                    parent.display()
                ));
            }
            let dir = parent.join(name);
            make(&dir)?;
            let group = MemoryCgroup { dir };
            group.set("memory.max", limit)?;
            if group.dir.join("memory.swap.max").exists() {
                group.set("memory.swap.max", 0)?;
            }
            Ok(group)
        };
        v1.or_else(|e1| v2().map_err(|e2| format!("cgroup v1: {e1}; cgroup v2: {e2}")))
    }

    fn set(&self, file: &str, value: u64) -> Result<(), String> {
        let path = self.dir.join(file);
        fs::write(&path, value.to_string()).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // The processes are gone, but the kernel may take a moment to let go of the cgroup.
        for _ in 0..500 {
            if fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// Where the first mount that `wanted(fstype, super_options)` shows is, and the part of
/// the hierarchy it shows.
fn mount_of(mountinfo: &str, wanted: impl Fn(&str, &str) -> bool) -> Option<(String, PathBuf)> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let mut fields = before.split(' ');
        let root = fields.nth(3)?;
        let point = fields.next()?;
        let mut after = after.split(' ');
        let (fstype, _, options) = (after.next()?, after.next()?, after.next()?);
        wanted(fstype, options).then(|| (root.to_string(), PathBuf::from(point)))
    })
}

/// The directory of cgroup `path` under `mount` (its root, its mount point).
fn below(mount: &(String, PathBuf), path: &str) -> Result<PathBuf, String> {
    let rest = path
        .strip_prefix(mount.0.trim_end_matches('/'))
        .ok_or_else(|| format!("{path} is not under the mounted {}", mount.0))?;
    Ok(mount.1.join(rest.trim_start_matches('/')))
}

fn make(dir: &Path) -> Result<(), String> {
    let _ = fs::remove_dir(dir);
    fs::create_dir(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))
}

/// Allocates and touches up to 1 GiB, 1 MiB at a time: far past the cgroup's limit, yet
/// bounded if the limit does not hold (then it exits 0 and the test fails).
const HOG: &str = "import os\nb = []\nfor _ in range(1024):\n    b.append(b'\\x01' * (1 << 20))\n\
                   open(os.environ['DIR'] + '/survived', 'w')\n";

/// Runs `sh -c SCRIPT ARGS` after the shell joins `procs`, so that lastcall (which it
/// becomes) is in the limited cgroup. It asks for oom_score_adj -1000 too, so that it is
/// never the OOM killer's choice; some kernels refuse negative values (this project's VMs
/// answer EIO), so its children also take the maximum, 1000, which makes them the choice.
const INTO_CGROUP: &str = r#"p=$1; shift; echo $$ > "$p" || exit 1
{ echo -1000 > /proc/self/oom_score_adj; } 2>/dev/null
exec "$@""#;

/// lastcall in `cgroup`, listening on a free port, writing its termination message to
/// `$DIR/termination-log`, around `sh -c CHILD` with `$PY` and `$HOG` set; returned once
/// the child has made `marker`.
fn in_cgroup(dir: &TestDir, cgroup: &MemoryCgroup, child: &str, marker: &str) -> (Running, u16) {
    let python = python3().expect("python3");
    let log = dir.join("termination-log");
    spawn_listening(
        |port| {
            dir.command("sh")
                .args(["-c", INTO_CGROUP, "sh", cgroup.procs().to_str().unwrap(), LASTCALL])
                .args(["--listen", &format!("127.0.0.1:{port}"), "--termination-log"])
                .arg(log.to_str().unwrap())
                .env("PY", &python)
                .env("HOG", HOG)
                .sh(child)
        },
        || dir.exists(marker),
    )
}

#[test]
fn a_child_killed_by_the_oom_killer_is_told_apart_from_other_sigkills() {
    if !required("root (to make a memory cgroup)", is_root()) || !has_python() {
        return;
    }
    let name = format!("lastcall-it-oom-{}", std::process::id());
    // As root, a memory cgroup must work: this test exists to show OOM kills are seen.
    let cgroup = MemoryCgroup::create(&name, 64 << 20)
        .unwrap_or_else(|why| panic!("no memory cgroup to run lastcall in: {why}"));
    let dir = TestDir::new("oom");
    // First a grandchild (an orphan, so lastcall reaps it) is OOM-killed while the child
    // lives on; then, on `go`, the child itself.
    let child = r#"echo 1000 > /proc/self/oom_score_adj
( "$PY" -c "$HOG" & )
mark first; await go; exec "$PY" -c "$HOG""#;
    let (mut lastcall, port) = in_cgroup(&dir, &cgroup, child, "first");
    lastcall.wait_until("lastcall counts the OOM kill", || {
        metric(port, "lastcall_oom_kills_total") == Some(1.0)
    });
    let said = "was killed by the kernel's OOM killer (memory limit 64 MiB)";
    lastcall.wait_stderr(said);
    dir.write("go", "");
    let out = lastcall.wait();
    out.assert_code(137);
    for who in ["lastcall: process ", "lastcall: child "] {
        let told = out.stderr.lines().any(|l| l.starts_with(who) && l.ends_with(said));
        out.check(told, format!("expected a line `{who}N {said}`"));
    }
    out.check(!dir.exists("survived"), "the hog survived: the limit did not hold");
    let message = dir.read("termination-log");
    out.check(
        message == "child killed by the kernel's OOM killer (memory limit 64 MiB)",
        format!("termination message {message:?}"),
    );
    drop(cgroup);
}

#[test]
fn a_kill_the_app_reaped_itself_is_not_laid_on_a_later_sigkill() {
    if !required("root (to make a memory cgroup)", is_root()) || !has_python() {
        return;
    }
    let name = format!("lastcall-it-oom-reaped-{}", std::process::id());
    let cgroup = MemoryCgroup::create(&name, 64 << 20)
        .unwrap_or_else(|why| panic!("no memory cgroup to run lastcall in: {why}"));
    let dir = TestDir::new("oom_reaped");
    // The app's worker is OOM-killed and reaped by the app (no SIGCHLD for lastcall); the
    // app lives on until an operator's `kill -9`.
    let child = r#"echo 1000 > /proc/self/oom_score_adj
"$PY" -c "$HOG"; mark reaped; idle"#;
    let (lastcall, port) = in_cgroup(&dir, &cgroup, child, "reaped");
    // A probe, as the platform sends them: lastcall wakes and reads the counter.
    assert_eq!(probe(port, "/livez", Duration::from_secs(5)), Some(200));
    std::thread::sleep(Duration::from_secs(2));
    let app = children_of(lastcall.pid());
    assert_eq!(app.len(), 1, "lastcall's one child: {app:?}");
    send(app[0], libc::SIGKILL);
    let out = lastcall.wait();
    out.assert_code(137);
    out.check(!dir.exists("survived"), "the hog survived: the limit did not hold");
    let message = dir.read("termination-log");
    out.check(message == "child killed by SIGKILL", format!("termination message {message:?}"));
    out.assert_stderr_has(
        "the kernel's OOM killer killed 1 other process(es) in lastcall's memory cgroup",
    );
    drop(cgroup);
}

#[test]
fn a_plain_sigkill_is_not_taken_for_an_oom_kill() {
    let dir = TestDir::new("not_oom");
    let log = dir.join("termination-log");
    let out = dir
        .lastcall()
        .args(["--listen", "off", "--termination-log", log.to_str().unwrap()])
        .sh("kill -KILL $$")
        .run();
    out.assert_code(137).assert_stderr_empty();
    let message = dir.read("termination-log");
    out.check(message == "child killed by SIGKILL", format!("termination message {message:?}"));
}

/// A user and a group made for one test with `useradd` and `groupadd`, removed on drop.
struct TestUser {
    name: String,
    group: String,
}

impl TestUser {
    fn create(tag: &str) -> TestUser {
        let n = std::process::id() % 100_000;
        let user = TestUser { name: format!("lc{tag}u{n}"), group: format!("lc{tag}g{n}") };
        // Leftovers of an earlier run that was killed.
        user.remove();
        run_ok("groupadd", &[&user.group]);
        let home = format!("/nonexistent/home-of-{}", user.name);
        run_ok(
            "useradd",
            &[
                "--no-create-home",
                "--home-dir",
                &home,
                "--user-group",
                "--groups",
                &user.group,
                &user.name,
            ],
        );
        user
    }

    fn remove(&self) {
        for (tool, name) in
            [("userdel", &self.name), ("groupdel", &self.name), ("groupdel", &self.group)]
        {
            let _ = Command::new(tool).arg(name).stderr(Stdio::null()).status();
        }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        self.remove();
    }
}

fn run_ok(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `id -u`, `id -g`, `id -G` of `name` as the host's C library (NSS) sees them.
fn host_ids(name: &str) -> (String, String, Vec<String>) {
    let id = |flag: &str| run_ok("id", &[flag, name]).trim().to_string();
    let groups = id("-G").split(' ').map(str::to_string).collect();
    (id("-u"), id("-g"), groups)
}

#[test]
fn the_child_runs_as_the_user_with_its_groups_and_home() {
    let useradd = Command::new("useradd").arg("--help").stdout(Stdio::null()).status().is_ok();
    if !required("root and useradd (passwd)", is_root() && useradd) {
        return;
    }
    let user = TestUser::create("14");
    let (uid, gid, mut groups) = host_ids(&user.name);
    let extra = run_ok("getent", &["group", &user.group]);
    let extra_gid = extra.split(':').nth(2).expect("a gid").to_string();
    assert!(groups.contains(&extra_gid), "useradd --groups: {groups:?}");
    let dir = TestDir::new("user");
    // What the child is, and who its parent (lastcall) is; on stdout, which the test opened.
    let script =
        r#"id -u; id -g; id -G; echo "$HOME"; awk '/^Uid:/ { print $2 }' /proc/$PPID/status"#;
    let out = dir
        .lastcall()
        .args(["--listen", "off", "--user", &user.name])
        .args(["--", "sh", "-c", script])
        .run();
    out.assert_code(0).assert_stderr_empty();
    let lines: Vec<&str> = out.stdout.lines().collect();
    out.check(lines.len() == 5, "five lines from the child");
    let mut seen: Vec<String> = lines[2].split(' ').map(str::to_string).collect();
    out.check(lines[0] == uid && lines[1] == gid, format!("expected uid {uid}, gid {gid}"));
    out.check(seen[0] == gid, "the primary group first");
    seen.sort();
    groups.sort();
    out.check(seen == groups, format!("expected groups {groups:?}"));
    out.check(
        lines[3] == format!("/nonexistent/home-of-{}", user.name),
        "HOME from the user's entry",
    );
    out.check(lines[4] == "0", "lastcall itself stays root");

    // USER:GROUP, from the environment: that group, and no other.
    let out = dir
        .lastcall()
        .env("LASTCALL_USER", &format!("{}:{}", user.name, user.group))
        .args(["--listen", "off", "--", "sh", "-c", "id -u; id -g; id -G"])
        .run();
    out.assert_code(0);
    let expected = format!("{uid}\n{extra_gid}\n{extra_gid}\n");
    out.check(out.stdout == expected, format!("expected {expected:?}"));
}

#[test]
fn a_user_with_a_group_keeps_none_of_its_other_groups() {
    let useradd = Command::new("useradd").arg("--help").stdout(Stdio::null()).status().is_ok();
    if !required("root and useradd (passwd)", is_root() && useradd) {
        return;
    }
    // The user's own group as GROUP; the other group lists the user as a member.
    let user = TestUser::create("22");
    let (uid, gid, groups) = host_ids(&user.name);
    assert!(groups.len() == 2 && groups.contains(&gid), "useradd --groups: {groups:?}");
    let dir = TestDir::new("user_group");
    let out = dir
        .lastcall()
        .args(["--listen", "off", "--user", &format!("{}:{}", user.name, user.name)])
        .args(["--", "sh", "-c", "id -u; id -g; id -G"])
        .run();
    out.assert_code(0).assert_stderr_empty();
    let expected = format!("{uid}\n{gid}\n{gid}\n");
    out.check(out.stdout == expected, format!("expected {expected:?}: GROUP alone"));
}

#[test]
fn an_unknown_user_is_a_usage_error_and_no_child_starts() {
    let dir = TestDir::new("unknown_user");
    let out = dir
        .lastcall()
        .args(["--listen", "off", "--user", "no-such-user-for-lastcall"])
        .sh("mark ran")
        .run();
    out.assert_code(2);
    let line = out.one_stderr_line();
    let expected = match is_root() {
        true => "lastcall: unknown user 'no-such-user-for-lastcall' (not in /etc/passwd)",
        false => "lastcall: --user needs lastcall to run as root",
    };
    out.check(line.starts_with(expected), format!("expected {expected:?}"));
    out.check(!dir.exists("ran"), "a child was started");
}

#[test]
fn a_lastcall_that_is_not_root_refuses_user() {
    let setpriv = Command::new("setpriv").arg("--version").stdout(Stdio::null()).status().is_ok();
    if !required("root and setpriv (util-linux)", is_root() && setpriv) {
        return;
    }
    let dir = TestDir::new("user_not_root");
    let out = dir
        .command("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", LASTCALL])
        .args(["--listen", "off", "--user", "root"])
        .sh("mark ran")
        .run();
    out.assert_code(2);
    let line = out.one_stderr_line();
    out.check(
        line == "lastcall: --user needs lastcall to run as root (it runs as uid 65534)",
        "expected the root error",
    );
    out.check(!dir.exists("ran"), "a child was started");
}

#[test]
fn a_user_inherits_no_capability_from_lastcall() {
    let setpriv = Command::new("setpriv").arg("--version").stdout(Stdio::null()).status().is_ok();
    if !required("root and setpriv (util-linux)", is_root() && setpriv) {
        return;
    }
    let dir = TestDir::new("user_caps");
    // A copy of cat with CAP_SYS_ADMIN in its inheritable and effective file sets: a process
    // with CAP_SYS_ADMIN inheritable runs it with CAP_SYS_ADMIN effective, whatever its uid.
    let cat = dir.join("cat");
    fs::copy("/bin/cat", &cat).expect("copying cat");
    let mut setcap = Command::new("setcap");
    setcap.arg("cap_sys_admin=ei").arg(&cat).stderr(Stdio::null());
    let program = match setcap.status().is_ok_and(|s| s.success()) {
        true => cat.to_string_lossy().into_owned(),
        false => {
            let _ = writeln!(std::io::stderr(), "setcap failed: the plain cat only");
            "cat".to_string()
        }
    };
    // lastcall started with CAP_SYS_ADMIN inheritable and ambient, as a container runtime
    // may leave them.
    let out = dir
        .command("setpriv")
        .args(["--inh-caps", "+sys_admin", "--ambient-caps", "+sys_admin", "--", LASTCALL])
        .args(["--listen", "off", "--user", "65534:65534", "--", &program, "/proc/self/status"])
        .run();
    out.assert_code(0);
    for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        let line = out.stdout.lines().find(|l| l.starts_with(&format!("{set}:")));
        let value = line.and_then(|l| l.split_whitespace().nth(1));
        out.check(value == Some("0000000000000000"), format!("{set} of the child is empty"));
    }
}
