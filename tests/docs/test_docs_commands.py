"""Every shell command in README.md, CONTRIBUTING.md and docs/*.md runs as written (issue 20).

The commands are read from the fenced ``bash`` / ``sh`` / ``shell`` / ``console`` blocks
(backslash continuations joined, comment lines skipped, ``$`` prompts of console blocks
stripped, here-documents kept with their command). Each command that runs cxr_cad
(``cxr-cad ...``, ``python -m cxr_cad ...``, ``python benchmarks/...``, ``python -m
monai.bundle ...`` on an exported bundle) is one test: it runs through ``bash -c`` in a
fresh folder that looks like a checkout (``workflows/``, ``benchmarks/``, ``tests/`` and
``.venv`` are links to this one), with the venv's ``bin`` first on ``PATH``, and must exit 0
(or the code the doc gives, :data:`EXPECTED_EXIT`). Every other command must start with a
program of :data:`OTHER_PROGRAMS` (installation, the test suite, code health, system set-up),
so a new kind of command has to be classified here.

What the command reads is made from shipped or generated data, by two explicit tables:

* :data:`SUBSTITUTE`: paths outside the folder the docs name (``/data/chest_xray/train``,
  ``../shared/data/kermany-dev``, ``/path/to/dicom_export``, ...) are replaced in the command
  text by a generated labelled PNG cohort (:func:`tests.factories.synth.write_png_cohort`) or by
  the shipped Kermany sample written out as a CR DICOM folder (``cxr_cad/data/kermany_sample``,
  the demo's writer) with its labels;
* :data:`SEED`: relative inputs (``model.pt``, ``cohort/manifest.csv``,
  ``runs/cv/oof_predictions.csv``, ``train.yaml``, ...) are put into the folder before the
  command runs: a tiny trained bundle made once per session, a labelled manifest, a tiny
  cross-validation's outputs, scored predictions, exported models; ``train.yaml`` is the
  config file docs/train.md shows. A path after ``--out`` is never seeded.

To keep the suite fast, commands that train get small settings appended
(:func:`fast_settings`; argparse and ``--set`` take the last value): ``--epochs 1
--batch-size 8 --image-size 64 --force`` on ``train`` and ``crossval`` (and ``--folds 2`` on
``crossval``; ``--force`` keeps the model of one tiny epoch, which the training guard refuses as
no better than chance), the same through ``--set`` on the training workflows, and ``--fast``
on ``demo``. ImageNet
initialisation (the default) reads a random torchvision-format ResNet18 checkpoint through
``CXR_CAD_IMAGENET_WEIGHTS``, and ``CXR_CAD_OFFLINE=1`` keeps everything off the network.

A command that needs a server, a GPU or several processes, the internet, ../shared or minutes
of CPU is in :data:`SKIP` with the reason, keyed by its text; an entry that no longer names a
command fails :func:`test_tables_name_existing_commands`, so the tables cannot go stale.
:data:`DEFAULT_SUITE` is the representative subset that runs by default; every other command
is marked ``slow`` (``pytest -m slow tests/docs/test_docs_commands.py``).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"bash", "sh", "shell", "console"}
#: Seconds one documented command may take (tiny settings; the slowest is a workflow).
TIMEOUT_S = 900


# ----------------------------------------------------------------------------------------
# Reading the commands


@dataclass(frozen=True)
class DocCommand:
    """One shell command of a document: where it starts and its text (continuations joined)."""

    file: str  # relative to the repository root
    line: int
    text: str  # comment-stripped, continuations joined; here-documents keep their lines
    comment: str = ""  # the trailing comment, if any

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def key(self) -> str:
        """The whitespace-normalised text the tables are keyed by."""
        return " ".join(self.text.split())


_FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)(\w+)\1")


def strip_comment(line: str) -> tuple[str, str]:
    """``(code, comment)`` of one shell line: a ``#`` starting a word outside quotes begins a comment."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
            elif ch == "\\" and quote == '"':
                continue
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


def extract(path: Path, root: Path = ROOT) -> list[DocCommand]:
    """The commands of the shell blocks of one Markdown file, in order."""
    rel = str(path.relative_to(root))
    out: list[DocCommand] = []
    lang: str | None = None
    fence = ""
    pending: list[str] = []
    start = 0
    heredoc: str | None = None
    comment = ""
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        m = _FENCE.match(raw)
        if lang is None:
            if m:
                lang, fence = m.group(2).lower(), m.group(1)
            continue
        if m and raw.strip().startswith(fence[:3]) and not m.group(2):
            if pending:
                raise AssertionError(f"{rel}:{start}: shell block ends inside a command")
            lang = None
            continue
        if lang not in SHELL_BLOCKS:
            continue
        if heredoc is not None:
            pending.append(raw)
            if raw.strip() == heredoc:
                heredoc = None
                out.append(DocCommand(rel, start, "\n".join(pending), comment))
                pending, comment = [], ""
            continue
        line = raw
        if lang == "console":
            if not pending:
                if not line.lstrip().startswith("$ "):
                    continue  # output of the previous command
                line = line.lstrip()[2:]
        code, note = strip_comment(line)
        if not pending and not code.strip():
            continue  # blank or comment-only line
        if not pending:
            start = n
        comment = note or comment
        if code.endswith("\\"):
            pending.append(code[:-1].strip())
            continue
        pending.append(code.strip())
        text = " ".join(p for p in pending if p)
        hd = _HEREDOC.search(text)
        if hd:
            heredoc = hd.group(2)
            pending = [text]
            continue
        out.append(DocCommand(rel, start, text, comment))
        pending, comment = [], ""
    return out


def all_commands() -> list[DocCommand]:
    """Every command of the docs, less the :data:`NOT_COMMANDS` lines."""
    return [c for path in DOCS for c in extract(path) if c.key not in NOT_COMMANDS]


def _words(text: str) -> list[str]:
    try:
        return shlex.split(text.split("\n", 1)[0])
    except ValueError:
        return text.split()


def simple_commands(text: str) -> list[list[str]]:
    """The words of each simple command of a line (split at ``&&``, ``||``, ``;``, ``|``, ``&``)."""
    words, out, cur = _words(text), [], []
    for w in words:
        if w in {"&&", "||", ";", "|", "&"}:
            out.append(cur)
            cur = []
        else:
            cur.append(w)
    out.append(cur)
    return [c for c in out if c]


def _program(words: list[str]) -> list[str]:
    """The words without leading ``VAR=value`` assignments and ``.venv/bin/`` prefixes."""
    i = 0
    while i < len(words) and re.match(r"^[A-Za-z_]\w*=", words[i]):
        i += 1
    rest = words[i:]
    if rest and rest[0].startswith(".venv/bin/"):
        rest = [rest[0][len(".venv/bin/") :], *rest[1:]]
    return rest


def runs_cxr_cad(text: str) -> bool:
    """Whether the command runs cxr_cad code (the commands this module executes)."""
    for words in simple_commands(text):
        w = _program(words)
        if not w:
            continue
        if w[0] == "cxr-cad":
            return True
        if w[0] in {"python", "python3", "torchrun"}:
            args = w[1:]
            if any(a.startswith("benchmarks/") for a in args[:1]):
                return True
            mods = [args[k + 1] for k, a in enumerate(args[:-1]) if a == "-m"]
            if any(m in {"cxr_cad", "monai.bundle"} for m in mods):
                return True
    return False


#: Programs of documented commands that do not run cxr_cad, and why they are not run here.
OTHER_PROGRAMS = {
    "python3": "`python3 -m venv` + pip: the installation, run from scratch by .ci/run",
    "pip": "the installation (README.md), run from scratch by .ci/run",
    "python": "the test suite (`python -m pytest`), run by .ci/run and CI",
    "ruff": "code health, run by .ci/run (CONTRIBUTING.md)",
    "mypy": "code health, run by .ci/run",
    "lint-imports": "the import-layer contract, run by .ci/run",
    "sudo": "system packages (docs/pacs.md), installed by .ci/run",
    "cat": "writes the Orthanc config of docs/pacs.md (PACS set-up; tests/pacs/ start their own Orthanc)",
    "Orthanc": "a server (docs/pacs.md); tests/pacs/ start their own on free ports",
    "curl": "uploads to a running Orthanc (docs/pacs.md)",
    "export": "sets the DICOMweb credentials for the PACS commands (need a server)",
    "kill": "stops the background `cxr-cad listen` of docs/pacs.md",
    "/usr/bin/storescu": "sends to a running `cxr-cad listen` node (docs/pacs.md)",
    "tail": "reads the audit log of the background `cxr-cad listen` of docs/pacs.md",
    "openssl": "makes a test CA and certificates for DICOM TLS (docs/pacs.md; tests/pacs/ make their own)",
    "for": "the certificate loop of docs/pacs.md (openssl)",
    "done": "the certificate loop of docs/pacs.md (openssl)",
    "mlflow": "MLflow's own UI on the tracking store (docs/export.md); tests/tracking/ read the store with MlflowClient",
}

# ----------------------------------------------------------------------------------------
# The tables


#: Commands not run, keyed by their text (whitespace-normalised), with the reason.
SKIP = {
    # servers
    "cxr-cad predict dicomweb:http://127.0.0.1:8042/dicom-web --query Modality=CR --model model.pt "
    "--out runs/pacs --dicom-out runs/pacs/dicom --secondary-capture --stow dicomweb:http://127.0.0.1:8042/dicom-web": (
        "needs the Orthanc of docs/pacs.md on port 8042; the same command runs against a test-started "
        "Orthanc in tests/pacs/"
    ),
    "cxr-cad predict dicomweb:http://127.0.0.1:8042/dicom-web --query Modality=CR --query StudyDate=19000101-20991231 "
    "--model model.pt --out runs/pacs --dicom-out runs/pacs/dicom --secondary-capture "
    "--stow dicomweb:http://127.0.0.1:8042/dicom-web": "needs the Orthanc of docs/pacs.md on port 8042 (tests/pacs/)",
    "cxr-cad listen --model model.pt --aet CXRCAD --port 11112 --out runs/node --allow-calling MODALITY1 "
    "--tls-cert node.pem --tls-key node.key --tls-ca hospital-ca.pem "
    "--stow dicomweb:http://127.0.0.1:8042/dicom-web &": (
        "a DICOM node in the background that stows to the Orthanc of docs/pacs.md (tests/pacs/test_scp.py)"
    ),
    # several processes
    "torchrun --standalone --nproc_per_node 4 -m cxr_cad predict --model model.pt /data/export --out runs/scores": (
        "4 torchrun processes (tests/inference/ run the DDP sharding with 2 processes)"
    ),
    "torchrun --standalone --nproc_per_node 4 -m cxr_cad train --manifest M.csv --out RUN": (
        "4 torchrun processes (tests/training/ run DDP training with 2 processes)"
    ),
    # ../shared and minutes of CPU
    "python benchmarks/predict_throughput.py": "a benchmark on ../shared/data/kermany-dev (about 2 minutes)",
    "python benchmarks/predict_throughput.py --n 10000 --unique 20 --size 256 --skip-baseline": (
        "a benchmark on ../shared/data/kermany-dev scoring 10000 images"
    ),
}

#: Lines of shell blocks that are not commands (e.g. a usage synopsis), with the reason.
NOT_COMMANDS = {
    "cxr-cad ingest SOURCE... --out DIR [--labels CSV | --labels-from-folders]": (
        "a usage synopsis with placeholders (docs/ingest.md; belongs in a ```text block)"
    ),
    "[--classes A,B] [--positive-class B] [options]": "the synopsis's second line (docs/ingest.md)",
}

#: Exit codes the docs give for a command (default 0).
EXPECTED_EXIT: dict[str, int] = {}

#: Commands that fail for a known reason being fixed in the code, with the output that says so.
#: Each is xfail(strict=True): the test turns red as soon as the command passes.
KNOWN_BROKEN: dict[str, tuple[str, str]] = {}

#: The representative subset that runs in the default suite; every other command is `slow`.
DEFAULT_SUITE = {
    "cxr-cad ingest /data/chest_xray/train --labels-from-folders --classes NORMAL,PNEUMONIA "
    "--positive-class PNEUMONIA --out runs/cohort",
    "cxr-cad predict --model model.pt /path/to/dicom_export --out runs/site_a_scores",
    "cxr-cad report runs/cv/oof_predictions.csv --cv-metrics runs/cv/cv_metrics.json --out runs/cv_report",
    "cxr-cad ingest /data/export --out data_manifests/site_a --labels labels.csv --classes NORMAL,PNEUMONIA "
    "--positive-class PNEUMONIA",
}

#: Paths outside the run folder that the docs name -> the workspace data that stands in for them.
SUBSTITUTE = {
    "/data/chest_xray/train": "pngs_train",
    "/data/chest_xray/test": "pngs_test",
    "/work/shared/data/kermany-dev": "pngs_train",
    "../shared/data/kermany-dev": "pngs_train",
    "/data/cohort_dir": "pngs_test",
    "/data/png": "pngs_test",
    "/path/to/dicom_export": "dicom",
    "/path/to/labels.csv": "dicom_labels",
    "/path/to/site_b_dicom": "dicom",
    "/path/to/site_b_labels.csv": "dicom_labels",
    "/data/dicom": "dicom",
    "/data/pacs_export": "dicom",
    "/data/export": "dicom",
    "/tmp/cxr-cad-demo": "@cxr-cad-demo",  # '@': a fresh path in the run folder
}

#: Relative inputs -> what is put there before the command runs.
SEED = {
    "model.pt": "bundle",
    "run/model.pt": "bundle",
    "runs/study/model.pt": "bundle",
    "runs/train/model.pt": "bundle",
    "runs/chandola2021_pneumonia/train/model.pt": "bundle",
    "new.pt": "bundle",
    "old.pt": "bundle_old",
    "runs/cohort/manifest.csv": "manifest",
    "cohort/manifest.csv": "manifest",
    "data/manifest.csv": "manifest",
    "kermany/manifest.csv": "manifest",
    "runs/kermany-dev/manifest.csv": "manifest",
    "data_manifests/hospital_a.csv": "manifest",
    "M.csv": "manifest",
    "m.csv": "manifest",
    "calib.csv": "manifest",
    "train.yaml": "train_yaml",
    "runs/cv/oof_predictions.csv": "cv_oof",
    "runs/cv/cv_metrics.json": "cv_metrics",
    "scores/predictions.csv": "scores",
    "scores/rejected.csv": "scores_rejected",
    "new.csv": "scores",
    "old.csv": "scores_old",
    "export/onnx": "export_onnx",
    "export/bundle": "export_monai",
    "dirA": "pngs_normal",
    "dirB": "pngs_pneumonia",
    "extra.dcm": "dicom_file",
    "chest_xray/train": "pngs_train",
    "chest_xray/val": "pngs_test",
    "labels.csv": "dicom_labels_by_study",
}

#: Folders of the checkout every run folder links to (the docs run from the repository root).
CHECKOUT_LINKS = ("workflows", "benchmarks", "tests", ".venv")


#: Appended to documented training commands: one epoch of batch 8 at 64 px, and ``--force``,
#: which keeps a model the training guard refuses (cxr_cad.training.guards: a validation AUC that
#: never beats chance, what one tiny epoch gives); the same as ``cxr-cad demo --fast`` does.
TINY_FLAGS = "--epochs 1 --batch-size 8 --image-size 64 --force"
TINY_SETS = "--set train.epochs=1 --set train.batch_size=8 --set model.image_size=64 --set train.force=true"


def fast_settings(text: str) -> str:
    """The command with small training settings appended (see the module docstring)."""
    if "\n" in text or not runs_cxr_cad(text):
        return text
    words = _program(_words(text))
    if not words or words[0] != "cxr-cad" or len(words) < 2:
        return text
    sub = words[1]
    if sub == "train":
        return f"{text} {TINY_FLAGS}"
    if sub == "crossval":
        return f"{text} {TINY_FLAGS} --folds 2"
    if sub == "demo":
        return f"{text} --fast"
    if sub == "run":
        workflow = Path(words[2]).stem if len(words) > 2 else ""
        if workflow == "chandola2021_pneumonia":
            return f"{text} {TINY_SETS} --set crossval.folds=2"
        if workflow == "retrain_new_cohort":
            return f"{text} {TINY_SETS}"
    return text


def _bounded(literal: str) -> re.Pattern[str]:
    """``literal`` as a whole path: not inside a longer path or word."""
    return re.compile(r"(?<![\w./@:-])" + re.escape(literal) + r"(?![\w.-])")


def substitute(text: str, paths: dict[str, Path]) -> str:
    """Replace the :data:`SUBSTITUTE` paths by the workspace paths ``paths`` (keyed by kind)."""
    for literal, kind in SUBSTITUTE.items():
        pattern = _bounded(literal)
        if pattern.search(text):
            target = str(paths[kind])
            text = pattern.sub(lambda _m, t=target: shlex.quote(t), text)
    return text


def seeds_of(text: str) -> list[tuple[str, str]]:
    """The :data:`SEED` entries the command reads: named as a path, and not after ``--out``."""
    found = []
    for rel, kind in SEED.items():
        for m in _bounded(rel).finditer(text):
            before = text[: m.start()].rstrip()
            if before.endswith("--out") or before.endswith("--out="):
                continue
            found.append((rel, kind))
            break
    return found


# ----------------------------------------------------------------------------------------
# The workspace: data made once per session, lazily


#: The seeds' training: tiny, and kept even when it is no better than chance (the guard of
#: cxr_cad.training.guards refuses such a model unless forced); the seeds only feed the
#: documented commands, whose own training is what the tests check.
TINY_TRAINING = {"epochs": 1, "batch_size": 8, "force": True, "runtime": {"workers": 0}}


class Workspace:
    """Builds the stand-in data on first use, once per session (per xdist worker)."""

    def __init__(self, root: Path):
        self.root = root
        self._made: dict[str, Path] = {}

    def get(self, kind: str) -> Path:
        if kind not in self._made:
            self._made[kind] = getattr(self, f"_make_{kind}")()
        return self._made[kind]

    # data -----------------------------------------------------------------------------

    def _make_pngs_train(self) -> Path:
        from tests.factories.synth import write_png_cohort

        root = self.root / "pngs_train"
        write_png_cohort(root, n_patients=16, images_per_patient=2, size=64, seed=0)
        (root / "manifest.csv").unlink()  # a folder of images, as the docs' data folders are
        return root

    def _make_pngs_test(self) -> Path:
        from tests.factories.synth import write_png_cohort

        root = self.root / "pngs_test"
        write_png_cohort(root, n_patients=12, images_per_patient=1, size=64, seed=1)
        (root / "manifest.csv").unlink()
        return root

    def _make_pngs_normal(self) -> Path:
        return self.get("pngs_test") / "NORMAL"

    def _make_pngs_pneumonia(self) -> Path:
        return self.get("pngs_test") / "PNEUMONIA"

    def _make_dicom_export(self) -> Path:
        from cxr_cad.workflow.demo import sample_table, write_demo_dicoms

        # 40 of the 100 shipped Kermany images, whole patients, half per label, as CR DICOM files
        # (8/12-bit, MONOCHROME1/2, uncompressed, RLE, JPEG baseline, JPEG 2000) + labels.csv
        out = self.root / "kermany_dicom"
        write_demo_dicoms(out, sample_table(40))
        return out

    def _make_dicom(self) -> Path:
        return self.get("dicom_export") / "dicom"

    def _make_dicom_labels(self) -> Path:
        return self.get("dicom_export") / "labels.csv"

    def _make_dicom_labels_by_study(self) -> Path:
        """labels.csv keyed by StudyInstanceUID (read from the files' headers)."""
        import pandas as pd
        import pydicom

        labels = pd.read_csv(self.get("dicom_labels"), dtype=str).set_index("patient_id")["label"]
        rows = []
        for f in sorted(self.get("dicom").rglob("*.dcm")):
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            rows.append({"study_instance_uid": ds.StudyInstanceUID, "label": labels[str(ds.PatientID)]})
        path = self.root / "labels_by_study.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        return path

    def _make_dicom_file(self) -> Path:
        return ROOT / "tests" / "data" / "siim_cr_chest_jpeg_baseline.dcm"

    def _make_imagenet(self) -> Path:
        from tests.model.test_registry import fake_imagenet_file

        folder = self.root / "imagenet"
        folder.mkdir()
        return fake_imagenet_file(folder, "resnet18")

    def _make_manifest(self) -> Path:
        """A labelled manifest (absolute paths) of the training PNG cohort, from the API's ingest."""
        import cxr_cad

        out = self.root / "manifest"
        cxr_cad.ingest(
            [self.get("pngs_train")],
            out,
            labels="folders",
            classes=["NORMAL", "PNEUMONIA"],
            positive_class="PNEUMONIA",
            absolute_paths=True,
        )
        return out / "manifest.csv"

    def _make_train_yaml(self) -> Path:
        """The config file docs/train.md shows (its first ``yaml`` block after "## Config file")."""
        text = (ROOT / "docs" / "train.md").read_text(encoding="utf-8")
        m = re.search(r"^## Config file$.*?^```yaml\n(.*?)^```", text, flags=re.S | re.M)
        assert m, "docs/train.md lost its config file example (## Config file, a yaml block)"
        path = self.root / "train.yaml"
        path.write_text(m.group(1), encoding="utf-8")
        return path

    # models and their outputs -----------------------------------------------------------

    def _make_bundle(self) -> Path:
        import cxr_cad

        config = {**TINY_TRAINING, "model": {"init": "none", "image_size": 64}}
        bundle = cxr_cad.train(self.get("manifest"), config, self.root / "train")
        return Path(bundle.path)

    def _make_bundle_old(self) -> Path:
        from tests.hostile.inputs import write_bundle

        return write_bundle(self.root / "old" / "model.pt", image_size=64, seed=1)

    def _make_cv(self) -> Path:
        import cxr_cad

        out = self.root / "cv"
        config = {**TINY_TRAINING, "model": {"init": "none", "image_size": 64}}
        cxr_cad.crossval(self.get("manifest"), config, out, folds=2, n_bootstrap=0)
        return out

    def _make_cv_oof(self) -> Path:
        return self.get("cv") / "oof_predictions.csv"

    def _make_cv_metrics(self) -> Path:
        return self.get("cv") / "cv_metrics.json"

    def _scored(self, bundle_kind: str) -> Path:
        """predictions.csv + rejected.csv of the bundle on the manifest (labels copied through)."""
        import cxr_cad

        out = self.root / f"scores_{bundle_kind}"
        cxr_cad.predict(self.get(bundle_kind), [self.get("manifest")], out, workers=0)
        return out

    def _make_scores_dir(self) -> Path:
        return self._scored("bundle")

    def _make_scores(self) -> Path:
        return self.get("scores_dir") / "predictions.csv"

    def _make_scores_rejected(self) -> Path:
        return self.get("scores_dir") / "rejected.csv"

    def _make_scores_old(self) -> Path:
        return self._scored("bundle_old") / "predictions.csv"

    def _exported(self, fmt: str) -> Path:
        from cxr_cad.export.exporter import export_model

        out = self.root / f"export_{fmt}"
        export_model(self.get("bundle"), fmt, out)
        return out

    def _make_export_onnx(self) -> Path:
        return self._exported("onnx")

    def _make_export_monai(self) -> Path:
        return self._exported("monai-bundle")


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("docs-workspace"))


def prepare(command: DocCommand, ws: Workspace, folder: Path) -> tuple[str, dict[str, str]]:
    """Make ``folder`` a run folder for the command; return the text to run and its environment."""
    for name in CHECKOUT_LINKS:
        (folder / name).symlink_to(ROOT / name)
    text = fast_settings(command.text)
    kinds = {kind for literal, kind in SUBSTITUTE.items() if _bounded(literal).search(text)}
    paths = {k: (folder / k[1:] if k.startswith("@") else ws.get(k)) for k in kinds}
    text = substitute(text, paths)
    for rel, kind in seeds_of(text):
        src, dst = ws.get(kind), folder / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy2(src, dst)
    bindir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        "CXR_CAD_OFFLINE": "1",
        "CXR_CAD_NO_PROGRESS": "1",
        "CXR_CAD_IMAGENET_WEIGHTS": str(ws.get("imagenet")),
        "MPLBACKEND": "Agg",
    }
    return text, env


# ----------------------------------------------------------------------------------------
# The tests


def _params() -> list:
    params = []
    for c in all_commands():
        if not runs_cxr_cad(c.text):
            continue
        marks = [] if c.key in DEFAULT_SUITE else [pytest.mark.slow]
        if c.key in KNOWN_BROKEN:
            marks.append(pytest.mark.xfail(strict=True, raises=KnownBroken, reason=KNOWN_BROKEN[c.key][0]))
        params.append(pytest.param(c, id=c.where, marks=marks))
    return params


class KnownBroken(Exception):
    """A :data:`KNOWN_BROKEN` command failed with the output its entry names."""


@pytest.mark.parametrize("command", _params())
def test_documented_command_runs(command: DocCommand, workspace: Workspace, tmp_path: Path):
    if command.key in SKIP:
        pytest.skip(f"{command.where}: {SKIP[command.key]}")
    text, env = prepare(command, workspace, tmp_path)
    proc = subprocess.run(
        ["bash", "-c", text],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    output = (proc.stdout + proc.stderr).strip()
    expected = EXPECTED_EXIT.get(command.key, 0)
    if proc.returncode != expected and command.key in KNOWN_BROKEN:
        reason, message = KNOWN_BROKEN[command.key]
        if message in output:
            raise KnownBroken(f"{command.where}: {reason}")
    tail = "\n".join(output.splitlines()[-40:])
    assert proc.returncode == expected, (
        f"{command.where}: exit {proc.returncode} (expected {expected})\n  as written: {command.key}\n"
        f"  as run: {text}\n--- last lines of its output ---\n{tail}"
    )
    promised = re.search(r"->\s*(\S+)", command.comment)
    if promised:  # "# -> runs/model/model.pt": the doc promises that file
        assert (tmp_path / promised.group(1)).exists(), f"{command.where}: {promised.group(1)} was not written"


def test_every_command_is_classified():
    """A documented command either runs cxr_cad (and is tested above) or starts with a known program."""
    unknown = []
    for c in all_commands():
        if runs_cxr_cad(c.text):
            continue
        for words in simple_commands(c.text):
            w = _program(words)
            if w and w[0] not in OTHER_PROGRAMS:
                unknown.append(f"{c.where}: {c.key}")
    assert not unknown, "commands neither run here nor listed in OTHER_PROGRAMS:\n" + "\n".join(unknown)


def test_tables_name_existing_commands():
    """Every SKIP / EXPECTED_EXIT / KNOWN_BROKEN / DEFAULT_SUITE key is a command of the docs."""
    keys = {c.key for path in DOCS for c in extract(path)}
    tables = {
        "NOT_COMMANDS": NOT_COMMANDS,
        "SKIP": SKIP,
        "EXPECTED_EXIT": EXPECTED_EXIT,
        "KNOWN_BROKEN": KNOWN_BROKEN,
        "DEFAULT_SUITE": DEFAULT_SUITE,
    }
    stale = [f"{name}: {k}" for name, table in tables.items() for k in table if k not in keys]
    assert not stale, "table entries that name no documented command (update or remove them):\n" + "\n".join(stale)


def test_every_substitute_and_seed_is_used():
    """The path tables only hold paths the docs name (a renamed doc path must be renamed here)."""
    texts = [fast_settings(c.text) for c in all_commands() if runs_cxr_cad(c.text)]
    unused = [p for p in SUBSTITUTE if not any(_bounded(p).search(t) for t in texts)]
    unused += [p for p in SEED if not any(rel == p for t in texts for rel, _ in seeds_of(t))]
    assert not unused, f"paths no documented command names: {unused}"


# The reader itself, on small inputs.


def test_extract_joins_continuations_and_skips_comments_and_other_blocks(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "text\n\n```bash\n# a comment\ncxr-cad ingest /data \\\n    --out runs/x   # -> runs/x/manifest.csv\n\n"
        "cxr-cad report 'a # b.csv' --out r\n```\n\n```text\ncxr-cad not-a-command\n```\n\n"
        "```console\n$ cxr-cad demo --fast\nreport: /tmp/x\n```\n\n"
        "```bash\ncat > f.json <<'JSON'\n{\"a\": 1}\nJSON\ncxr-cad train --manifest m.csv --out r\n```\n",
        encoding="utf-8",
    )
    got = extract(doc, root=tmp_path)
    assert [(c.line, c.text) for c in got] == [
        (5, "cxr-cad ingest /data --out runs/x"),
        (8, "cxr-cad report 'a # b.csv' --out r"),
        (16, "cxr-cad demo --fast"),
        (21, "cat > f.json <<'JSON'\n{\"a\": 1}\nJSON"),
        (24, "cxr-cad train --manifest m.csv --out r"),
    ]
    assert got[0].comment == "-> runs/x/manifest.csv"
    assert [runs_cxr_cad(c.text) for c in got] == [True, True, True, False, True]


def test_substitution_and_seeds_respect_path_boundaries_and_outputs():
    text = "cxr-cad evaluate --model runs/model/model.pt --manifest m.csv --out model.pt /data/chest_xray/train"
    assert seeds_of(text) == [("m.csv", "manifest")]  # runs/model/model.pt is not model.pt; --out is output
    out = substitute(text, {"pngs_train": Path("/w/p q")})
    assert out.endswith("'/w/p q'")
    assert fast_settings("cxr-cad crossval --manifest m.csv --folds 5 --out cv").endswith("--folds 2")
    assert fast_settings("cxr-cad predict --model m.pt d --out o") == "cxr-cad predict --model m.pt d --out o"
