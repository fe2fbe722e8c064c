"""The exit-code rule of docs/cli.md#exit-codes, run from the table itself: each row marked ✓
is a command with placeholders (IMAGES, MANIFEST, BUNDLE, RUN_DIR, CV_DIR, CORRUPT, FILE,
MISSING, OUT, TYPO.yaml) that is run here and must exit with the row's code. The table is the
documentation, so a row added there is tested, and a changed exit code fails here.

A second test runs every exit-2 row in a fresh interpreter and checks that torch (and, for the
commands whose modules are light, pandas) was not imported: a usage error is reported before the
engine loads (issue 20: a missing manifest took 14.8 s and 614 MiB).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hostile import inputs as H

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\| `cxr-cad(?P<argv>[^`]*)` \| (?P<case>[^|]*) \| (?P<code>\d+) \| (?P<tested>[^|]*) \|$")
#: Commands whose module imports pandas at parse time (cli/ingest.py: cxr_cad.manifest;
#: cli/demo.py: cxr_cad.workflow.demo): their exit-2 rows, and those that name no command (the
#: whole parser is built), are checked for torch only.
PANDAS_AT_PARSE = {"ingest", "demo"}


#: A config file is checked by the API's config reader (cxr_cad.api._models imports pandas).
PANDAS_CASES = ("unknown config key",)


def _pandas_allowed(argv: list[str], case: str) -> bool:
    from cxr_cad.cli import COMMANDS

    return argv[0] in PANDAS_AT_PARSE or argv[0] not in COMMANDS or case.startswith(PANDAS_CASES)


def table_rows() -> list[tuple[list[str], str, int]]:
    """``(argv with placeholders, case, exit code)`` of each row marked ✓ in docs/cli.md's table."""
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    section = text.split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        m = ROW.match(line.strip())
        if m and m.group("tested").strip() == "✓":
            rows.append((m.group("argv").split(), m.group("case").strip(), int(m.group("code"))))
    return rows


ROWS = table_rows()


def test_the_table_covers_every_command():
    from cxr_cad.cli import COMMANDS

    assert len(ROWS) >= 30
    named = {argv[0] for argv, _, _ in ROWS if argv and not argv[0].startswith("-")}
    missing = [c for c in COMMANDS if c not in named and importlib_ok(c)]
    assert not missing, f"docs/cli.md#exit-codes has no tested row for {missing}"
    assert {code for _, _, code in ROWS} == {0, 1, 2}


def importlib_ok(command: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(f"cxr_cad.cli.{command}") is not None


@pytest.fixture(scope="module")
def places(tmp_path_factory, bundle) -> dict[str, Path]:
    """The files and folders the placeholders stand for (made once)."""
    from tests.factories.synth import write_png_cohort

    root = tmp_path_factory.mktemp("exit_codes")
    images = root / "images"
    H.write_pngs(images, n=2, size=32)
    write_png_cohort(root / "cohort", n_patients=4, images_per_patient=1, size=32)
    run_dir = root / "run"
    run_dir.mkdir()
    shutil.copy(bundle, run_dir / "model.pt")
    cv_dir = root / "cv"
    for sub in ("final", "folds/1"):
        (cv_dir / sub).mkdir(parents=True)
        shutil.copy(bundle, cv_dir / sub / "model.pt")
    corrupt = root / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a model bundle" * 10)
    a_file = root / "a_file"
    a_file.write_text("a file, not a folder\n")
    typo = root / "TYPO.yaml"
    typo.write_text("epoch: 3\n")
    return {
        "IMAGES": images,
        "MANIFEST": root / "cohort" / "manifest.csv",
        "BUNDLE": bundle,
        "RUN_DIR": run_dir,
        "CV_DIR": cv_dir,
        "CORRUPT": corrupt,
        "FILE": a_file,
        "TYPO.yaml": typo,
    }


def substitute(argv: list[str], places: dict[str, Path], work: Path) -> list[str]:
    """The row's command with its placeholders replaced (OUT and MISSING are new paths in ``work``)."""
    out = []
    for token in argv:
        key, sep, value = token.partition("=")
        if sep and value in places:  # --set data.test=IMAGES
            token = f"{key}={places[value]}"
        elif token in places:
            token = str(places[token])
        elif token == "OUT":
            token = str(work / "out")
        elif token == "MISSING":
            token = str(work / "missing")
        out.append(token)
    return out


@pytest.mark.parametrize(("argv", "case", "code"), ROWS, ids=[" ".join(r[0])[:60] for r in ROWS])
def test_exit_code_of_each_row(argv, case, code, places, tmp_path, monkeypatch, capsys):
    from cxr_cad.cli import main

    if any(t.startswith("/proc/") for t in argv) and not Path("/proc").is_dir():
        pytest.skip("needs /proc")
    monkeypatch.chdir(tmp_path)  # a default output folder (run: runs/<name>) lands here
    rc = main(["-q", *substitute(argv, places, tmp_path)])
    err = capsys.readouterr().err
    assert rc == code, f"{case}: exit {rc}, expected {code}\n{err}"
    if code:
        lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("INFO", "WARNING", "DEBUG"))]
        assert lines and "Traceback" not in err, err
        assert lines[0].startswith("cxr-cad"), err
    if code == 2:
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "a usage error wrote output"


_LIGHT = r"""
import json, sys
from cxr_cad.cli import main
rows = json.loads(sys.argv[1])
seen = []
for argv in rows:
    before = {m for m in ("torch", "monai", "pandas") if m in sys.modules}
    rc = main(["-q", *argv])
    after = {m for m in ("torch", "monai", "pandas") if m in sys.modules}
    seen.append({"argv": argv, "rc": rc, "loaded": sorted(after - before)})
print(json.dumps(seen))
"""


def test_usage_errors_are_found_before_the_engine_loads(places, tmp_path):
    rows = [(a, c) for a, c, code in ROWS if code == 2]
    rows.sort(key=lambda r: _pandas_allowed(*r))  # rows that import pandas anyway run last
    argvs = [substitute(a, places, tmp_path / f"r{i}") for i, (a, _) in enumerate(rows)]
    env = {**os.environ, "CXR_CAD_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [sys.executable, "-c", _LIGHT, json.dumps(argvs)],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
        start_new_session=True,  # its own process group: nothing it signals can reach the pytest worker
    )
    assert p.returncode == 0, p.stderr
    results = json.loads(p.stdout.strip().splitlines()[-1])
    for (argv, case), r in zip(rows, results, strict=True):
        assert r["rc"] == 2, (case, r)
        allowed = {"pandas"} if _pandas_allowed(argv, case) else set()
        assert not set(r["loaded"]) - allowed, f"{' '.join(argv)} ({case}) imported {r['loaded']} before failing"
