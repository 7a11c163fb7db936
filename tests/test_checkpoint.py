"""Checkpoint files: atomic writes, safetensors weights, architecture checks, pruning, best/latest resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mass.checkpoint import (
    atomic_write_text,
    average_checkpoints,
    best_checkpoint,
    last_checkpoints,
    latest_checkpoint,
    load_state,
    load_weights,
    read_checkpoint_config,
    resolve_checkpoint,
    save_checkpoint,
)
from mass.errors import MassError
from mass.model import MassModel, tiny


def tiny_model(seed: int = 0, embed_dim: int | None = None, vocab: int = 50) -> MassModel:
    cfg = tiny()
    cfg.vocab_size, cfg.num_langs = vocab, 2
    if embed_dim is not None:
        cfg.embed_dim, cfg.ffn_dim = embed_dim, 2 * embed_dim
    torch.manual_seed(seed)
    return MassModel(cfg)


def save(run_dir: Path, step: int, model: torch.nn.Module | None = None, **kwargs) -> Path:
    state = {"step": step, "rng": torch.get_rng_state(), "best": None}
    return save_checkpoint(run_dir, step, model or torch.nn.Linear(2, 2), state, {"step": step}, **kwargs)


def entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_atomic_write_text_leaves_no_temp_file(tmp_path):
    target = tmp_path / "sub" / "f.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert entries(target.parent) == ["f.json"]


def test_run_files_follow_the_umask(tmp_path):
    """A shared run stays readable by others (and `from_pretrained` by a service): not mkdtemp's 0700 or
    mkstemp's 0600."""
    import os

    old = os.umask(0o022)
    try:
        ckpt = save(tmp_path, 1, is_best=True)
    finally:
        os.umask(old)
    assert ckpt.stat().st_mode & 0o777 == 0o755
    modes = {p.name: p.stat().st_mode & 0o777 for p in [*ckpt.iterdir(), tmp_path / "checkpoints" / "best.json"]}
    assert modes == dict.fromkeys(["model.safetensors", "state.pt", "config.yaml", "best.json"], 0o644)


def test_atomic_write_text_failure_keeps_old_content(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    with pytest.raises(TypeError):
        atomic_write_text(target, b"not text")  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert entries(tmp_path) == ["f.txt"]


def test_weights_round_trip_as_safetensors(tmp_path):
    model = tiny_model(seed=0)
    ckpt = save(tmp_path, 3, model)
    assert ckpt == tmp_path / "checkpoints" / "step_00000003"
    assert entries(ckpt) == ["config.yaml", "model.safetensors", "state.pt"]
    stored = load_file(ckpt / "model.safetensors")  # a plain safetensors file, no pickle
    assert set(stored) == set(model.state_dict())
    other = tiny_model(seed=1)
    assert any(not torch.equal(other.state_dict()[k], v) for k, v in model.state_dict().items())
    load_weights(other, ckpt)
    for name, tensor in model.state_dict().items():
        assert torch.equal(other.state_dict()[name], tensor), name
    state = load_state(ckpt)
    assert state["step"] == 3 and state["rng"].dtype == torch.uint8
    assert read_checkpoint_config(ckpt) == {"step": 3}


def test_state_is_loadable_with_weights_only(tmp_path):
    ckpt = save(tmp_path, 1)
    state = torch.load(ckpt / "state.pt", weights_only=True)
    assert state["step"] == 1 and state["rng"].dtype == torch.uint8


def test_load_weights_into_another_architecture(tmp_path):
    ckpt = save(tmp_path, 1, tiny_model(embed_dim=32))
    with pytest.raises(MassError, match="another architecture") as info:
        load_weights(tiny_model(), ckpt)
    assert info.value.path == str(ckpt / "model.safetensors")
    # different parameter names (a different module altogether)
    ckpt = save(tmp_path / "lin", 1, torch.nn.Linear(3, 3))
    with pytest.raises(MassError, match="another architecture"):
        load_weights(tiny_model(), ckpt)


def test_load_weights_wrong_shape_same_names(tmp_path):
    model = tiny_model()
    ckpt = save(tmp_path, 1, model)
    weights = load_file(ckpt / "model.safetensors")
    name = next(iter(weights))
    weights[name] = torch.zeros(*[d + 1 for d in weights[name].shape])
    save_file(weights, ckpt / "model.safetensors")
    with pytest.raises(MassError, match="another architecture") as info:
        load_weights(model, ckpt)
    assert name in str(info.value)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_weights_file_names_the_file(tmp_path, damage):
    ckpt = save(tmp_path, 1, tiny_model())
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    damaged = {"truncate": data[: len(data) // 2], "garbage": b"\x00\xffnot safetensors" * 10, "empty": b""}
    path.write_bytes(damaged[damage])
    with pytest.raises(MassError) as info:
        load_weights(tiny_model(), ckpt)
    assert info.value.path == str(path) and str(path) in str(info.value)


def test_missing_weights_file_is_mass_error(tmp_path):
    with pytest.raises(MassError) as info:
        load_weights(tiny_model(), tmp_path)
    assert "model.safetensors" in str(info.value)


def test_damaged_state_file_names_the_file(tmp_path):
    ckpt = save(tmp_path, 1)
    (ckpt / "state.pt").write_bytes(b"garbage")
    with pytest.raises(MassError) as info:
        load_state(ckpt)
    assert info.value.path == str(ckpt / "state.pt")


def test_prune_keeps_recent_and_best_and_removes_crash_leftovers(tmp_path):
    root = tmp_path / "checkpoints"
    save(tmp_path, 1, is_best=True)
    crashed = root / ".step_00000002.abc123"  # what a crash in the middle of a save leaves
    crashed.mkdir()
    (crashed / "model.safetensors").write_bytes(b"half")
    assert latest_checkpoint(tmp_path) == root / "step_00000001"  # the temporary is never a checkpoint
    for step in (2, 3, 4, 5):
        save(tmp_path, step, keep=2)
    assert entries(root) == ["best.json", "step_00000001", "step_00000004", "step_00000005"]
    assert json.loads((root / "best.json").read_text()) == {"checkpoint": "step_00000001", "step": 1}
    save(tmp_path, 6, keep=2, is_best=True)
    assert entries(root) == ["best.json", "step_00000005", "step_00000006"]


def test_resave_same_step_replaces_it(tmp_path):
    save(tmp_path, 2, torch.nn.Linear(2, 2))
    model = torch.nn.Linear(2, 2)
    ckpt = save(tmp_path, 2, model)
    assert torch.equal(load_file(ckpt / "model.safetensors")["weight"], model.weight.detach())
    assert entries(tmp_path / "checkpoints") == ["step_00000002"]


def test_resolve_checkpoint(tmp_path):
    run = tmp_path / "run"
    first = save(run, 1, is_best=True)
    last = save(run, 2)
    assert best_checkpoint(run) == first and latest_checkpoint(run) == last
    assert resolve_checkpoint(run) == first  # a run directory: its best checkpoint
    assert resolve_checkpoint(str(last)) == last  # a checkpoint directory
    assert resolve_checkpoint(last / "model.safetensors") == last  # a weights file
    (run / "checkpoints" / "best.json").unlink()
    assert resolve_checkpoint(run) == last  # no best: the latest


def test_resolve_checkpoint_with_stale_best_falls_back_to_latest(tmp_path):
    save(tmp_path, 1)
    atomic_write_text(tmp_path / "checkpoints" / "best.json", json.dumps({"checkpoint": "step_00000099", "step": 99}))
    assert resolve_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_00000001"


def test_resolve_checkpoint_on_empty_or_missing_dir(tmp_path):
    with pytest.raises(MassError, match="no checkpoint found") as info:
        resolve_checkpoint(tmp_path)
    assert info.value.path == str(tmp_path)
    with pytest.raises(MassError, match="no checkpoint found"):
        resolve_checkpoint(tmp_path / "missing")
    assert latest_checkpoint(tmp_path) is None and best_checkpoint(tmp_path) is None


def test_checkpoint_without_config(tmp_path):
    with pytest.raises(MassError, match="config.yaml"):
        read_checkpoint_config(tmp_path)


def _model_checkpoint(run_dir: Path, step: int, seed: int, **config) -> Path:
    model = tiny_model(seed)
    spm = run_dir.parent / "spm.model"
    if not spm.exists():
        spm.write_bytes(b"tokenizer bytes")
    cfg = {"model": {"embed_dim": 64, **config}}
    return save_checkpoint(run_dir, step, model, {"step": step}, cfg, keep=10, files={"spm.model": spm})


def test_average_checkpoints_is_the_mean_of_the_weights(tmp_path):
    run = tmp_path / "run"
    ckpts = [_model_checkpoint(run, step, seed) for step, seed in ((100, 1), (200, 2), (300, 3))]
    (tmp_path / ".avg.killed").mkdir()  # what a hard kill during an earlier average leaves: removed now
    (tmp_path / ".avg.killed" / "model.safetensors").write_bytes(b"half written")
    out = average_checkpoints(ckpts, tmp_path / "avg")
    averaged = load_file(out / "model.safetensors")
    each = [load_file(c / "model.safetensors") for c in ckpts]
    assert set(averaged) == set(each[0])
    for name, tensor in averaged.items():
        expected = sum(w[name].double() for w in each) / 3
        assert tensor.dtype == each[0][name].dtype
        torch.testing.assert_close(tensor, expected.float(), rtol=0, atol=1e-7)
    assert not any(torch.equal(averaged["embed.tokens.weight"], w["embed.tokens.weight"]) for w in each)
    # A checkpoint like any other: resolvable, loadable into the model, with its config and tokenizer.
    assert resolve_checkpoint(out) == out and not (out / "state.pt").exists()
    model = tiny_model(9)
    load_weights(model, out)
    assert torch.equal(model.state_dict()["embed.tokens.weight"], averaged["embed.tokens.weight"])
    assert read_checkpoint_config(out) == read_checkpoint_config(ckpts[-1])
    assert (out / "spm.model").read_bytes() == b"tokenizer bytes"
    assert [p.name for p in run.joinpath("checkpoints").glob("step_*")] != []  # the sources are untouched
    assert entries(tmp_path) == ["avg", "run", "spm.model"]  # no temporary left behind


def test_average_across_a_resumption_that_changed_dropout(tmp_path):
    # A run may resume with other dropout (README): its checkpoints still hold weights of one architecture.
    run = tmp_path / "run"
    a = _model_checkpoint(run, 100, 1, dropout=0.1)
    b = _model_checkpoint(run, 200, 2, dropout=0.3, attention_dropout=0.0)
    out = average_checkpoints([a, b], tmp_path / "avg")
    assert read_checkpoint_config(out)["model"]["dropout"] == 0.3  # the config of the last, as for any average


def test_average_of_one_checkpoint_with_itself_is_that_checkpoint(tmp_path):
    ckpt = _model_checkpoint(tmp_path / "run", 100, 1)
    out = average_checkpoints([ckpt, ckpt], tmp_path / "avg")
    original = load_file(ckpt / "model.safetensors")
    for name, tensor in load_file(out / "model.safetensors").items():
        assert torch.equal(tensor, original[name]), name


def test_last_checkpoints_picks_the_most_recent(tmp_path):
    run = tmp_path / "run"
    for step in (100, 200, 300, 400):
        _model_checkpoint(run, step, step)
    assert [p.name for p in last_checkpoints(run, 2)] == ["step_00000300", "step_00000400"]
    with pytest.raises(MassError, match="the last 5 checkpoints, the run has 4"):
        last_checkpoints(run, 5)


def test_average_refuses_mismatched_checkpoints_and_overwriting_training_ones(tmp_path):
    run = tmp_path / "run"
    a = _model_checkpoint(run, 100, 1)
    other = tmp_path / "other"
    config, spm = {"model": {"embed_dim": 64}}, {"spm.model": tmp_path / "spm.model"}
    wider = save_checkpoint(other, 100, tiny_model(2, embed_dim=32), {}, config, keep=10, files=spm)
    with pytest.raises(MassError, match="weights of another shape") as err:
        average_checkpoints([a, wider], tmp_path / "avg")
    assert str(wider / "model.safetensors") in str(err.value)
    config_differs = _model_checkpoint(tmp_path / "run2", 100, 2, pre_norm=True)
    with pytest.raises(MassError, match="another model config"):
        average_checkpoints([a, config_differs], tmp_path / "avg")
    b = _model_checkpoint(run, 200, 2)
    (b / "spm.model").write_bytes(b"another tokenizer")
    with pytest.raises(MassError, match="another tokenizer"):
        average_checkpoints([a, b], tmp_path / "avg")
    for taken in (b, run):  # a training checkpoint, a directory of other things
        with pytest.raises(MassError, match="is not an earlier average: refusing to replace it"):
            average_checkpoints([a], taken)
    assert not (tmp_path / "avg").exists() and (b / "state.pt").exists() and entries(run) == ["checkpoints"]
    average_checkpoints([a], tmp_path / "avg")
    average_checkpoints([a, a], tmp_path / "avg")  # an earlier average is replaced
    assert entries(tmp_path / "avg") == ["config.yaml", "model.safetensors", "spm.model"]
