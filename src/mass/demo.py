"""`mass demo`: does MASS pre-training help? One command, the embedded corpus, a laptop CPU.

Pre-trains MASS on English and French verses, fine-tunes fr->en on the first 10K training pairs from
the pre-trained weights and, with the same architecture, tokenizer and budget, from random weights;
then translates held-out test books with both and prints BLEU/chrF side by side. Every stage has a
share of the time budget; rerunning the command skips finished stages and resumes an interrupted one
(each stage is an ordinary run, which keeps its time budget across resumptions).
"""

from __future__ import annotations

import json
from pathlib import Path

from mass.checkpoint import latest_checkpoint, load_state
from mass.config import ObjectiveConfig, load_config
from mass.errors import MassError
from mass.evaluate import evaluate_checkpoint, shipped_pairs
from mass.tasks import get_task, make_evaluator
from mass.train import resolve_data_dir, train

# Share of the budget per stage; evaluation takes the rest.
SHARES = {"pretrain": 0.45, "finetune_mass": 0.2, "finetune_scratch": 0.2}
EXAMPLES = (0, 7, 42)  # test verses printed beside their reference


def _stage(run_dir: Path, name: str, minutes: float, overrides: list[str], finetune: bool, src: str, tgt: str) -> float:
    """Run (or resume, or skip when finished) one training stage; returns its training seconds in all."""
    cfg = load_config(None, [f"run_dir={run_dir / name}", f"train.time_budget={minutes}", *overrides])
    if finetune:
        from mass import distributed

        task = get_task("mt")
        cfg.objectives = [ObjectiveConfig(name="translate", src=src, tgt=tgt)]
        data = resolve_data_dir(cfg, distributed.setup(cfg.train.device))
        train(cfg, make_evaluator(cfg, task, data, cfg.objectives, 100), best_metric="bleu", data=data)
    else:
        train(cfg)
    return load_state(latest_checkpoint(run_dir / name))["train_seconds"]


def _check_settings(run_dir: Path, minutes: float, pairs: int, test_sentences: int) -> None:
    """Refuse bad numbers, and a run directory that an earlier demo with another budget or size started:
    its finished stages would be reused as they are."""
    if not minutes > 0 or pairs < 1 or test_sentences < 1:
        given = f"not {minutes}, {pairs}, {test_sentences}"
        raise MassError(f"need --minutes > 0, --pairs >= 1, --test-sentences >= 1 ({given})")
    settings, record = {"minutes": minutes, "pairs": pairs}, run_dir / "demo.json"
    if record.is_file():
        old = json.loads(record.read_text())
        if old != settings:
            given = ", ".join(f"--{k} {v:g}" for k, v in old.items())
            raise MassError(f"this demo was started with {given}: give another --run-dir to run it with others", record)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(settings) + "\n")


def run_demo(run_dir: Path, minutes: float = 15.0, pairs: int = 10_000, test_sentences: int = 400) -> str:
    """Run the whole comparison and return the Markdown table it prints."""
    run_dir = Path(run_dir)
    _check_settings(run_dir, minutes, pairs, test_sentences)
    src, tgt = "fr", "en"
    common = [
        "model.preset=small",
        "model.dropout=0.0",  # a few epochs at most: nothing to regularize, and dropout costs ~20% of the step
        "model.attention_dropout=0.0",
        "data.max_len=100",
        "data.max_tokens=1500",
        "train.eval_interval=50",
        "train.log_interval=10",
    ]
    pre = _stage(
        run_dir,
        "pretrain",
        minutes * SHARES["pretrain"],
        [*common, "train.max_steps=100000", "optim.lr=0.001", "optim.warmup_steps=100"],
        False,
        src,
        tgt,
    )
    ckpt = run_dir / "pretrain"
    finetune = [
        *common,
        f"init_from={ckpt}",
        f"data.first_n={pairs}",
        "train.max_steps=100000",
        "optim.lr=0.0007",
        "optim.warmup_steps=50",
        "optim.label_smoothing=0.1",
        "generate.beam=1",
    ]
    times = {
        "MASS pre-trained": pre
        + _stage(run_dir, "finetune_mass", minutes * SHARES["finetune_mass"], finetune, True, src, tgt),
        "from scratch": _stage(
            run_dir,
            "finetune_scratch",
            minutes * SHARES["finetune_scratch"],
            [*finetune, "scratch=true"],
            True,
            src,
            tgt,
        ),
    }
    rows, outputs = [], {}
    for label, name in (("MASS pre-trained", "finetune_mass"), ("from scratch", "finetune_scratch")):
        result = evaluate_checkpoint(run_dir / name, "mt", src, tgt, limit=test_sentences)
        metrics = result["metrics"]
        cells = [label, f"{metrics['bleu']:.2f}", f"{metrics['chrf']:.2f}", f"{metrics['ppl']:.1f}"]
        rows.append("| " + " | ".join([*cells, f"{times[label] / 60:.1f}"]) + " |")
        outputs[label] = Path(result["path"]).with_suffix(".hyp.txt").read_text().splitlines()
        signature = metrics["bleu_signature"]
    table = "\n".join(
        [
            f"fr->en on the first {test_sentences} verses of the held-out test books, {pairs} training pairs",
            "",
            "| model | BLEU | chrF | test ppl | training min |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"sacreBLEU signature: {signature}",
        ]
    )
    sources, refs = shipped_pairs("bible", "test", src, tgt)
    examples = []
    for i in (i for i in EXAMPLES if i < test_sentences):
        examples += [
            f"source:     {sources[i]}",
            f"reference:  {refs[i]}",
            *(f"{label + ':':<18}{outputs[label][i]}" for label in outputs),
            "",
        ]
    report = table + "\n\nExamples\n\n" + "\n".join(examples)
    (run_dir / "results.md").write_text(report + "\n")
    return report
