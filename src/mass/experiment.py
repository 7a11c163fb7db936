"""`mass experiment STUDY.yaml`: a named study of several runs, resumable, with a table and a plot.

A study is a list of runs. Each run pre-trains, fine-tunes or trains unsupervised MT (the same code as
the commands of those names), optionally starting from an earlier run of the study, then may be
evaluated on a held-out split. Finished runs are skipped when the study is rerun, so a killed study
resumes where it stopped. Results go to `RUN_ROOT/results.{md,json}` and `RUN_ROOT/plot.png`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mass.checkpoint import atomic_write_text, latest_checkpoint, load_state
from mass.config import ObjectiveConfig, from_dict, load_config, read_yaml
from mass.errors import MassError
from mass.plots import read_metrics

_RUN_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


@dataclass
class RunSpec:
    """One run of a study.

    Attributes:
        name: unique within the study; also the run directory's name.
        kind: "pretrain", "finetune" or "unsup".
        minutes: training budget in wall-clock minutes (when `steps` is 0).
        steps: training budget in updates: the same run on any machine under any load, so the runs of a
            sweep get equal training; `minutes` then only shows up in the table as the time it took.
        overrides: dotted config overrides for this run (after the study's `common` ones).
        init: name of an earlier run to start from (its best checkpoint).
        scratch: with `init`: take its architecture and tokenizer, not its weights.
        task, src, tgt: the fine-tuning task and direction (finetune), or the language pair (unsup).
        no_mass: unsup only: back-translation steps without MASS steps.
        evaluate: evaluate on the test split (fine-tuned and unsup runs); `mass` = MASS perplexity.
        labels: free key/values shown in the table and used by the plot.
    """

    name: str
    kind: str
    minutes: float = 5.0
    steps: int = 0
    overrides: list[str] = field(default_factory=list)
    init: str = ""
    scratch: bool = False
    task: str = "mt"
    src: str = "fr"
    tgt: str = "en"
    no_mass: bool = False
    evaluate: bool = True
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class PlotSpec:
    x: str = ""
    series: str = ""
    metric: str = "bleu"


@dataclass
class Study:
    name: str
    description: str = ""
    common: list[str] = field(default_factory=list)
    test_limit: int = 400
    metrics: list[str] = field(default_factory=lambda: ["bleu", "chrf"])
    plot: PlotSpec = field(default_factory=PlotSpec)
    runs: list[RunSpec] = field(default_factory=list)


def load_study(path: Path) -> Study:
    """A study file, checked whole before anything trains: a typo in the last run's overrides must not
    surface after hours of the earlier runs."""
    from mass.tasks import get_task

    path = Path(path)
    raw = read_yaml(path, "study")
    lines = _run_lines(path)
    try:
        study = from_dict(Study, raw, "study")
    except MassError as e:
        index = re.search(r"runs\[(\d+)\]", e.message)
        line = lines[int(index.group(1))] if index and int(index.group(1)) < len(lines) else None
        raise MassError(e.message, path, line) from None
    names = [run.name for run in study.runs]
    langs: dict[str, list[str]] = {}  # each run's languages: its own setting, else those of the run it starts from
    for run, line in zip(study.runs, lines, strict=True):
        if not _RUN_NAME.match(run.name):
            message = f"run name {run.name!r}: letters, digits, '_', '-', '.' only (it names a directory)"
            raise MassError(message, path, line)
        if names.count(run.name) > 1:
            raise MassError(f"run name {run.name!r} is used twice: names must be unique", path, line)
        if run.kind not in ("pretrain", "finetune", "unsup"):
            raise MassError(f"run {run.name}: kind must be pretrain, finetune or unsup", path, line)
        if run.init and run.init not in names[: names.index(run.name)]:
            raise MassError(f"run {run.name}: init {run.init!r} is not an earlier run of the study", path, line)
        try:
            get_task(run.task)
            cfg = load_config(None, [*study.common, *run.overrides])
        except MassError as e:
            raise MassError(f"run {run.name}: {e.message}", path, line) from None
        explicit = any(o.strip().startswith("data.langs=") for o in [*study.common, *run.overrides])
        langs[run.name] = cfg.data.langs if explicit or not run.init else langs[run.init]
        if run.kind != "pretrain" and not {run.src, run.tgt} <= set(langs[run.name]):
            have = ", ".join(langs[run.name])
            raise MassError(f"run {run.name}: {run.src}-{run.tgt} is not a pair of its languages ({have})", path, line)
    return study


def _run_lines(path: Path) -> list[int]:
    """The 1-based line where each entry of the file's `runs:` list starts, for errors about one run."""
    root = yaml.compose(path.read_text(encoding="utf-8"))
    for key, value in getattr(root, "value", None) or []:
        if key.value == "runs" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def _train_run(run: RunSpec, run_dir: Path, common: list[str], root: Path) -> None:
    from mass import distributed
    from mass.tasks import get_task, make_evaluator, task_objective, task_overrides
    from mass.train import init_overrides, resolve_data_dir, train

    if run.steps:
        budget = [f"train.max_steps={run.steps}", "train.time_budget=0"]
    else:
        budget = [f"train.time_budget={run.minutes}", "train.max_steps=1000000"]
    defaults = [f"run_dir={run_dir}", *budget]
    if run.init:
        defaults += init_overrides(root / run.init, run.scratch, run_dir)
    task = get_task(run.task)
    if run.kind == "finetune":  # validation decodes as the task does (as `mass finetune`), greedy for speed
        defaults += [*task_overrides(task), "generate.beam=1"]
    if run.kind == "unsup":
        defaults += ["data.train_split=unsup", "generate.beam=1"]
    cfg = load_config(None, defaults + common + run.overrides)
    if run.kind == "pretrain":
        train(cfg)
        return
    data = resolve_data_dir(cfg, distributed.setup(cfg.train.device))
    if run.kind == "finetune":
        cfg.objectives = cfg.objectives or [task_objective(task, run.src, run.tgt)]
        directions = [obj for obj in cfg.objectives if obj.name == "translate"][:1]  # MASS steps beside: not scored
    else:
        a, b = run.src, run.tgt
        mass_steps = [] if run.no_mass else [ObjectiveConfig(name="mass", lang=x) for x in (a, b)]
        cfg.objectives = cfg.objectives or [
            *mass_steps,
            ObjectiveConfig(name="bt", src=a, tgt=b),
            ObjectiveConfig(name="bt", src=b, tgt=a),
        ]
        directions = [ObjectiveConfig(name="translate", src=x, tgt=y) for x, y in ((a, b), (b, a))]
    evaluator = make_evaluator(cfg, task, data, directions, 100)
    train(cfg, evaluator=evaluator, best_metric=task.best_metric if evaluator else "valid_ppl", data=data)


def _evaluate_run(run: RunSpec, run_dir: Path, limit: int) -> dict[str, float]:
    from mass.evaluate import evaluate_checkpoint

    if run.kind == "pretrain":  # the trainer's last validation: MASS perplexity with its seeded masks
        evaluations = [r for r in read_metrics(run_dir / "metrics.jsonl") if "valid_ppl" in r]
        if not evaluations:
            raise MassError(f"pre-training run {run.name} has no validation to report: set evaluate: false", run_dir)
        last = evaluations[-1]
        out = {"mass_ppl": last.get("valid_ppl_mass", last["valid_ppl"])}  # MASS alone beside DAE steps
        for key, value in last.items():  # per language: valid_ppl_mass_en -> mass_ppl_en, dae -> dae_ppl_en
            kind, _, lang = key.removeprefix("valid_ppl_").partition("_")
            if key.startswith("valid_ppl_") and lang:
                out[f"{kind}_ppl_{lang}"] = value
        return out
    device = load_config(run_dir / "config.yaml").train.device  # where the run trained
    directions = [(run.src, run.tgt)] if run.kind == "finetune" else [(run.src, run.tgt), (run.tgt, run.src)]
    metrics = {}
    for src, tgt in directions:
        result = evaluate_checkpoint(run_dir, run.task, src, tgt, device=device, limit=limit)
        suffix = "" if len(directions) == 1 else f"_{src}-{tgt}"
        metrics.update({f"{k}{suffix}": v for k, v in result["metrics"].items() if isinstance(v, float)})
    if run.kind == "unsup":  # does the model align the two languages? (what back-translation builds on)
        aligned = evaluate_checkpoint(run_dir, "align", run.src, run.tgt, device=device, limit=limit)["metrics"]
        metrics.update({k: v for k, v in aligned.items() if k.startswith("retrieval_")})
    if len(directions) > 1:  # both directions of unsupervised MT: also their mean, under the plain name
        names = [k.removesuffix(f"_{directions[0][0]}-{directions[0][1]}") for k in metrics]
        metrics.update({n: sum(metrics[f"{n}_{a}-{b}"] for a, b in directions) / 2 for n in names if "_" not in n})
    return metrics


def _trained_minutes(run_dir: Path) -> float:
    """Training time of a run over all its invocations (a killed and resumed run counts each), from the
    training seconds its last checkpoint carries."""
    ckpt = latest_checkpoint(run_dir)
    return load_state(ckpt).get("train_seconds", 0.0) / 60 if ckpt else 0.0


def run_study(study: Study, root: Path, extra: list[str] = (), test_limit: int = 0) -> list[dict]:
    """Run (or resume) every run of the study; returns one result row per run.

    Args:
        extra: dotted overrides applied to every run after the study's own (e.g. a tiny size for tests).
        test_limit: overrides the study's number of test examples when > 0.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    common = [*study.common, *extra]
    rows = []
    for run in study.runs:
        run_dir = root / run.name
        done = run_dir / "result.json"
        if not done.is_file():
            budget = f"{run.steps} updates" if run.steps else f"{run.minutes} min"
            print(f"== {study.name}: {run.name} ({run.kind}, {budget})", flush=True)
            _train_run(run, run_dir, common, root)
            minutes = _trained_minutes(run_dir)
            metrics = _evaluate_run(run, run_dir, test_limit or study.test_limit) if run.evaluate else {}
            steps = max((r["step"] for r in read_metrics(run_dir / "metrics.jsonl")), default=0)
            result = {"metrics": metrics, "train_minutes": minutes, "steps": steps}
            atomic_write_text(done, json.dumps(result, indent=2))
        result = json.loads(done.read_text())
        rows.append({"run": run.name, "kind": run.kind, **run.labels, **result})
    write_results(study, root, rows)
    return rows


def write_results(study: Study, root: Path, rows: list[dict]) -> None:
    """results.json, a Markdown table and a plot of `study.plot.metric`."""
    atomic_write_text(root / "results.json", json.dumps({"study": study.name, "rows": rows}, indent=2))
    label_keys = sorted({k for run in study.runs for k in run.labels})
    metric_keys = [m for m in study.metrics if any(m in r["metrics"] for r in rows)]
    lines = [
        f"# {study.name}",
        "",
        study.description.strip(),
        "",
        "| run | " + " | ".join(label_keys + metric_keys) + " | updates | train min |",
        "|---" * (len(label_keys) + len(metric_keys) + 3) + "|",
    ]
    for r in rows:
        cells = [str(r.get(k, "")) for k in label_keys]
        cells += [f"{r['metrics'][m]:.2f}" if m in r["metrics"] else "" for m in metric_keys]
        lines.append(f"| {r['run']} | " + " | ".join(cells) + f" | {r.get('steps', '')} | {r['train_minutes']:.1f} |")
    atomic_write_text(root / "results.md", "\n".join(lines) + "\n")
    _plot(study, root, rows)


def _plot(study: Study, root: Path, rows: list[dict]) -> None:
    spec = study.plot
    points = [r for r in rows if spec.x in r and spec.metric in r["metrics"]]
    if not spec.x or not points:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = list(dict.fromkeys(str(r[spec.x]) for r in points))
    fig, ax = plt.subplots(figsize=(7, 4))
    for series in dict.fromkeys(str(r.get(spec.series, "")) for r in points):
        chosen = [r for r in points if str(r.get(spec.series, "")) == series]
        ax.plot(
            [xs.index(str(r[spec.x])) for r in chosen],
            [r["metrics"][spec.metric] for r in chosen],
            marker="o",
            label=series or spec.metric,
        )
    ax.set_xticks(range(len(xs)), xs)
    ax.set(xlabel=spec.x, ylabel=spec.metric, title=study.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = root / ".plot.tmp.png"  # renamed into place: a kill never leaves half a picture
    fig.savefig(tmp, dpi=110)
    tmp.replace(root / "plot.png")
    plt.close(fig)
