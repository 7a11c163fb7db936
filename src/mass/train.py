"""THE training loop. Pre-training and fine-tuning differ only in their config's objective list.

One update = for every objective of the schedule, `accum_steps` micro-batches on every process; each
objective's summed loss is divided by its token count over all of them and scaled by its weight. So one
process with accumulation and N processes under DDP compute the same update.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mass import distributed
from mass.batch import Batch
from mass.checkpoint import (
    TRAINING_ONLY_MODEL_KEYS,
    atomic_write_text,
    best_checkpoint,
    latest_checkpoint,
    load_state,
    load_weights,
    mark_best,
    read_checkpoint_config,
    resolve_checkpoint,
    same_tokenizer,
    save_checkpoint,
)
from mass.config import Config, ObjectiveConfig, from_dict, save_config, to_dict
from mass.data.binarize import DataDir, load_data_dir
from mass.data.corpus import prepare_corpus
from mass.data.streams import (
    VALID_SEED,
    BatchStream,
    Collate,
    dae_collate,
    fixed_batches,
    kept_examples,
    mass_collate,
    pair_collate,
    pair_lengths,
    sentence_collate,
)
from mass.data.tokenizer import EOS_ID
from mass.errors import MassError
from mass.metrics import perplexity
from mass.model import MassModel, ModelConfig
from mass.objectives import back_translate, evaluate_loss, seq2seq_loss

Evaluator = Callable[[MassModel], dict[str, float]]


@dataclass
class Objective:
    """One weighted entry of the schedule and the batches it trains on.

    A back-translation objective's stream yields monolingual sentences; `back_translate` turns them into
    a training batch with the current model.
    """

    name: str
    weight: float
    every: int
    stream: BatchStream
    back_translate: Callable[[MassModel, list], Batch] | None = None

    def active(self, step: int) -> bool:
        return step % self.every == 0

    def next_batch(self, model: MassModel) -> Batch:
        item = next(self.stream)
        return item if self.back_translate is None else self.back_translate(model, item)


def resolve_data_dir(cfg: Config, info: distributed.DistInfo) -> DataDir:
    """The configured data directory, or a shipped corpus prepared by rank 0 while the others wait.

    Starting from a checkpoint, the shipped corpus is tokenized with the checkpoint's own tokenizer.
    """
    if cfg.data.dir:
        return load_data_dir(cfg.data.dir)
    start = start_checkpoint(cfg)
    tokenizer = start / "spm.model" if start else None
    if info.is_main:
        path = prepare_corpus(cfg.data.corpus, tokenizer, cfg.data.vocab_size, None, cfg.data.tokenizer_sentences)
    distributed.barrier()
    if not info.is_main:
        path = prepare_corpus(cfg.data.corpus, tokenizer, cfg.data.vocab_size, None, cfg.data.tokenizer_sentences)
    return load_data_dir(path)


def init_overrides(init_from: str | Path, scratch: bool = False, run_dir: str | Path | None = None) -> list[str]:
    """Config overrides that start a run from a checkpoint: its path and its languages, in its order
    (the architecture and tokenizer follow from the checkpoint); `scratch` keeps its weights out.

    A rerun of the same command resumes `run_dir` from its own checkpoints, which need nothing from
    `init_from`: if that is gone by then (a deleted pre-training run), the run's saved start is used.
    """
    own = latest_checkpoint(Path(run_dir)) if run_dir else None
    if own is not None and not Path(init_from).exists():
        saved = read_checkpoint_config(own)
        start, langs = saved["init_from"], saved["data"]["langs"]
    else:
        ckpt = resolve_checkpoint(init_from)
        start, langs = ckpt, read_checkpoint_config(ckpt)["data"]["langs"]
    return [f"init_from={start}", f"data.langs=[{','.join(langs)}]", f"scratch={str(scratch).lower()}"]


def default_objectives(cfg: Config) -> list[ObjectiveConfig]:
    return cfg.objectives or [ObjectiveConfig(name="mass", lang=lang) for lang in cfg.data.langs]


def start_checkpoint(cfg: Config) -> Path | None:
    """Where a run from `init_from` takes its architecture and tokenizer: the run's own latest checkpoint once
    it has one (so that resuming does not need the run it started from), else `init_from`."""
    if not cfg.init_from:
        return None
    return latest_checkpoint(Path(cfg.run_dir)) or resolve_checkpoint(cfg.init_from)


def resolve_model_config(cfg: Config, data: DataDir) -> ModelConfig:
    """Architecture from the checkpoint we start from, else from the config; sizes from the data."""
    ckpt = start_checkpoint(cfg)
    if ckpt is not None:
        saved = read_checkpoint_config(ckpt)
        model_cfg = from_dict(ModelConfig, saved["model"], "checkpoint model")
        model_cfg.dropout, model_cfg.attention_dropout = cfg.model.dropout, cfg.model.attention_dropout
        saved_langs = saved.get("data", {}).get("langs", [])
        if model_cfg.vocab_size != data.vocab_size or not same_tokenizer(ckpt, data.tokenizer_path):
            raise MassError(
                f"checkpoint's vocabulary ({model_cfg.vocab_size} entries) is not the data's tokenizer "
                f"({data.vocab_size} entries, {data.tokenizer_path}): prepare the data with "
                f"`mass prepare --tokenizer {ckpt / 'spm.model'}`",
                ckpt,
            )
        # The checkpoint's languages in its order: all of them and new ones after (added), or the first few.
        common = min(len(saved_langs), len(cfg.data.langs))
        if saved_langs[:common] != cfg.data.langs[:common]:
            raise MassError(
                f"checkpoint languages {saved_langs} do not match data.langs {cfg.data.langs} (keep their order; "
                f"a new language goes after them, e.g. data.langs=[{','.join([*saved_langs, 'xx'])}])",
                ckpt,
            )
        model_cfg.num_langs = max(model_cfg.num_langs, len(cfg.data.langs))
        return model_cfg
    return ModelConfig(**{**to_dict(cfg.model), "vocab_size": data.vocab_size, "num_langs": len(cfg.data.langs)})


def _check_langs(cfg: Config, data: DataDir, objectives: list[ObjectiveConfig]) -> dict[str, int]:
    lang_ids = {lang: i for i, lang in enumerate(cfg.data.langs)}
    for obj in objectives:
        for lang in (obj.lang, obj.src, obj.tgt):
            if lang and lang not in lang_ids:
                raise MassError(
                    f"objective {obj.name} uses language {lang!r}, not in data.langs {cfg.data.langs} "
                    f"(to add it: data.langs=[{','.join([*cfg.data.langs, lang])}])"
                )
        for side in (obj.src_side, obj.tgt_side):
            if side and not data.has(cfg.data.train_split, side):
                splits = sorted(split for split, sides in data.splits.items() if side in sides)
                if splits:
                    hint = f"{side} is in {', '.join(splits)}: choose the split with data.train_split=NAME"
                else:
                    hint = f"the data has {', '.join(data.langs)}"
                raise MassError(f"no {cfg.data.train_split}.{side} data ({hint})", data.path)
    return lang_ids


def build_objectives(cfg: Config, data: DataDir, info: distributed.DistInfo) -> list[Objective]:
    objectives = default_objectives(cfg)
    lang_ids = _check_langs(cfg, data, objectives)
    out = []
    for i, obj in enumerate(objectives):
        seed = cfg.train.seed * 1000 + i
        if obj.name in ("mass", "dae"):
            name, collate, lengths = _monolingual(cfg, data, cfg.data.train_split, obj, lang_ids)
        elif obj.name == "translate":
            src, tgt = data.array(cfg.data.train_split, obj.src_side), data.array(cfg.data.train_split, obj.tgt_side)
            collate = pair_collate(src, tgt, lang_ids[obj.src], lang_ids[obj.tgt])
            lengths = pair_lengths(src, tgt)
            name = f"{obj.src}-{obj.tgt}"
        else:  # bt
            array = data.array(cfg.data.train_split, obj.src_side)
            collate = sentence_collate(array)
            lengths = array.lengths
            name = f"bt_{obj.src}-{obj.tgt}-{obj.src}"
            banned = None
            if obj.restrict_vocab:
                seen = data.array(cfg.data.train_split, obj.tgt_side).token_counts(data.vocab_size) > 0
                banned = torch.from_numpy(~seen)
                banned[EOS_ID] = False
            back = partial(back_translate, lang=lang_ids[obj.src], via_lang=lang_ids[obj.tgt], banned=banned)
        if name in {o.name for o in out}:  # its log keys and its saved data position would be another's
            raise MassError(f"two objectives are both {name}: list it once (weight and every set its share)")
        examples = kept_examples(lengths, cfg.data.min_len, max_len(cfg), cfg.data.first_n)
        if len(examples) == 0:
            raise MassError(
                f"objective {name} has no training sentences of {cfg.data.min_len} to {max_len(cfg)} tokens "
                f"in split {cfg.data.train_split!r} (data.min_len / data.max_len)",
                data.path,
            )
        stream = BatchStream(lengths, examples, cfg.data.max_tokens, seed, collate, info.rank, info.world_size)
        out.append(Objective(name, obj.weight, obj.every, stream, back if obj.name == "bt" else None))
    return out


def max_len(cfg: Config) -> int:
    """The longest sentence (in subwords) trained and validated on: `data.max_len`, or shorter if the model's
    positions end first (a sentence takes two more: the start symbol and </s>)."""
    return min(cfg.data.max_len, cfg.model.max_positions - 2)


def objective_name(obj: ObjectiveConfig) -> str:
    """`mass_en` / `dae_en`, or `mass_en_src` when the text comes from another data side than the language's."""
    return f"{obj.name}_{obj.lang}" + (f"_{obj.src_data}" if obj.src_data else "")


def _monolingual(
    cfg: Config, data: DataDir, split: str, obj: ObjectiveConfig, lang_ids: dict[str, int]
) -> tuple[str, Collate, np.ndarray]:
    """Name, collate function and sentence lengths of a `mass` or `dae` objective on `split`."""
    array = data.array(split, obj.src_side)
    if obj.name == "mass":
        collate = mass_collate(array, lang_ids[obj.lang], cfg.mask, data.vocab_size)
    else:
        collate = dae_collate(array, lang_ids[obj.lang], cfg.noise)
    return objective_name(obj), collate, array.lengths


def build_validation(cfg: Config, data: DataDir) -> dict[str, list[Batch]]:
    """Fixed validation batches per objective, masked with a fixed seed (same masks at every evaluation)."""
    objectives = default_objectives(cfg)
    lang_ids = {lang: i for i, lang in enumerate(cfg.data.langs)}
    split, limit, out = cfg.data.valid_split, cfg.data.valid_sentences, {}
    for obj in objectives:
        if obj.name in ("mass", "dae") and data.has(split, obj.src_side) and objective_name(obj) not in out:
            name, collate, lengths = _monolingual(cfg, data, split, obj, lang_ids)
            examples = kept_examples(lengths, 1, max_len(cfg), limit=limit)
            out[name] = fixed_batches(lengths, examples, cfg.data.max_tokens, VALID_SEED, collate)
        elif obj.name in ("translate", "bt") and data.has(split, obj.src_side) and data.has(split, obj.tgt_side):
            src, tgt = data.array(split, obj.src_side), data.array(split, obj.tgt_side)
            lengths = pair_lengths(src, tgt)
            examples = kept_examples(lengths, 1, max_len(cfg), limit=limit)
            collate = pair_collate(src, tgt, lang_ids[obj.src], lang_ids[obj.tgt])
            out[f"{obj.src}-{obj.tgt}"] = fixed_batches(lengths, examples, cfg.data.max_tokens, VALID_SEED, collate)
    return out


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward passes (`train.precision`); fp32 runs as written.

    Matmuls run in the low precision while the weights, gradients and optimizer state stay fp32 (losses are
    taken in fp32 by `seq2seq_loss`); so checkpoints are the same fp32 safetensors whatever the precision.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def inverse_sqrt(warmup: int) -> Callable[[int], float]:
    """Linear warm-up to the peak learning rate, then decay with 1/sqrt(step)."""

    def factor(step: int) -> float:
        step = step + 1
        return min(step / max(warmup, 1), math.sqrt(max(warmup, 1) / step))

    return factor


def evaluate(model: MassModel, valid: dict[str, list[Batch]], device: torch.device) -> dict[str, float]:
    """Validation perplexity per stream and overall (token-weighted).

    When MASS or DAE streams share the run with another kind of stream, their own token-weighted
    perplexity is logged too (`valid_ppl_mass`, `valid_ppl_dae`): the overall one mixes objectives.
    """
    out: dict[str, float] = {}
    total, by_kind = [0.0, 0.0], {}  # [nll, tokens] over all streams, and per kind: mass, dae, translate
    for name, batches in valid.items():
        stats = evaluate_loss(model, batches, device)
        if not stats["tokens"]:
            continue  # every validation sentence of this stream was filtered out: nothing to report
        out[f"valid_ppl_{name}"] = perplexity(stats["nll"], stats["tokens"])
        kind = name.split("_")[0] if name.startswith(("mass_", "dae_")) else "translate"
        for acc in (total, by_kind.setdefault(kind, [0.0, 0.0])):
            acc[0] += stats["nll"]
            acc[1] += stats["tokens"]
    if total[1]:
        out["valid_ppl"] = perplexity(*total)
    if len(by_kind) > 1:
        out.update({f"valid_ppl_{k}": perplexity(*by_kind[k]) for k in ("mass", "dae") if k in by_kind})
    return out


def _better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    lower_is_better = "ppl" in metric or "loss" in metric
    return new < old if lower_is_better else new > old


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; infinity for a blank line, one a kill cut short or any other line
    that is not a record (dropped)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return math.inf
    return record.get("step", 0) if isinstance(record, dict) else math.inf


# Settings fixed when a run starts. Resuming restores the optimizer and schedule (so a new learning rate
# would silently not apply), the data streams of the objectives and the meaning of the language ids.
_FIXED_AT_START = ("data.langs", "data.corpus", "data.train_split", "objectives", "model", "mask", "noise")
_FIXED_AT_START += tuple(f"data.{k}" for k in ("first_n", "min_len", "max_len", "max_tokens")) + ("train.seed",)
_FIXED_AT_START += tuple(f"optim.{k}" for k in ("lr", "betas", "eps", "weight_decay", "warmup_steps"))
_FREE_MODEL_KEYS = tuple(f"model.{k}" for k in TRAINING_ONLY_MODEL_KEYS)


def check_resume(saved: dict, cfg: Config, ckpt: Path, tokenizer: Path) -> None:
    """Refuse to resume a run with another value of a setting fixed at its start, or on data prepared with
    another tokenizer than the one its weights learned (one line naming it)."""
    spm = ckpt / "spm.model"
    if spm.is_file() and not same_tokenizer(ckpt, tokenizer):
        raise MassError(
            f"the data's tokenizer {tokenizer} is not the one this run was trained with: resume on data "
            f"prepared with `mass prepare --tokenizer {spm}`",
            ckpt,
        )

    def flat(node: object, prefix: str = "") -> dict[str, object]:
        if not isinstance(node, dict):
            return {prefix: node}
        return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}

    old, new = flat(saved), flat(to_dict(cfg))
    old, new = ({k.rstrip("."): v for k, v in d.items()} for d in (old, new))
    for key in sorted(set(old) & set(new)):  # a setting newer than the run's version keeps its default
        fixed = key.startswith(_FIXED_AT_START) and not key.startswith(_FREE_MODEL_KEYS)
        if fixed and old[key] != new[key]:
            raise MassError(
                f"the run was started with {key}={old[key]!r}, not {new[key]!r}: a run resumes with the "
                "settings it started with (use another run_dir, or start from this run with init_from/--from)",
                ckpt,
            )


class RunLog:
    """A run's log: a JSON line per record in `metrics.jsonl` (what plots, studies and people read) and, with
    `train.tensorboard`, the same numbers as TensorBoard scalars (`train/...` and `valid/...`).

    Opened at the step training resumes from, it drops what was logged after that step's checkpoint (steps
    that a crash lost and the run will redo), in both. Only the main process writes.
    """

    def __init__(self, run_dir: Path, step: int, tensorboard: bool = False, enabled: bool = True):
        self.path, self.enabled, self.writer = run_dir / "metrics.jsonl", enabled, None
        if not enabled:
            return
        if self.path.is_file():
            kept = [ln for ln in self.path.read_text().splitlines() if _logged_step(ln) <= step]
            atomic_write_text(self.path, "".join(ln + "\n" for ln in kept))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                hint = 'pip install -e ".[tensorboard]"'
                raise MassError(f"train.tensorboard needs the tensorboard package: {hint}") from None
            # TensorBoard hides earlier events from purge_step on, as the lines above are dropped.
            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step + 1, flush_secs=30)

    def write(self, record: dict, group: str) -> None:
        """Append `record` (it has a "step"); `group` ("train" or "valid") prefixes its TensorBoard tags."""
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self.writer.add_scalar(f"{group}/{key.removeprefix('valid_')}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def train(
    cfg: Config, evaluator: Evaluator | None = None, best_metric: str = "valid_ppl", data: DataDir | None = None
) -> dict[str, float]:
    """Train until `train.max_steps` (or the time budget), resuming from the run directory if possible.

    Args:
        cfg: the full config; its resolved form is saved in the run directory.
        evaluator: extra evaluation (e.g. BLEU) merged into the validation metrics.
        best_metric: metric that selects the best checkpoint ("ppl"/"loss" in its name: lower is better).
        data: the data directory, when the caller has already resolved it (to build the evaluator).

    Returns:
        The last evaluation's metrics.
    """
    info = distributed.setup(cfg.train.device)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    run_dir = Path(cfg.run_dir)
    data = resolve_data_dir(cfg, info) if data is None else data
    cfg.model = resolve_model_config(cfg, data)
    torch.manual_seed(cfg.train.seed + info.rank)

    model = MassModel(cfg.model).to(info.device)
    adam = torch.optim.AdamW if cfg.optim.weight_decay > 0 else torch.optim.Adam
    optimizer = adam(
        model.parameters(),
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.betas),
        eps=cfg.optim.eps,
        weight_decay=cfg.optim.weight_decay,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, inverse_sqrt(cfg.optim.warmup_steps))
    # fp16 gradients underflow without loss scaling; bf16 has fp32's range and fp32 needs nothing.
    scaler = torch.amp.GradScaler(info.device.type, enabled=cfg.train.precision == "fp16")
    objectives = build_objectives(cfg, data, info)
    valid = build_validation(cfg, data)

    step, best, bad_evals, spent = 0, None, 0, 0.0  # spent: training seconds of earlier invocations
    resume = latest_checkpoint(run_dir)
    if resume is not None:
        check_resume(read_checkpoint_config(resume), cfg, resume, data.tokenizer_path)
        load_weights(model, resume)
        state = load_state(resume)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        for obj in objectives:
            obj.stream.load_state_dict(state["streams"][obj.name])
        step, best, bad_evals = state["step"], state.get("best"), state.get("bad_evals", 0)
        spent = state.get("train_seconds", 0.0)
        if info.is_main:
            torch.set_rng_state(state["rng"])
            if "cuda_rng" in state and info.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"], info.device)
        else:
            torch.manual_seed(cfg.train.seed + info.rank + 7919 * step)  # as at every checkpoint
        if info.is_main and state.get("is_best") and best_checkpoint(run_dir) != resume:
            mark_best(run_dir, resume)  # a kill came between the checkpoint's rename and best.json
    elif cfg.init_from and not cfg.scratch:
        load_weights(model, resolve_checkpoint(cfg.init_from), new_langs=True)

    budget_s = cfg.train.time_budget * 60
    # Rerunning a finished run (its steps, its time budget or its patience used up) changes nothing.
    finished = step >= cfg.train.max_steps or bool(budget_s and spent >= budget_s)
    finished = finished or bool(resume is not None and cfg.train.patience and bad_evals >= cfg.train.patience)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not finished:  # the config on record is the one that trains
            save_config(cfg, run_dir / "config.yaml")
        if resume is not None and not finished:
            print(f"resuming from {resume} at step {step}")
    log = RunLog(run_dir, step, cfg.train.tensorboard, enabled=info.is_main)
    ddp = DistributedDataParallel(model) if info.enabled else model

    def run_eval() -> dict[str, float]:
        metrics = evaluate(model, valid, info.device)
        if evaluator is not None:
            metrics.update(evaluator(model))
        return metrics

    def checkpoint(metrics: dict[str, float] | None) -> None:
        nonlocal best, bad_evals
        is_best = False
        if metrics and best_metric in metrics:
            is_best = _better(best_metric, metrics[best_metric], best)
            best, bad_evals = (metrics[best_metric], 0) if is_best else (best, bad_evals + 1)
        state = {
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict(),  # empty unless fp16
            "streams": {obj.name: obj.stream.state_dict() for obj in objectives},
            "step": step,
            "best": best,
            "bad_evals": bad_evals,
            "rng": torch.get_rng_state(),  # rank 0's dropout RNG; other ranks reseed from the step
            "train_seconds": trained_seconds(),  # a resumed run keeps its time budget
            "is_best": is_best,
        }
        if info.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(info.device)
        if not info.is_main:  # reseeded as a resumed run reseeds them, so that resuming is exact
            torch.manual_seed(cfg.train.seed + info.rank + 7919 * step)
        if info.is_main:
            save_checkpoint(
                run_dir,
                step,
                model,
                state,
                to_dict(cfg),
                cfg.train.keep_checkpoints,
                is_best,
                files={"spm.model": data.tokenizer_path},
            )
        distributed.barrier()

    model.train()
    start, metrics = time.perf_counter(), {}

    def trained_seconds() -> float:  # this invocation's and the earlier ones'
        return spent + time.perf_counter() - start

    window = {"time": 0.0, "src": 0.0, "tgt": 0.0, "sents": 0.0, "bt_seconds": 0.0}
    window_loss: dict[str, list[float]] = {obj.name: [0.0, 0.0] for obj in objectives}
    # A time-budgeted run's bar fills with its budget (max_steps is then only a ceiling); otherwise with steps.
    bar = tqdm(
        total=budget_s or cfg.train.max_steps,
        initial=min(spent, budget_s) if budget_s else step,
        unit="s" if budget_s else "it",
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]" if budget_s else None,
        disable=not info.is_main,
        dynamic_ncols=True,
        desc="train",
    )
    stopped_early = finished
    if finished and info.is_main:
        print(f"{run_dir} already finished at step {step}")
    while not finished and step < cfg.train.max_steps:
        tick = time.perf_counter()
        update = _update(ddp, model, objectives, cfg, optimizer, scaler, info, step)
        schedule.step()
        step += 1
        window["time"] += time.perf_counter() - tick
        for key in ("src", "tgt", "sents", "bt_seconds"):
            window[key] += update[key]
        for name, (nll, tokens) in update["objectives"].items():
            window_loss[name][0] += nll
            window_loss[name][1] += tokens
        bar.update(min(trained_seconds(), budget_s) - bar.n if budget_s else 1)
        if step % cfg.train.log_interval == 0 or step == cfg.train.max_steps:
            losses = {f"loss_{n}": nll / tok for n, (nll, tok) in window_loss.items() if tok > 0}
            record = {
                "step": step,
                **losses,
                "loss": sum(v[0] for v in window_loss.values()) / max(sum(v[1] for v in window_loss.values()), 1),
                "lr": schedule.get_last_lr()[0],
                "grad_norm": update["grad_norm"],
                "tgt_tokens_per_s": window["tgt"] / max(window["time"], 1e-9),
                "src_tokens_per_s": window["src"] / max(window["time"], 1e-9),
                "sentences_per_s": window["sents"] / max(window["time"], 1e-9),
                "elapsed_s": time.perf_counter() - start,
            }
            if window["bt_seconds"]:
                record["bt_generation_share"] = window["bt_seconds"] / max(window["time"], 1e-9)
            log.write(record, "train")
            bar.set_postfix(step=step, loss=f"{record['loss']:.3f}", tok_s=f"{record['tgt_tokens_per_s']:.0f}")
            window = dict.fromkeys(window, 0.0)
            window_loss = {name: [0.0, 0.0] for name in window_loss}
        over_budget = budget_s > 0 and trained_seconds() > budget_s
        over_budget = distributed.all_reduce_sum([float(over_budget)], info.device)[0] > 0
        if step % cfg.train.eval_interval == 0 and step < cfg.train.max_steps and not over_budget:
            metrics = run_eval()
            log.write({"step": step, **metrics}, "valid")
            if info.is_main:
                bar.write(_metrics_line(step, metrics, cfg.data.valid_split))
            checkpoint(metrics)
            if cfg.train.patience and bad_evals >= cfg.train.patience:
                stopped_early = True
                break
        elif step % cfg.train.save_interval == 0 and step < cfg.train.max_steps:
            checkpoint(None)
        if over_budget:
            if info.is_main:
                bar.write(f"time budget of {cfg.train.time_budget} min reached at step {step}")
            break
    bar.close()
    if not stopped_early:
        metrics = run_eval()
        log.write({"step": step, **metrics}, "valid")
        if info.is_main:
            print(_metrics_line(step, metrics, cfg.data.valid_split))
        checkpoint(metrics)
    log.close()
    if info.is_main and (not finished or not (run_dir / "curves.png").exists()) and log.path.is_file():
        from mass.plots import plot_metrics

        plot_metrics(log.path, run_dir / "curves.png")
    distributed.teardown()
    return metrics


def _metrics_line(step: int, metrics: dict[str, float], split: str) -> str:
    scores = ", ".join(f"{k}={v:.3f}" for k, v in metrics.items())
    return f"step {step}: {scores or f'nothing to validate (no {split} split in the data)'}"


def _update(
    ddp: torch.nn.Module,
    model: MassModel,
    objectives: list[Objective],
    cfg: Config,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    info: distributed.DistInfo,
    step: int,
) -> dict:
    """One optimizer update over the active objectives' micro-batches; returns global loss/token counts.

    Args:
        scaler: fp16 loss scaling (a no-op when disabled): it skips an update whose gradients overflowed.
        step: the update's 0-based index; an objective with `every = n` takes part when n divides it.
    """
    accum = cfg.optim.accum_steps
    objectives = [obj for obj in objectives if obj.active(step)]
    micro, bt_seconds = [], 0.0
    for obj in objectives:
        tick = time.perf_counter()
        with autocast(info.device, cfg.train.precision):  # back-translation generates here
            micro.append([obj.next_batch(model).to(info.device) for _ in range(accum)])
        if obj.back_translate is not None:
            bt_seconds += time.perf_counter() - tick
    local = [sum(b.num_target_tokens for b in batches) for batches in micro]
    totals = distributed.all_reduce_sum([float(t) for t in local], info.device)
    last = (len(objectives) - 1, accum - 1)
    nll_sums, src_tokens, sentences = [0.0] * len(objectives), 0.0, 0.0
    for i, (obj, batches) in enumerate(zip(objectives, micro, strict=True)):
        scale = obj.weight * info.world_size / max(totals[i], 1.0)  # DDP averages over processes
        for j, batch in enumerate(batches):
            sync = (i, j) == last or not info.enabled
            with contextlib.nullcontext() if sync else ddp.no_sync():
                with autocast(info.device, cfg.train.precision):
                    loss, stats = seq2seq_loss(ddp, batch, cfg.optim.label_smoothing)
                scaler.scale(loss * scale).backward()
            nll_sums[i] += stats["nll"]
            src_tokens += float((batch.src_tokens != model.cfg.pad_id).sum())
            sentences += batch.src_tokens.size(0)
    clip = cfg.optim.clip_norm if cfg.optim.clip_norm > 0 else float("inf")
    scaler.unscale_(optimizer)  # clip the true gradients
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    reduced = distributed.all_reduce_sum([*nll_sums, src_tokens, sentences], info.device)
    return {
        "objectives": {obj.name: (reduced[i], totals[i]) for i, obj in enumerate(objectives)},
        "src": reduced[-2],
        "tgt": sum(totals),
        "sents": reduced[-1],
        "grad_norm": grad_norm,
        "bt_seconds": bt_seconds,
    }
