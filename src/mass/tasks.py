"""Fine-tuning tasks: which shipped corpus, which sides, which metric. Plain data, no registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from mass.batch import seq2seq_batch
from mass.config import Config, GenerationConfig, ObjectiveConfig, to_dict
from mass.data.binarize import DataDir
from mass.errors import MassError
from mass.inference import Generator
from mass.metrics import bleu, chrf, perplexity, retrieval_accuracy, rouge
from mass.model import MassModel
from mass.objectives import evaluate_loss


@dataclass(frozen=True)
class Task:
    """A sequence-to-sequence task on a shipped corpus.

    Attributes:
        corpus: the shipped corpus (see `mass.data.corpus.CORPORA`).
        metric: "bleu", "rouge" or "ppl": what validation and `mass evaluate` report.
        best_metric: the metric that selects the best checkpoint.
        src_data, tgt_data: data side names; empty means the language names (translation).
        generate: decoding defaults for the task.
    """

    corpus: str
    metric: str
    best_metric: str
    src_data: str = ""
    tgt_data: str = ""
    generate: GenerationConfig = field(default_factory=GenerationConfig)


TASKS = {
    "mt": Task(corpus="bible", metric="bleu", best_metric="bleu"),
    # As the original's Gigaword setting: beam 5, no repeated trigram, length penalty 1.
    "summarization": Task(
        corpus="debian",
        metric="rouge",
        best_metric="rougeL",
        src_data="src",
        tgt_data="tgt",
        generate=GenerationConfig(beam=5, no_repeat_ngram=3, max_len_a=0.0, max_len_b=40),
    ),
    "dialogue": Task(corpus="shakespeare", metric="ppl", best_metric="valid_ppl", src_data="src", tgt_data="tgt"),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise MassError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name]


def task_overrides(task: Task) -> list[str]:
    """Config defaults of a fine-tuning run on `task`: its decoding (validation decodes as evaluation will) and
    its shipped corpus. `mass finetune` and a study's finetune runs both start from these."""
    return [f"generate.{k}={v}" for k, v in to_dict(task.generate).items()] + [f"data.corpus={task.corpus}"]


def task_objective(task: Task, src: str, tgt: str) -> ObjectiveConfig:
    return ObjectiveConfig(name="translate", src=src, tgt=tgt, src_data=task.src_data, tgt_data=task.tgt_data)


def score(task: Task, hyps: list[str], refs: list[str]) -> dict:
    """The task's generation metrics on detokenized text."""
    if task.metric == "bleu":
        b, c = bleu(hyps, refs), chrf(hyps, refs)
        return {
            "bleu": b["bleu"],
            "chrf": c["chrf"],
            "bleu_signature": b["signature"],
            "chrf_signature": c["signature"],
        }
    if task.metric == "rouge":
        return rouge(hyps, refs)
    return {}


@torch.no_grad()
def text_perplexity(
    generator: Generator, sources: list[str], targets: list[str], src: str, tgt: str
) -> tuple[float, int]:
    """Teacher-forced perplexity of the targets given the sources (dialogue's metric, reported for all), and
    how many targets it had to cut to the model's positions (their tail is not scored)."""
    tok, model = generator.tokenizer, generator.model
    limit = model.cfg.max_positions - 1
    encoded = tok.encode_batch(targets)
    cut = sum(len(t) > limit for t in encoded)
    pairs = [(s[:limit], t[:limit]) for s, t in zip(tok.encode_batch(sources), encoded, strict=True)]
    pairs.sort(key=lambda p: max(len(p[0]), len(p[1])))
    batches = [
        seq2seq_batch([p[0] for p in chunk], [p[1] for p in chunk], generator.lang_id(src), generator.lang_id(tgt))
        for chunk in (pairs[i : i + 64] for i in range(0, len(pairs), 64))
    ]
    stats = evaluate_loss(model, batches, generator.device)
    return perplexity(stats["nll"], int(stats["tokens"])), cut


def make_evaluator(cfg: Config, task: Task, data: DataDir, directions: list[ObjectiveConfig], sentences: int):
    """Validation generation metric: decode the first `sentences` validation sources of each direction.

    Translation also reports `retrieval`: the percentage of those sources whose mean encoder state is nearest
    to their reference's (see `mass.metrics.retrieval_accuracy`), the cross-lingual alignment that
    unsupervised back-translation needs before its BLEU can move. With several directions (unsupervised MT
    scores both), metrics are suffixed with the direction and their mean is reported under the plain name,
    which then selects the best checkpoint.
    """
    if task.metric == "ppl" or sentences <= 0:
        return None
    split, tokenizer = cfg.data.valid_split, data.tokenizer()
    sets = []
    for obj in directions:
        if data.has(split, obj.src_side) and data.has(split, obj.tgt_side):
            src, tgt = data.array(split, obj.src_side), data.array(split, obj.tgt_side)
            if len(src) != len(tgt):
                raise MassError(
                    f"{split}.{obj.src_side} has {len(src)} sentences and {split}.{obj.tgt_side} {len(tgt)}: scoring "
                    f"needs line-aligned validation files (mass prepare --parallel {split} checks them)",
                    data.path,
                )
            n = min(sentences, len(src))
            refs = [tgt[i].tolist() for i in range(n)]
            # The original references where prepare kept them, as `mass evaluate` scores: decoding subwords
            # normalises characters (NFKC) and spells uncovered ones as ⁇.
            if data.has_text(split, obj.tgt_side):
                texts = read_source_lines(data.text(split, obj.tgt_side))[:n]
            else:
                texts = [tokenizer.decode(r) for r in refs]
            sets.append((obj, [src[i].tolist() for i in range(n)], refs, texts))
    if not sets:
        return None

    def evaluator(model: MassModel) -> dict[str, float]:
        generator = Generator(model, tokenizer, cfg.data.langs, next(model.parameters()).device)
        results = []
        for obj, sources, refs, texts in sets:
            with torch.no_grad():
                outs = generator.generate(sources, obj.src, obj.tgt, cfg.generate)
                hyps = [tokenizer.decode(o[0].tokens) for o in outs]
            results.append({k: v for k, v in score(task, hyps, texts).items() if isinstance(v, float)})
            if task.metric == "bleu":
                vectors = generator.sentence_vectors(sources, obj.src), generator.sentence_vectors(refs, obj.tgt)
                results[-1]["retrieval"] = 100 * retrieval_accuracy(*vectors)
        if len(results) == 1:
            return results[0]
        metrics = {
            f"{k}_{obj.src}-{obj.tgt}": v for (obj, *_), r in zip(sets, results, strict=True) for k, v in r.items()
        }
        metrics.update({k: sum(r[k] for r in results) / len(results) for k in results[0]})
        return metrics

    return evaluator


def read_source_lines(path: Path | None, max_chars: int = 10_000, allow_empty: bool = False) -> list[str]:
    """Lines of a UTF-8 file (or stdin when `path` is None), with a one-line error for bad lines.

    Lines end at "\n" only (a stray "\r" inside a line must not split it, or outputs would stop lining up
    with inputs); `allow_empty` keeps blank lines as "" instead of refusing them.
    """
    import codecs
    import sys

    if path is not None and not Path(path).is_file():
        raise MassError("is a directory, not a file" if Path(path).is_dir() else "input file not found", path)
    data = Path(path).read_bytes() if path is not None else sys.stdin.buffer.read()
    data = data.removeprefix(codecs.BOM_UTF8)  # editors on Windows start files with one; it is not text
    raw = data.split(b"\n")
    if raw and not raw[-1]:
        raw.pop()  # the final newline ends the last line, it does not start another
    name = str(path) if path is not None else "<stdin>"
    lines = []
    for number, line in enumerate(raw, start=1):
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise MassError("invalid UTF-8", name, number) from None
        if not text and not allow_empty:
            raise MassError("empty line (one sentence per line is expected)", name, number)
        if len(text) > max_chars:
            raise MassError(f"line has {len(text)} characters, more than {max_chars}", name, number)
        lines.append(text)
    if not lines:
        raise MassError("input is empty", name)
    return lines
