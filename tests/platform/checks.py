#!/usr/bin/env python3
"""lastcall where users run it: a real container runtime (podman) and a real systemd (booted
with systemd-nspawn). Run through tests/platform/run, which checks the tools, bounds the time
and cleans up even if this script is killed; see there and the README's Testing section.

Each check prints one line, `PASS name: what was measured` or `FAIL name: ...`, and the
script exits 1 if any check failed. Everything it makes lives under the work directory (a
private podman storage, the machine's overlay) or in cgroups named lastcall-platform* below
this process's own, and is removed at the end, or at the start of the next run if this one
was killed.

Standard library only. Environment (all optional):
  LASTCALL_PLATFORM_BINARY    the static lastcall to put in the image and the machine
                              (default: target/x86_64-unknown-linux-gnu/release/lastcall)
  LASTCALL_PLATFORM_IMPOSTOR  `tini`: put `tini -s --` (tini-static) in lastcall's place, to
                              show that the drain checks fail without lastcall
  LASTCALL_PLATFORM_ONLY      `container` or `systemd`: run only that half
  LASTCALL_PLATFORM_WORKDIR   default /tmp/lastcall-platform
  LASTCALL_PLATFORM_TIMEOUT   seconds for all the checks (default 240); cleanup comes after
"""

import calendar
import filecmp
import http.client
import os
import pty
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WORK = os.environ.get("LASTCALL_PLATFORM_WORKDIR", "/tmp/lastcall-platform")
BINARY = os.environ.get("LASTCALL_PLATFORM_BINARY") or os.path.join(
    REPO, "target/x86_64-unknown-linux-gnu/release/lastcall")
IMPOSTOR = os.environ.get("LASTCALL_PLATFORM_IMPOSTOR", "")
TINI = "/usr/bin/tini-static"
ONLY = os.environ.get("LASTCALL_PLATFORM_ONLY", "")
TIMEOUT = int(os.environ.get("LASTCALL_PLATFORM_TIMEOUT", "240"))

# Names of everything this script makes, so that a later run can find it.
NAME = "lastcall-platform"
BASE_IMAGE = f"localhost/{NAME}/lastcall:test"
APP_IMAGE = f"localhost/{NAME}/app:test"
MACHINE = NAME

# The checks that are about the drain: the ones tini must fail.
DRAIN_CHECKS = {"container-stop-drain", "container-stop-escalation", "systemd-stop-drain",
                "systemd-socket-restarts"}


def is_static(path):
    """Whether an ELF executable runs with no loader (no PT_INTERP), as FROM scratch needs."""
    import struct
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit ELF only
            return False
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


class Fail(Exception):
    """A check failed; the message says what was measured."""


class Abort(BaseException):
    """The overall time bound, or a signal: stop checking, clean up."""


def log(msg):
    print(msg, flush=True)


def short(cmd):
    text = " ".join(cmd)
    return text if len(text) <= 100 else text[:97] + "..."


def run(cmd, timeout, check=True, **kw):
    """Runs cmd to completion within timeout seconds (killed after), output captured."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("stdin", subprocess.DEVNULL)
    try:
        out = subprocess.run(cmd, timeout=timeout, text=True, **kw)
    except subprocess.TimeoutExpired:
        raise Fail(f"`{short(cmd)}` did not finish within {timeout}s")
    if check and out.returncode != 0:
        err = (out.stderr or out.stdout or "").strip().splitlines()[-3:]
        raise Fail(f"`{short(cmd)}` exited {out.returncode}: {' | '.join(err)}")
    return out


def poll(what, fn, timeout, interval=0.05):
    """fn() until it returns something true, within timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise Fail(f"{what}: not within {timeout}s")
        time.sleep(interval)


def http_get(host, port, path, timeout=1.0):
    """(status, body) of one GET on a new connection, or (None, error)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as e:
        return None, type(e).__name__
    finally:
        conn.close()


class Results:
    def __init__(self):
        self.results = []  # (name, ok, detail)

    def check(self, name, fn, *args, diagnose=None):
        """Runs one check; its return value is the PASS detail, a Fail its FAIL detail. On a
        failure, diagnose(since) gives lines of logs to show under it."""
        started = time.monotonic()
        since = time.time()
        try:
            detail = fn(*args)
            ok = True
        except Fail as e:
            detail, ok = str(e), False
        except Abort:
            raise
        except Exception as e:  # a bug in the check itself still fails it, visibly
            detail, ok = f"{type(e).__name__}: {e}", False
        took = time.monotonic() - started
        extra = []
        if not ok and diagnose is not None:
            try:
                extra = diagnose(since)
            except Exception as e:
                extra = [f"(no diagnostics: {e})"]
        self.results.append((name, ok, detail))
        log(f"{'PASS' if ok else 'FAIL'} {name}: {detail} [{took:.1f}s]")
        for line in extra:
            log(f"    | {line}")
        return ok

    def fail(self, name, detail):
        self.results.append((name, False, detail))
        log(f"FAIL {name}: {detail}")


# ---------------------------------------------------------------------------------------
# Cgroups: podman's containers and the machine go below this process's own cgroups, in
# directories named lastcall-platform*, so that they stay inside whatever limits this process
# runs under and can be found and removed afterwards.

def cgroup_dirs(leaf):
    """{mount point: directory} for `leaf` below this process's cgroup in each hierarchy."""
    own = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            own[ctrls] = path
    dirs = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            root, mount, fstype, superopts = fields[3], fields[4], fields[sep + 1], fields[sep + 3]
            if fstype == "cgroup2":
                path = own.get("")
            elif fstype == "cgroup":
                opts = set(superopts.split(","))
                path = next((p for c, p in own.items() if c and set(c.split(",")) <= opts), None)
            else:
                continue
            if path is None or not (path + "/").startswith(root.rstrip("/") + "/"):
                continue
            rel = path[len(root.rstrip("/")):].lstrip("/")
            dirs[mount] = os.path.join(mount, rel, leaf)
    return dirs


def our_cgroups(prefix):
    """The cgroup directories named prefix* below this process's cgroups, deepest first."""
    found = []
    for mount, d in cgroup_dirs(prefix).items():
        parent = os.path.dirname(d)
        try:
            names = [n for n in os.listdir(parent) if n.startswith(prefix)]
        except OSError:
            continue
        for name in names:
            found += [dirpath for dirpath, _, _ in os.walk(os.path.join(parent, name))]
    return sorted(found, key=lambda d: -d.count("/"))


def kill_cgroup_processes(prefix, wait=10):
    """SIGKILLs, by pid, whatever still runs in our prefix* cgroups (a container or a machine
    of a run that was killed), and waits for them to be gone."""
    problems = []
    deadline = time.monotonic() + wait
    while True:
        pids = set()
        for d in our_cgroups(prefix):
            try:
                pids |= {int(p) for p in open(os.path.join(d, "cgroup.procs")).read().split()}
            except OSError:
                pass
        if not pids:
            return problems
        if time.monotonic() >= deadline:
            return problems + [f"still running in {prefix}* cgroups: {sorted(pids)}"]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not problems:
            problems.append(f"killed leftover processes {sorted(pids)}")
        time.sleep(0.1)


def remove_cgroups(prefix):
    """Removes the (empty) cgroup trees named prefix* below this process's cgroups."""
    problems = []
    for d in our_cgroups(prefix):
        try:
            os.rmdir(d)
        except OSError as e:
            problems.append(f"{d}: {e.strerror}")
    return problems


# ---------------------------------------------------------------------------------------
# Mounts and processes.

def mounts_under(path):
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mount = line.split()[4].replace("\\040", " ")
            if mount == path or mount.startswith(path.rstrip("/") + "/"):
                found.append(mount)
    return sorted(set(found), key=lambda m: -m.count("/"))


def unmount_under(path):
    for mount in mounts_under(path):
        if subprocess.run(["umount", mount], stderr=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["umount", "-l", mount], stderr=subprocess.DEVNULL)
    return mounts_under(path)


def remove_tree(path):
    """rm -rf, refusing while anything is mounted below (an overlay of / is, at times)."""
    if not os.path.exists(path):
        return
    left = unmount_under(path)
    if left:
        raise Fail(f"still mounted, not removing {path}: {left}")
    subprocess.run(["rm", "-rf", "--one-file-system", path], timeout=60)


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


# ---------------------------------------------------------------------------------------
# podman, with a private storage and configuration under WORK/podman.

class Podman:
    def __init__(self):
        self.dir = os.path.join(WORK, "podman")
        self.conf = os.path.join(self.dir, "containers.conf")
        self.env = dict(os.environ, CONTAINERS_CONF=self.conf)
        self.cmd = ["podman", "--root", os.path.join(self.dir, "storage"),
                    "--runroot", os.path.join(self.dir, "run")]

    def configure(self):
        os.makedirs(os.path.join(self.dir, "tmp"), exist_ok=True)
        os.makedirs(os.path.join(self.dir, "networks"), exist_ok=True)
        # podman's default ulimits cannot be applied on this kind of VM ("error setting rlimit
        # ... operation not permitted"), nor can nproc at our own hard limit; these can (never
        # above our own). crun refuses the hybrid cgroup layout; runc takes it.
        nofile = min(20000, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        nproc = min(4096, resource.getrlimit(resource.RLIMIT_NPROC)[1])
        with open(self.conf, "w") as f:
            f.write(f"""# Written by tests/platform/checks.py.
[containers]
default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]
log_driver = "k8s-file"
# conmon stays in our cgroups; each container goes below them (--cgroup-parent, relative).
cgroups = "no-conmon"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{self.dir}/tmp"

[network]
network_config_dir = "{self.dir}/networks"
""")

    def __call__(self, *args, timeout=30, check=True, **kw):
        return run(self.cmd + list(args), timeout, check, env=self.env, **kw)

    def popen(self, *args, **kw):
        return subprocess.Popen(self.cmd + list(args), env=self.env, text=True, **kw)

    def logs(self, name):
        """[(unix time, line)] of a container's output, stamped by conmon."""
        out = self("logs", "-t", name, check=False, stderr=subprocess.STDOUT).stdout
        lines = []
        for line in out.splitlines():
            stamp, _, text = line.partition(" ")
            lines.append((parse_stamp(stamp), text))
        return lines

    def cleanup(self):
        """Removes our containers and images; the storage goes with WORK (cleanup_all)."""
        if os.path.exists(self.conf):
            self("rm", "--all", "--force", "--time", "0", timeout=60, check=False)
            self("rmi", "--all", "--force", timeout=60, check=False)


def parse_stamp(stamp):
    """RFC 3339 with nanoseconds (podman logs -t) to unix time; None if it is not one."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", stamp)
    if not m:
        return None
    t = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    t += float(m.group(2) or 0)
    if m.group(3) != "Z":
        sign = 1 if m.group(3)[0] == "+" else -1
        t -= sign * (int(m.group(3)[1:3]) * 3600 + int(m.group(3)[4:6]) * 60)
    return t


def answer(sample):
    """A (seconds, status) sample of /readyz, for a person."""
    if sample is None:
        return "none"
    t, status = sample
    return f"{status if status else 'no answer'} at {t:.2f}s"


def first(lines, needle):
    return next((t for t, text in lines if needle in text), None)


# ---------------------------------------------------------------------------------------
# The container checks.

class Containers:
    def __init__(self, results):
        self.r = results
        self.p = Podman()
        self.image_ok = False
        self.port = None
        self.serve = f"{NAME}-serve"
        self.serve_up = False

    def run_all(self):
        r = self.r
        self.p.configure()
        d = self.diagnose
        r.check("image-dockerfiles-agree", self.dockerfiles_agree)
        self.image_ok = r.check("image-build", self.build)
        r.check("container-pid1", self.pid1, diagnose=d)
        r.check("container-orphans", self.orphans, diagnose=d)
        r.check("container-readyz", self.readyz, diagnose=d)
        r.check("container-hup", self.hup, diagnose=d)
        r.check("container-stop-drain", self.stop_drain, diagnose=d)
        r.check("container-stop-escalation", self.escalation, diagnose=d)
        r.check("container-tty-ctrl-c", self.tty)

    def diagnose(self, since):
        """The last lines of every container of ours that is still there."""
        names = self.p("ps", "-a", "--format", "{{.Names}}", check=False).stdout.split()
        lines = []
        for name in names:
            for t, text in self.p.logs(name)[-8:]:
                lines.append(f"{name} {t:.3f} {text}")
        return lines

    def run_flags(self, name):
        return ["--name", name, "--cgroup-parent", NAME, "--label", NAME]

    # --- the images

    def dockerfiles_agree(self):
        """The registry-free Dockerfile's image is the one packaging/docker/Dockerfile makes:
        their final stages agree line for line but for where the binary comes from."""
        def final(path):
            lines = [l.strip() for l in open(os.path.join(REPO, path))]
            lines = [l for l in lines if l and not l.startswith("#")]
            start = max(i for i, l in enumerate(lines) if l.startswith("FROM "))
            return lines[start:]
        full = final("packaging/docker/Dockerfile")
        prebuilt = final("packaging/docker/Dockerfile.prebuilt")
        norm = [re.sub(r"^COPY (--from=\S+ )?\S+ /lastcall$", "COPY <lastcall> /lastcall", l)
                for l in full]
        normp = [re.sub(r"^COPY \S+ /lastcall$", "COPY <lastcall> /lastcall", l)
                 for l in prebuilt]
        if norm != normp:
            raise Fail(f"final stages differ: Dockerfile {norm} vs Dockerfile.prebuilt {normp}")
        return f"both end in the same {len(norm)} lines ({norm[0]} ... {norm[-1]})"

    def build(self):
        ctx = os.path.join(WORK, "context")
        remove_tree(ctx)
        base_ctx = os.path.join(ctx, "base")
        app_ctx = os.path.join(ctx, "app")
        os.makedirs(base_ctx)
        os.makedirs(os.path.join(app_ctx, "bin"))
        binary = TINI if IMPOSTOR else BINARY
        busybox = shutil.which("busybox") or "/bin/busybox"
        for path in (binary, busybox):
            if not is_static(path):
                raise Fail(f"{path} is not a static executable: it cannot run FROM scratch")
        # The context of packaging/docker/Dockerfile.prebuilt: a directory holding `lastcall`.
        shutil.copy(binary, os.path.join(base_ctx, "lastcall"))
        started = time.monotonic()
        self.p("build", "-q", "-f", os.path.join(REPO, "packaging/docker/Dockerfile.prebuilt"),
               "-t", BASE_IMAGE, base_ctx, timeout=120)
        # The base image alone: the binary runs with nothing beside it.
        version = self.p("run", "--rm", *self.run_flags(f"{NAME}-version"), "--entrypoint",
                         "/lastcall", BASE_IMAGE, "--version", timeout=30).stdout.strip()
        # The app image: busybox and its applets as symlinks, made here, so no RUN is needed.
        shutil.copy(busybox, os.path.join(app_ctx, "bin", "busybox"))
        applets = run([busybox, "--list"], 10).stdout.split()
        for applet in applets:
            if applet != "busybox":
                os.symlink("busybox", os.path.join(app_ctx, "bin", applet))
        shutil.copy(os.path.join(HERE, "container", "app.sh"), app_ctx)
        containerfile = open(os.path.join(HERE, "container", "Containerfile")).read()
        if IMPOSTOR:
            containerfile += '\n# The impostor: tini in lastcall\'s place.\n' \
                             'ENTRYPOINT ["/lastcall", "-s", "--"]\n'
        with open(os.path.join(app_ctx, "Containerfile"), "w") as f:
            f.write(containerfile)
        self.p("build", "-q", "--build-arg", f"BASE={BASE_IMAGE}", "-f",
               os.path.join(app_ctx, "Containerfile"), "-t", APP_IMAGE, app_ctx, timeout=120)
        took = time.monotonic() - started
        size = self.p("image", "inspect", "--format", "{{.Size}}", BASE_IMAGE).stdout.strip()
        entry = self.p("image", "inspect", "--format", "{{json .Config.Entrypoint}}",
                       BASE_IMAGE).stdout.strip()
        return (f"Dockerfile.prebuilt image ({size} bytes, entrypoint {entry}, `/lastcall "
                f"--version`: {version!r}) and the app image built in {took:.1f}s")

    def need_image(self):
        if not self.image_ok:
            raise Fail("no image (image-build failed)")

    def need_serve(self):
        self.need_image()
        if not self.serve_up:
            raise Fail(f"container {self.serve} is not running (see container-pid1)")

    # --- the serving container

    def pid1(self):
        self.need_image()
        self.p("run", "-d", *self.run_flags(self.serve), "-p", "127.0.0.1::9753", APP_IMAGE,
               "/app.sh", "serve")
        self.serve_up = True
        poll("the app's first line", lambda: first(self.p.logs(self.serve), "app: started"), 10)
        exe = self.p("exec", self.serve, "readlink", "/proc/1/exe").stdout.strip()
        started = [text for _, text in self.p.logs(self.serve) if "app: started" in text][0]
        if exe != "/lastcall":
            raise Fail(f"PID 1 runs {exe!r}, not /lastcall")
        if not started.endswith("parent 1"):
            raise Fail(f"the app is not PID 1's child: {started!r}")
        return f"PID 1 runs /lastcall; {started!r}"

    def readyz(self):
        self.need_serve()
        mapping = self.p("port", self.serve, "9753/tcp").stdout.strip()
        host, _, port = mapping.rpartition(":")
        if host != "127.0.0.1":
            raise Fail(f"9753 published as {mapping!r}, not on the loopback")
        self.port = int(port)
        started = time.monotonic()
        status, body = poll("200 from /readyz", lambda: (lambda s: s if s[0] == 200 else None)(
            http_get("127.0.0.1", self.port, "/readyz")), 10)
        live = http_get("127.0.0.1", self.port, "/livez")
        if live[0] != 200:
            raise Fail(f"/livez answered {live}")
        return (f"GET 127.0.0.1:{self.port}/readyz (published 9753) -> {status} "
                f"{body.strip()!r} after {time.monotonic() - started:.2f}s; /livez -> 200")

    def hup(self):
        self.need_serve()
        poll("the app's traps", lambda: first(self.p.logs(self.serve), "orphans spawned"), 10)
        sent = time.time()
        self.p("kill", "--signal", "HUP", self.serve)
        at = poll("the app's SIGHUP line",
                  lambda: first(self.p.logs(self.serve), "app: got SIGHUP"), 5, 0.1)
        state = self.p("inspect", "--format", "{{.State.Status}}", self.serve).stdout.strip()
        if state != "running":
            raise Fail(f"the container is {state} after SIGHUP")
        return f"`podman kill --signal HUP` reached the app {at - sent:.3f}s later; still running"

    def processes(self, name):
        """[(pid, comm, state, ppid)] inside the container, from /proc."""
        out = self.p("exec", name, "sh", "-c", "cat /proc/[0-9]*/stat 2>/dev/null",
                     check=False).stdout
        procs = []
        for line in out.splitlines():
            m = re.match(r"(\d+) \((.*)\) (\S) (\d+)", line)
            if m:
                procs.append((int(m.group(1)), m.group(2), m.group(3), int(m.group(4))))
        return procs

    def orphans(self):
        self.need_serve()
        poll("the orphans", lambda: first(self.p.logs(self.serve), "orphans spawned"), 10)
        # They sleep 3s from the app's start: count them while they live, then wait for none
        # to be left, zombies included.
        adopted = max(sum(1 for _, comm, _, ppid in self.processes(self.serve)
                          if comm == "sleep" and ppid == 1) for _ in range(3))
        if adopted < 20:
            raise Fail(f"expected 20 orphans (sleep) adopted by PID 1, saw {adopted}")
        started = time.monotonic()

        def none_left():
            procs = self.processes(self.serve)
            zombies = [p for p in procs if p[2] == "Z"]
            orphans = [p for p in procs if p[1] == "sleep" and p[3] == 1]
            return not zombies and not orphans and procs

        try:
            poll("no orphan or zombie left", none_left, 8, 0.2)
        except Fail:
            left = [p for p in self.processes(self.serve) if p[2] == "Z" or p[3] == 1]
            raise Fail(f"after 8s, left under PID 1: {left[:10]}")
        return (f"{adopted} orphans adopted by PID 1; none left and no zombie "
                f"{time.monotonic() - started:.1f}s later")

    def stop_drain(self):
        """`podman stop` after /readyz was probed: /readyz turns 503 at once, the app gets
        SIGTERM after the preStop delay (auto: 5s once /readyz was requested), and the
        container exits with the app's status."""
        self.need_serve()
        if self.port is None:
            raise Fail("no published port (see container-readyz)")
        problems = []
        before = http_get("127.0.0.1", self.port, "/readyz")[0]
        if before != 200:
            # Go on all the same: what happens to the app is measured either way.
            problems.append(f"/readyz answered {before or 'nothing'} before the stop (want 200)")
        samples = []
        t0 = time.time()
        stopper = self.p.popen("stop", "--time", "30", self.serve, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
        while stopper.poll() is None and time.time() - t0 < 40:
            samples.append((time.time() - t0, http_get("127.0.0.1", self.port, "/readyz", 0.5)[0]))
            time.sleep(0.05)
        if stopper.poll() is None:
            stopper.kill()
            raise Fail("podman stop did not return within 40s")
        took = time.time() - t0
        self.serve_up = False
        logs = self.p.logs(self.serve)
        term = first(logs, "app: got SIGTERM")
        code = self.p("inspect", "--format", "{{.State.ExitCode}}", self.serve).stdout.strip()
        self.p("rm", self.serve, check=False)
        after = [(t, s) for t, s in samples if s != 200]
        if term is None:
            raise Fail(f"the app never logged SIGTERM; exit code {code}")
        term_at = term - t0
        first_off = after[0] if after else None
        if first_off is None or first_off[1] != 503 or first_off[0] > 1.0:
            problems.append(f"first answer other than 200: {answer(first_off)} (want 503 within "
                            f"1s)")
        during = [s for t, s in after if t < term_at - 0.2]
        if any(s != 503 for s in during) or not during or max(
                t for t, s in after if t < term_at - 0.2) < term_at - 1.0:
            shown = ", ".join(str(s or "no answer") for s in sorted(set(during), key=str))
            problems.append(f"/readyz before the app's SIGTERM: {shown or 'not probed'} (want "
                            f"503 throughout)")
        if not 4.8 <= term_at <= 6.5:
            problems.append(f"the app's SIGTERM came {term_at:.2f}s after the stop (want the 5s "
                            "preStop delay)")
        if code != "42":
            problems.append(f"exit code {code} (want the app's 42)")
        summary = (f"first non-200: {answer(first_off)}; app's SIGTERM {term_at:.2f}s after "
                   f"podman stop; exit code {code}; podman stop took {took:.2f}s")
        if problems:
            raise Fail("; ".join(problems) + f" [{summary}]")
        return (f"/readyz 503 {first_off[0]:.2f}s after podman stop and through the preStop "
                f"delay ({len(during)} probes); app's SIGTERM {term_at:.2f}s after; exit code "
                f"{code}; podman stop took {took:.2f}s")

    def escalation(self):
        """An app that ignores SIGTERM: lastcall's own SIGKILL (grace period 3s) ends it, well
        within podman's stop timeout (10s, after which podman would SIGKILL everything)."""
        self.need_image()
        name = f"{NAME}-stuck"
        self.p("run", "-d", *self.run_flags(name), "-e", "LASTCALL_PRESTOP_DELAY=0s",
               "-e", "LASTCALL_GRACE_PERIOD=3s", APP_IMAGE, "/app.sh", "ignore-term")
        try:
            poll("the app's start", lambda: first(self.p.logs(name), "ignoring SIGTERM"), 10)
            t0 = time.time()
            self.p("stop", "--time", "10", name, timeout=30)
            took = time.time() - t0
            code = self.p("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
            killed = [text for _, text in self.p.logs(name) if "SIGKILL" in text]
        finally:
            self.p("rm", "--force", "--time", "0", name, check=False)
        summary = f"podman stop --time 10 took {took:.2f}s, exit code {code}"
        if code != "137" or not 2.8 <= took <= 7.0:
            raise Fail(f"{summary} (want 137 after lastcall's 3s grace period, before podman's "
                       f"10s)")
        said = killed[-1].split("lastcall: ", 1)[-1] if killed else "(no line about SIGKILL)"
        return f"{summary}; lastcall said: {said!r}"

    def tty(self):
        """`podman run -it` and Ctrl-C typed on the terminal: the app gets SIGINT, exit 130."""
        self.need_image()
        master, slave = pty.openpty()
        cmd = self.p.cmd + ["run", "-it", "--rm", *self.run_flags(f"{NAME}-tty"), APP_IMAGE,
                            "sh", "-c", "echo started; exec sleep 60"]

        def controlling_tty():
            import fcntl
            import termios
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=self.p.env,
                                start_new_session=True, preexec_fn=controlling_tty)
        os.close(slave)
        output = b""
        sent = None
        deadline = time.monotonic() + 20
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                ready, _, _ = select.select([master], [], [], 0.05)
                if ready:
                    try:
                        output += os.read(master, 4096)
                    except OSError:
                        pass
                if sent is None and b"started" in output:
                    os.write(master, b"\x03")
                    sent = time.monotonic()
            code = proc.poll()
            if code is None:
                proc.kill()
                proc.wait(10)
                raise Fail(f"podman run -it still running 20s later (Ctrl-C sent: "
                           f"{sent is not None}); output {output[-200:]!r}")
        finally:
            os.close(master)
            self.p("rm", "--force", "--time", "0", f"{NAME}-tty", check=False)
        if sent is None:
            raise Fail(f"the app never said started; exit {code}; output {output[-200:]!r}")
        if code != 130:
            raise Fail(f"exit {code} after Ctrl-C (want 130); output {output[-200:]!r}")
        took = time.monotonic() - sent
        return f"Ctrl-C on the terminal: podman run -it exited 130 {took:.2f}s later"

    def cleanup(self):
        self.p.cleanup()


# ---------------------------------------------------------------------------------------
# A booted systemd: systemd-nspawn --boot on an overlay of this machine's root (a tmpfs
# holds the changes), its own network namespace, entered with nsenter.

UNITS = ["legacy-app.service", "legacy-app.socket", "legacy-app-activated.service"]
EVENTS = "/var/lib/lastcall-platform/events"


class Machine:
    def __init__(self):
        self.dir = os.path.join(WORK, "machine")
        self.tmpfs = os.path.join(self.dir, "changes")
        self.root = os.path.join(self.dir, "root")
        self.console = os.path.join(self.dir, "console.log")
        self.pidfile = os.path.join(self.dir, "nspawn.pid")
        self.nspawn = None
        self.init = None

    def path(self, inside):
        return os.path.join(self.root, inside.lstrip("/"))

    def prepare(self):
        os.makedirs(self.tmpfs, exist_ok=True)
        os.makedirs(self.root, exist_ok=True)
        run(["mount", "-t", "tmpfs", "-o", "mode=755", f"{NAME}-changes", self.tmpfs], 10)
        os.makedirs(os.path.join(self.tmpfs, "upper"))
        os.makedirs(os.path.join(self.tmpfs, "work"))
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir=/,upperdir={self.tmpfs}/upper,workdir={self.tmpfs}/work", self.root], 10)
        # Boot nothing this host's administrator enabled (databases, web servers, timers):
        # the distribution's own units only.
        sysdir = self.path("/etc/systemd/system")
        for name in os.listdir(sysdir):
            if name.endswith(".wants") or name.endswith(".requires"):
                shutil.rmtree(os.path.join(sysdir, name))
        # The units exactly as packaged, the lastcall under test, and the stand-in app.
        for name in os.listdir(os.path.join(REPO, "packaging/systemd")):
            shutil.copy(os.path.join(REPO, "packaging/systemd", name), sysdir)
        if IMPOSTOR:
            with open(self.path("/usr/bin/lastcall"), "w") as f:
                f.write(f"#!/bin/sh\n# tini in lastcall's place: lastcall's options dropped.\n"
                        f"while [ $# -gt 0 ]; do a=$1; shift; [ \"$a\" = -- ] && break; done\n"
                        f"exec {TINI} -s -- \"$@\"\n")
            os.chmod(self.path("/usr/bin/lastcall"), 0o755)
        else:
            shutil.copy(BINARY, self.path("/usr/bin/lastcall"))
        shutil.copy(os.path.join(HERE, "systemd", "legacy-app"), self.path("/usr/local/bin"))
        os.makedirs(self.path(os.path.dirname(EVENTS)), exist_ok=True)
        for name in UNITS:
            if not filecmp.cmp(os.path.join(REPO, "packaging/systemd", name),
                               os.path.join(sysdir, name), shallow=False):
                raise Fail(f"{name} differs from packaging/systemd/{name} once installed")

    def boot(self):
        started = time.monotonic()
        self.prepare()
        # nspawn --keep-unit uses the cgroup it is started in: make that one of ours.
        cgroups = [d for m, d in cgroup_dirs(f"{NAME}-machine").items()
                   if m.endswith("/systemd") or m.endswith("/unified")]
        for d in cgroups:
            os.makedirs(d, exist_ok=True)

        def enter_cgroups():
            for d in cgroups:
                with open(os.path.join(d, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))

        with open(self.console, "w") as console:
            self.nspawn = subprocess.Popen(
                ["systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit",
                 "--private-network", "--link-journal=no", f"--machine={MACHINE}",
                 "--console=read-only",
                 "-D", self.root],
                stdin=subprocess.DEVNULL, stdout=console, stderr=console,
                preexec_fn=enter_cgroups)
        with open(self.pidfile, "w") as f:
            f.write(str(self.nspawn.pid))

        def find_init():
            if self.nspawn.poll() is not None:
                raise Fail(f"systemd-nspawn exited {self.nspawn.returncode}: "
                           f"{self.console_tail()}")
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    status = open(f"/proc/{entry}/status").read()
                except OSError:
                    continue
                ppid = re.search(r"^PPid:\s+(\d+)", status, re.M)
                nspid = re.search(r"^NSpid:\s+(.*)$", status, re.M)
                if ppid and int(ppid.group(1)) == self.nspawn.pid and nspid and \
                        nspid.group(1).split()[-1] == "1":
                    return int(entry)
            return None

        self.init = poll("the machine's init process", find_init, 30)
        # Until nspawn's child has become systemd and systemd listens, systemctl says
        # "offline" or fails to connect.
        poll("systemd in the machine", lambda: os.path.exists(
            f"/proc/{self.init}/root/run/systemd/private"), 30)
        state = self.sh("systemctl", "is-system-running", "--wait", timeout=60,
                        check=False).stdout.strip()
        if state not in ("running", "degraded"):
            raise Fail(f"systemd in the machine: {state!r}; {self.console_tail()}")
        failed = self.sh("systemctl", "--failed", "--no-legend", "--plain").stdout.split()
        version = self.sh("systemctl", "--version").stdout.splitlines()[0]
        note = f"; failed units: {failed[::4]}" if state == "degraded" else ""
        return (f"{version} booted in {time.monotonic() - started:.1f}s ({state}{note}); "
                f"{', '.join(UNITS)} installed unchanged")

    def diagnose(self, since):
        try:
            return open(self.console, errors="replace").read().splitlines()[-15:]
        except OSError:
            return []

    def console_tail(self):
        try:
            return " | ".join(open(self.console, errors="replace").read().splitlines()[-5:])
        except OSError:
            return ""

    def sh(self, *cmd, timeout=30, check=True, net_only=False, **kw):
        """A command inside the machine (all its namespaces, or only its network)."""
        if self.init is None:
            raise Fail("the machine is not running")
        enter = ["nsenter", "-t", str(self.init)] + (["-n"] if net_only else ["-a"])
        return run(enter + ["--"] + list(cmd), timeout, check, **kw)

    def show(self, unit, *props):
        out = self.sh("systemctl", "show", unit, "-p", ",".join(props), check=False).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def events(self):
        try:
            lines = open(self.path(EVENTS)).read().splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            t, pid, what = line.split(" ", 2)
            out.append((float(t), int(pid), what))
        return out

    def connect(self, port):
        """Whether a TCP connect to 127.0.0.1:port inside the machine succeeds."""
        out = self.sh(sys.executable, "-c",
                      f"import socket; socket.create_connection(('127.0.0.1', {port}), 2)",
                      net_only=True, check=False)
        return out.returncode == 0

    def stop(self):
        """Shuts the machine down (SIGTERM to nspawn, then SIGKILL to its init and to it) and
        removes the overlay, the tmpfs and the cgroups."""
        problems = []
        pid = self.nspawn.pid if self.nspawn else None
        if pid is None and os.path.exists(self.pidfile):
            pid = int(open(self.pidfile).read() or 0) or None
            # Only an nspawn this script started on this machine's root.
            if pid and self.root.encode() not in cmdline(pid):
                pid = None
        if pid and alive(pid):
            init = self.init
            # SIGTERM: nspawn asks the machine's systemd to halt (SIGRTMIN+3), and exits with it.
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
                if sig == signal.SIGKILL:
                    if not alive(pid):
                        break
                    problems.append(f"nspawn {pid} still running 20s after SIGTERM: SIGKILL")
                    if init and alive(init):
                        os.kill(init, sig)
                os.kill(pid, sig)
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline:
                    if self.nspawn is not None:
                        if self.nspawn.poll() is not None:
                            break
                    elif not alive(pid) or open(f"/proc/{pid}/stat").read().split()[2] == "Z":
                        break
                    time.sleep(0.1)
        problems += kill_cgroup_processes(f"{NAME}-machine")
        left = unmount_under(self.dir)
        if left:
            problems.append(f"still mounted: {left}")
        else:
            remove_tree(self.dir)
        problems += remove_cgroups(f"{NAME}-machine")
        return problems


class StatusRecorder:
    """Polls a unit's ActiveState and StatusText in a thread, keeping each change."""

    def __init__(self, machine, unit):
        self.m, self.unit = machine, unit
        self.seen = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while not self.stopping.is_set():
            try:
                s = self.m.show(self.unit, "ActiveState", "StatusText")
            except Fail:
                s = {}
            pair = (s.get("ActiveState", "?"), s.get("StatusText", ""))
            if not self.seen or self.seen[-1][1:] != pair:
                self.seen.append((time.time(),) + pair)
            time.sleep(0.03)

    def stop(self):
        self.stopping.set()
        self.thread.join(5)
        return self.seen


class Systemd:
    def __init__(self, results):
        self.r = results
        self.m = Machine()
        self.booted = False
        self.statuses = []
        self.start_env = None

    def run_all(self):
        r = self.r
        d = self.diagnose
        self.booted = r.check("machine-boot", self.m.boot, diagnose=self.m.diagnose)
        r.check("systemd-start-ready", self.start_ready, diagnose=d)
        r.check("systemd-child-env", self.child_env)
        r.check("systemd-stop-drain", self.stop_drain, diagnose=d)
        r.check("systemd-status-text", self.status_text)
        r.check("systemd-watchdog", self.watchdog, diagnose=d)
        r.check("systemd-socket-restarts", self.socket_restarts, diagnose=d)

    def diagnose(self, since):
        """The journal of the example units since the check began, and the app's events."""
        if self.m.init is None:
            return []
        out = self.m.sh("journalctl", "--no-pager", "-o", "short-precise", f"--since=@{since:.3f}",
                        *(f"--unit={u}" for u in UNITS), check=False).stdout.splitlines()
        events = [f"app event {t:.3f} {pid} {what}" for t, pid, what in self.m.events()]
        return out[-15:] + events[-8:]

    def need_machine(self):
        if not self.booted:
            raise Fail("no machine (machine-boot failed)")

    def reset(self, unit):
        self.m.sh("systemctl", "reset-failed", unit, check=False)
        try:
            os.remove(self.m.path(EVENTS))
        except OSError:
            pass

    def start_ready(self):
        """`systemctl start` returns once lastcall sent READY=1, which it does once the app
        listens (the unit's --ready-tcp): the app takes 1.5s to start."""
        self.need_machine()
        unit = "legacy-app.service"
        self.reset(unit)
        rec = StatusRecorder(self.m, unit)
        t0 = time.time()
        try:
            out = self.m.sh("systemctl", "start", unit, timeout=20, check=False)
            t1 = time.time()
            connected = self.m.connect(8080)
        finally:
            time.sleep(0.1)
            self.statuses += rec.stop()
        listening = [t for t, _, what in self.m.events() if what.startswith("listening")]
        starts = [what for _, _, what in self.m.events() if what.startswith("start")]
        self.start_env = starts[0] if starts else None
        if out.returncode != 0:
            raise Fail(f"systemctl start exited {out.returncode}: {out.stderr.strip()}")
        state = self.m.show(unit, "ActiveState", "StatusText")
        summary = (f"systemctl start returned after {t1 - t0:.2f}s; the app listened after "
                   f"{listening[0] - t0:.2f}s" if listening else
                   f"systemctl start returned after {t1 - t0:.2f}s; the app never listened")
        if not listening or listening[0] > t1 or not connected or state["ActiveState"] != "active":
            raise Fail(f"{summary}; port 8080 accepted right after: {connected}; {state}")
        return f"{summary}; port 8080 accepted right after; {state}"

    def child_env(self):
        """The app sees neither systemd's notify socket nor its watchdog variables: they are
        lastcall's (needs src: lastcall passes WATCHDOG_USEC/WATCHDOG_PID on today)."""
        self.need_machine()
        if self.start_env is None:
            raise Fail("the app never started (see systemd-start-ready)")
        env = self.start_env.split("env:", 1)[1].split()
        bad = [v for v in env if v.split("=")[0] in ("NOTIFY_SOCKET", "WATCHDOG_USEC",
                                                     "WATCHDOG_PID")]
        if bad:
            raise Fail(f"the app's environment has {' '.join(bad)}")
        return f"no NOTIFY_SOCKET, WATCHDOG_USEC or WATCHDOG_PID in the app's environment ({env})"

    def stop_drain(self):
        """`systemctl stop`: systemd's SIGTERM goes to lastcall (KillMode=mixed), lastcall
        sends the app its stop signal, waits for it (1s to wind down), and the unit ends
        inactive: the app's 143 is a success (SuccessExitStatus=143)."""
        self.need_machine()
        unit = "legacy-app.service"
        before = self.m.show(unit, "ActiveState", "MainPID")
        problems = []
        if before.get("ActiveState") != "active":
            # Go on all the same: what the stop does is measured either way.
            problems.append(f"the unit was not active before the stop: {before}")
        rec = StatusRecorder(self.m, unit)
        t0 = time.time()
        try:
            out = self.m.sh("systemctl", "stop", unit, timeout=45, check=False)
            t1 = time.time()
        finally:
            self.statuses += rec.stop()
        after = self.m.show(unit, "ActiveState", "Result", "NRestarts")
        events = self.m.events()
        term = [t for t, _, what in events if what.startswith("SIGTERM")]
        exiting = [t for t, _, what in events if what == "exiting"]
        senders = [what.split()[1].split("=")[1] for _, _, what in events
                   if what.startswith("SIGTERM")]
        left = self.m.sh("pgrep", "-f", "/usr/local/bin/legacy-app", check=False).stdout.split()
        if out.returncode != 0:
            problems.append(f"systemctl stop exited {out.returncode}")
        if not term:
            problems.append("the app got no SIGTERM")
        elif senders[0] != before["MainPID"]:
            problems.append(f"the app's SIGTERM came from pid {senders[0]}, not from the "
                            f"supervisor (MainPID {before['MainPID']})")
        if not exiting or exiting[0] > t1:
            problems.append("systemctl stop returned before the app had wound down")
        if after.get("ActiveState") != "inactive" or after.get("Result") != "success":
            problems.append(f"ended {after}")
        if left:
            problems.append(f"processes left: {left}")
        summary = (f"systemctl stop took {t1 - t0:.2f}s; "
                   + (f"the app's SIGTERM {term[0] - t0:.2f}s after, from pid {senders[0]} "
                      f"(MainPID {before['MainPID']}), app exited after 1s wind-down"
                      if term else "no SIGTERM")
                   + f"; ended {after}")
        if problems:
            raise Fail("; ".join(problems) + f" [{summary}]")
        return summary

    def status_text(self):
        """`systemctl show -p StatusText` follows lastcall's phases: waiting for the app,
        ready, then stopping."""
        self.need_machine()
        seen = []
        for _, state, text in self.statuses:
            if not seen or seen[-1] != (state, text):
                seen.append((state, text))
        want = [("activating", "running, waiting for the app to be ready"),
                ("active", "running, ready"),
                ("deactivating", "stopping: stop signal sent, waiting for the child")]
        at = 0
        for pair in seen:
            if at < len(want) and pair == want[at]:
                at += 1
        shown = " -> ".join(f"{s}: {t!r}" if t else s for s, t in seen)
        if at < len(want):
            raise Fail(f"missing {want[at]}; seen {shown}")
        return f"seen {shown}"

    def watchdog(self):
        """With WatchdogSec=2s (a drop-in; the unit's own 60s would take minutes to show),
        lastcall's pings keep the unit running: no restart, no watchdog kill."""
        self.need_machine()
        unit = "legacy-app.service"
        self.reset(unit)
        # A runtime drop-in, in the machine's own /run (a tmpfs of nspawn's, not the overlay).
        dropin = f"/proc/{self.m.init}/root/run/systemd/system/{unit}.d/platform-watchdog.conf"
        os.makedirs(os.path.dirname(dropin), exist_ok=True)
        with open(dropin, "w") as f:
            f.write("[Service]\nWatchdogSec=2s\n")
        self.m.sh("systemctl", "daemon-reload")
        try:
            self.m.sh("systemctl", "start", unit, timeout=20)
            props = ("ActiveState", "MainPID", "NRestarts", "WatchdogTimestampMonotonic",
                     "WatchdogUSec", "Result")
            samples = []
            end = time.monotonic() + 6
            while time.monotonic() < end:
                samples.append(self.m.show(unit, *props))
                time.sleep(0.2)
        finally:
            self.m.sh("systemctl", "stop", unit, timeout=45, check=False)
            os.remove(dropin)
            self.m.sh("systemctl", "daemon-reload", check=False)
        pings = sorted({int(s["WatchdogTimestampMonotonic"]) for s in samples})
        gaps = [(b - a) / 1e6 for a, b in zip(pings, pings[1:])]
        states = {(s["ActiveState"], s["MainPID"], s["NRestarts"], s["Result"]) for s in samples}
        summary = (f"WatchdogUSec={samples[0]['WatchdogUSec']}; over 6s: {len(pings)} pings, "
                   f"gaps {max(gaps) if gaps else 0:.2f}s at most; states {sorted(states)}")
        if len(states) != 1 or next(iter(states))[0] != "active" or len(pings) < 4 or \
                max(gaps) >= 2.0:
            raise Fail(summary)
        return summary

    def socket_restarts(self):
        """legacy-app.socket + legacy-app-activated.service: a client loop inside the machine,
        a new connection per request, across two `systemctl restart`s: no request fails."""
        self.need_machine()
        service = "legacy-app-activated.service"
        self.reset(service)
        self.m.sh("systemctl", "start", "legacy-app.socket")
        client = subprocess.Popen(
            ["nsenter", "-t", str(self.m.init), "-n", "--", sys.executable, __file__,
             "--client", "127.0.0.1", "8080"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        tally = {"ok": 0, "fail": 0, "pids": {}, "errors": [], "slowest": 0.0}

        def read():
            for line in client.stdout:
                parts = line.split()
                if parts and parts[0] == "ok":
                    tally["ok"] += 1
                    tally["pids"][parts[1]] = tally["pids"].get(parts[1], 0) + 1
                    tally["slowest"] = max(tally["slowest"], float(parts[2]))
                elif parts:
                    tally["fail"] += 1
                    tally["errors"].append(line.strip())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        restarts = []
        try:
            poll("the first 20 answers", lambda: tally["ok"] >= 20, 20)
            for _ in range(2):
                old = self.m.show(service, "MainPID")["MainPID"]
                seen = set(tally["pids"])
                t0 = time.time()
                self.m.sh("systemctl", "restart", service, timeout=30)
                restarts.append(time.time() - t0)
                new = self.m.show(service, "MainPID", "ActiveState")
                if new["MainPID"] == old or new["ActiveState"] != "active":
                    raise Fail(f"after the restart: {new} (was MainPID {old})")
                poll("20 answers from the new app", lambda: any(
                    n >= 20 for p, n in tally["pids"].items() if p not in seen), 20)
        finally:
            client.stdin.close()
            try:
                client.wait(15)
            except subprocess.TimeoutExpired:
                client.kill()
            reader.join(5)
            self.m.sh("systemctl", "stop", service, "legacy-app.socket", timeout=45, check=False)
        ended = self.m.show(service, "ActiveState", "Result")
        summary = (f"{tally['ok']} requests answered by {len(tally['pids'])} app processes, "
                   f"{tally['fail']} failed, slowest {tally['slowest']:.2f}s; restarts took "
                   f"{', '.join(f'{t:.2f}s' for t in restarts)}; ended {ended}")
        if tally["fail"] or len(tally["pids"]) < 3 or ended.get("Result") != "success":
            raise Fail(summary + (f"; first errors: {tally['errors'][:3]}" if tally["errors"]
                                  else ""))
        return summary

    def cleanup(self):
        return self.m.stop()


def client(host, port):
    """The client loop (run inside the machine's network namespace): one request per new
    connection, as fast as they are answered, until stdin closes or 60s have passed. Prints
    `ok <pid> <seconds>` or `fail <reason>` for each."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if select.select([sys.stdin], [], [], 0)[0] and not sys.stdin.read(1):
            break
        started = time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=10) as s:
                s.sendall(b"GET / HTTP/1.0\r\nHost: app\r\n\r\n")
                data = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.0 200"):
                print(f"fail status {head[:40]!r}", flush=True)
            else:
                print(f"ok {body.decode().strip()} {time.monotonic() - started:.3f}", flush=True)
        except OSError as e:
            print(f"fail {type(e).__name__} {e}", flush=True)
            time.sleep(0.01)


# ---------------------------------------------------------------------------------------

def cleanup_all():
    """Everything this script may have left, whether or not this run made it."""
    problems = []
    try:
        problems += Machine().stop()
    except Exception as e:
        problems.append(f"machine: {e}")
    try:
        Podman().cleanup()
    except Exception as e:
        problems.append(f"podman: {e}")
    problems += kill_cgroup_processes(NAME)
    problems += remove_cgroups(NAME)
    try:
        remove_tree(WORK)
    except Exception as e:
        problems.append(f"{WORK}: {e}")
    return problems


def main():
    if sys.argv[1:2] == ["--client"]:
        return client(sys.argv[2], int(sys.argv[3]))
    if not (os.path.isabs(WORK) and os.path.basename(WORK).startswith(NAME)):
        # It is removed whole, twice a run: only a directory of our own name.
        log(f"LASTCALL_PLATFORM_WORKDIR={WORK!r}: must be absolute and named {NAME}*")
        return 2
    if sys.argv[1:2] == ["--cleanup"]:
        problems = cleanup_all()
        for p in problems:
            log(f"cleanup: {p}")
        return 1 if problems else 0
    if IMPOSTOR not in ("", "tini"):
        log(f"LASTCALL_PLATFORM_IMPOSTOR={IMPOSTOR!r}: only 'tini' is known")
        return 2

    def abort(signum, _frame):
        raise Abort("the overall time bound" if signum == signal.SIGALRM
                    else f"signal {signal.Signals(signum).name}")

    for sig in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, abort)
    what = f"tini -s (IMPOSTOR, {TINI})" if IMPOSTOR else BINARY
    log(f"platform: lastcall = {what}; work directory {WORK}; {TIMEOUT}s for the checks")
    results = Results()
    started = time.monotonic()
    parts = []
    signal.alarm(TIMEOUT)
    try:
        cleanup_problems = cleanup_all()
        for p in cleanup_problems:
            log(f"leftovers: {p}")
        os.makedirs(WORK, exist_ok=True)
        if ONLY in ("", "container"):
            parts.append(Containers(results))
            parts[-1].run_all()
        if ONLY in ("", "systemd"):
            parts.append(Systemd(results))
            parts[-1].run_all()
    except Abort as e:
        results.fail("runner", f"stopped by {e} after {time.monotonic() - started:.0f}s")
    finally:
        signal.alarm(0)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for part in reversed(parts):
            try:
                for p in part.cleanup() or []:
                    log(f"cleanup: {p}")
            except Exception as e:
                log(f"cleanup: {type(part).__name__}: {e}")
        for p in cleanup_all():
            log(f"cleanup: {p}")
    failed = [name for name, ok, _ in results.results if not ok]
    passed = len(results.results) - len(failed)
    if IMPOSTOR:
        drain = [n for n, _, _ in results.results if n in DRAIN_CHECKS]
        caught = [n for n in drain if n in failed]
        log(f"impostor: {len(caught)} of {len(drain)} drain checks failed with tini in "
            f"lastcall's place" + ("" if len(caught) == len(drain) else
                                  f"; NOT caught: {sorted(set(drain) - set(caught))}"))
    log(f"platform: {time.monotonic() - started:.0f}s" + (f"; failed: {', '.join(failed)}"
                                                          if failed else ""))
    log(f"platform: {passed} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
