"""`mass evaluate`: score a checkpoint on a held-out split or on the user's files; results as JSON.

Tasks: the fine-tuning tasks (`mt`, `summarization`, `dialogue`), `mass` (MASS perplexity of one language) and
`align` (cross-lingual sentence retrieval between two languages: does pre-training align them?).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from mass.checkpoint import (
    atomic_write_text,
    best_checkpoint,
    latest_checkpoint,
    read_checkpoint_config,
    resolve_checkpoint,
    same_tokenizer,
)
from mass.config import Config, GenerationConfig, from_dict
from mass.data.binarize import DataDir, load_data_dir
from mass.data.corpus import export_corpus, prepare_corpus
from mass.data.streams import VALID_SEED, fixed_batches, kept_examples, mass_collate
from mass.errors import MassError
from mass.inference import Generator, load_generator
from mass.metrics import perplexity, retrieval_accuracy
from mass.objectives import evaluate_loss
from mass.tasks import get_task, read_source_lines, score, text_perplexity
from mass.train import max_len


def shipped_pairs(corpus: str, split: str, src_side: str, tgt_side: str) -> tuple[list[str], list[str]]:
    """The line-aligned text of two sides of a split of a shipped corpus, as its builder wrote it."""
    with tempfile.TemporaryDirectory() as tmp:
        text = export_corpus(corpus, Path(tmp))
        src_path, tgt_path = text / f"{split}.{src_side}", text / f"{split}.{tgt_side}"
        for path in (src_path, tgt_path):
            if not path.is_file():
                raise MassError(f"the {corpus} corpus has no split {split!r} for side {path.suffix[1:]!r}")
        return read_source_lines(src_path), read_source_lines(tgt_path)


def checkpoint_data(ckpt: Path, cfg: Config) -> DataDir:
    """The binarized data a checkpoint was trained on (`cfg` is its config): the run's data directory, or
    the shipped corpus tokenized with the checkpoint's own tokenizer."""
    data = load_data_dir(cfg.data.dir or prepare_corpus(cfg.data.corpus, ckpt / "spm.model"))
    if not same_tokenizer(ckpt, data.tokenizer_path):
        raise MassError(
            f"the run's data directory {data.path} was prepared again with another tokenizer since this "
            f"checkpoint was trained: prepare it with `mass prepare --tokenizer {ckpt / 'spm.model'}`",
            ckpt,
        )
    return data


def mass_perplexity(ckpt: Path, lang: str, split: str, device: str, limit: int = 0) -> dict[str, float | int]:
    """MASS perplexity with the checkpoint's own masking config, length limit and fixed seed, as in training:
    on the first `data.valid_sentences` of the validation split it is the training log's validation value."""
    cfg = from_dict(Config, read_checkpoint_config(ckpt), "checkpoint config")
    generator = load_generator(ckpt, device)
    lang_id = generator.lang_id(lang)  # before looking for its data: the model's languages are the question
    data = checkpoint_data(ckpt, cfg)
    array = data.array(split, lang)
    examples = kept_examples(array.lengths, 1, max_len(cfg), limit=limit)  # the sentences training validates on
    collate = mass_collate(array, lang_id, cfg.mask, data.vocab_size)
    batches = fixed_batches(array.lengths, examples, cfg.data.max_tokens, VALID_SEED, collate)
    stats = evaluate_loss(generator.model, batches, generator.device)
    return {"mass_ppl": perplexity(stats["nll"], stats["tokens"]), "sentences": len(examples)}


def evaluate_checkpoint(
    checkpoint: str | Path,
    task_name: str,
    src: str,
    tgt: str,
    split: str = "test",
    input_path: Path | None = None,
    reference_path: Path | None = None,
    gen_cfg: GenerationConfig | None = None,
    device: str = "cpu",
    limit: int = 0,
    output: Path | None = None,
) -> dict:
    """Score a checkpoint; write `{metrics, ...}` as JSON (default: RUN_DIR/eval/) and the hypotheses."""
    ckpt = resolve_checkpoint(checkpoint)
    where = ckpt.resolve()  # `mass evaluate .` from inside a checkpoint still finds its run
    in_run = where.parent.name == "checkpoints"  # else a checkpoint on its own (copied, averaged elsewhere)
    run_dir = where.parent.parent if in_run else ckpt
    name = f"{task_name}-{src}-{split}" if task_name == "mass" else f"{task_name}-{src}-{tgt}-{split}"
    if input_path is not None:
        name = f"{task_name}-{src}-{tgt}-input-{input_path.name}"  # never a split's name, whatever the file
    if in_run and where != (best_checkpoint(run_dir) or latest_checkpoint(run_dir)).resolve():
        name += f"-{ckpt.name}"  # not the run's own checkpoint (an older or averaged one): keep results apart
    if limit > 0:
        name += f"-first{limit}"  # a quick look must not replace the scores of the whole set
    output = output or run_dir / "eval" / f"{name}.json"
    start = time.perf_counter()
    given = {"input": str(input_path), "reference": str(reference_path)} if input_path else {"split": split}
    result: dict = {"checkpoint": str(ckpt), "task": task_name, **given}
    if task_name == "mass":
        result["metrics"] = mass_perplexity(ckpt, src, split, device, limit)
    else:
        task = get_task("mt" if task_name == "align" else task_name)
        gen_cfg = gen_cfg or task.generate
        generator = load_generator(ckpt, device)
        for lang in (src, tgt):  # a language the model lacks: say so, not that the data lacks it
            generator.lang_id(lang)
        if input_path is not None:
            if reference_path is None:
                raise MassError("--reference is required with --input")
            sources, refs = read_source_lines(input_path), read_source_lines(reference_path)
            if len(sources) != len(refs):
                raise MassError(f"{len(sources)} sources but {len(refs)} references in {reference_path}", input_path)
            source_name = str(input_path)
        else:
            sides = task.src_data or src, task.tgt_data or tgt
            data_dir = read_checkpoint_config(ckpt)["data"].get("dir")
            if data_dir:  # the run's own data: the text its prepare kept
                data = load_data_dir(Path(data_dir))
                source_name = str(data.text(split, sides[0]))
                sources, refs = (read_source_lines(data.text(split, side)) for side in sides)
            else:
                source_name = f"the {task.corpus} corpus's {split}.{sides[0]}"
                sources, refs = shipped_pairs(task.corpus, split, *sides)
        if limit > 0:
            sources, refs = sources[:limit], refs[:limit]
        generator.check_lengths(generator.tokenizer.encode_batch(sources), source_name)
        if task_name == "align":
            result.update(metrics=alignment(generator, sources, refs, src, tgt), src=src, tgt=tgt)
            return _write(result, output, start)
        with torch.no_grad():
            ppl, cut = text_perplexity(generator, sources, refs, src, tgt)
            metrics = {"ppl": ppl}
            if cut:  # perplexity reads a reference up to the model's positions: say how many (BLEU reads all)
                metrics["ppl_references_cut"] = cut
            hyps = []
            if task.metric != "ppl":
                hyps = generator.translate(sources, src, tgt, gen_cfg, progress=True)
                metrics.update(score(task, hyps, refs))
        metrics["sentences"] = len(sources)
        result.update(metrics=metrics, src=src, tgt=tgt, generation=gen_cfg.__dict__)
        if hyps:
            atomic_write_text(output.with_suffix(".hyp.txt"), "\n".join(hyps) + "\n")
    return _write(result, output, start)


def alignment(generator: Generator, sources: list[str], targets: list[str], src: str, tgt: str) -> dict[str, float]:
    """Cross-lingual retrieval between line-aligned texts, in both directions: the percentage of sentences
    whose mean encoder state is nearest to their own translation's (chance: 100 / the number of sentences)."""
    vectors = [
        generator.sentence_vectors(generator.tokenizer.encode_batch(texts), lang)
        for texts, lang in ((sources, src), (targets, tgt))
    ]
    forward, backward = 100 * retrieval_accuracy(*vectors), 100 * retrieval_accuracy(*reversed(vectors))
    return {
        f"retrieval_{src}-{tgt}": forward,
        f"retrieval_{tgt}-{src}": backward,
        "retrieval": (forward + backward) / 2,
        "chance": 100 / len(sources),
        "sentences": len(sources),
    }


def _write(result: dict, output: Path, start: float) -> dict:
    result["seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_text(output, json.dumps(result, indent=2) + "\n")
    result["path"] = str(output)
    return result
