"""Curves from a run's metrics log (JSON lines), written as PNG without a display."""

from __future__ import annotations

import json
from pathlib import Path

GENERATION_METRICS = ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "retrieval")


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(log_path: Path, out: Path) -> Path | None:
    """Training loss per objective, validation perplexities and (if any) BLEU/ROUGE against updates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(log_path)
    if not records:
        return None
    keys = sorted({k for r in records for k in r})
    generation = [k for k in keys if k.split("_")[0] in GENERATION_METRICS]
    panels = [
        ("training loss (nats/token)", [k for k in keys if k.startswith("loss_")], False),
        ("validation perplexity", [k for k in keys if k.startswith("valid_ppl")], True),
        ("validation BLEU / chrF / ROUGE / retrieval %", generation, False),
    ]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (title, names, log_scale) in zip(axes[0], panels, strict=True):
        for key in names:
            points = [(r["step"], r[key]) for r in records if key in r]
            ax.plot(*zip(*points, strict=True), marker="o" if len(points) < 40 else None, label=key)
        ax.set(xlabel="update", title=title)
        if log_scale:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out
