#!/usr/bin/env python3
"""bench/run's measuring hands, and its report.

    probe.py siglat N -- COMMAND...  N SIGUSR1s to COMMAND (a wrapper around `child signals 10`,
                                     or that child itself): one latency per line, in µs, from
                                     just before kill() to the child's handler
    probe.py drain N PRESTOP_MS GRACE_MS LASTCALL CHILD
                                     lastcall's stop-signal and SIGKILL times vs configured
    probe.py report WORK             the markdown table (stdout) and the charts' data files

CHILD is bench/child.c, compiled.

Every wait is bounded, and every process started here is stopped here, by pid.
"""

import json
import os
import select
import signal
import subprocess
import sys
import time

MONO = time.CLOCK_MONOTONIC


def now_ns():
    return time.clock_gettime_ns(MONO)


def read_record(fd, timeout):
    """One 16-byte record from `child signals`: (signal, CLOCK_MONOTONIC ns)."""
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < 16:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"no record from the child within {timeout}s")
        chunk = os.read(fd, 16 - len(data))
        if not chunk:
            raise EOFError("the child closed its stdout")
        data += chunk
    return int.from_bytes(data[:8], sys.byteorder, signed=True), int.from_bytes(
        data[8:], sys.byteorder, signed=True
    )


def stop(proc, sig=signal.SIGTERM, timeout=5):
    """Asks `proc` to end with `sig`; SIGKILL if it has not within `timeout`."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def start_child(command):
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        sig, _ = read_record(proc.stdout.fileno(), 10)
    except (TimeoutError, EOFError):
        stop(proc, signal.SIGKILL)
        raise
    assert sig == 0, f"first record is signal {sig}"
    return proc


def siglat(n, command):
    proc = start_child(command)
    try:
        fd = proc.stdout.fileno()
        time.sleep(0.2)
        for _ in range(n):
            sent = now_ns()
            os.kill(proc.pid, signal.SIGUSR1)
            sig, seen = read_record(fd, 2)
            assert sig == signal.SIGUSR1, f"got signal {sig}"
            print(f"{(seen - sent) / 1000:.1f}")
            time.sleep(0.002)
    finally:
        stop(proc)


def drain(n, prestop_ms, grace_ms, lastcall, child):
    """`--prestop-delay PRESTOP_MS --grace-period GRACE_MS`, a child that ignores SIGTERM.
    One line per run: the configured times, then the actual ones (ms after SIGTERM)."""
    for _ in range(n):
        command = [lastcall, "--listen", "off", "--prestop-delay", f"{prestop_ms}ms"]
        command += ["--grace-period", f"{grace_ms}ms", "--", child, "signals"]
        proc = start_child(command + [str(int(signal.SIGTERM))])
        try:
            pidfd = os.pidfd_open(proc.pid)
            time.sleep(0.1)
            sent = now_ns()
            os.kill(proc.pid, signal.SIGTERM)
            sig, stopped = read_record(proc.stdout.fileno(), prestop_ms / 1000 + 5)
            assert sig == signal.SIGTERM, f"got signal {sig}"
            if not select.select([pidfd], [], [], grace_ms / 1000 + 10)[0]:
                raise TimeoutError("lastcall did not exit within the grace period + 10 s")
            ended = now_ns()
            os.close(pidfd)
            proc.wait()
            print(prestop_ms, prestop_ms + grace_ms, f"{(stopped - sent) / 1e6:.3f}",
                  f"{(ended - sent) / 1e6:.3f}")
        finally:
            stop(proc, signal.SIGKILL)


# --- the report -------------------------------------------------------------------------

# bench/run's wrappers, in its order (WORK/wrappers.txt says which ran: lastcall-before only
# with BENCH_BEFORE).
WRAPPERS = ["bare", "tini", "tini-static", "dumb-init", "catatonit", "lastcall-off", "lastcall",
            "lastcall-static", "lastcall-before"]
SHOWN = {
    "bare": "bare",
    "lastcall-off": "lastcall `--listen off`",
    "lastcall": "lastcall, endpoint up",
    "lastcall-static": "lastcall static, endpoint up",
    "lastcall-before": "lastcall (before), endpoint up",
}
# The lastcall builds the goals are judged for, and their names in the verdicts.
JUDGED = {"lastcall": "dynamic", "lastcall-static": "static"}


def pct(values, p):
    """Nearest-rank percentile."""
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, round(p / 100 * len(values) + 0.5) - 1))]


def median(values):
    values = sorted(values)
    if not values:
        return float("nan")
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def numbers(path):
    try:
        with open(path) as f:
            return [[float(x) for x in line.split()] for line in f if line.strip()]
    except FileNotFoundError:
        return []


def report(work):
    def at(name):
        return os.path.join(work, name)

    global WRAPPERS
    try:
        with open(at("wrappers.txt")) as f:
            WRAPPERS = f.read().split()
    except FileNotFoundError:
        WRAPPERS = WRAPPERS[:-2]
    judged = [w for w in JUDGED if w in WRAPPERS]

    def verdict(values, limit, unit="", fmt="{:.0f}", ratio_to=None):
        """Each judged build's value against `limit`: `dynamic 412 µs = 1.10×: **missed**`."""
        parts = []
        for w in judged:
            v = values[w]
            text = f"{JUDGED[w]} {fmt.format(v)}{unit}"
            if ratio_to:
                text += f" = {v / ratio_to:.2f}×"
            parts.append(text + (": met" if v <= limit else ": **missed**"))
        return "; ".join(parts)

    # Startup: every round's hyperfine export, times pooled per command.
    times = {}
    for name in sorted(os.listdir(work)):
        if name.startswith("startup-") and name.endswith(".json"):
            with open(at(name)) as f:
                for result in json.load(f)["results"]:
                    times.setdefault(result["command"], []).extend(result["times"])
    start_med = {w: median(times.get(w, [])) * 1e6 for w in WRAPPERS}
    start_p90 = {w: pct(times.get(w, []), 90) * 1e6 for w in WRAPPERS}
    overhead = {w: start_med[w] - start_med["bare"] for w in WRAPPERS}
    runs = len(times.get("bare", []))

    idle = {}
    for line in open(at("idle.txt")):
        name, rss, anon, size, switches = line.split()
        idle[name] = (int(rss), int(size), int(switches), int(anon))

    lat = {w: [r[0] for r in numbers(at(f"siglat-{w}.txt"))] for w in WRAPPERS}
    reap = {w: numbers(at(f"reap-{w}.txt")) for w in WRAPPERS}
    drains = numbers(at("drain.txt"))

    def row(label, cells, goal="", verdict=""):
        return f"| {label} | " + " | ".join(cells) + f" | {goal} | {verdict} |"

    def cell(value, fmt):
        return fmt.format(value) if value == value else "—"  # NaN: not measured

    lines = []
    head = [SHOWN.get(w, w) for w in WRAPPERS]
    lines.append(
        "| | " + " | ".join(head) + " | goal for lastcall | lastcall (endpoint up) against it |"
    )
    lines.append("|---" * (len(WRAPPERS) + 3) + "|")

    ts = overhead["tini-static"]
    lines.append(row(f"startup, median of {runs} runs (µs)",
                     [cell(start_med[w], "{:.0f}") for w in WRAPPERS]))
    lines.append(row("startup, p90 (µs)", [cell(start_p90[w], "{:.0f}") for w in WRAPPERS]))
    lines.append(row(
        "startup overhead over bare, median (µs)",
        ["—"] + [cell(overhead[w], "{:+.0f}") for w in WRAPPERS[1:]],
        "≤ tini-static",
        verdict(overhead, ts, " µs", "{:+.0f}", ts),
    ))
    lines.append(row(
        "startup overhead / tini-static's",
        ["—"] + [f"{overhead[w] / ts:.2f}×" for w in WRAPPERS[1:]],
    ))
    rss_t = idle["tini"][0]
    rss_s = idle.get("lastcall-static", (float("nan"),))[0]
    lines.append(row(
        "VmRSS supervising `sleep` (KiB)",
        ["—"] + [str(idle[w][0]) for w in WRAPPERS[1:]],
        f"static ≤ tini ({rss_t} KiB)",
        f"static {rss_s} KiB = {rss_s / rss_t:.2f}× tini: "
        + ("met" if rss_s <= rss_t else "**missed**"),
    ))
    anon = {w: idle[w][3] for w in WRAPPERS[1:]}
    lines.append(row(
        "of which RssAnon, private (KiB)",
        ["—"] + [str(anon[w]) for w in WRAPPERS[1:]],
        f"≤ tini ({anon['tini']} KiB)",
        verdict(anon, anon["tini"], " KiB", ratio_to=anon["tini"]),
    ))
    lines.append(row("binary size (bytes)", ["—"] + [f"{idle[w][1]:,}" for w in WRAPPERS[1:]]))
    lines.append(row(
        "context switches in 10 s idle",
        ["—"] + [str(idle[w][2]) for w in WRAPPERS[1:]],
        "0",
        verdict({w: idle[w][2] for w in judged}, 0),
    ))
    n_lat = len(lat["lastcall"])
    for p in (50, 99):
        at_p = {w: pct(lat[w], p) for w in WRAPPERS}
        lines.append(row(
            f"SIGUSR1 to the child's handler, p{p} of {n_lat} (µs)",
            [cell(at_p[w], "{:.0f}") for w in WRAPPERS],
            "≤ tini",
            verdict(at_p, at_p["tini"], " µs", ratio_to=at_p["tini"]),
        ))
    reap_ms = {w: median([r[1] for r in reap[w]]) for w in WRAPPERS}
    reap_peak = {w: median([r[0] for r in reap[w]]) for w in WRAPPERS}
    rounds = len(reap["lastcall"])
    lines.append(row(
        f"2,000 orphans as PID 1: ms to zero, median of {rounds}",
        ["—"] + [cell(reap_ms[w], "{:.1f}") for w in WRAPPERS[1:]],
        "≤ tini",
        verdict(reap_ms, reap_ms["tini"], " ms", "{:.1f}", reap_ms["tini"]),
    ))
    lines.append(row(
        "2,000 orphans: peak zombies seen, median",
        ["—"] + [cell(reap_peak[w], "{:.0f}") for w in WRAPPERS[1:]],
    ))
    table = "\n".join(lines)

    # The drain timing error (lastcall only), per configuration.
    lines = [
        "| lastcall's drain, child ignores SIGTERM | runs | configured | mean error "
        "| max error | goal: under 5 ms |",
        "|---|---|---|---|---|---|",
    ]
    for config in sorted({(d[0], d[1]) for d in drains}):
        runs = [d for d in drains if (d[0], d[1]) == config]
        prestop, kill_at = config
        grace = (kill_at - prestop) / 1000
        flags = f"`--prestop-delay {prestop / 1000:g}s --grace-period {grace:g}s`"
        for what, configured, column in (("stop signal reaches the child", prestop, 2),
                                         ("SIGKILL: lastcall has exited", kill_at, 3)):
            errors = [d[column] - configured for d in runs]
            worst = max(errors, key=abs)
            lines.append(
                f"| {flags}: {what} | {len(runs)} | {configured / 1000:g} s after SIGTERM "
                f"| {sum(errors) / len(errors):+.2f} ms | {worst:+.2f} ms "
                f"| {'met' if abs(worst) < 5 else '**missed**'} |"
            )
    drain_table = "\n".join(lines)

    roll_table = rolling(work)

    with open(at("bars.dat"), "w") as f:
        for w in WRAPPERS[1:]:
            name = SHOWN.get(w, w).replace("`", "").replace(", endpoint up", "\\n(endpoint)")
            name = name.replace(" static", "\\nstatic").replace(" (before)", "\\n(before)")
            name = name.replace(" --listen off", "\\n--listen off")
            f.write(f'"{name}" {overhead[w]:.1f} {idle[w][0]}\n')
    print(table)
    print()
    print(drain_table)
    print()
    print(roll_table)


def rolling(work):
    """The HAProxy rolling-restart logs: a table, and per-bucket rates for the chart."""
    runs = {}
    for name in sorted(os.listdir(work)):
        if name.startswith("roll-") and name.endswith(".log"):
            _, wrapper, app, rnd = name[:-4].split("-")
            runs.setdefault((wrapper, app), []).append((int(rnd), os.path.join(work, name)))
    lines = [
        "| rolling restart behind HAProxy (4 restarts per run) | app on SIGTERM | runs "
        "| requests | failed | req/s | HAProxy retried, redispatched |",
        "|---|---|---|---|---|---|---|",
    ]
    order = sorted(runs.items(), key=lambda kv: (kv[0][1] != "graceful", kv[0][0] != "lastcall"))
    for (wrapper, app), logs in order:
        total = failed = 0
        seconds = 0.0
        notes = []
        for rnd, path in sorted(logs):
            reqs, fails, events, summary = parse_roll(path)
            total += len(reqs)
            failed += len(fails)
            seconds += max((r[1] for r in reqs), default=0) / 1000
            retried = summary.split("HAProxy retried ")[-1]
            notes.append(retried.replace(" connects, redispatched ", ", "))
            if rnd == 1:
                write_rates(work, f"{wrapper}-{app}", reqs, fails, events)
        app_text = "finishes in-flight requests" if app == "graceful" else "dies at once"
        lines.append(
            f"| {wrapper} | {app_text} | {len(logs)} | {total} | {failed} "
            f"| {total / seconds:.0f} | {'; '.join(notes)} |"
        )
    return "\n".join(lines)


def parse_roll(path):
    reqs, fails, events, summary = [], [], [], ""
    for line in open(path):
        kind, rest = line.split(" ", 1)
        if kind == "req":
            start, end, outcome, _path = rest.split()
            reqs.append((float(start), float(end)))
            if outcome != "ok":
                fails.append(float(end))
        elif kind == "event":
            t, what = rest.split(" ", 1)
            events.append((float(t), what.strip()))
        elif kind == "summary":
            summary = rest.strip()
    return reqs, fails, events, summary


def write_rates(work, tag, reqs, fails, events):
    bucket = 250.0
    # Whole buckets only, up to the last request's start, when the load was told to stop.
    last = int(max((r[0] for r in reqs), default=0) // bucket)
    counts = [0] * last
    for _, end in reqs:
        if int(end // bucket) < last:
            counts[int(end // bucket)] += 1
    with open(os.path.join(work, f"rate-{tag}.dat"), "w") as f:
        for i, c in enumerate(counts):
            f.write(f"{(i + 0.5) * bucket / 1000:.3f} {c * 1000 / bucket:.0f}\n")
    with open(os.path.join(work, f"fail-{tag}.dat"), "w") as f:
        for end in fails:
            f.write(f"{end / 1000:.3f}\n")
        if not fails:
            f.write("NaN\n")
    with open(os.path.join(work, f"stop-{tag}.dat"), "w") as f:
        for t, what in events:
            if what.startswith("sigterm"):
                f.write(f"{t / 1000:.3f}\n")


def main(argv):
    if len(argv) >= 4 and argv[1] == "siglat" and argv[3] == "--":
        siglat(int(argv[2]), argv[4:])
    elif len(argv) == 7 and argv[1] == "drain":
        drain(int(argv[2]), int(argv[3]), int(argv[4]), argv[5], argv[6])
    elif len(argv) == 3 and argv[1] == "report":
        report(argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
