//! `--user USER[:GROUP]`: who the child runs as, looked up in `/etc/passwd` and `/etc/group`.
//!
//! The files are read directly, not through the C library's NSS: the static binary has no NSS
//! modules, and a `FROM scratch` image has nothing but those two files. The rules follow what
//! Docker's `--user`, Kubernetes' `runAsUser`/`runAsGroup`, gosu and su-exec do, where they
//! agree:
//!
//! - USER and GROUP are each a name or a number. A number is an id, never a name, even if a
//!   user or group is called that.
//! - A numeric USER with no entry is allowed (images run as arbitrary uids): group 0, no
//!   supplementary groups, `HOME=/`. A name with no entry is an error.
//! - A numeric GROUP with no entry is allowed; a group name with no entry is an error.
//! - Without GROUP, the supplementary groups are USER's primary group followed by every group
//!   that lists USER's name as a member. With GROUP, they are GROUP alone, as su-exec sets
//!   them (gosu sets none): whoever names a group means that one, not root's or docker's
//!   besides. The primary group is always among them: without it, a group denied access by
//!   a file's mode (`0705`) would not bind the child (the 2022 container-runtime CVEs,
//!   CVE-2022-36109 among them).
//!
//! Malformed lines are skipped, as the C library skips them; so are NIS `+`/`-` lines and
//! comments. Only the privilege drop itself ([`crate::init::spawn`]) runs in the child.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// What the child runs as: everything `setgroups`, `setgid` and `setuid` need, prepared
/// before the fork.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// The supplementary groups, the primary one first, without duplicates.
    pub groups: Vec<libc::gid_t>,
    /// The home directory from the user's entry; none for a numeric user without one.
    pub home: Option<PathBuf>,
    /// The user's name, or the number as given when it has no entry (for messages).
    pub name: String,
}

impl Credentials {
    /// The child's `HOME=` entry: the user's home, or `/` when there is none, as gosu,
    /// su-exec and Docker set it. It replaces lastcall's own `HOME`, which is root's.
    pub fn home_env(&self) -> OsString {
        let mut entry = b"HOME=".to_vec();
        match &self.home {
            Some(home) => entry.extend_from_slice(home.as_os_str().as_encoded_bytes()),
            None => entry.push(b'/'),
        }
        OsString::from_vec(entry)
    }
}

/// One valid line of `/etc/passwd`.
#[derive(Debug, PartialEq, Eq)]
struct PasswdEntry<'a> {
    name: &'a str,
    uid: libc::uid_t,
    gid: libc::gid_t,
    home: &'a str,
}

/// One valid line of `/etc/group`.
#[derive(Debug, PartialEq, Eq)]
struct GroupEntry<'a> {
    name: &'a str,
    gid: libc::gid_t,
    members: &'a str,
}

impl GroupEntry<'_> {
    fn lists(&self, user: &str) -> bool {
        self.members.split(',').any(|member| member == user)
    }
}

/// The lines worth parsing: not blank, not a comment, not a NIS compat entry (`+name`,
/// `-name`), which only NSS's compat module understands. A CRLF file still parses.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .filter(|line| !line.is_empty() && !line.starts_with(['#', '+', '-']))
}

/// An id as the files and the command line write it: decimal digits only. `u32::MAX` is
/// `(uid_t)-1`, which the set*id calls take as "leave unchanged", so it is no id.
fn parse_id(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|&id| id != u32::MAX)
}

/// `name:password:uid:gid:gecos:home:shell`; None for a malformed line.
fn parse_passwd_line(line: &str) -> Option<PasswdEntry<'_>> {
    let fields: Vec<&str> = line.split(':').collect();
    let [name, _password, uid, gid, _gecos, home, _shell] = fields[..] else {
        return None;
    };
    if name.is_empty() {
        return None;
    }
    Some(PasswdEntry { name, uid: parse_id(uid)?, gid: parse_id(gid)?, home })
}

/// `name:password:gid:member,member`; None for a malformed line.
fn parse_group_line(line: &str) -> Option<GroupEntry<'_>> {
    let fields: Vec<&str> = line.split(':').collect();
    let [name, _password, gid, members] = fields[..] else {
        return None;
    };
    if name.is_empty() {
        return None;
    }
    Some(GroupEntry { name, gid: parse_id(gid)?, members })
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    lines(passwd).filter_map(parse_passwd_line)
}

fn group_entries(group: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    lines(group).filter_map(parse_group_line)
}

/// Where the two files are, relative to `root` (`/` but in tests).
pub struct Files {
    pub passwd: PathBuf,
    pub group: PathBuf,
}

impl Files {
    pub fn under(root: &Path) -> Files {
        Files { passwd: root.join("etc/passwd"), group: root.join("etc/group") }
    }
}

/// Resolves `USER[:GROUP]` against the contents of the two files. `files` only names them
/// in messages. The first matching entry wins, as in the C library.
pub fn resolve(
    spec: &str,
    passwd: &str,
    group: &str,
    files: &Files,
) -> Result<Credentials, String> {
    let (user, group_spec) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group).filter(|g| !g.is_empty())),
        None => (spec, None),
    };
    if user.is_empty() {
        return Err(format!("--user '{spec}': no user given"));
    }
    let entry = match parse_id(user) {
        Some(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        None if user.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(format!("--user '{spec}': {user} is not a valid uid"));
        }
        None => match passwd_entries(passwd).find(|e| e.name == user) {
            Some(entry) => Some(entry),
            None => {
                let path = files.passwd.display();
                return Err(format!("unknown user '{user}' (not in {path})"));
            }
        },
    };
    let gid = match group_spec {
        None => entry.as_ref().map_or(0, |e| e.gid),
        Some(name_or_id) => match parse_id(name_or_id) {
            Some(gid) => gid,
            None if name_or_id.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(format!("--user '{spec}': {name_or_id} is not a valid gid"));
            }
            None => match group_entries(group).find(|g| g.name == name_or_id) {
                Some(g) => g.gid,
                None => {
                    let path = files.group.display();
                    return Err(format!("unknown group '{name_or_id}' (not in {path})"));
                }
            },
        },
    };
    let mut groups = vec![gid];
    if let Some(entry) = entry.as_ref().filter(|_| group_spec.is_none()) {
        for g in group_entries(group).filter(|g| g.lists(entry.name)) {
            if !groups.contains(&g.gid) {
                groups.push(g.gid);
            }
        }
    }
    Ok(Credentials {
        uid: entry.as_ref().map_or_else(|| parse_id(user).unwrap_or(0), |e| e.uid),
        gid,
        groups,
        home: entry.as_ref().filter(|e| !e.home.is_empty()).map(|e| PathBuf::from(e.home)),
        name: entry.as_ref().map_or(user, |e| e.name).to_string(),
    })
}

/// The files are small; anything larger than this is not a user database.
const MAX_FILE: u64 = 16 << 20;

/// Reads one of the files; a missing one reads as empty (a numeric user still resolves),
/// any other failure is an error.
fn read_db(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut bytes = Vec::new();
    file.take(MAX_FILE)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    // A stray non-UTF-8 byte spoils only its own line: it can match no name given as UTF-8.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Resolves `USER[:GROUP]` against `root`'s `/etc/passwd` and `/etc/group` (root is `/` but
/// in tests).
pub fn lookup(spec: &str, root: &Path) -> Result<Credentials, String> {
    let files = Files::under(root);
    let passwd = read_db(&files.passwd)?;
    let group = read_db(&files.group)?;
    resolve(spec, &passwd, &group, &files)
}

/// Only root can switch users; `euid` is lastcall's effective uid.
pub fn check_can_switch(euid: libc::uid_t) -> Result<(), String> {
    match euid {
        0 => Ok(()),
        _ => Err(format!("--user needs lastcall to run as root (it runs as uid {euid})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
# a comment line
root:x:0:0:root:/root:/bin/bash

daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:The App,,,:/home/app:/bin/sh
broken line without colons
short:x:1001:1001
baduid:x:12a:1001::/home/baduid:/bin/sh
:x:1002:1002::/nameless:/bin/sh
+nisuser:x:2000:2000::/home/nis:/bin/sh
-excluded::::::
+
nohome:x:1003:1003:::/bin/sh
app:x:1999:1999:second app, ignored:/home/app2:/bin/sh
crlf:x:1004:1004::/home/crlf:/bin/sh\r
";

    const GROUP: &str = "\
root:x:0:
daemon:x:1:
app:x:1000:
web:x:33:app,daemon
audio:x:29:someone,app
# staff:x:50:app
broken:x:
+nisgroup:x:3000:app
-:x:3001:app
also:x:34:app
dup:x:33:app
named1000:x:5000:
";

    fn files() -> Files {
        Files::under(Path::new("/"))
    }

    fn resolve_spec(spec: &str) -> Result<Credentials, String> {
        resolve(spec, PASSWD, GROUP, &files())
    }

    #[test]
    fn user_by_name_gets_its_entry_and_member_groups() {
        let c = resolve_spec("app").unwrap();
        assert_eq!(
            c,
            Credentials {
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 33, 29, 34],
                home: Some("/home/app".into()),
                name: "app".into(),
            }
        );
        assert_eq!(c.home_env(), "HOME=/home/app");
    }

    #[test]
    fn user_by_number_with_an_entry_is_that_entry() {
        let c = resolve_spec("1000").unwrap();
        assert_eq!((c.uid, c.gid, c.name.as_str()), (1000, 1000, "app"));
        assert_eq!(c.groups, [1000, 33, 29, 34]);
        let root = resolve_spec("0").unwrap();
        assert_eq!((root.uid, root.gid, root.groups), (0, 0, vec![0]));
    }

    #[test]
    fn user_by_number_without_an_entry_runs_with_group_0_and_home_slash() {
        let c = resolve_spec("4242").unwrap();
        assert_eq!(
            c,
            Credentials { uid: 4242, gid: 0, groups: vec![0], home: None, name: "4242".into() }
        );
        assert_eq!(c.home_env(), "HOME=/");
        let c = resolve_spec("4242:4343").unwrap();
        assert_eq!((c.uid, c.gid, c.groups), (4242, 4343, vec![4343]));
        let c = resolve_spec("4242:web").unwrap();
        assert_eq!((c.gid, c.groups), (33, vec![33]));
    }

    #[test]
    fn user_and_group_by_name_and_number() {
        let c = resolve_spec("app:web").unwrap();
        assert_eq!((c.uid, c.gid), (1000, 33));
        assert_eq!(c.groups, [33], "GROUP alone, not the others listing app");
        let c = resolve_spec("app:7777").unwrap();
        assert_eq!((c.gid, c.groups), (7777, vec![7777]));
        let c = resolve_spec("app:app").unwrap();
        assert_eq!((c.gid, c.groups), (1000, vec![1000]), "its own group, still alone");
        let c = resolve_spec("1:1000").unwrap();
        assert_eq!((c.uid, c.gid, c.name.as_str()), (1, 1000, "daemon"));
        assert_eq!(c.groups, [1000], "not web, which lists daemon");
        assert_eq!(c.home, Some("/usr/sbin".into()));
        // An empty GROUP is no GROUP, as gosu and su-exec read it.
        assert_eq!(resolve_spec("app:").unwrap(), resolve_spec("app").unwrap());
    }

    #[test]
    fn numbers_are_ids_never_names() {
        let passwd = "1234:x:77:77::/home/odd:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
        let group = "5000:x:6000:app\n";
        let c = resolve("1234", passwd, group, &files()).unwrap();
        assert_eq!((c.uid, c.gid, c.home), (1234, 0, None), "not the user named 1234");
        let c = resolve("app:5000", passwd, group, &files()).unwrap();
        assert_eq!((c.gid, c.groups), (5000, vec![5000]), "not the group named 5000");
    }

    #[test]
    fn unknown_names_are_one_line_errors() {
        assert_eq!(
            resolve_spec("nobody").unwrap_err(),
            "unknown user 'nobody' (not in /etc/passwd)"
        );
        assert_eq!(
            resolve_spec("app:nogroup").unwrap_err(),
            "unknown group 'nogroup' (not in /etc/group)"
        );
        assert_eq!(resolve_spec("").unwrap_err(), "--user '': no user given");
        assert_eq!(resolve_spec(":web").unwrap_err(), "--user ':web': no user given");
        assert_eq!(
            resolve_spec("4294967295").unwrap_err(),
            "--user '4294967295': 4294967295 is not a valid uid"
        );
        assert!(resolve_spec("99999999999999999999").unwrap_err().contains("not a valid uid"));
        assert!(resolve_spec("app:4294967295").unwrap_err().contains("not a valid gid"));
        for err in [resolve_spec("nobody").unwrap_err(), resolve_spec("app:x").unwrap_err()] {
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn malformed_comment_and_nis_lines_are_skipped() {
        // Each of these names is only on a skipped line.
        for name in ["short", "baduid", "+nisuser", "nisuser", "-excluded", "excluded", "broken"] {
            assert!(resolve_spec(name).is_err(), "{name} resolved");
        }
        for group in ["staff", "broken", "nisgroup", "+nisgroup"] {
            assert!(resolve_spec(&format!("app:{group}")).is_err(), "{group} resolved");
        }
        assert!(!resolve_spec("app").unwrap().groups.contains(&50), "commented-out group");
        assert!(!resolve_spec("app").unwrap().groups.contains(&3000), "NIS group");
        // A nameless line is skipped; uid 1002 then has no entry.
        assert_eq!(resolve_spec("1002").unwrap().home, None);
    }

    #[test]
    fn first_entry_wins_and_odd_fields_parse() {
        assert_eq!(resolve_spec("app").unwrap().uid, 1000);
        assert_eq!(resolve_spec("nohome").unwrap().home_env(), "HOME=/");
        assert_eq!(resolve_spec("crlf").unwrap().home, Some("/home/crlf".into()));
        // Two groups with gid 33 list app: it appears once.
        assert_eq!(resolve_spec("app").unwrap().groups.iter().filter(|&&g| g == 33).count(), 1);
    }

    #[test]
    fn huge_lines_and_garbage_neither_panic_nor_match() {
        let huge_name = "a".repeat(1 << 20);
        let passwd = format!(
            "{huge_name}:x:5:5::/h:/bin/sh\n{}\napp:x:7:7::/h:/bin/sh\n",
            ":".repeat(100_000)
        );
        let group = format!("g:x:9:{}\n", vec!["m"; 100_000].join(","));
        let c = resolve("app", &passwd, &group, &files()).unwrap();
        assert_eq!((c.uid, c.groups), (7, vec![7]));
        assert_eq!(resolve(&huge_name, &passwd, &group, &files()).unwrap().uid, 5);
        for text in
            ["", ":", "::::::", "\n\n\n", "a:b:c:d:e:f:g:h", "\u{0}:x:1:1::/:/", "é:x:1:1::/:/"]
        {
            let _ = resolve("é", text, text, &files());
            let _ = resolve("1", text, text, &files());
        }
    }

    #[test]
    fn lookup_reads_the_files_under_a_root() {
        let root = std::env::temp_dir().join(format!("lastcall-users-{}", std::process::id()));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(root.join("etc/group"), GROUP).unwrap();
        let c = lookup("app:web", &root).unwrap();
        assert_eq!((c.uid, c.gid), (1000, 33));
        let err = lookup("ghost", &root).unwrap_err();
        assert_eq!(err, format!("unknown user 'ghost' (not in {}/etc/passwd)", root.display()));
        // Without the files (a bare FROM scratch image), numbers still resolve, names do not.
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        std::fs::remove_file(root.join("etc/group")).unwrap();
        assert_eq!(lookup("1000:1000", &root).unwrap().groups, [1000]);
        assert!(lookup("app", &root).unwrap_err().starts_with("unknown user 'app'"));
        // A directory where the file should be is an error, not an empty database.
        std::fs::create_dir(root.join("etc/passwd")).unwrap();
        assert!(lookup("app", &root).unwrap_err().starts_with("cannot read "));
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A requirement a test cannot do without: skipped with a message on a developer's
    /// machine, a failure in CI (`CI` set), as the integration tests do it.
    fn required(what: &str, met: bool) -> bool {
        use std::io::Write;
        if met {
            return true;
        }
        assert!(std::env::var_os("CI").is_none(), "CI is set, and this test needs {what}");
        // Straight to stderr: libtest hides what a passing test prints.
        let _ = writeln!(std::io::stderr(), "skipped: this test needs {what}");
        false
    }

    /// Runs `script` through `spawn` as `user` and returns what it wrote to `$OUT`.
    fn run_as(user: Credentials, script: &str) -> Result<String, crate::init::spawn::SpawnError> {
        use std::os::unix::fs::PermissionsExt;
        static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lastcall-drop-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // The child writes here after dropping root.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let out = dir.join("out");
        let mut env: Vec<OsString> = vec![user.home_env(), "PATH=/usr/bin:/bin".into()];
        env.push(format!("OUT={}", out.display()).into());
        let argv: Vec<OsString> = vec!["sh".into(), "-c".into(), script.into()];
        let options = crate::init::spawn::Options {
            env: Some(env),
            quiet: true,
            user: Some(user),
            ..crate::init::spawn::Options::default()
        };
        let result = crate::init::spawn::spawn(&argv, &options).map(|pid| {
            // Only this child: other tests' children are theirs to wait for.
            let status = nix::sys::wait::waitpid(pid, None).unwrap();
            assert_eq!(status, nix::sys::wait::WaitStatus::Exited(pid, 0));
            std::fs::read_to_string(&out).unwrap()
        });
        std::fs::remove_dir_all(&dir).unwrap();
        // A child that failed before exec stays a zombie until the test binary exits: reaping
        // any child here could take another test's.
        result
    }

    #[test]
    fn the_child_runs_as_the_user_with_its_groups_and_home() {
        // SAFETY: plain libc call.
        if !required("root", unsafe { libc::geteuid() } == 0) {
            return;
        }
        let user = Credentials {
            uid: 65534,
            gid: 65533,
            groups: vec![65533, 4242, 4343],
            home: Some("/nonexistent/home".into()),
            name: "nobody".into(),
        };
        let out = run_as(user, r#"{ id -u; id -g; id -G; echo "$HOME"; } > "$OUT""#).unwrap();
        assert_eq!(out, "65534\n65533\n65533 4242 4343\n/nonexistent/home\n");
        // No group of lastcall's (root's) is left over.
        let user = Credentials { uid: 1, gid: 1, groups: vec![1], home: None, name: "x".into() };
        let out = run_as(user, r#"{ id -G; echo "$HOME"; } > "$OUT""#).unwrap();
        assert_eq!(out, "1\n/\n");
    }

    #[test]
    fn a_failed_switch_names_the_user_and_the_call() {
        use crate::init::spawn::SpawnError;
        // SAFETY: plain libc call.
        if !required("root", unsafe { libc::geteuid() } == 0) {
            return;
        }
        // Even root cannot take (uid_t)-1, nor more than NGROUPS_MAX (65536) groups.
        let valid = Credentials { uid: 1, gid: 1, groups: vec![1], home: None, name: "app".into() };
        let cases = [
            (Credentials { groups: vec![1; 65537], ..valid.clone() }, "setgroups"),
            (Credentials { gid: u32::MAX, ..valid.clone() }, "setgid"),
            (Credentials { uid: u32::MAX, ..valid.clone() }, "setuid"),
        ];
        for (user, call) in cases {
            let err = run_as(user, "exit 3").unwrap_err();
            assert!(
                matches!(&err, SpawnError::User { call: c, .. } if *c == call),
                "{call}: {err:?}"
            );
            assert_eq!(
                err.to_string(),
                format!("cannot switch to user 'app': {call}: Invalid argument")
            );
            assert_eq!(crate::init::fatal::Fatal::Spawn(err).exit_code(), 126);
        }
        // An exec failure still reads as one.
        let err = crate::init::spawn::spawn(
            &["/nonexistent/program".into()],
            &crate::init::spawn::Options { user: Some(valid), quiet: true, ..Default::default() },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "cannot run '/nonexistent/program': No such file or directory");
        assert_eq!(crate::init::fatal::Fatal::Spawn(err).exit_code(), 127);
    }

    #[test]
    fn only_root_can_switch() {
        assert!(check_can_switch(0).is_ok());
        assert_eq!(
            check_can_switch(1000).unwrap_err(),
            "--user needs lastcall to run as root (it runs as uid 1000)"
        );
    }
}
