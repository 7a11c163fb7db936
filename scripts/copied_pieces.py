"""How much of an unsupervised model's output is copied from the other language.

For each `mass evaluate` output of a run (`RUN/eval/mt-SRC-TGT-*.hyp.txt`), the share of its subwords (the
output re-tokenized with the run's tokenizer) that never occur in the target language's training text
(the run's `data.train_split`, `unsup` for unsupervised runs): words carried over from the source instead
of translated.

Usage: python scripts/copied_pieces.py RUN [RUN ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from mass.checkpoint import read_checkpoint_config, resolve_checkpoint
from mass.config import Config, from_dict
from mass.evaluate import checkpoint_data


def main(runs: list[str]) -> None:
    print("| run | direction | output subwords | unseen in the target language's text |")
    print("|---|---|---|---|")
    for run in runs:
        ckpt = resolve_checkpoint(Path(run))
        cfg = from_dict(Config, read_checkpoint_config(ckpt), "checkpoint config")
        data = checkpoint_data(ckpt, cfg)
        tokenizer = data.tokenizer()
        seen = {lang: data.array(cfg.data.train_split, lang).token_counts(data.vocab_size) > 0 for lang in data.langs}
        for hyp in sorted((Path(run) / "eval").glob("mt-*-*.hyp.txt")):
            src, tgt = hyp.name.split("-")[1:3]
            pieces = [i for line in hyp.read_text().splitlines() for i in tokenizer.encode(line)]
            unseen = sum(not seen[tgt][i] for i in pieces)
            print(f"| {run} | {src}→{tgt} | {len(pieces)} | {100 * unseen / max(len(pieces), 1):.1f}% |")


if __name__ == "__main__":
    main(sys.argv[1:])
