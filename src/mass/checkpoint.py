"""Atomic checkpoints: a crash at any moment leaves the previous checkpoint intact and loadable.

A checkpoint is a directory `checkpoints/step_NNNNNNNN/` holding
  model.safetensors  the weights (never a pickle),
  state.pt           optimizer, schedule, step, data position and RNG states (tensors and plain values
                     only, so `torch.load(weights_only=True)` reads it),
  config.yaml        the resolved config of the run that wrote it.
It is written under a temporary name and renamed into place, so a directory named `step_*` is always
complete. `best.json` names the best checkpoint so far; it is replaced atomically too.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mass.data.binarize import umask
from mass.errors import MassError

# Model settings that shape training, not the weights: a run may change them when it resumes, and checkpoints
# that differ only in them hold the same architecture.
TRAINING_ONLY_MODEL_KEYS = ("dropout", "attention_dropout")


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small text file via a temporary file and `os.replace`."""
    path = Path(path)
    if path.is_dir():
        raise MassError("is a directory: give a file name", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~umask())  # as open() would create it, not mkstemp's 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory beside `final` to fill; then it replaces `final` in one rename (on an
    error it is removed and `final` is left as it was). Temporaries a hard kill left for `final` go first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        yield tmp
        # Readable by others as mkdir/open would make them, not mkdtemp's (or safetensors') owner-only modes.
        for path in [tmp, *tmp.rglob("*")]:
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _steps(run_dir: Path) -> list[Path]:
    """The run's complete checkpoints, oldest first."""
    return sorted(p for p in checkpoint_dir(run_dir).glob("step_*") if p.is_dir())


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise MassError(f"cannot read weights: {e}", path) from None


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    state: dict[str, Any],
    config: dict,
    keep: int = 2,
    is_best: bool = False,
    files: dict[str, Path] | None = None,
) -> Path:
    """Write checkpoint `step` atomically, mark it best if asked, prune old ones; returns its directory.

    `files` are copied in under the given names (the tokenizer, so a checkpoint is self-contained).
    """
    root = checkpoint_dir(run_dir)
    final = root / f"step_{step:08d}"
    with atomic_dir(final) as tmp:
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(weights, tmp / "model.safetensors", metadata={"format": "pt", "step": str(step)})
        torch.save(state, tmp / "state.pt")
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        for name, source in (files or {}).items():
            shutil.copyfile(source, tmp / name)
    if is_best:
        mark_best(run_dir, final)
    _prune(root, keep)
    return final


def mark_best(run_dir: Path, ckpt: Path) -> None:
    """Point `best.json` at checkpoint `ckpt` of the run."""
    step = int(ckpt.name.removeprefix("step_"))
    atomic_write_text(checkpoint_dir(run_dir) / "best.json", json.dumps({"checkpoint": ckpt.name, "step": step}))


def _prune(root: Path, keep: int) -> None:
    best = best_checkpoint(root.parent)
    steps = _steps(root.parent)
    for old in steps[: max(len(steps) - keep, 0)]:
        if best is None or old != best:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step_*"):  # temporaries of a crashed save
        shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    steps = _steps(run_dir)
    return steps[-1] if steps else None


def best_checkpoint(run_dir: Path) -> Path | None:
    marker = checkpoint_dir(run_dir) / "best.json"
    if not marker.is_file():
        return None
    try:
        path = checkpoint_dir(run_dir) / str(json.loads(marker.read_text())["checkpoint"])
    except (ValueError, KeyError, TypeError) as e:
        hint = "delete it to fall back on the latest checkpoint"
        raise MassError(f"invalid best.json ({type(e).__name__}: {e}); {hint}", marker) from None
    return path if path.is_dir() else None


def same_tokenizer(ckpt: Path, tokenizer: Path) -> bool:
    """Whether the checkpoint's own tokenizer is this file, byte for byte (same size is not enough: the
    ids would mean other subwords)."""
    spm = Path(ckpt) / "spm.model"
    return spm.is_file() and spm.read_bytes() == Path(tokenizer).read_bytes()


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint directory, a run directory (its best, else latest checkpoint) or a weights file."""
    path = Path(path)
    if path.is_file() and path.name == "model.safetensors":
        return path.parent
    if (path / "model.safetensors").is_file():
        return path
    if path.is_dir():
        found = best_checkpoint(path) or latest_checkpoint(path)
        if found is not None:
            return found
    raise MassError("no checkpoint found (expected a run directory or a checkpoint directory)", path)


def read_checkpoint_config(ckpt: Path) -> dict:
    path = Path(ckpt) / "config.yaml"
    if not path.is_file():
        raise MassError("checkpoint has no config.yaml", ckpt)
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_weights(model: torch.nn.Module, ckpt: Path, new_langs: bool = False) -> None:
    """Load safetensors weights, with a one-line error when the architecture differs.

    `new_langs`: the model may know more languages than the checkpoint (added for fine-tuning); their
    embeddings start as the mean of the known ones', a language "between" them, not a random offset.
    """
    path = Path(ckpt) / "model.safetensors"
    weights = _read_weights(path)
    expected = model.state_dict()
    for name in [n for n in weights if n.endswith("langs.weight")] if new_langs else []:
        known, wanted = weights[name], expected[name]
        if known.shape[0] < wanted.shape[0] and known.shape[1:] == wanted.shape[1:]:
            extra = known.mean(0, keepdim=True).expand(wanted.shape[0] - known.shape[0], -1)
            weights[name] = torch.cat([known, extra])
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        name = (missing or unexpected)[0]
        raise MassError(
            f"checkpoint is of another architecture ({'missing' if missing else 'unexpected'} {name})", path
        )
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise MassError(
                f"checkpoint is of another architecture: {name} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(expected[name].shape)}",
                path,
            )
    model.load_state_dict(weights)


def average_checkpoints(checkpoints: list[Path], out: Path) -> Path:
    """Write a checkpoint whose weights are the mean of `checkpoints`' (fairseq's checkpoint averaging).

    The last few checkpoints of a run sit around one optimum and their noise partly cancels, so their
    mean often scores better than any one of them at no training cost. The result holds weights, config
    and tokenizer (it loads wherever a checkpoint does) but no training state: it cannot be resumed.
    It is written atomically and replaces nothing but an earlier average.
    """
    if not checkpoints:
        raise MassError("nothing to average: no checkpoints given")
    sources = [resolve_checkpoint(c) for c in checkpoints]
    out = Path(out)
    earlier_average = (out / "model.safetensors").is_file() and not (out / "state.pt").exists()
    if (out.exists() and not earlier_average) or out.resolve() in {s.resolve() for s in sources}:
        raise MassError("exists and is not an earlier average: refusing to replace it; choose another --out", out)
    first = sources[0]

    def architecture(ckpt: Path) -> dict:
        saved = dict(read_checkpoint_config(ckpt).get("model") or {})
        return {k: v for k, v in saved.items() if k not in TRAINING_ONLY_MODEL_KEYS}

    model_cfg = architecture(first)
    tokenizer = (first / "spm.model").read_bytes() if (first / "spm.model").is_file() else None
    total: dict[str, torch.Tensor] = {}  # float64 sums
    dtypes: dict[str, torch.dtype] = {}
    for ckpt in sources:
        path = ckpt / "model.safetensors"
        weights = _read_weights(path)
        if architecture(ckpt) != model_cfg:
            raise MassError(f"another model config than {first}: cannot average them", ckpt / "config.yaml")
        spm = ckpt / "spm.model"
        if (spm.read_bytes() if spm.is_file() else None) != tokenizer:
            raise MassError(f"another tokenizer than {first}: cannot average them", spm)
        if total and (set(weights) != set(total) or any(v.shape != total[k].shape for k, v in weights.items())):
            raise MassError(f"weights of another shape than {first}'s: cannot average them", path)
        for name, tensor in weights.items():
            dtypes.setdefault(name, tensor.dtype)
            if not tensor.is_floating_point():
                total.setdefault(name, tensor)  # integer buffers are not averaged
            elif name in total:
                total[name] += tensor.double()
            else:
                total[name] = tensor.double()
    mean = {k: (v / len(sources)).to(dtypes[k]) if v.is_floating_point() else v for k, v in total.items()}
    with atomic_dir(out) as tmp:
        names = json.dumps([str(s) for s in sources])
        save_file(mean, tmp / "model.safetensors", metadata={"format": "pt", "averaged_from": names})
        shutil.copyfile(sources[-1] / "config.yaml", tmp / "config.yaml")
        if tokenizer is not None:
            (tmp / "spm.model").write_bytes(tokenizer)
    return out


def last_checkpoints(run_dir: Path, n: int) -> list[Path]:
    """The run's `n` most recent checkpoints, oldest first (fewer are an error: say how many there are)."""
    if not checkpoint_dir(run_dir).is_dir():
        raise MassError("not a run directory (no checkpoints/ in it)", run_dir)
    steps = _steps(run_dir)
    if n < 1 or len(steps) < n:
        raise MassError(
            f"asked for the last {n} checkpoints, the run has {len(steps)} (train.keep_checkpoints keeps more)",
            run_dir,
        )
    return steps[-n:]


def load_state(ckpt: Path) -> dict[str, Any]:
    path = Path(ckpt) / "state.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which one
        raise MassError(f"cannot read training state: {e}", path) from None
