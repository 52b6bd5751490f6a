//! The examples in `packaging/` agree with lastcall: the Kubernetes Deployment's and the
//! systemd units' stop limits cover lastcall's whole stop (preStop delay + grace period + a
//! margin), the probes point at lastcall's endpoint, and the flags and variables the examples
//! give lastcall are ones it accepts (the real binary is run with them).
//!
//! The files are ours, so a few small readers below take the bits of YAML and unit-file
//! syntax they use, and fail loudly on anything else. Each check returns its problems, so
//! that a broken copy of an example can be shown to fail.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use crate::support::{LASTCALL, TestDir};

/// What a platform's stop limit must leave beyond lastcall's own stop.
const MARGIN: Duration = Duration::from_secs(5);
/// `--prestop-delay auto` in Kubernetes, and at most elsewhere (once /readyz was probed).
const AUTO_PRESTOP: Duration = Duration::from_secs(5);
/// The kubelet's defaults when a field is left out.
const K8S_GRACE_DEFAULT: u64 = 30;
const PROBE_PERIOD_DEFAULT: u64 = 10;
const PROBE_FAILURES_DEFAULT: u64 = 3;
/// systemd's DefaultTimeoutStopSec.
const SYSTEMD_STOP_DEFAULT: Duration = Duration::from_secs(90);

fn packaging(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[track_caller]
fn assert_no_problems(what: &str, problems: Vec<String>) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

#[track_caller]
fn assert_problem(what: &str, problems: Vec<String>, needle: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "{what}: expected a problem about {needle:?}, got {problems:?}"
    );
}

// ---------------------------------------------------------------------------------------
// What an example tells lastcall.

/// lastcall's flags (before `--`), its `LASTCALL_*` variables, and the command it runs.
struct Invocation {
    flags: Vec<String>,
    env: Vec<(String, String)>,
    command: Vec<String>,
}

impl Invocation {
    /// `argv` starts with lastcall itself.
    fn new(argv: &[String], env: Vec<(String, String)>) -> Invocation {
        let rest = argv.get(1..).unwrap_or_default();
        let (flags, command) = match rest.iter().position(|a| a == "--") {
            Some(i) => (rest[..i].to_vec(), rest[i + 1..].to_vec()),
            None => (Vec::new(), rest.to_vec()),
        };
        Invocation { flags, env, command }
    }

    /// An option's value: the flag wins, then the variable, then lastcall's default.
    fn value(&self, long: &str, var: &str) -> Option<String> {
        let flag = format!("--{long}");
        let mut found = None;
        for (i, arg) in self.flags.iter().enumerate() {
            if *arg == flag {
                found = self.flags.get(i + 1).cloned();
            } else if let Some(v) = arg.strip_prefix(&format!("{flag}=")) {
                found = Some(v.to_string());
            }
        }
        found
            .or_else(|| self.env.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone()))
            .or_else(|| help_default(long))
    }

    fn grace(&self) -> Result<Duration, String> {
        let text = self.value("grace-period", "LASTCALL_GRACE_PERIOD").unwrap_or_default();
        humantime::parse_duration(&text).map_err(|e| format!("grace period {text:?}: {e}"))
    }

    /// The preStop delay, `auto` as it is in Kubernetes or, elsewhere, at its longest.
    fn prestop(&self) -> Result<Duration, String> {
        match self.value("prestop-delay", "LASTCALL_PRESTOP_DELAY").unwrap_or_default() {
            text if text.eq_ignore_ascii_case("auto") => Ok(AUTO_PRESTOP),
            text => {
                humantime::parse_duration(&text).map_err(|e| format!("preStop delay {text:?}: {e}"))
            }
        }
    }

    /// The endpoint's port, `None` for `--listen off`.
    fn port(&self) -> Result<Option<u16>, String> {
        let text = self.value("listen", "LASTCALL_LISTEN").unwrap_or_default();
        if text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let port = text.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
        port.map(Some).ok_or_else(|| format!("no port in the listen address {text:?}"))
    }

    /// The stop limit a platform needs: preStop delay + grace period + margin.
    fn stop_needs(&self) -> Result<Duration, String> {
        Ok(self.prestop()? + self.grace()? + MARGIN)
    }

    /// Every value an option is given, by flag and by (comma-listed) variable.
    fn values(&self, long: &str, var: &str) -> Vec<String> {
        let flag = format!("--{long}");
        let mut found = Vec::new();
        for (i, arg) in self.flags.iter().enumerate() {
            if *arg == flag {
                found.extend(self.flags.get(i + 1).cloned());
            } else if let Some(v) = arg.strip_prefix(&format!("{flag}=")) {
                found.push(v.to_string());
            }
        }
        for (_, v) in self.env.iter().filter(|(k, _)| k == var) {
            found.extend(v.split(',').map(str::to_string));
        }
        found
    }

    /// Whether lastcall waits for a dependency before starting the app.
    fn waits(&self) -> bool {
        !self.values("wait-for", "LASTCALL_WAIT_FOR").is_empty()
            || !self.values("wait-for-exec", "LASTCALL_WAIT_FOR_EXEC").is_empty()
    }

    /// Runs the real lastcall with these flags and variables around `true` (the endpoint
    /// off, so that no port is taken): they must be accepted. An example that waits for a
    /// sidecar, which is not here, is run with a short `--wait-timeout` (its own is checked
    /// apart) and must end as a wait that ran out does.
    fn accepted(&self) -> Result<(), String> {
        let dir = TestDir::new("packaging");
        let mut cmd = dir.lastcall();
        let mut skip = false;
        let replaced = ["--listen", "--wait-timeout"];
        for arg in &self.flags {
            if std::mem::take(&mut skip) {
                continue;
            }
            if replaced.contains(&arg.as_str()) {
                skip = true;
            } else if !replaced.iter().any(|r| arg.starts_with(&format!("{r}="))) {
                cmd = cmd.arg(arg);
            }
        }
        let replaced = ["LASTCALL_LISTEN", "LASTCALL_WAIT_TIMEOUT"];
        for (key, value) in self.env.iter().filter(|(k, _)| !replaced.contains(&k.as_str())) {
            cmd = cmd.env(key, value);
        }
        let timeout = self.value("wait-timeout", "LASTCALL_WAIT_TIMEOUT").unwrap_or_default();
        humantime::parse_duration(&timeout)
            .map_err(|e| format!("wait timeout {timeout:?}: {e}"))?;
        let out = cmd.args(["--listen", "off", "--wait-timeout", "100ms", "--", "true"]).run();
        match out.code() {
            Some(0) if !self.waits() => Ok(()),
            Some(124) if self.waits() && out.stderr.contains("never came up") => Ok(()),
            _ => Err(format!("lastcall does not accept the example's settings:\n{out}")),
        }
    }
}

/// An option's `[default: ...]` in `lastcall --help`: the examples are checked against the
/// binary's own defaults.
fn help_default(long: &str) -> Option<String> {
    static HELP: OnceLock<String> = OnceLock::new();
    let help = HELP.get_or_init(|| {
        let out = std::process::Command::new(LASTCALL).arg("--help").output().expect("--help");
        String::from_utf8(out.stdout).expect("--help is UTF-8")
    });
    let line = help.lines().find(|l| l.trim_start().starts_with(&format!("--{long} ")))?;
    let start = line.find("[default: ")? + "[default: ".len();
    let end = start + line[start..].find(']')?;
    Some(line[start..end].to_string())
}

#[test]
fn help_gives_the_defaults_the_checks_rely_on() {
    assert_eq!(help_default("grace-period").as_deref(), Some("20s"));
    assert_eq!(help_default("prestop-delay").as_deref(), Some("auto"));
    assert_eq!(help_default("listen").as_deref(), Some("0.0.0.0:9753"));
    assert_eq!(help_default("group"), None);
}

// ---------------------------------------------------------------------------------------
// The bit of YAML the Deployment uses: block maps and lists, flow lists of scalars, quoted
// and plain scalars, comments.

#[derive(Debug, Clone, PartialEq)]
enum Yaml {
    Map(Vec<(String, Yaml)>),
    List(Vec<Yaml>),
    Str(String),
}

impl Yaml {
    fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Follows a dotted path of map keys.
    fn at(&self, path: &str) -> Option<&Yaml> {
        path.split('.').try_fold(self, |node, key| node.get(key))
    }

    fn str(&self) -> Option<&str> {
        match self {
            Yaml::Str(s) => Some(s),
            _ => None,
        }
    }

    fn list(&self) -> &[Yaml] {
        match self {
            Yaml::List(items) => items,
            _ => &[],
        }
    }

    fn strings(&self) -> Vec<String> {
        self.list().iter().filter_map(Yaml::str).map(str::to_string).collect()
    }

    fn number(&self, path: &str) -> Option<u64> {
        self.at(path)?.str()?.parse().ok()
    }
}

fn parse_yaml(text: &str) -> Yaml {
    let lines: Vec<(usize, String)> = text
        .lines()
        .map(strip_comment)
        .filter(|l| !l.trim().is_empty() && l.trim() != "---")
        .map(|l| (l.len() - l.trim_start().len(), l.trim().to_string()))
        .collect();
    let mut pos = 0;
    let doc = yaml_block(&lines, &mut pos, 0);
    assert_eq!(pos, lines.len(), "unexpected YAML at {:?}", lines.get(pos));
    doc
}

/// The line without a `#` comment (a `#` outside quotes, at the start or after a space).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '#') if prev == ' ' => return &line[..i],
            _ => {}
        }
        prev = c;
    }
    line
}

fn yaml_block(lines: &[(usize, String)], pos: &mut usize, indent: usize) -> Yaml {
    if lines[*pos].1.starts_with("- ") {
        let mut items = Vec::new();
        while *pos < lines.len() && lines[*pos].0 == indent && lines[*pos].1.starts_with("- ") {
            // `- key: value` opens a map whose keys line up two columns further in.
            let rest = lines[*pos].1[2..].to_string();
            if rest.contains(": ") || rest.ends_with(':') {
                let mut inner = lines.to_vec();
                inner[*pos] = (indent + 2, rest);
                items.push(yaml_block(&inner, pos, indent + 2));
            } else {
                items.push(yaml_scalar(&rest));
                *pos += 1;
            }
        }
        return Yaml::List(items);
    }
    let mut entries = Vec::new();
    while *pos < lines.len() && lines[*pos].0 == indent && !lines[*pos].1.starts_with("- ") {
        let line = &lines[*pos].1;
        let (key, value) = match line.split_once(": ") {
            Some((k, v)) => (k.to_string(), v.trim().to_string()),
            None => (
                line.strip_suffix(':').unwrap_or_else(|| panic!("not `key: value`: {line}")).into(),
                String::new(),
            ),
        };
        *pos += 1;
        let value = if !value.is_empty() {
            yaml_scalar(&value)
        } else if *pos < lines.len() && lines[*pos].0 > indent {
            let inner = lines[*pos].0;
            yaml_block(lines, pos, inner)
        } else {
            Yaml::Str(String::new())
        };
        entries.push((key, value));
    }
    Yaml::Map(entries)
}

fn yaml_scalar(text: &str) -> Yaml {
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        let items = inner.split(',').map(str::trim).filter(|s| !s.is_empty());
        return Yaml::List(items.map(yaml_scalar).collect());
    }
    let unquoted = ['"', '\'']
        .iter()
        .find_map(|&q| text.strip_prefix(q).and_then(|t| t.strip_suffix(q)))
        .unwrap_or(text);
    Yaml::Str(unquoted.to_string())
}

#[test]
fn yaml_reader() {
    let doc = parse_yaml(
        "a: 1 # one\nb:\n  c: \"x # y\"\n  d: [\"p\", '--', q]\nl:\n  - n: one\n    v: 2\n  - plain\n",
    );
    assert_eq!(doc.number("a"), Some(1));
    assert_eq!(doc.at("b.c").and_then(Yaml::str), Some("x # y"));
    assert_eq!(doc.at("b.d").map(Yaml::strings), Some(vec!["p".into(), "--".into(), "q".into()]));
    let items = doc.at("l").map(Yaml::list).unwrap_or_default();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].number("v"), Some(2));
    assert_eq!(items[1], Yaml::Str("plain".into()));
}

// ---------------------------------------------------------------------------------------
// Kubernetes.

fn deployment_problems(text: &str) -> Vec<String> {
    let doc = parse_yaml(text);
    let mut problems = Vec::new();
    if doc.at("kind").and_then(Yaml::str) != Some("Deployment") {
        problems.push("not a Deployment".to_string());
    }
    let Some(pod) = doc.at("spec.template.spec") else {
        return vec!["no spec.template.spec".to_string()];
    };
    let containers = pod.at("containers").map(Yaml::list).unwrap_or_default();
    let ours: Vec<&Yaml> = containers
        .iter()
        .filter(|c| {
            c.at("command").map(Yaml::strings).unwrap_or_default().first().map(String::as_str)
                == Some("lastcall")
        })
        .collect();
    let [container] = ours[..] else {
        return vec![format!(
            "expected one container whose command is lastcall, found {}",
            ours.len()
        )];
    };
    let lastcall = invocation(container);
    if lastcall.command.is_empty() {
        problems.push("no app after `lastcall --`".to_string());
    }
    if container.at("lifecycle.preStop").is_some() {
        problems.push("a preStop hook: lastcall waits the preStop delay itself".to_string());
    }

    let (prestop, needs) = match (lastcall.prestop(), lastcall.stop_needs()) {
        (Ok(p), Ok(n)) => (p, n),
        (Err(e), _) | (_, Err(e)) => return vec![e],
    };
    let limit = Duration::from_secs(
        pod.number("terminationGracePeriodSeconds").unwrap_or(K8S_GRACE_DEFAULT),
    );
    if limit < needs {
        problems.push(format!(
            "terminationGracePeriodSeconds is {}s, less than preStop delay + grace period + margin = {}s",
            limit.as_secs(),
            needs.as_secs()
        ));
    }

    let port = match lastcall.port() {
        Ok(Some(port)) => port,
        Ok(None) => return vec!["the endpoint is off, but the probes need it".to_string()],
        Err(e) => return vec![e],
    };
    let named_ports = container.at("ports").map(Yaml::list).unwrap_or_default();
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/livez")] {
        let Some(get) = container.at(&format!("{probe}.httpGet")) else {
            problems.push(format!("no {probe}.httpGet"));
            continue;
        };
        if get.at("path").and_then(Yaml::str) != Some(path) {
            problems.push(format!("{probe} does not ask {path}"));
        }
        let probe_port = get.at("port").and_then(Yaml::str).unwrap_or_default();
        let probe_port = probe_port.parse::<u16>().ok().or_else(|| {
            let named = named_ports
                .iter()
                .find(|p| p.at("name").and_then(Yaml::str) == Some(probe_port))?;
            named.number("containerPort").and_then(|n| u16::try_from(n).ok())
        });
        if probe_port != Some(port) {
            problems.push(format!("{probe} is not on lastcall's port {port}"));
        }
    }
    // The readiness probe should see the 503 before the stop signal goes to the app.
    let period = container.number("readinessProbe.periodSeconds").unwrap_or(PROBE_PERIOD_DEFAULT);
    let failures =
        container.number("readinessProbe.failureThreshold").unwrap_or(PROBE_FAILURES_DEFAULT);
    if Duration::from_secs(period * failures) > prestop {
        problems.push(format!(
            "the readiness probe needs {}s to see the drain, longer than the preStop delay {}s",
            period * failures,
            prestop.as_secs()
        ));
    }
    // lastcall writes why it ended where the kubelet reads it (in a pod, the default file
    // exists), and a usage error, which writes nothing, still shows.
    let read_at = container.at("terminationMessagePath").and_then(Yaml::str);
    let read_at = read_at.unwrap_or("/dev/termination-log");
    // The default, as --help gives it: "/dev/termination-log if it exists, else off".
    let written_at = lastcall.value("termination-log", "LASTCALL_TERMINATION_LOG");
    let written_at = written_at.map(|w| match w.split_once(" if it exists") {
        Some((path, _)) => path.to_string(),
        None => w,
    });
    if written_at.as_deref() != Some(read_at) {
        problems.push(format!(
            "lastcall writes its termination message to {written_at:?}, the kubelet reads {read_at}"
        ));
    }
    let policy = container.at("terminationMessagePolicy").and_then(Yaml::str);
    if policy != Some("FallbackToLogsOnError") {
        problems.push(
            "terminationMessagePolicy is not FallbackToLogsOnError: a bad command line (exit 2) \
             writes no termination message, so none would show"
                .to_string(),
        );
    }
    if let Err(e) = lastcall.accepted() {
        problems.push(e);
    }
    problems
}

/// The containers of `pod` whose command is lastcall.
fn lastcall_containers(pod: &Yaml) -> Vec<&Yaml> {
    let containers = pod.at("containers").map(Yaml::list).unwrap_or_default();
    containers
        .iter()
        .filter(|c| {
            c.at("command").map(Yaml::strings).unwrap_or_default().first().map(String::as_str)
                == Some("lastcall")
        })
        .collect()
}

/// What lastcall is told in `container`.
fn invocation(container: &Yaml) -> Invocation {
    let mut argv = container.at("command").map(Yaml::strings).unwrap_or_default();
    argv.extend(container.at("args").map(Yaml::strings).unwrap_or_default());
    let env: Vec<(String, String)> = container
        .at("env")
        .map(Yaml::list)
        .unwrap_or_default()
        .iter()
        .filter_map(|e| Some((e.at("name")?.str()?.to_string(), e.at("value")?.str()?.to_string())))
        .collect();
    Invocation::new(&argv, env)
}

/// The URLs lastcall waits for and calls at the end must be on the pod's loopback, on a port
/// another container of the pod (the sidecar) declares.
fn sidecar_problems(pod: &Yaml, lastcall: &Invocation) -> Vec<String> {
    let containers = pod.at("containers").map(Yaml::list).unwrap_or_default();
    let theirs: Vec<u64> = containers
        .iter()
        .filter(|c| {
            c.at("command").map(Yaml::strings).unwrap_or_default().first().map(String::as_str)
                != Some("lastcall")
        })
        .flat_map(|c| c.at("ports").map(Yaml::list).unwrap_or_default())
        .filter_map(|p| p.number("containerPort"))
        .collect();
    let mut problems = Vec::new();
    let urls = [("wait-for", "LASTCALL_WAIT_FOR"), ("on-exit", "LASTCALL_ON_EXIT")];
    for (long, var) in urls {
        for url in lastcall.values(long, var) {
            let authority =
                url.split("://").nth(1).unwrap_or_default().split('/').next().unwrap_or_default();
            let (host, port) = authority.rsplit_once(':').unwrap_or((authority, ""));
            if host != "127.0.0.1" && host != "localhost" {
                problems.push(format!("--{long} {url} is not on the pod's loopback"));
            }
            if !port.parse::<u64>().is_ok_and(|p| theirs.contains(&p)) {
                problems.push(format!("--{long} {url}: no other container declares port {port:?}"));
            }
        }
    }
    problems
}

fn job_problems(text: &str) -> Vec<String> {
    let doc = parse_yaml(text);
    let mut problems = Vec::new();
    if doc.at("kind").and_then(Yaml::str) != Some("Job") {
        problems.push("not a Job".to_string());
    }
    let Some(pod) = doc.at("spec.template.spec") else {
        return vec!["no spec.template.spec".to_string()];
    };
    if !matches!(pod.at("restartPolicy").and_then(Yaml::str), Some("Never" | "OnFailure")) {
        problems.push("a Job's restartPolicy is Never or OnFailure".to_string());
    }
    let [container] = lastcall_containers(pod)[..] else {
        return vec!["expected one container whose command is lastcall".to_string()];
    };
    let lastcall = invocation(container);
    if lastcall.command.is_empty() {
        problems.push("no app after `lastcall --`".to_string());
    }
    if lastcall.values("on-exit", "LASTCALL_ON_EXIT").is_empty() {
        problems.push("no --on-exit: the sidecar would keep the Job from completing".to_string());
    }
    problems.extend(sidecar_problems(pod, &lastcall));
    if let Err(e) = lastcall.accepted() {
        problems.push(e);
    }
    problems
}

#[test]
fn kubernetes_job_with_a_proxy_is_consistent() {
    let text = packaging("kubernetes/job-with-proxy.yaml");
    assert_no_problems("packaging/kubernetes/job-with-proxy.yaml", job_problems(&text));
    let elsewhere = text.replace("127.0.0.1:15020/quitquitquit", "127.0.0.1:15999/quitquitquit");
    assert_ne!(elsewhere, text, "the example's quit URL changed: update this test");
    assert_problem("a quit URL on no sidecar's port", job_problems(&elsewhere), "15999");
    let forever = text.replace("restartPolicy: Never", "restartPolicy: Always");
    assert_problem("a Job that restarts", job_problems(&forever), "restartPolicy");
}

/// The problems of a Deployment's lastcall with its sidecar, and whether it waits at all.
fn waiting_problems(text: &str) -> Vec<String> {
    let doc = parse_yaml(text);
    let Some(pod) = doc.at("spec.template.spec") else {
        return vec!["no spec.template.spec".to_string()];
    };
    let [container] = lastcall_containers(pod)[..] else {
        return vec!["expected one container whose command is lastcall".to_string()];
    };
    let lastcall = invocation(container);
    let mut problems = sidecar_problems(pod, &lastcall);
    if !lastcall.waits() {
        problems.push("lastcall waits for nothing".to_string());
    }
    problems
}

#[test]
fn kubernetes_deployment_waiting_for_its_proxy_is_consistent() {
    let text = packaging("kubernetes/deployment-waits-for-proxy.yaml");
    let what = "packaging/kubernetes/deployment-waits-for-proxy.yaml";
    assert_no_problems(what, deployment_problems(&text));
    assert_no_problems(what, waiting_problems(&text));
    let off = text.replace("127.0.0.1:15021/healthz", "10.0.0.1:15021/healthz");
    assert_ne!(off, text, "the example's --wait-for URL changed: update this test");
    assert_problem("a dependency off the pod", waiting_problems(&off), "loopback");
}

#[test]
fn kubernetes_deployment_is_consistent() {
    let text = packaging("kubernetes/deployment.yaml");
    assert_no_problems("packaging/kubernetes/deployment.yaml", deployment_problems(&text));
}

#[test]
fn kubernetes_checks_catch_a_short_grace_and_a_wrong_probe() {
    let text = packaging("kubernetes/deployment.yaml");
    let short =
        text.replace("terminationGracePeriodSeconds: 35", "terminationGracePeriodSeconds: 20");
    assert_ne!(
        short, text,
        "the example's terminationGracePeriodSeconds changed: update this test"
    );
    assert_problem(
        "a 20s termination grace",
        deployment_problems(&short),
        "terminationGracePeriodSeconds",
    );
    let longer = text.replace("value: \"25s\"", "value: \"40s\"");
    assert_ne!(longer, text, "the example's LASTCALL_GRACE_PERIOD changed: update this test");
    assert_problem(
        "a 40s grace period",
        deployment_problems(&longer),
        "terminationGracePeriodSeconds",
    );
    let wrong = text.replace("path: /livez", "path: /healthz");
    assert_problem("a liveness probe elsewhere", deployment_problems(&wrong), "livenessProbe");
    let file_only = text.replace("FallbackToLogsOnError", "File");
    assert_ne!(file_only, text, "the example's terminationMessagePolicy changed: update this test");
    assert_problem("no fallback to logs", deployment_problems(&file_only), "FallbackToLogsOnError");
    let moved = text.replace(
        "terminationMessagePolicy: FallbackToLogsOnError",
        "terminationMessagePolicy: FallbackToLogsOnError\n          terminationMessagePath: /tmp/why",
    );
    assert_problem("a path lastcall does not write", deployment_problems(&moved), "/tmp/why");
}

// ---------------------------------------------------------------------------------------
// systemd.

/// A unit file: (section, key, value) in order; continuation lines joined.
struct Unit(Vec<(String, String, String)>);

impl Unit {
    fn parse(text: &str) -> Unit {
        let mut entries = Vec::new();
        let mut section = String::new();
        let mut pending = String::new();
        for raw in text.lines() {
            let line = raw.trim();
            if pending.is_empty()
                && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
            {
                continue;
            }
            if let Some(more) = line.strip_suffix('\\') {
                pending.push_str(more);
                pending.push(' ');
                continue;
            }
            let line = std::mem::take(&mut pending) + line;
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_string();
            } else if let Some((key, value)) = line.split_once('=') {
                entries.push((section.clone(), key.trim().to_string(), value.trim().to_string()));
            } else {
                panic!("not `key=value`: {line}");
            }
        }
        Unit(entries)
    }

    /// The last value set for the key (as systemd reads most settings).
    fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.all(section, key).last().copied()
    }

    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }
}

/// systemd's time span: a plain number is seconds.
fn timespan(text: &str) -> Result<Duration, String> {
    if text == "infinity" {
        return Ok(Duration::MAX);
    }
    match text.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(text).map_err(|e| format!("time span {text:?}: {e}")),
    }
}

fn service_problems(text: &str) -> Vec<String> {
    let unit = Unit::parse(text);
    let mut problems = Vec::new();
    if unit.get("Service", "Type") != Some("notify") {
        problems.push("not Type=notify".to_string());
    }
    let argv: Vec<String> = unit
        .get("Service", "ExecStart")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if argv.first().map(String::as_str) != Some("/usr/bin/lastcall") {
        return vec![format!(
            "ExecStart is not /usr/bin/lastcall (where the .deb puts it): {argv:?}"
        )];
    }
    let env: Vec<(String, String)> = unit
        .all("Service", "Environment")
        .iter()
        .flat_map(|line| line.split_whitespace())
        .filter_map(|pair| {
            pair.trim_matches('"').split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let lastcall = Invocation::new(&argv, env);
    if lastcall.command.is_empty() {
        problems.push("no app after `lastcall --`".to_string());
    }
    let (grace, needs) = match (lastcall.grace(), lastcall.stop_needs()) {
        (Ok(g), Ok(n)) => (g, n),
        (Err(e), _) | (_, Err(e)) => return vec![e],
    };
    let limit = match unit.get("Service", "TimeoutStopSec").map(timespan) {
        Some(Ok(limit)) => limit,
        Some(Err(e)) => return vec![e],
        None => SYSTEMD_STOP_DEFAULT,
    };
    if limit < needs {
        problems.push(format!(
            "TimeoutStopSec is {}s, less than preStop delay + grace period + margin = {}s",
            limit.as_secs(),
            needs.as_secs()
        ));
    }
    if unit.get("Service", "KillMode") != Some("mixed") {
        problems
            .push("not KillMode=mixed: systemd's SIGTERM must reach lastcall alone".to_string());
    }
    // The app killed by lastcall's SIGTERM makes lastcall exit with 143.
    let success: Vec<&str> = unit
        .all("Service", "SuccessExitStatus")
        .iter()
        .flat_map(|l| l.split_whitespace())
        .collect();
    let success_exit = lastcall.value("success-exit", "LASTCALL_SUCCESS_EXIT").unwrap_or_default();
    if !success.contains(&"143") && !success_exit.split(',').any(|c| c.trim() == "143") {
        problems.push("143 is neither in SuccessExitStatus= nor in --success-exit".to_string());
    }
    // No ping while lastcall reaps what an exited app left, for up to the grace period.
    if let Some(watchdog) = unit.get("Service", "WatchdogSec").map(timespan) {
        match watchdog {
            Ok(w) if w <= grace * 2 => problems.push(format!(
                "WatchdogSec is {}s, not above twice the grace period {}s",
                w.as_secs(),
                grace.as_secs()
            )),
            Ok(_) => {}
            Err(e) => problems.push(e),
        }
    }
    if let Err(e) = lastcall.port() {
        problems.push(e);
    }
    if let Err(e) = lastcall.accepted() {
        problems.push(e);
    }
    problems
}

#[test]
fn systemd_units_are_consistent() {
    for name in ["legacy-app.service", "legacy-app-activated.service"] {
        let text = packaging(&format!("systemd/{name}"));
        assert_no_problems(&format!("packaging/systemd/{name}"), service_problems(&text));
    }
}

#[test]
fn systemd_checks_catch_a_short_timeout_and_the_wrong_kill_mode() {
    let text = packaging("systemd/legacy-app.service");
    let short = text.replace("TimeoutStopSec=30s", "TimeoutStopSec=15");
    assert_ne!(short, text, "the example's TimeoutStopSec changed: update this test");
    assert_problem("TimeoutStopSec=15", service_problems(&short), "TimeoutStopSec");
    let longer = text.replace("--grace-period 20s", "--grace-period 40s");
    assert_problem("a 40s grace period", service_problems(&longer), "TimeoutStopSec");
    let control = text.replace("KillMode=mixed", "KillMode=control-group");
    assert_problem("KillMode=control-group", service_problems(&control), "KillMode");
    let no_success = text.replace("SuccessExitStatus=143", "");
    assert_problem("no SuccessExitStatus", service_problems(&no_success), "143");
    let with_flag =
        no_success.replace("--grace-period 20s", "--grace-period 20s --success-exit 143");
    assert_no_problems("--success-exit 143 instead", service_problems(&with_flag));
}

#[test]
fn socket_activated_pair_points_at_each_other() {
    let socket = Unit::parse(&packaging("systemd/legacy-app.socket"));
    let service = Unit::parse(&packaging("systemd/legacy-app-activated.service"));
    assert!(socket.get("Socket", "ListenStream").is_some(), "the socket unit listens on nothing");
    // Without Service=, the socket would start legacy-app.service, the unit without a socket.
    assert_eq!(socket.get("Socket", "Service"), Some("legacy-app-activated.service"));
    assert!(
        service
            .all("Unit", "Requires")
            .iter()
            .any(|r| r.split_whitespace().any(|u| u == "legacy-app.socket")),
        "legacy-app-activated.service does not require its socket"
    );
}

// ---------------------------------------------------------------------------------------
// Docker.

#[test]
fn dockerfile_builds_a_static_lastcall_into_a_minimal_image() {
    let text = packaging("docker/Dockerfile");
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    let last_from = lines.iter().rev().find(|l| l.starts_with("FROM ")).expect("a FROM line");
    assert!(
        *last_from == "FROM scratch" || last_from.contains("distroless/static"),
        "the runtime stage is not minimal: {last_from}"
    );
    assert!(text.contains(r#"RUSTFLAGS="-C target-feature=+crt-static""#), "not a static build");
    assert!(
        text.contains("--target x86_64-unknown-linux-gnu"),
        "crt-static needs an explicit --target"
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("ENTRYPOINT")).collect::<Vec<_>>(),
        [&r#"ENTRYPOINT ["/lastcall", "--"]"#]
    );
}
