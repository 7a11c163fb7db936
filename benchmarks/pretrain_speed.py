"""Pre-training throughput of this project's MASS step against Hugging Face BART on the same sentences.

Both systems train the same-size Transformer with Adam (fp32, dropout, gradient clipping at 1.0) on the
same sentences (the first N training sentences of the embedded en-fr Bible, each language) with the same
MASS masks (`mass_batch`, span of half the sentence):

- this project: the real training step: `BatchStream` token-budget batches, `mass_collate`, the fragment
  decoder input, `seq2seq_loss` (output projection on the span only);
- BART: `BartForConditionalGeneration` fed the MASS task the only way it takes it: the masked sentence
  as encoder input, the full-length shifted sentence with [MASK] outside the span as decoder input
  (the paper's "full" variant), labels on the span and -100 elsewhere, logits everywhere; fixed-size
  batches in corpus order, padded to the longest, sized to the same average real tokens per batch.

Timed windows alternate between the two systems (A/B/A/B) so that noise from a shared machine hits
both; the median window is reported. FLOPs are counted by `forward_matmul_flops` below (all matmuls
incl. attention scores/values and the cross-attention keys/values of every decoder layer); "needed"
is 3x the forward FLOPs of the real tokens of this project's MASS step (no padding, fragment decoder,
projection on the span), "executed" is what each system actually multiplies, padding included.

Usage: python benchmarks/pretrain_speed.py [--preset small|tiny] [--sentences N] [--steps S] ...
"""

from __future__ import annotations

import argparse
import datetime
import functools
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from matmul_peak import matmul_gflops

from mass import export
from mass.batch import Batch, pad_sequences
from mass.data.batching import token_budget_batches
from mass.data.binarize import TokenArray, load_data_dir
from mass.data.corpus import prepare_embedded
from mass.data.streams import BatchStream, batch_generator, kept_examples, mass_collate
from mass.data.tokenizer import PAD_ID
from mass.masking import MaskConfig, mass_batch
from mass.model import PRESETS, MassModel, ModelConfig, count_parameters
from mass.objectives import seq2seq_loss

VOCAB_SIZE = 8000
LANGS = ("en", "fr")
SEED = 1
ADAM = {"lr": 5e-4, "betas": (0.9, 0.98), "eps": 1e-8}  # the project's optimizer defaults
CLIP_NORM = 1.0
PHASES = ("batch", "forward", "backward", "optimizer")


# --------------------------------------------------------------------------------------------------
# FLOP counting


def forward_matmul_flops(cfg: ModelConfig, src_len: int, tgt_len: int, logit_rows: int) -> float:
    """Forward matmul FLOPs of one sentence: `src_len` encoder tokens, `tgt_len` decoder tokens that
    attend to each other and to all `src_len` encoder states, and `logit_rows` output projections."""
    d, f, s, t = cfg.embed_dim, cfg.ffn_dim, src_len, tgt_len
    encoder = cfg.encoder_layers * s * (2 * 4 * d * d + 2 * 2 * d * f + 2 * 2 * s * d)
    decoder = cfg.decoder_layers * (
        t * 2 * 4 * d * d  # self-attention q, k, v, out
        + t * 2 * 2 * d * d  # cross-attention q, out
        + s * 2 * 2 * d * d  # cross-attention k, v of the encoder states
        + t * 2 * 2 * d * f  # feed-forward
        + t * 2 * 2 * (t + s) * d  # attention scores and values
    )
    return float(encoder + decoder + logit_rows * 2 * d * cfg.vocab_size)


def needed_flops(cfg: ModelConfig, lengths: torch.Tensor, spans: torch.Tensor) -> float:
    """Training FLOPs (3x forward) the MASS step needs for sentences of `lengths` with `spans` masked:
    encoder on `x' </s>`, decoder on the span only, projection on the span only, no padding."""
    return 3.0 * sum(
        forward_matmul_flops(cfg, m + 1, k, k) for m, k in zip(lengths.tolist(), spans.tolist(), strict=True)
    )


# --------------------------------------------------------------------------------------------------
# The two systems: each `step()` trains on one batch and returns what it processed.


@dataclass
class StepStats:
    sentences: int
    target_tokens: int
    needed_flops: float
    executed_flops: float
    phases: dict[str, float]


@dataclass
class System:
    """A model and optimizer; `window(chunk)` returns the training steps of one pass over a chunk."""

    name: str
    params: int
    window: Callable[[list[np.ndarray]], list[Callable[[], StepStats]]]
    windows: list[dict[str, float]] = field(default_factory=list)


class PhaseTimer:
    """Wall time of consecutive phases of a step (CPU ops are synchronous, so this is exact)."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self._last
        self._last = now


def _optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def our_batch_counts(arrays: list[TokenArray], chunk: list[np.ndarray], max_tokens: int) -> list[int]:
    """How many token-budget batches `BatchStream` makes of each language's sentences in one epoch."""
    return [
        len(token_budget_batches(arr.lengths[ex], max_tokens, seed=SEED, epoch=0))
        for arr, ex in zip(arrays, chunk, strict=True)
    ]


def build_ours(cfg: ModelConfig, arrays: list[TokenArray], max_tokens: int) -> System:
    """This project's training step: token-budget `BatchStream`s (one per language, alternating),
    fragment MASS batches from `mass_collate`, `seq2seq_loss` divided by the batch's target tokens,
    clipping, Adam."""
    torch.manual_seed(SEED)
    model = MassModel(cfg).train()
    optimizer = torch.optim.Adam(model.parameters(), **ADAM)
    collates = [mass_collate(arr, lang, MaskConfig(), cfg.vocab_size) for lang, arr in enumerate(arrays)]

    def step(stream: BatchStream) -> StepStats:
        timer = PhaseTimer()
        batch = next(stream)
        timer.mark("batch")
        loss, stats = seq2seq_loss(model, batch)
        timer.mark("forward")
        (loss / max(stats["tokens"], 1.0)).backward()
        timer.mark("backward")
        _optimizer_step(model, optimizer)
        timer.mark("optimizer")
        lengths, spans = _lengths_and_spans(batch)
        rows, src_len = batch.src_tokens.shape
        executed = 3.0 * (
            rows * forward_matmul_flops(cfg, src_len, batch.dec_tokens.size(1), 0)
            + stats["tokens"] * 2 * cfg.embed_dim * cfg.vocab_size
        )
        return StepStats(rows, int(stats["tokens"]), needed_flops(cfg, lengths, spans), executed, timer.phases)

    def window(chunk: list[np.ndarray]) -> list[Callable[[], StepStats]]:
        streams = [
            BatchStream(arr.lengths, ex, max_tokens, SEED, collate)
            for arr, ex, collate in zip(arrays, chunk, collates, strict=True)
        ]
        counts = our_batch_counts(arrays, chunk, max_tokens)
        order = [lang for i in range(max(counts)) for lang in range(len(streams)) if i < counts[lang]]
        return [functools.partial(step, streams[lang]) for lang in order]

    return System("this project (MASS)", count_parameters(model), window)


def bart_config(cfg: ModelConfig):
    """`mass export`'s `BartConfig` of the same size as `cfg` (post-norm, GELU, learned positions, tied
    embeddings), for training: no generation cache."""
    config = export.bart_config(cfg)
    config.use_cache = False
    return config


def build_bart(cfg: ModelConfig, arrays: list[TokenArray], batch_size: int) -> System:
    """`BartForConditionalGeneration` on the same sentences and masks, in the "full" MASS variant:
    batches of `batch_size` sentences in corpus order, alternating languages."""
    from transformers import BartForConditionalGeneration

    torch.manual_seed(SEED)
    model = BartForConditionalGeneration(bart_config(cfg)).train()
    optimizer = torch.optim.Adam(model.parameters(), **ADAM)
    mask_cfg = MaskConfig(decoder_input="full")

    def step(lang: int, ids: np.ndarray, index: int) -> StepStats:
        timer = PhaseTimer()
        sentences = [arrays[lang][int(i)] for i in ids]
        tokens = pad_sequences(sentences)
        lengths = torch.tensor([len(s) for s in sentences])
        generator = batch_generator(SEED, 0, index)
        batch = mass_batch(tokens, lengths, torch.full((len(ids),), lang), mask_cfg, cfg.vocab_size, generator)
        labels = batch.target.masked_fill(batch.target == PAD_ID, -100)
        inputs = {
            "input_ids": batch.src_tokens,
            "attention_mask": (batch.src_tokens != PAD_ID).long(),
            "decoder_input_ids": batch.dec_tokens,
            "decoder_attention_mask": (batch.dec_tokens != PAD_ID).long(),
            "labels": labels,
        }
        timer.mark("batch")
        loss = model(**inputs).loss  # mean over the span tokens
        timer.mark("forward")
        loss.backward()
        timer.mark("backward")
        _optimizer_step(model, optimizer)
        timer.mark("optimizer")
        rows, src_len = batch.src_tokens.shape
        tgt_len = batch.dec_tokens.size(1)
        spans = (labels != -100).sum(dim=1)
        executed = 3.0 * rows * forward_matmul_flops(cfg, src_len, tgt_len, tgt_len)
        return StepStats(rows, int(spans.sum()), needed_flops(cfg, lengths, spans), executed, timer.phases)

    def window(chunk: list[np.ndarray]) -> list[Callable[[], StepStats]]:
        per_lang = [[ex[i : i + batch_size] for i in range(0, len(ex), batch_size)] for ex in chunk]
        order = [(lang, b[i]) for i in range(max(map(len, per_lang))) for lang, b in enumerate(per_lang) if i < len(b)]
        return [functools.partial(step, lang, ids, index) for index, (lang, ids) in enumerate(order)]

    return System("Hugging Face BART", sum(p.numel() for p in model.parameters()), window)


def _lengths_and_spans(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Sentence lengths m and span lengths k of a MASS batch (the encoder input is `x' </s>`)."""
    return (batch.src_tokens != PAD_ID).sum(dim=1) - 1, (batch.target != PAD_ID).sum(dim=1)


def check_same_masks(array: TokenArray, ids: np.ndarray, vocab_size: int) -> None:
    """The fragment (ours) and full (BART) decoder inputs come from the same masks for the same seed."""
    sentences = [array[int(i)] for i in ids]
    tokens, lengths = pad_sequences(sentences), torch.tensor([len(s) for s in sentences])
    lang = torch.zeros(len(ids), dtype=torch.long)
    made = [
        mass_batch(tokens, lengths, lang, MaskConfig(decoder_input=v), vocab_size, batch_generator(SEED, 0, 0))
        for v in ("fragment", "full")
    ]
    fragment, full = made
    assert torch.equal(fragment.src_tokens, full.src_tokens), "encoder inputs differ"
    for row in range(len(ids)):
        span = fragment.dec_positions[row][fragment.target[row] != PAD_ID]
        assert torch.equal(span, torch.nonzero(full.target[row] != PAD_ID).flatten()), "spans differ"


# --------------------------------------------------------------------------------------------------
# Timing


def run_window(system: System, chunk: list[np.ndarray], max_steps: int) -> None:
    """Time one pass of `system` over `chunk` (or its first `max_steps` steps) and record the rates."""
    steps = system.window(chunk)
    steps = steps[:max_steps] if max_steps > 0 else steps
    totals = {"sentences": 0.0, "target_tokens": 0.0, "needed_flops": 0.0, "executed_flops": 0.0}
    phases = dict.fromkeys(PHASES, 0.0)
    start = time.perf_counter()
    for step in steps:
        stats = step()
        for key in totals:
            totals[key] += getattr(stats, key)
        for key, seconds in stats.phases.items():
            phases[key] += seconds
    seconds = time.perf_counter() - start
    window = {key: value / seconds for key, value in totals.items()}
    window.update({f"share_{key}": value / seconds for key, value in phases.items()})
    window["step_seconds"] = seconds / len(steps)
    system.windows.append(window)
    print(
        f"  {system.name:<20} {len(steps):3d} steps {seconds:6.1f} s {window['sentences']:7.1f} sentences/s "
        f"{window['needed_flops'] / 1e9:6.1f} GFLOP/s needed",
        file=sys.stderr,
        flush=True,
    )


def median(system: System, key: str) -> float:
    return statistics.median(w[key] for w in system.windows)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, for the line that dates and places a measurement."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def machine_line(threads: int) -> str:
    import transformers

    return (
        f"{datetime.date.today().isoformat()}, {cpu_model()}, {threads} threads, "
        f"torch {torch.__version__}, transformers {transformers.__version__}"
    )


def table(ours: System, bart: System, peak: float) -> str:
    rows = [
        "| system | params | sentences/s | target tokens/s | ratio ours/BART (sentences/s) "
        "| GFLOP/s needed | fraction of matmul peak | GFLOP/s executed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    ratio = median(ours, "sentences") / median(bart, "sentences")
    for system in (ours, bart):
        needed = median(system, "needed_flops") / 1e9
        rows.append(
            f"| {system.name} | {system.params / 1e6:.2f}M | {median(system, 'sentences'):.1f} "
            f"| {median(system, 'target_tokens'):.0f} | {ratio if system is ours else 1.0:.2f} "
            f"| {needed:.1f} | {needed / peak:.2f} | {median(system, 'executed_flops') / 1e9:.1f} |"
        )
    return "\n".join(rows)


def breakdown(systems: list[System]) -> str:
    rows = ["| system | s/step | " + " | ".join(PHASES) + " |", "| --- | ---: |" + " ---: |" * len(PHASES)]
    for system in systems:
        shares = " | ".join(f"{median(system, f'share_{p}'):.0%}" for p in PHASES)
        rows.append(f"| {system.name} | {median(system, 'step_seconds'):.3f} | {shares} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["small", "tiny"], default="small")
    parser.add_argument("--sentences", type=int, default=1000, help="first N training sentences of each language")
    parser.add_argument("--windows", type=int, default=5, help="timed windows per system, alternating")
    parser.add_argument("--steps", type=int, default=0, help="at most this many steps per window (0: all)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per system first")
    parser.add_argument("--max-tokens", type=int, default=3000, help="token budget of this project's batches")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--dropout", type=float, default=None, help="dropout and attention dropout (preset's)")
    parser.add_argument("--breakdown", action="store_true", help="also print where each step's time goes")
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    peaks = [matmul_gflops()]

    data = load_data_dir(prepare_embedded(VOCAB_SIZE))
    arrays = [data.array("train", lang) for lang in LANGS]
    cfg = PRESETS[args.preset]()
    cfg.vocab_size, cfg.num_langs = data.vocab_size, len(LANGS)
    if args.dropout is not None:
        cfg.dropout = cfg.attention_dropout = args.dropout
    # The first N sentences of each language that fit the model's positions (`x' </s>`), cut into one
    # chunk per window: both systems train on exactly the same sentences in each window.
    examples = [kept_examples(arr.lengths, 1, cfg.max_positions - 1, first_n=args.sentences) for arr in arrays]
    chunks = [[part[w] for part in (np.array_split(ex, args.windows) for ex in examples)] for w in range(args.windows)]
    check_same_masks(arrays[0], examples[0][:64], cfg.vocab_size)

    # BART's fixed batch size: as many sentences as give ours' average real tokens per batch.
    lengths = np.concatenate([arr.lengths[ex] for arr, ex in zip(arrays, examples, strict=True)])
    our_batches = sum(sum(our_batch_counts(arrays, chunk, args.max_tokens)) for chunk in chunks)
    bart_size = max(1, round(len(lengths) / our_batches))
    print(
        f"{args.preset}: {len(lengths)} sentences of mean length {lengths.mean():.1f} in {args.windows} windows; "
        f"ours: {our_batches} batches of <= {args.max_tokens} tokens, {lengths.sum() / our_batches:.0f} real "
        f"tokens each on average; BART: batches of {bart_size} sentences",
        file=sys.stderr,
    )

    ours = build_ours(cfg, arrays, args.max_tokens)
    bart = build_bart(cfg, arrays, bart_size)
    systems = [ours, bart]
    for system in systems:
        for step in system.window(chunks[0])[: args.warmup]:
            step()
    for chunk in chunks:
        for system in systems:
            run_window(system, chunk, args.steps)
        peaks.append(matmul_gflops(repeats=2, min_seconds=0.3))
    peaks.append(matmul_gflops())
    peak = max(peaks)

    print(table(ours, bart, peak))
    print(
        f"\n{machine_line(threads)}; fp32 matmul peak {peak:.1f} GFLOP/s (torch.mm 2048, best of {len(peaks)}); "
        f"{args.preset} preset, {len(lengths)} sentences, median of {args.windows} windows."
    )
    if args.breakdown:
        print("\nShare of step wall time (median window):\n\n" + breakdown(systems))


if __name__ == "__main__":
    main()
