"""Run one ``cxr-cad`` command in a child process: exit code, stderr, peak RSS, with a timeout.

Peak RSS is ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` read in a fresh wrapper
process, so it is the largest resident set of that one command (its DataLoader workers
included) and not of anything run before it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_WRAPPER = r"""
import json, resource, subprocess, sys
limit = int(sys.argv[1]); timeout = float(sys.argv[2]); cmd = sys.argv[3:]
def pre():
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=pre)
try:
    out, err = p.communicate(timeout=timeout)
    rc = p.returncode
except subprocess.TimeoutExpired:
    def where(pid):   # what the command is blocked in: a FIFO open shows as fifo_open / pipe_read
        try:
            wchan = open(f"/proc/{pid}/wchan").read().strip() or "-"
            rss = [ln.split()[1] for ln in open(f"/proc/{pid}/status") if ln.startswith("VmRSS")]
            return f"wchan={wchan} rss_kb={rss[0] if rss else '?'}"
        except OSError:
            return "gone"
    rc = f"timeout({where(p.pid)})"
    p.kill()
    out, err = p.communicate()
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
sys.stdout.write(json.dumps({"rc": rc, "rss_kb": rss, "stderr": err.decode("utf-8", "replace"),
                             "stdout_len": len(out)}))
"""


@dataclass
class Outcome:
    rc: int | str  # exit code, or "timeout(wchan=... rss_kb=...)" (where it was blocked)
    rss_mb: float  # peak resident set of the command, MiB
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        """Lines of stderr that are not log records (INFO/WARNING ...) or progress output."""
        return [
            ln for ln in self.stderr.splitlines() if ln.strip() and not ln.startswith(("INFO ", "WARNING ", "DEBUG "))
        ]

    @property
    def last_line(self) -> str:
        lines = self.stderr_lines
        return lines[-1] if lines else ""

    @property
    def has_traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.stderr


def run_cli(
    args: list[str],
    *,
    timeout: float = 120,
    env: dict | None = None,
    cwd: str | None = None,
    address_limit: int = 0,
    pythonpath: str | None = None,
) -> Outcome:
    """``python -m cxr_cad ARGS`` in a child; ``address_limit`` bytes caps its address space (0 = none)."""
    environ = dict(os.environ)
    environ.update({"OMP_NUM_THREADS": "1", "CXR_CAD_OFFLINE": "1"})
    if pythonpath:
        environ["PYTHONPATH"] = pythonpath
    environ.update(env or {})
    cmd = [
        sys.executable,
        "-c",
        _WRAPPER,
        str(address_limit),
        str(timeout),
        sys.executable,
        "-m",
        "cxr_cad",
        *map(str, args),
    ]
    p = subprocess.run(cmd, capture_output=True, env=environ, cwd=cwd, timeout=timeout + 60)
    d = json.loads(p.stdout.decode())
    return Outcome(rc=d["rc"], rss_mb=d["rss_kb"] / 1024, stderr=d["stderr"])


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]
