"""The training run folder: what is written there, and the check that a rerun may resume.

Layout of ``RUN_DIR``::

    config.yaml          resolved TrainConfig (every setting, defaults included)
    run.json             config fingerprint, manifest hash, seed, split, init/parent bundle, versions, runtime
    split.csv            one row per manifest row used: sop_instance_uid, patient_id, label, split (train/val)
    train_log.csv        one row per finished epoch
    checkpoint.pt        last finished epoch (see cxr_cad.training.checkpoint)
    cache/               decoded + resized images (unless data.cache_dir points elsewhere)
    val_predictions.csv  validation probabilities of the best epoch
    model.pt             the final bundle (cxr_cad.model.save_bundle)
    result.json          best epoch, validation AUC, threshold, selection criterion, forced guards;
                         written last = run complete
    failed.json          only after a refused run (diverged / never beat chance): why, the epochs
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from cxr_cad.config import TrainConfig, config_diff
from cxr_cad.core.atomic import atomic_write_json, atomic_write_many, json_dumps
from cxr_cad.core.provenance import software_versions
from cxr_cad.errors import ConfigError, OutputError
from cxr_cad.manifest import table_text, write_table
from cxr_cad.runtime import RuntimeInfo
from cxr_cad.training.data import TrainData

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
SPLIT_FILE = "split.csv"
LOG_FILE = "train_log.csv"
VAL_PRED_FILE = "val_predictions.csv"
BUNDLE_FILE = "model.pt"
RESULT_FILE = "result.json"
LOG_COLUMNS = ["epoch", "train_loss", "val_loss", "val_auc", "lr", "seconds", "images_per_s", "best", "frozen_backbone"]


def package_versions() -> dict[str, str]:
    """cxr_cad, Python and the installed versions of the core packages (:func:`cxr_cad.core.atomic.software_versions`)."""
    return software_versions()


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as JSON (:func:`cxr_cad.core.atomic.json_dumps` style), written atomically."""
    atomic_write_json(path, obj)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise OutputError(f"{path} cannot be read ({exc}); delete the run folder to start over") from exc


def check_resumable(out_dir: Path, cfg: TrainConfig, manifest_hash: str) -> bool:
    """True when ``out_dir`` already holds this run (same config fingerprint and data).

    False for an empty or new folder. Raises ConfigError naming every setting that differs
    when the folder holds a run with another config, or another manifest.
    """
    run_file = Path(out_dir) / RUN_FILE
    if not run_file.exists():
        return False
    run = read_json(run_file)
    problems = []
    if run.get("fingerprint") != cfg.fingerprint():
        try:
            old = TrainConfig.from_dict(yaml.safe_load((Path(out_dir) / CONFIG_FILE).read_text(encoding="utf-8")))
            diffs = config_diff(old, cfg)
        except (OSError, ConfigError, yaml.YAMLError):
            diffs = ["(the stored config.yaml cannot be read)"]
        problems.append("it holds a run with a different config: " + "; ".join(diffs or ["(settings changed)"]))
    if run.get("manifest_hash") != manifest_hash:
        problems.append(
            "it holds a run on different data (manifest hash "
            f"{str(run.get('manifest_hash'))[:12]} vs {manifest_hash[:12]})"
        )
    if problems:
        raise ConfigError(
            problems + ["rerun with the same config to resume it, or choose a new --out"], source=str(out_dir)
        )
    return True


def write_run_files(out_dir: Path, cfg: TrainConfig, run: dict, split: pd.DataFrame) -> None:
    """config.yaml, run.json and split.csv (rank 0 only, before the first epoch)."""
    out_dir = Path(out_dir)
    # one unit: a full disk leaves none of them rather than a config.yaml without its run.json
    atomic_write_many(
        {
            out_dir / CONFIG_FILE: cfg.to_yaml(),
            out_dir / SPLIT_FILE: table_text(split),
            out_dir / RUN_FILE: json_dumps(run),
        }
    )


def write_log(out_dir: Path, history: list[dict]) -> None:
    """Rewrite train_log.csv from the epoch records (atomic)."""
    write_table(pd.DataFrame(history, columns=LOG_COLUMNS), Path(out_dir) / LOG_FILE)


def split_table(train_df: pd.DataFrame, val_df: pd.DataFrame | None, label_col: str, group_col: str) -> pd.DataFrame:
    """Which images (and so which patients) trained and which validated."""
    parts = []
    for name, df in (("train", train_df), ("val", val_df)):
        if df is None:
            continue
        cols = {c: df[c].astype(str) for c in ("sop_instance_uid", group_col, label_col) if c in df.columns}
        part = pd.DataFrame(cols)
        part["split"] = name
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def run_record(cfg: TrainConfig, data: TrainData, init_record: dict[str, Any], info: RuntimeInfo) -> dict[str, Any]:
    """``run.json``: what this run is (fingerprint, data hash, split, init, versions, runtime)."""
    return {
        "fingerprint": cfg.fingerprint(),
        "manifest_hash": data.manifest_hash,
        "seed": cfg.seed,
        "split": data.how,
        "n_train": len(data.train_df),
        "n_val": 0 if data.val_df is None else len(data.val_df),
        "init": init_record,
        "versions": package_versions(),
        "runtime": info.to_dict(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
