"""`mass demo`: does MASS pre-training help? One command, the embedded corpus, a laptop CPU.

Pre-trains MASS on English and French verses, fine-tunes fr->en on the first 10K training pairs from
the pre-trained weights and, with the same architecture, tokenizer and budget, from random weights;
then translates held-out test books with both and prints BLEU/chrF side by side. Every stage has a
share of the time budget; rerunning the command skips finished stages and resumes an interrupted one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mass.config import ObjectiveConfig, load_config
from mass.evaluate import evaluate_checkpoint
from mass.tasks import get_task, make_evaluator
from mass.train import resolve_data_dir, train

# Share of the budget per stage; evaluation takes the rest.
SHARES = {"pretrain": 0.45, "finetune_mass": 0.2, "finetune_scratch": 0.2}


def _stage(run_dir: Path, name: str, minutes: float, overrides: list[str], finetune: bool, src: str, tgt: str) -> float:
    """Run one training stage unless it already finished; returns its training time in seconds."""
    done = run_dir / name / "done.json"
    if done.is_file():
        return json.loads(done.read_text())["seconds"]
    start = time.perf_counter()
    cfg = load_config(None, [f"run_dir={run_dir / name}", f"train.time_budget={minutes}", *overrides])
    if finetune:
        from mass import distributed

        task = get_task("mt")
        cfg.objectives = [ObjectiveConfig(name="translate", src=src, tgt=tgt)]
        data = resolve_data_dir(cfg, distributed.setup(cfg.train.device))
        train(cfg, make_evaluator(cfg, task, data, cfg.objectives, 100), best_metric="bleu", data=data)
    else:
        train(cfg)
    seconds = time.perf_counter() - start
    done.write_text(json.dumps({"seconds": seconds}))
    return seconds


def run_demo(run_dir: Path, minutes: float = 15.0, pairs: int = 10_000, test_sentences: int = 400) -> str:
    """Run the whole comparison and return the Markdown table it prints."""
    run_dir = Path(run_dir)
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
    from mass.data.corpus import export_corpus

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
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        text = export_corpus("bible", Path(tmp))
        sources = (text / "test.fr").read_text().splitlines()
        refs = (text / "test.en").read_text().splitlines()
    examples = []
    for i in (0, 7, 42):
        examples += [
            f"source:     {sources[i]}",
            f"reference:  {refs[i]}",
            *(f"{label + ':':<18}{outputs[label][i]}" for label in outputs),
            "",
        ]
    report = table + "\n\nExamples\n\n" + "\n".join(examples)
    (run_dir / "results.md").write_text(report + "\n")
    return report
