"""Generation speed of this project's `Generator` against Hugging Face `generate()` on the same model.

Both systems decode the same batch of French sentences of about 30 subwords from the test split of the
embedded en-fr Bible (fr -> en) with the same Transformer:

- this project: `mass.inference.Generator.generate` (encoder once, `greedy_search` / `beam_search`
  over `make_decode_step`'s KV cache, one batch for all sentences);
- Hugging Face: `BartForConditionalGeneration.generate()` with `use_cache=True`, `do_sample=False`,
  `num_beams` 1 or 5, length penalty 1, no n-gram blocking, default `early_stopping`, the same padded batch.

Same model, same weights: a randomly initialised `MassModel` of the chosen preset (post-norm, GELU, learned
positions, tied embeddings) is copied into a `BartConfig` of the same size. BART has no language embeddings,
so ours (one language per side) are folded into BART's encoder (fr) and decoder (en) position tables; with
that the two compute the same function, which the script checks: greedy outputs must be identical.
`--checkpoint RUN` uses a trained model instead (e.g. the README's fr->en walkthrough run), copied the same way.

Same amount of work: a random model emits EOS at arbitrary points, so EOS is disabled until the output
length L (30) on both sides: ours with `GenerationConfig(min_len=L, max_len_a=0, max_len_b=L)`, Hugging Face
with `min_new_tokens=max_new_tokens=L`. Every sentence (every beam) gets exactly L tokens, which is checked.
(Beam search here follows fairseq: after L tokens it makes one more decoder call in which EOS is the only
allowed token, so ours makes L + 1 decoder calls in beam search and L in greedy; Hugging Face makes L in both.)

Real use (`--checkpoint`): a trained model ends its outputs itself, so L is only a cap on both sides (no
minimum), and Hugging Face gets `early_stopping=True`, the stopping rule ours shares with fairseq (a sentence
is done when it has `beam` finished hypotheses). Both then stop a sentence at the same point; the difference
is that ours drops finished sentences from the batch while `generate()` keeps decoding them (padded) until
the whole batch is done. Greedy outputs must still be identical; beam outputs are compared and reported.

Timed repetitions alternate between the systems (A/B, then B/A, ...) after a warm-up, in one process with the
same torch threads, under `torch.inference_mode()`. Reported: the median sentences/s of each system, and the
ratio as the median over repetitions of the ratio of the two back-to-back runs (robust to a shared machine's
load drifting between repetitions). "Ceiling" is the sentences/s at which the model's matmul FLOPs alone
(`generation_flops`, counted for L decoder calls) would run at the machine's fp32 `torch.mm` rate
(`matmul_peak.py`, best of the start and the end of the run): no search, however lean, gets past it.
`--profile` adds where this project's time goes (decoder calls vs search bookkeeping, and torch.profiler's
top operators for both systems).

On a machine shared with other jobs, use `--threads 1`: with every core busy, multi-threaded small
matmuls wait on each other and the timings scatter by several times.

Usage: python benchmarks/generate_speed.py [--preset small|tiny] [--reps 5] [--threads N] [--profile]
       python benchmarks/generate_speed.py --checkpoint runs/fr-en-long --length 100 [--threads N]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pretrain_speed
import torch
from matmul_peak import matmul_gflops

import mass.inference
from mass.batch import pad_sequences
from mass.checkpoint import resolve_checkpoint
from mass.config import GenerationConfig
from mass.data.binarize import DataDir, load_data_dir
from mass.data.corpus import prepare_corpus, prepare_embedded
from mass.data.tokenizer import BOS_ID, EOS_ID, NEVER_GENERATED, PAD_ID
from mass.export import to_bart
from mass.inference import Generator, load_generator
from mass.model import PRESETS, DecoderCache, MassModel, ModelConfig, count_parameters

VOCAB_SIZE = 8000
LANGS = ["en", "fr"]  # language ids of the model, in this order
SRC, TGT = "fr", "en"
SEED = 1


# --------------------------------------------------------------------------------------------------
# Inputs and models


def test_sentences(data: DataDir, count: int, length: int, spread: int) -> list[list[int]]:
    """The first `count` French test sentences whose length is within `spread` subwords of `length`."""
    array = data.array("test", SRC)
    lengths = array.lengths
    picked = [i for i in range(len(array)) if abs(int(lengths[i]) - length) <= spread][:count]
    if len(picked) < count:
        raise SystemExit(f"only {len(picked)} test sentences of {length}+-{spread} subwords")
    return [array[i].tolist() for i in picked]


# --------------------------------------------------------------------------------------------------
# The two systems: `run(beam)` decodes the whole batch once and returns the outputs as token lists.


@dataclass
class System:
    name: str
    run: Callable[[int], list[list[int]]]
    times: dict[int, list[float]] = field(default_factory=dict)


def build_ours(generator: Generator, sources: list[list[int]], length: int, forced: bool) -> System:
    def run(beam: int) -> list[list[int]]:
        cfg = GenerationConfig(
            beam=beam,
            length_penalty=1.0,
            min_len=length if forced else 0,
            max_len_a=0.0,
            max_len_b=length,
            no_repeat_ngram=0,
            nbest=1,
            max_tokens=1 << 30,  # one batch, like Hugging Face's
        )
        return [out[0].tokens for out in generator.generate(sources, SRC, TGT, cfg)]

    return System("this project", run)


def build_hf(bart, sources: list[list[int]], length: int, forced: bool) -> System:
    input_ids = pad_sequences([s + [EOS_ID] for s in sources])  # the encoder input ours builds
    attention_mask = (input_ids != PAD_ID).long()

    def run(beam: int) -> list[list[int]]:
        out = bart.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            num_beams=beam,
            do_sample=False,
            use_cache=True,
            max_new_tokens=length,
            min_new_tokens=length if forced else 0,
            **({} if forced else {"early_stopping": True}),
            length_penalty=1.0,
            no_repeat_ngram_size=0,
            num_return_sequences=1,
            decoder_start_token_id=BOS_ID,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
            suppress_tokens=list(NEVER_GENERATED),  # ours never emits them either
        )
        return [_until_eos(row) for row in out[:, 1:].tolist()]  # without the decoder start token

    return System("Hugging Face", run)


def _until_eos(tokens: list[int]) -> list[int]:
    """An output as ours returns it: cut at its EOS (finished rows are padded after it)."""
    return tokens[: tokens.index(EOS_ID)] if EOS_ID in tokens else tokens


def generation_flops(cfg: ModelConfig, src_len: int, batch: int, rows: int, steps: int) -> float:
    """Matmul FLOPs of decoding `batch` sentences padded to `src_len` with `rows` search rows for `steps` steps.

    Encoder once per sentence; the cross-attention keys/values once per row and every step for all rows (as
    Hugging Face computes them; this project computes the keys/values once per sentence and a beam search's
    first step once per sentence, so for beam search its own ceiling is a few percent higher than this one);
    per row and step: self-attention q/k/v/out, cross-attention q/out, feed-forward, attention scores and
    values over the steps so far and the source, and the output projection.
    """
    d, f, s = cfg.embed_dim, cfg.ffn_dim, src_len
    encoder = batch * s * cfg.encoder_layers * (2 * 4 * d * d + 2 * 2 * d * f + 2 * 2 * s * d)
    cross_kv = rows * s * cfg.decoder_layers * 2 * 2 * d * d
    decoder = sum(
        rows * (cfg.decoder_layers * (2 * 6 * d * d + 2 * 2 * d * f + 2 * 2 * (t + 1 + s) * d) + 2 * d * cfg.vocab_size)
        for t in range(steps)
    )
    return float(encoder + cross_kv + decoder)


def check_outputs(name: str, outputs: list[list[int]], count: int, length: int, forced: bool) -> None:
    assert len(outputs) == count, f"{name}: {len(outputs)} outputs for {count} sentences"
    for out in outputs:
        assert EOS_ID not in out and PAD_ID not in out, f"{name}: EOS or padding inside an output"
        if forced:
            assert len(out) == length, f"{name}: output of {len(out)} tokens, not {length}"
        else:
            assert len(out) <= length, f"{name}: output of {len(out)} tokens, over the cap of {length}"


# --------------------------------------------------------------------------------------------------
# Profiling this project's search


class PhaseTimes:
    """Wall time of this project's generation split by phase, by wrapping the pieces `Generator` calls."""

    def __init__(self, model: MassModel) -> None:
        self.model = model
        self.seconds: dict[str, float] = {}
        self.calls = 0

    def _timed(self, phase: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

        return wrapper

    def measure(self, run: Callable[[], object]) -> dict[str, float]:
        """Run once with the timers in place, then put everything back."""
        self.seconds, model = {}, self.model
        make_step, reorder = mass.inference.make_decode_step, DecoderCache.reorder

        def make_timed_step(*args, **kwargs):
            return self._timed("decode_step", make_step(*args, **kwargs))

        mass.inference.make_decode_step = make_timed_step
        DecoderCache.reorder = self._timed("reorder KV cache", reorder)
        model.encode = self._timed("encoder", model.encode)
        model.decode = self._timed("decoder layers", model.decode)
        model.logits = self._timed("output projection", model.logits)
        start = time.perf_counter()
        try:
            run()
        finally:
            total = time.perf_counter() - start
            mass.inference.make_decode_step, DecoderCache.reorder = make_step, reorder
            for name in ("encode", "decode", "logits"):
                delattr(model, name)
        s = {"reorder KV cache": 0.0, **self.seconds}  # greedy with nothing finished never reorders
        inside = s["reorder KV cache"] + s["decoder layers"] + s["output projection"]
        return {
            "encoder": s["encoder"],
            "decoder layers": s["decoder layers"],
            "output projection": s["output projection"],
            "reorder KV cache": s["reorder KV cache"],
            "rest of decode_step (mask/language index_select, log_softmax)": s["decode_step"] - inside,
            "search bookkeeping (topk, history, finalise, ...)": total - s["decode_step"] - s["encoder"],
            "total": total,
        }


def op_table(run: Callable[[], object], rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


# --------------------------------------------------------------------------------------------------
# Report


def machine_line(threads: int) -> str:
    cpu = pretrain_speed.cpu_model()
    import transformers

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{datetime.date.today().isoformat()}, {cpu} ({os.cpu_count()} cores, load average {load} at the end), "
        f"{threads} threads, torch {torch.__version__}, transformers {transformers.__version__}"
    )


def decoding_name(beam: int) -> str:
    return "greedy" if beam == 1 else f"beam {beam}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["small", "tiny"], default="small")
    parser.add_argument("--sentences", type=int, default=64, help="sentences decoded together in one batch")
    parser.add_argument("--src-len", type=int, default=30, help="source length in subwords (+-2)")
    parser.add_argument(
        "--length", type=int, default=30, help="output length forced on both systems (with --checkpoint: a cap)"
    )
    parser.add_argument("--checkpoint", help="a trained run or checkpoint (fr->en) instead of a random model")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per system and decoding")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions per system and decoding")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--profile", action="store_true", help="also show where this project's time goes")
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()

    forced = not args.checkpoint
    if forced:
        data = load_data_dir(prepare_embedded(VOCAB_SIZE))
        cfg = PRESETS[args.preset]()
        cfg.vocab_size, cfg.num_langs = data.vocab_size, len(LANGS)
        torch.manual_seed(SEED)
        generator = Generator(MassModel(cfg).eval(), data.tokenizer(), LANGS)
        model_name = f"{args.preset} preset"
    else:
        generator = load_generator(args.checkpoint)
        cfg = generator.model.cfg
        data = load_data_dir(prepare_corpus("bible", resolve_checkpoint(args.checkpoint) / "spm.model"))
        model_name = f"trained model {args.checkpoint}"
    model = generator.model
    sources = test_sentences(data, args.sentences, args.src_len, 2)
    bart = to_bart(model, generator.langs.index(SRC), generator.langs.index(TGT))  # the same function
    ours = build_ours(generator, sources, args.length, forced)
    hf = build_hf(bart, sources, args.length, forced)
    mean_src = sum(map(len, sources)) / len(sources)
    print(
        f"{model_name}: {count_parameters(model) / 1e6:.2f}M params (BART {bart.num_parameters() / 1e6:.2f}M), "
        f"{len(sources)} sentences of {mean_src:.1f} subwords, output length {args.length}, {threads} threads",
        file=sys.stderr,
    )

    beams = [1, args.beam]
    peak = matmul_gflops()
    agreement, out_len = {}, {}
    with torch.inference_mode():
        for beam in beams:  # warm-up, and the check that both do the same work and compute the same function
            for _ in range(max(args.warmup, 1)):  # at least one: its outputs are checked
                outs = {system.name: system.run(beam) for system in (ours, hf)}
            for name, out in outs.items():
                check_outputs(f"{name} {decoding_name(beam)}", out, len(sources), args.length, forced)
            same = sum(a == b for a, b in zip(outs[ours.name], outs[hf.name], strict=True))
            agreement[beam] = same / len(sources)
            out_len[beam] = (sum(map(len, outs[ours.name])) / len(sources), max(map(len, outs[ours.name])))
        assert agreement[1] == 1.0, f"greedy outputs differ on {1 - agreement[1]:.0%} of sentences: not the same model"
        for rep in range(args.reps):
            for beam in beams:
                order = (ours, hf) if rep % 2 == 0 else (hf, ours)  # A/B then B/A
                for system in order:
                    start = time.perf_counter()
                    system.run(beam)
                    seconds = time.perf_counter() - start
                    system.times.setdefault(beam, []).append(seconds)
                    print(
                        f"  rep {rep} {decoding_name(beam):<7} {system.name:<13} {seconds:6.2f} s "
                        f"{len(sources) / seconds:7.1f} sentences/s",
                        file=sys.stderr,
                        flush=True,
                    )

    peak = max(peak, matmul_gflops())
    src_len = max(map(len, sources)) + 1  # padded encoder input, EOS included
    print(
        "| decoding | this project sentences/s | Hugging Face sentences/s | ratio ours/HF "
        "| ceiling sentences/s (matmul peak) | same outputs |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for beam in beams:
        rate = {s.name: len(sources) / statistics.median(s.times[beam]) for s in (ours, hf)}
        ratio = statistics.median(h / o for o, h in zip(ours.times[beam], hf.times[beam], strict=True))
        # a trained model's outputs end by themselves: count the mean output length (+ the EOS step)
        steps = args.length if forced else round(out_len[beam][0]) + 1
        flops = generation_flops(cfg, src_len, len(sources), len(sources) * beam, steps)
        print(
            f"| {decoding_name(beam)} | {rate[ours.name]:.1f} | {rate[hf.name]:.1f} | {ratio:.2f} "
            f"| {len(sources) / (flops / (peak * 1e9)):.1f} | {agreement[beam]:.0%} |"
        )
    outputs = (
        f"{args.length} output tokens forced"
        if forced
        else "outputs of "
        + " / ".join(f"{out_len[b][0]:.1f} (at most {out_len[b][1]})" for b in beams)
        + f" tokens (greedy / beam; cap {args.length})"
    )
    print(
        f"\n{machine_line(threads)}; {model_name} ({count_parameters(model) / 1e6:.1f}M params), "
        f"{len(sources)} sentences of {mean_src:.1f} subwords in one batch, {outputs}; "
        f"median of {args.reps} alternating repetitions; fp32 matmul peak {peak:.1f} GFLOP/s."
    )

    if args.profile:
        with torch.inference_mode():
            for beam in beams:
                phases = PhaseTimes(model).measure(lambda beam=beam: ours.run(beam))
                total = phases.pop("total")
                print(f"\nThis project, {decoding_name(beam)}, one run: {total:.2f} s\n")
                print("| phase | s | share |\n| --- | ---: | ---: |")
                for phase, seconds in phases.items():
                    print(f"| {phase} | {seconds:.3f} | {seconds / total:.0%} |")
            for system in (ours, hf):
                print(f"\n{system.name}, beam {args.beam}, torch.profiler operators by self CPU time:\n")
                print(op_table(lambda system=system: system.run(args.beam), 15))


if __name__ == "__main__":
    main()
