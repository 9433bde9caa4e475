"""Run records: every log line to metrics.jsonl, and a PNG of the curves that matter.

metrics.jsonl is the run's source of truth (TensorBoard is extra, when installed): one JSON object
per Trainer log, with the step, the run session that wrote it, and every logged value. On resume
the rows from after the restored checkpoint are dropped first, so a resumed run's file reads as
one uninterrupted run — nothing duplicated, nothing before the checkpoint lost.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

from srl_sdk.core.atomic import replace_file, write_atomic
from srl_sdk.core.jsonl import read_jsonl
from srl_sdk.errors import require

__all__ = ["MetricsJsonlCallback", "read_metrics", "plot_metrics", "METRICS_FILE", "PLOT_FILE"]

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training_curves.png"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


def _metrics_callback_base():
    transformers = require("transformers", "train")
    return transformers.TrainerCallback


class MetricsJsonlCallback(_metrics_callback_base()):  # type: ignore[misc]
    """Appends every `Trainer.log` call to `<dir>/metrics.jsonl` (main process only)."""

    def __init__(self, directory: str | os.PathLike[str], stage: str) -> None:
        self.path = Path(directory) / METRICS_FILE
        self.stage = stage
        self.session = uuid.uuid4().hex[:12]

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.path.is_file():
            return
        keep = [row for row in read_metrics(self.path) if int(row.get("step", 0)) <= state.global_step]
        write_atomic(self.path, "".join(json.dumps(row) + "\n" for row in keep))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"stage": self.stage, "step": state.global_step, "epoch": _clean(state.epoch), "time": time.time(), "session": self.session}
        row.update({k: _clean(v) for k, v in logs.items()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; a torn last line (a kill mid-write) is skipped, not fatal."""
    if not Path(path).is_file():
        return []
    return [line.value for line in read_jsonl(path) if isinstance(line.value, dict)]


_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("reward", ("reward", "loss")),
    ("dynamic sampling kept ratio", ("dynamic_sampling/kept_ratio",)),
    ("validation", ("eval_reward", "eval_loss")),
)


def plot_metrics(metric_files: Iterable[str | os.PathLike[str]], out_png: str | os.PathLike[str]) -> Path | None:
    """Reward (or SFT loss), kept ratio and validation curves of one or more stages in one PNG."""
    matplotlib = require("matplotlib", "train")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for path in metric_files:
        for row in read_metrics(path):
            stage = str(row.get("stage", Path(path).parent.name))
            for _, keys in _PANELS:
                for key in keys:
                    value = row.get(key)
                    if isinstance(value, (int, float)):
                        series.setdefault(f"{stage}:{key}", {}).setdefault(key, []).append((int(row.get("step", 0)), float(value)))
    if not series:
        return None
    fig, axes = plt.subplots(1, len(_PANELS), figsize=(5 * len(_PANELS), 3.6))
    for ax, (title, keys) in zip(axes, _PANELS):
        for label, by_key in sorted(series.items()):
            for key in keys:
                points = by_key.get(key)
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out_png)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    replace_file(tmp, out)
    return out
