"""Curves from a run's metrics log (JSON lines), written as PNG without a display."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(log_path: Path, out: Path) -> Path | None:
    """Training loss per objective and validation perplexities against steps, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(log_path)
    if not records:
        return None
    fig, (ax_train, ax_valid) = plt.subplots(1, 2, figsize=(11, 4))
    train_keys = sorted({k for r in records for k in r if k.startswith("loss_")})
    valid_keys = sorted({k for r in records for k in r if k.startswith("valid_ppl") or k in ("bleu", "rouge1")})
    for key in train_keys:
        points = [(r["step"], r[key]) for r in records if key in r]
        ax_train.plot(*zip(*points, strict=True), label=key.removeprefix("loss_"))
    ax_train.set(xlabel="update", ylabel="training loss (nats/token)", title="training loss")
    for key in valid_keys:
        points = [(r["step"], r[key]) for r in records if key in r]
        ax_valid.plot(*zip(*points, strict=True), marker="o", label=key)
    ax_valid.set(xlabel="update", title="validation")
    if any(k.startswith("valid_ppl") for k in valid_keys):
        ax_valid.set_yscale("log")
        ax_valid.set_ylabel("perplexity")
    for ax in (ax_train, ax_valid):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out
