"""What the bench scripts share: processes (upstream, proxies, load client), CPU readings, stats,
and the table and machine-state lines they print. Not a test helper: nothing here asserts."""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
ADDON = ROOT / "addon" / "llm_metrics.py"
STREAM_ONLY_ADDON = BENCH / "stream_only_addon.py"
MITMDUMP = Path(sys.executable).with_name("mitmdump")
FIXTURES = ROOT.parent / "shared" / "fixtures"
_TICK = os.sysconf("SC_CLK_TCK")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the project's packages (addon, storage, migrations) for in-process benches


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


class Upstream:
    """bench/_upstream.py in its own process."""

    def __init__(self, impl: str = "lean") -> None:
        self.proc = subprocess.Popen([sys.executable, str(BENCH / "_upstream.py"), "--impl", impl],
                                     stdout=subprocess.PIPE, env=_clean_env(), cwd=ROOT)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"upstream did not start: {line!r}")
        self.port = int(line.split()[1])

    def cpu_s(self) -> float:
        return process_cpu_s(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc)


class Proxy:
    """One mitmdump process. `kind`: "bare" (no script), "stream-only" (bench/stream_only_addon.py),
    "addon" (addon/llm_metrics.py with its defaults, its own SQLite file), or a script path
    (`metrics`: whether that script is the metrics addon, which then gets its own SQLite file)."""

    def __init__(self, kind: str, workdir: Path, *sets: str, metrics: bool | None = None) -> None:
        self.kind = kind
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.db_path = workdir / "metrics.db"
        self.log_path = workdir / "mitmdump.log"
        # flow_detail=0 for every variant: mitmproxy's own per-flow line is not what is compared.
        args = [str(MITMDUMP), "--listen-host", "127.0.0.1", "--listen-port", str(self.port),
                "--set", f"confdir={workdir / 'confdir'}", "--set", "flow_detail=0"]
        script = {"bare": None, "stream-only": STREAM_ONLY_ADDON, "addon": ADDON}.get(kind, kind)
        if script is not None:
            args += ["-s", str(script)]
        if metrics is None:
            metrics = kind not in ("bare", "stream-only")
        if metrics:
            args += ["--set", f"llm_metrics_db={self.db_path}"]
        for s in sets:
            args += ["--set", s]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=_clean_env(), cwd=workdir)
        self._wait_listening(expect_addon=metrics)

    def _wait_listening(self, expect_addon: bool, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mitmdump ({self.kind}) exited:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                if not expect_addon or "llm-metrics: recording LLM calls" in self.log():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"mitmdump ({self.kind}) did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cpu_s(self) -> float:
        """mitmdump's CPU seconds, its metering process's included."""
        return sum(thread_cpu_s(self.proc.pid).values())

    def thread_cpu_s(self) -> dict[str, float]:
        return thread_cpu_s(self.proc.pid)

    def rows(self) -> int:
        return count_rows(self.db_path)

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _stat_cpu(stat_path: str) -> tuple[str, float]:
    with open(stat_path) as f:
        text = f.read()
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return comm, (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def process_cpu_s(pid: int) -> float:
    return _stat_cpu(f"/proc/{pid}/stat")[1]


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of the main thread (mitmproxy's event loop, where every hook runs), of all
    other threads together (a storage writer, when the addon meters in mitmproxy's process), and
    of the process's children (the addon's metering process). Python 3.11 does not name OS
    threads, so the split is by thread id."""
    out = {"main": 0.0, "other": 0.0, "worker": 0.0}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            _, cpu = _stat_cpu(f"/proc/{pid}/task/{task}/stat")
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended between listing and reading: its CPU is lost
        out["main" if int(task) == pid else "other"] += cpu
    for child in child_pids(pid):
        try:
            out["worker"] += process_cpu_s(child)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc/*/stat: no kernel option needed)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
            children.append(int(entry))
    return children


def run_client(spec: dict, timeout: float = 120.0) -> dict:
    """bench/_client.py in its own process; its JSON result."""
    done = subprocess.run([sys.executable, str(BENCH / "_client.py"), json.dumps(spec)],
                          capture_output=True, timeout=timeout, env=_clean_env(), cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"client failed: {done.stderr.decode(errors='replace')[-2000:]}")
    return json.loads(done.stdout)


def count_rows(db_path: Path) -> int:
    if not db_path.exists():
        return 0
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return con.execute("SELECT count(*) FROM completion_requests").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def rows_by_origin(db_path: Path, prefix: str) -> dict[str, dict]:
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        rows = con.execute("SELECT * FROM completion_requests WHERE origin LIKE ?", (prefix + "%",))
        return {r["origin"]: dict(r) for r in rows}
    finally:
        con.close()


def wait_rows(db_path: Path, expected: int, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        n = count_rows(db_path)
        if n >= expected or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


def pct(values, q: float):
    """Nearest-rank percentile (q in 0..100); None for no values."""
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    k = max(0, min(len(values) - 1, round(q / 100 * len(values) + 0.5) - 1))
    return values[k]


def median(values):
    return pct(values, 50)


def fmt(value, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value:,}{unit}"


def table(headers: list[str], rows: list[list], title: str | None = None) -> str:
    cells = [[str(c) for c in headers]] + [[c if isinstance(c, str) else fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [title] if title else []
    for n, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def machine_state() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import mitmproxy.version as mv
        mitm = mv.VERSION
    except ImportError:
        mitm = "?"
    return (f"machine: {os.cpu_count()} cores ({cpu}), load avg {loadavg()}; Python {platform.python_version()}, "
            f"mitmproxy {mitm}; code: {code_version()}; {time.strftime('%Y-%m-%d %H:%M:%S')}")


def code_version() -> str:
    """The commit measured, and whether the measured code differs from it."""
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    if not commit:
        return f"{ROOT} (not a git checkout)"
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "addon", "storage", "migrations"],
                           capture_output=True, text=True).stdout.splitlines()
    return f"commit {commit}" + (f" + {len(dirty)} uncommitted change(s) in addon/ storage/ migrations/" if dirty else "")


# A typical row (a streamed call with cached input), for benches that need rows without calls.
FLOOD_ROW = {
    "timestamp": "2026-11-22T14:03:07.123456Z", "success": True, "status_code": 200, "response_time_ms": 304,
    "model": "gpt-flood-2026-01-01", "request_model": "gpt-flood", "provider": "openai-compatible",
    "host": "127.0.0.1", "path": "/v1/chat/completions", "origin": "flood", "is_streaming": True,
    "max_tokens": 256, "temperature": 0.2, "top_p": None, "message_count": 3, "prompt_tokens": 1211,
    "completion_tokens": 96, "total_tokens": 1307, "cached_tokens": 1024, "reasoning_tokens": None,
    "finish_reason": "stop", "time_to_first_byte_ms": 41, "time_to_first_token_ms": 212,
    "time_to_last_token_ms": 301, "tokens_per_second": 1078.652, "chunk_count": 99,
    "error_type": None, "error_message": None,
}


def print_start() -> None:
    """The lines every bench opens with: the machine and code measured, and what else is busy."""
    print(machine_state())
    print(f"other busy processes at start: {busy_processes()}")


def print_end() -> None:
    """The load at the end, to compare with the start's."""
    print(machine_state().split(";")[0].replace("machine:", "at end:"))


def bench_options(doc: str, quick_help: str, rounds: int | None = None, seconds: float | None = None,
                  seconds_help: str | None = None) -> argparse.ArgumentParser:
    """The options every bench has: `--quick` (what it does: `quick_help`), and for a bench that
    alternates its set-ups in timed rounds, `--rounds` and `--seconds` with these defaults."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    if rounds is not None:
        parser.add_argument("--rounds", type=int, default=rounds)
    if seconds is not None:
        parser.add_argument("--seconds", type=float, default=seconds, help=seconds_help)
    return parser


def parse_options(parser: argparse.ArgumentParser, **quick: object) -> argparse.Namespace:
    """The parsed options; with `--quick`, the values given here replace the defaults."""
    args = parser.parse_args()
    if args.quick:
        for name, value in quick.items():
            setattr(args, name, value)
    return args


def busy_processes(min_pct: float = 20.0) -> str:
    """Other processes using CPU right now (a shared machine skews every number)."""
    done = subprocess.run(["ps", "-eo", "pid,pcpu,comm", "--sort=-pcpu", "--no-headers"],
                          capture_output=True, text=True)
    busy = []
    for line in done.stdout.splitlines():
        pid, cpu, comm = line.split(None, 2)
        if float(cpu) >= min_pct and int(pid) != os.getpid() and comm != "ps":
            busy.append(f"{comm}({cpu}%)")
    return ", ".join(busy) or "none"


def scratch_dir(name: str) -> Path:
    """A temporary folder for databases and logs, removed at exit (the flood in writer.py alone
    leaves hundreds of MB); set LLM_BENCH_KEEP=1 to keep it for a look at the logs."""
    path = Path(tempfile.mkdtemp(prefix=f"llm-bench-{name}-"))
    if not os.environ.get("LLM_BENCH_KEEP"):
        atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
