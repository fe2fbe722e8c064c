"""The before/after table of issue 15: each hostile class, its command, exit code and peak RSS.

Usage (as root for the full-disk rows, which mount a 1 MiB tmpfs)::

    python -m tests.hostile.measure [--pythonpath DIR_WITH_OLD_cxr_cad] [--only SUBSTRING]

Every command runs under a 4 GiB address-space limit (so a bomb cannot take the host
down while measuring) and a timeout; ``timeout(wchan=...)`` in the exit-code column means it was still running, blocked where wchan says.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import tempfile
from pathlib import Path

from tests.hostile import inputs as H
from tests.hostile.runner import run_cli

LIMIT = 4 << 30


@contextlib.contextmanager
def full_disk(root: Path):
    """A 1 MiB tmpfs at ``root``, filled to the last byte; unmounted at the end. None when not root."""
    if os.geteuid() != 0:
        yield None
        return
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root)], check=True)
    try:
        with open(root / "filler", "wb", buffering=0) as fh:
            try:
                while True:
                    fh.write(b"\0" * 4096)
            except OSError:
                pass
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def _bundle_with(pythonpath: str | None, path: Path) -> Path:
    """A bundle written by the cxr_cad under test (an older one may not read newer bundles)."""
    if not pythonpath:
        return H.write_bundle(path)
    import sys

    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": f"{pythonpath}:{root}"}
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"from tests.hostile.inputs import write_bundle; write_bundle(__import__('pathlib').Path({str(path)!r}))",
        ],
        check=True,
        env=env,
        cwd="/",
    )
    return path


def build(tmp: Path, pythonpath: str | None = None) -> dict:
    """Every input, made once."""
    d = {}
    d["pngs"] = tmp / "pngs"
    H.write_pngs(d["pngs"], n=4)
    d["bundle"] = _bundle_with(pythonpath, tmp / "good.pt")
    d["flipped"] = H.flip_head_exponents(d["bundle"], tmp / "flipped.pt")
    d["nan"] = H.nan_bundle(d["bundle"], tmp / "nan.pt")
    d["huge"] = H.huge_image_size_bundle(d["bundle"], tmp / "huge.pt")
    d["pickle"] = H.pickle_bundle(tmp / "pickle.pt")
    d["rle"] = tmp / "rle"
    d["rle"].mkdir()
    H.rle_bomb_dicom(d["rle"] / "bomb.dcm")
    d["pngbomb"] = tmp / "pngbomb"
    d["pngbomb"].mkdir()
    H.png_bomb(d["pngbomb"] / "bomb.png")
    d["ybomb"] = H.yaml_bomb(tmp / "bomb.yaml")
    d["ybomb_valid"] = H.yaml_bomb(tmp / "bomb_valid.yaml", under_valid_keys=True)
    d["nonutf8"] = H.non_utf8_yaml(tmp / "latin1.yaml")
    d["fifo_dir"] = tmp / "fifo_dir"
    H.write_pngs(d["fifo_dir"], n=2)
    H.make_fifo(d["fifo_dir"] / "pipe.png")
    d["fifo"] = H.make_fifo(tmp / "lonely.fifo")
    d["fifo_manifest"] = tmp / "fifo_manifest.csv"
    d["fifo_manifest"].write_text(
        f"path,label,sop_instance_uid,patient_id\n"
        f"{d['fifo_dir'] / 'pipe.png'},NORMAL,1.2.3.1,P1\n"
        f"{d['fifo_dir'] / 'P0000-0.png'},NORMAL,1.2.3.2,P2\n"
    )
    # a labelled cohort (two classes) and a one-class one
    from tests.factories.synth import write_png_cohort

    d["cohort"] = tmp / "cohort"
    write_png_cohort(d["cohort"], n_patients=8, images_per_patient=1, size=64)
    d["manifest"] = d["cohort"] / "manifest.csv"
    import pandas as pd

    df = pd.read_csv(d["manifest"])
    df["label"] = "NORMAL"
    d["oneclass"] = d["cohort"] / "oneclass.csv"
    df.to_csv(d["oneclass"], index=False)
    return d


def cases(d: dict, tmp: Path) -> list[tuple[str, list, dict]]:
    out = lambda name: str(tmp / "out" / name)  # noqa: E731
    tr = ["--epochs", "1", "--image-size", "64", "--batch-size", "4", "--workers", "0", "--device", "cpu"]
    return [
        (
            "1 corrupt bundle (flipped exponents)",
            ["predict", d["pngs"], "--model", d["flipped"], "--out", out("flip"), "--workers", "0"],
            {},
        ),
        (
            "1 NaN weights bundle",
            ["predict", d["pngs"], "--model", d["nan"], "--out", out("nan"), "--workers", "0"],
            {},
        ),
        (
            "1 NaN init weights",
            ["train", "--manifest", d["manifest"], "--out", out("naninit"), "--init", d["nan"], *tr],
            {},
        ),
        ("7 non-plain-data pickle", ["predict", d["pngs"], "--model", d["pickle"], "--out", out("pkl")], {}),
        (
            "2 RLE bomb 65535^2 (predict)",
            ["predict", d["rle"], "--model", d["bundle"], "--out", out("rle"), "--workers", "0"],
            {},
        ),
        (
            "2 RLE bomb 65535^2 (ingest --verify-pixels)",
            ["ingest", d["rle"], "--out", out("rle_ing"), "--verify-pixels", "--workers", "1"],
            {},
        ),
        (
            "2 PNG Pillow bomb (predict)",
            ["predict", d["pngbomb"], "--model", d["bundle"], "--out", out("pngbomb"), "--workers", "0"],
            {},
        ),
        (
            "2 bundle image_size 8192",
            ["predict", d["pngs"], "--model", d["huge"], "--out", out("huge"), "--workers", "0"],
            {},
        ),
        ("3 YAML bomb", ["run", d["ybomb"], "--check"], {}),
        ("3 YAML bomb under valid keys", ["run", d["ybomb_valid"], "--check"], {}),
        ("3 non-UTF-8 workflow", ["run", d["nonutf8"], "--check"], {}),
        (
            "3 non-UTF-8 --config",
            ["train", "--manifest", d["manifest"], "--out", out("cfg"), "--config", d["nonutf8"]],
            {},
        ),
        (
            "4 FIFO as source (predict)",
            ["predict", d["fifo"], "--model", d["bundle"], "--out", out("fifo1"), "--workers", "0"],
            {},
        ),
        (
            "4 FIFO in folder (predict)",
            ["predict", d["fifo_dir"], "--model", d["bundle"], "--out", out("fifo2"), "--workers", "0"],
            {},
        ),
        (
            "4 FIFO manifest row (predict)",
            ["predict", d["fifo_manifest"], "--model", d["bundle"], "--out", out("fifo3"), "--workers", "0"],
            {},
        ),
        (
            "6 one-class train",
            [
                "train",
                "--manifest",
                d["oneclass"],
                "--out",
                out("one"),
                "--init",
                "none",
                "--classes",
                "NORMAL,PNEUMONIA",
                "--positive-class",
                "PNEUMONIA",
                *tr,
            ],
            {},
        ),
        (
            "6 --init imagenett",
            ["train", "--manifest", d["manifest"], "--out", out("typo"), "--init", "imagenett", *tr],
            {},
        ),
        ("6 ingest --out = input", ["ingest", d["pngs"], "--out", d["pngs"]], {}),
        ("6 pattern without group", ["ingest", d["cohort"], "--out", out("pat"), "--patient-id-pattern", "P"], {}),
        ("7 -q after subcommand", ["ingest", d["pngs"], "--out", out("q"), "-q"], {}),
    ]


def disk_cases(d: dict, disk: Path) -> list[tuple[str, list, dict]]:
    tr = ["--epochs", "1", "--image-size", "64", "--batch-size", "4", "--workers", "0", "--device", "cpu"]
    return [
        (
            "5 full disk (predict)",
            ["predict", d["pngs"], "--model", d["bundle"], "--out", disk / "p", "--workers", "0"],
            {},
        ),
        ("5 full disk (ingest)", ["ingest", d["pngs"], "--out", disk / "i"], {}),
        ("5 full disk (train)", ["train", "--manifest", d["manifest"], "--out", disk / "t", "--init", "none", *tr], {}),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pythonpath", default=None)
    ap.add_argument("--only", default="", help="comma-separated substrings of the class names to run")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per command (a busy host is slow)")
    a = ap.parse_args()
    print("| class | command | exit | peak RSS MiB | last stderr line (cut) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        d = build(tmp, a.pythonpath)

        def show(name, args, kw):
            if a.only and not any(part in name for part in a.only.split(",")):
                return
            kw = {"timeout": a.timeout, **kw}
            o = run_cli(args, address_limit=LIMIT, pythonpath=a.pythonpath, cwd=t, **kw)
            cmd = "cxr-cad " + " ".join(str(x).replace(t, "T") for x in args[:1])
            line = o.last_line.replace(t, "T").replace("|", "/")[:140]
            print(f"| {name} | {cmd} | {o.rc} | {o.rss_mb:.0f} | {line} (stderr {len(o.stderr)} B) |", flush=True)

        for c in cases(d, tmp):
            show(*c)
        with full_disk(tmp / "disk") as disk:
            if disk is not None:
                for c in disk_cases(d, disk):
                    show(*c)


if __name__ == "__main__":
    main()
