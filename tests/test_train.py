"""The training loop end to end on a tiny synthetic corpus: learning, exact resume, gradient accumulation,
2-process DDP, objective schedules, checkpoint contents and init_from checks."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import fast_training, make_data_dir, read_log, tiny_config, tiny_overrides, train_losses
from safetensors.torch import load_file

from mass import distributed
from mass.checkpoint import latest_checkpoint
from mass.config import load_config
from mass.data.binarize import load_data_dir
from mass.errors import MassError
from mass.model import MassModel
from mass.objectives import seq2seq_loss
from mass.train import build_objectives, inverse_sqrt, resolve_model_config, train


@pytest.fixture(autouse=True)
def no_plots(request, monkeypatch):
    """Drawing curves.png costs about a second per run; only test_loss_falls checks it."""
    if request.node.name != "test_loss_falls":
        monkeypatch.setattr("mass.plots.plot_metrics", lambda log_path, out: None)


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """train() applies train.threads process-wide; give later tests their thread count back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("train-data"))


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory) -> Path:
    """A finished 8-step run (evaluations at 2, 4, 6 and 8, one checkpoint kept besides the best)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    extra = ("train.max_steps=8", "train.eval_interval=2", "train.save_interval=100", "train.keep_checkpoints=1")
    with fast_training():
        train(tiny_config(data_dir, run, *extra, "optim.lr=0.003"))
    return run


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(latest_checkpoint(run) / "model.safetensors")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if atol == 0.0:
            assert torch.equal(a[name], b[name]), name
        else:
            torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


def test_loss_falls(data_dir, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(
        data_dir, run, "train.max_steps=24", "train.eval_interval=8", "optim.lr=0.003", "optim.warmup_steps=5"
    )
    final = train(cfg)
    log = read_log(run)
    losses = [r["loss"] for r in log if "loss" in r]
    evals = [r for r in log if "valid_ppl" in r]
    assert len(losses) == 24 and [r["step"] for r in evals] == [8, 16, 24]
    assert all(math.isfinite(x) for x in losses)
    # uniform guessing over the vocabulary is ln(V); the untrained model starts about there
    vocab = load_data_dir(data_dir).vocab_size
    assert abs(losses[0] - math.log(vocab)) < 0.5
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    assert evals[-1]["valid_ppl"] < 0.9 * evals[0]["valid_ppl"]
    assert evals[-1]["valid_ppl_mass_en"] < evals[0]["valid_ppl_mass_en"]
    assert evals[-1]["valid_ppl_mass_fr"] < evals[0]["valid_ppl_mass_fr"]
    assert final["valid_ppl"] == pytest.approx(evals[-1]["valid_ppl"])
    assert (run / "curves.png").is_file()


def test_time_budget_counts_across_resumptions(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(data_dir, run, "train.max_steps=3"))
    state_path = latest_checkpoint(run) / "state.pt"
    state = torch.load(state_path, weights_only=True)
    assert state["train_seconds"] > 0
    # Pretend the first 3 steps took 90 s, so that the test does not depend on this machine's speed.
    state["train_seconds"] = 90.0
    torch.save(state, state_path)
    capsys.readouterr()
    # More steps allowed, but a 1.5-minute budget that the first 3 steps already used: nothing more happens.
    train(tiny_config(data_dir, run, "train.max_steps=10", "train.time_budget=1.5"))
    assert "already finished at step 3" in capsys.readouterr().out
    assert latest_checkpoint(run).name == "step_00000003"
    # A budget with time left continues the run, and the time already spent stays counted.
    train(tiny_config(data_dir, run, "train.max_steps=4", "train.time_budget=60"))
    assert latest_checkpoint(run).name == "step_00000004"
    assert torch.load(latest_checkpoint(run) / "state.pt", weights_only=True)["train_seconds"] > 90.0


def test_resume_equals_uninterrupted_run(data_dir, tmp_path, capsys):
    # dropout on: the resumed run must restore the RNG state, not just the weights and data position
    extra = ("model.dropout=0.1", "model.attention_dropout=0.1", "train.eval_interval=3", "train.save_interval=100")
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    train(tiny_config(data_dir, run_a, *extra, "train.max_steps=8"))
    train(tiny_config(data_dir, run_b, *extra, "train.max_steps=4"))
    assert latest_checkpoint(run_b).name == "step_00000004"
    capsys.readouterr()
    train(tiny_config(data_dir, run_b, *extra, "train.max_steps=6"))  # the same command with a larger max_steps
    assert "resuming from" in capsys.readouterr().out
    assert latest_checkpoint(run_b).name == "step_00000006"
    # Now a crash: steps 5-6 were logged but their checkpoint never completed; the save left a temporary.
    shutil.rmtree(run_b / "checkpoints" / "step_00000006")
    crashed = run_b / "checkpoints" / ".step_00000006.x1y2z3"
    crashed.mkdir()
    (crashed / "model.safetensors").write_bytes(b"half a file")
    with (run_b / "metrics.jsonl").open("a") as f:
        f.write('[1, 2]\n{"step": 7, "loss": 3.')  # a stray line, and the kill cut a log line short
    train(tiny_config(data_dir, run_b, *extra, "train.max_steps=8"))
    out = capsys.readouterr().out
    assert "resuming from" in out and "step_00000004 at step 4" in out  # the temporary is not a checkpoint
    assert not crashed.exists()  # cleaned up by the next save

    records_a = [r for r in read_log(run_a) if "loss" in r]
    records_b = [r for r in read_log(run_b) if "loss" in r]
    # the log lines of the lost steps 5-6 were replaced, not duplicated
    assert [r["step"] for r in records_a] == [r["step"] for r in records_b] == list(range(1, 9))
    for a, b in zip(records_a, records_b, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6), a["step"]
        assert b["lr"] == a["lr"]
    assert [r["step"] for r in read_log(run_b) if "valid_ppl" in r] == [3, 4, 6, 8]
    assert_same_weights(final_weights(run_a), final_weights(run_b))
    state_a = torch.load(latest_checkpoint(run_a) / "state.pt", weights_only=True)
    state_b = torch.load(latest_checkpoint(run_b) / "state.pt", weights_only=True)
    assert state_a["streams"] == state_b["streams"] and state_a["step"] == state_b["step"] == 8


def test_tensorboard_scalars_match_the_log_across_a_crash(data_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    extra = ("train.tensorboard=true", "train.eval_interval=3", "train.save_interval=100")
    train(tiny_config(data_dir, run, *extra, "train.max_steps=4"))
    train(tiny_config(data_dir, run, *extra, "train.max_steps=6"))
    # A crash lost the checkpoint of step 6 after steps 5-6 were logged: the rerun redoes them from step 4.
    shutil.rmtree(run / "checkpoints" / "step_00000006")
    train(tiny_config(data_dir, run, *extra, "train.max_steps=8"))

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    log = read_log(run)
    train_log = [r for r in log if "loss" in r]
    valid_log = [r for r in log if "valid_ppl" in r]
    # Each step once (the lost steps' first events are hidden), with the values metrics.jsonl holds.
    assert [s for s, _ in scalars["train/loss"]] == [r["step"] for r in train_log] == list(range(1, 9))
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([r["loss"] for r in train_log], rel=1e-6)
    assert [v for _, v in scalars["train/lr"]] == pytest.approx([r["lr"] for r in train_log], rel=1e-6)
    assert [s for s, _ in scalars["valid/ppl"]] == [r["step"] for r in valid_log] == [3, 4, 6, 8]
    assert [v for _, v in scalars["valid/ppl"]] == pytest.approx([r["valid_ppl"] for r in valid_log], rel=1e-6)
    assert {"train/loss_mass_en", "valid/ppl_mass_en", "valid/ppl_mass_fr"} <= scalars.keys()


def test_tensorboard_without_the_package_is_a_clear_error(data_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed: import fails
    with pytest.raises(MassError, match=r"tensorboard package: pip install"):
        train(tiny_config(data_dir, tmp_path / "run", "train.tensorboard=true"))


def test_rerunning_a_finished_run_trains_no_further(data_dir, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(data_dir, run, "train.max_steps=3"))
    before = final_weights(run)
    train(tiny_config(data_dir, run, "train.max_steps=3"))
    assert sorted(train_losses(run)) == [1, 2, 3]
    assert_same_weights(before, final_weights(run))


def test_resuming_with_other_fixed_settings_is_refused(data_dir, tmp_path):
    """A resumed run restores its optimizer, schedule and data streams: a changed learning rate would silently
    not apply, reordered languages would swap their embeddings, other objectives have no stream state."""
    run = tmp_path / "run"
    train(tiny_config(data_dir, run, "train.max_steps=2"))
    config = (run / "config.yaml").read_text()
    changes = {
        "optim.lr=0.1": "optim.lr",
        "data.langs=[fr,en]": "data.langs",
        "objectives=[{name: dae, lang: en}]": "objectives",
        "model.encoder_lang_embed=false": "model.encoder_lang_embed",
        # the data streams' saved positions index the batches these settings make
        "data.first_n=20": "data.first_n",
        "data.max_tokens=777": "data.max_tokens",
        "data.max_len=20": "data.max_len",
        "train.seed=5": "train.seed",
    }
    for override, key in changes.items():
        with pytest.raises(MassError, match=f"run was started with {key}=.*use another run_dir") as info:
            train(tiny_config(data_dir, run, "train.max_steps=4", override))
        assert "\n" not in str(info.value)
    # Data prepared again with another tokenizer: the weights learned other ids.
    other = tmp_path / "other"
    shutil.copytree(data_dir, other)
    (other / "spm.model").write_bytes((other / "spm.model").read_bytes() + b"\n")
    with pytest.raises(MassError, match="is not the one this run was trained with.*mass prepare --tokenizer"):
        train(tiny_config(other, run, "train.max_steps=4"))
    assert (run / "config.yaml").read_text() == config and latest_checkpoint(run).name == "step_00000002"
    # What only the loop reads may change: the number of steps, intervals, dropout.
    train(tiny_config(data_dir, run, "train.max_steps=3", "train.eval_interval=1", "model.dropout=0.2"))
    assert latest_checkpoint(run).name == "step_00000003"
    train(tiny_config(data_dir, run, "train.max_steps=1"))  # finished: nothing runs, nothing is recorded
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == 3


def test_an_early_stopped_run_stays_stopped(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    extra = ("train.max_steps=20", "train.eval_interval=2", "train.patience=1")
    flat = lambda model: {"bleu": 1.0}  # noqa: E731 - never improves after the first evaluation
    train(tiny_config(data_dir, run, *extra), evaluator=flat, best_metric="bleu")
    assert latest_checkpoint(run).name == "step_00000004"
    capsys.readouterr()
    train(tiny_config(data_dir, run, *extra), evaluator=flat, best_metric="bleu")
    assert "already finished at step 4" in capsys.readouterr().out
    assert latest_checkpoint(run).name == "step_00000004" and sorted(train_losses(run)) == [1, 2, 3, 4]


def test_best_json_follows_the_checkpoints_after_a_kill(data_dir, tmp_path):
    """A kill between a best checkpoint's rename and best.json's update: the rerun points best.json at it."""
    run = tmp_path / "run"
    scores = iter(range(100))
    rising = lambda model: {"bleu": float(next(scores))}  # noqa: E731 - every evaluation is the best so far
    extra = ("train.max_steps=4", "train.eval_interval=2", "train.keep_checkpoints=2")
    train(tiny_config(data_dir, run, *extra), evaluator=rising, best_metric="bleu")
    best = run / "checkpoints" / "best.json"
    assert json.loads(best.read_text())["checkpoint"] == "step_00000004"
    best.write_text(json.dumps({"checkpoint": "step_00000002", "step": 2}))  # as the kill left it
    train(tiny_config(data_dir, run, *extra), evaluator=rising, best_metric="bleu")
    assert json.loads(best.read_text()) == {"checkpoint": "step_00000004", "step": 4}
    best.write_text("{bad")
    with pytest.raises(MassError, match="invalid best.json") as info:
        train(tiny_config(data_dir, run, *extra), evaluator=rising, best_metric="bleu")
    assert info.value.path == str(best)


def test_validation_bleu_scores_the_kept_reference_text(data_dir, tmp_path, monkeypatch):
    """Validation scores what `mass evaluate` scores: the references prepare kept, not their subwords decoded
    (NFKC turns "½" into "1⁄2"; a small vocabulary spells uncovered letters as ⁇). Without kept text, decoded."""
    from mass import tasks
    from mass.config import ObjectiveConfig

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    marked = [line + " ½" for line in (data / "text" / "valid.en").read_text(encoding="utf-8").splitlines()]
    (data / "text" / "valid.en").write_text("".join(line + "\n" for line in marked), encoding="utf-8")
    seen = []
    real = tasks.score
    monkeypatch.setattr(tasks, "score", lambda task, hyps, refs: seen.append(refs) or real(task, hyps, refs))
    cfg, prepared = tiny_config(data, tmp_path / "run", "generate.beam=1"), load_data_dir(data)
    cfg.model = resolve_model_config(cfg, prepared)
    model, direction = MassModel(cfg.model), [ObjectiveConfig(name="translate", src="fr", tgt="en")]
    tasks.make_evaluator(cfg, tasks.get_task("mt"), prepared, direction, 5)(model)
    assert seen[-1] == marked[:5]
    shutil.rmtree(data / "text")
    tasks.make_evaluator(cfg, tasks.get_task("mt"), prepared, direction, 5)(model)
    decoded = [prepared.tokenizer().decode(prepared.array("valid", "en")[i].tolist()) for i in range(5)]
    assert seen[-1] == decoded and decoded != marked[:5]


def manual_updates(cfg, data_dir: Path, steps: int) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """What the trainer should compute with `optim.accum_steps` micro-batches per objective, written out."""
    data = load_data_dir(data_dir)
    cfg.model = resolve_model_config(cfg, data)
    torch.manual_seed(cfg.train.seed)
    model = MassModel(cfg.model)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, inverse_sqrt(cfg.optim.warmup_steps))
    objectives = build_objectives(cfg, data, distributed.DistInfo())
    records = []
    for _ in range(steps):
        record = {}
        for obj in objectives:
            batches = [obj.next_batch(model) for _ in range(cfg.optim.accum_steps)]
            tokens = sum(int((b.target != 0).sum()) for b in batches)
            losses = [seq2seq_loss(model, b)[0] for b in batches]
            (sum(losses) / tokens).backward()
            record[obj.name] = (float(sum(losses).detach()), tokens)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_norm)
        optimizer.step()
        optimizer.zero_grad()
        schedule.step()
        records.append({"grad_norm": float(norm), **{f"loss_{n}": nll / t for n, (nll, t) in record.items()}})
        records[-1]["loss"] = sum(nll for nll, _ in record.values()) / sum(t for _, t in record.values())
    return records, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_gradient_accumulation_counts_every_micro_batch(data_dir, tmp_path):
    extra = ("optim.accum_steps=2", "train.max_steps=2", "train.eval_interval=100", "optim.lr=0.003")
    run = tmp_path / "run"
    train(tiny_config(data_dir, run, *extra))
    logged = [r for r in read_log(run) if "loss" in r]
    expected, weights = manual_updates(tiny_config(data_dir, run, *extra), data_dir, steps=2)
    assert len(logged) == 2
    for got, want in zip(logged, expected, strict=True):
        for key in ("loss", "loss_mass_en", "loss_mass_fr"):
            assert got[key] == pytest.approx(want[key], rel=1e-6), key
        # the gradient norm is sensitive to the token count the summed loss is divided by
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)
    assert_same_weights(final_weights(run), weights, atol=1e-6)


def free_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def torchrun(data_dir: Path, run: Path, *overrides: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mass.cli"]
    proc = subprocess.run(
        [*cmd, "pretrain", *tiny_overrides(data_dir, run, *overrides)],
        env=free_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_process_ddp_matches_accumulation(data_dir, tmp_path):
    common = ("train.max_steps=4", "train.eval_interval=100", "data.max_tokens=300", "optim.lr=0.003")
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    train(tiny_config(data_dir, single, *common, "optim.accum_steps=2"))
    torchrun(data_dir, ddp, *common, "optim.accum_steps=1")
    losses_single, losses_ddp = train_losses(single), train_losses(ddp)
    assert sorted(losses_ddp) == [1, 2, 3, 4]
    for step in range(1, 5):
        assert losses_ddp[step] == pytest.approx(losses_single[step], abs=1e-5), step
    ddp_log = [r for r in read_log(ddp) if "loss" in r]
    single_log = [r for r in read_log(single) if "loss" in r]
    for a, b in zip(ddp_log, single_log, strict=True):
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert_same_weights(final_weights(ddp), final_weights(single), atol=1e-5)


@pytest.mark.slow
def test_two_process_ddp_resumes_exactly_with_dropout(data_dir, tmp_path):
    """Each process draws its own dropout masks; a resumed 2-process run must draw the ones an uninterrupted
    run draws (process 0 restores its saved RNG state, the others reseed as they do at every checkpoint)."""
    common = ("train.eval_interval=100", "train.save_interval=2", "data.max_tokens=300", "model.dropout=0.3")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    torchrun(data_dir, whole, *common, "train.max_steps=4")
    torchrun(data_dir, resumed, *common, "train.max_steps=2")
    torchrun(data_dir, resumed, *common, "train.max_steps=4")
    assert sorted(train_losses(resumed)) == [1, 2, 3, 4]
    assert train_losses(resumed) == train_losses(whole)
    assert_same_weights(final_weights(resumed), final_weights(whole))


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_translation_objective(data_dir, tmp_path):
    path = write_yaml(tmp_path / "ft.yaml", {"objectives": [{"name": "translate", "src": "fr", "tgt": "en"}]})
    run = tmp_path / "run"
    metrics = train(tiny_config(data_dir, run, "train.max_steps=2", path=path))
    log = read_log(run)
    train_records = [r for r in log if "loss" in r]
    assert len(train_records) == 2
    assert all("loss_fr-en" in r and not any(k.startswith("loss_mass") for k in r) for r in train_records)
    assert "valid_ppl_fr-en" in metrics and "valid_ppl" in metrics


def test_denoising_objective_beside_mass(data_dir, tmp_path):
    """The README's schedule shape: weighted `dae` steps next to `mass`, each logged and validated on its own."""
    schedule = [{"name": "mass", "lang": "en"}, {"name": "dae", "lang": "en", "weight": 0.5}]
    path = write_yaml(tmp_path / "dae.yaml", {"objectives": schedule})
    run = tmp_path / "run"
    metrics = train(tiny_config(data_dir, run, "train.max_steps=2", "noise.shuffle=2", path=path))
    records = [r for r in read_log(run) if "loss" in r]
    assert len(records) == 2 and all(r["loss_dae_en"] > 0 and r["loss_mass_en"] > 0 for r in records)
    assert metrics["valid_ppl_dae_en"] > 1 and metrics["valid_ppl_mass_en"] > 1
    # each objective's own perplexity beside the overall one, which mixes them (token-weighted, so between)
    assert metrics["valid_ppl_mass"] == pytest.approx(metrics["valid_ppl_mass_en"])
    assert metrics["valid_ppl_dae"] == pytest.approx(metrics["valid_ppl_dae_en"])
    low, high = sorted([metrics["valid_ppl_mass"], metrics["valid_ppl_dae"]])
    assert low < metrics["valid_ppl"] < high
    assert load_config(run / "config.yaml").noise.shuffle == 2


def test_objective_every_n_updates(data_dir, tmp_path):
    schedule = [{"name": "mass", "lang": "en"}, {"name": "mass", "lang": "fr", "every": 2}]
    path = write_yaml(tmp_path / "sched.yaml", {"objectives": schedule})
    run = tmp_path / "run"
    train(tiny_config(data_dir, run, "train.max_steps=4", "train.eval_interval=100", path=path))
    state = torch.load(latest_checkpoint(run) / "state.pt", weights_only=True)
    assert state["streams"]["mass_en"]["cursor"] == 4 and state["streams"]["mass_fr"]["cursor"] == 2
    records = [r for r in read_log(run) if "loss" in r]
    assert all(r["loss_mass_en"] > 0 for r in records)
    # updates 1 and 3 train French; updates 2 and 4 do not, so they have no French loss to report (not 0.0)
    assert [r["step"] for r in records if "loss_mass_fr" in r and r["loss_mass_fr"] > 0] == [1, 3]
    assert all(r.get("loss_mass_fr") != 0.0 for r in records), [r.get("loss_mass_fr") for r in records]


@pytest.mark.parametrize(
    ("objectives", "match"),
    [
        ([{"name": "denoise", "lang": "en"}], "unknown objective"),
        ([{"name": "mass", "lang": "de"}], "'de'"),
        ([{"name": "translate", "src": "en", "tgt": "ro"}], "'ro'"),
    ],
)
def test_bad_objectives_are_errors(data_dir, tmp_path, objectives, match):
    path = write_yaml(tmp_path / "bad.yaml", {"objectives": objectives})
    with pytest.raises(MassError, match=match):
        train(tiny_config(data_dir, tmp_path / "run", path=path))
    assert not (tmp_path / "run").exists()


def test_length_limits_that_keep_no_sentence_are_an_error(data_dir, tmp_path):
    with pytest.raises(MassError, match="objective mass_en has no training sentences of 900 to "):
        train(tiny_config(data_dir, tmp_path / "run", "data.min_len=900", "data.max_len=1000"))
    assert not (tmp_path / "run").exists()


def test_an_objective_listed_twice_is_refused(data_dir, tmp_path):
    # Both would log under one name and share one saved data position, so a resumed run would diverge.
    path = write_yaml(tmp_path / "dup.yaml", {"objectives": [{"name": "mass", "lang": "en"},
                                                             {"name": "mass", "lang": "en", "every": 2}]})
    with pytest.raises(MassError, match="two objectives are both mass_en"):
        train(tiny_config(data_dir, tmp_path / "run", path=path))
    assert not (tmp_path / "run").exists()


def test_sentences_longer_than_the_models_positions_are_left_out(data_dir, tmp_path):
    # data.max_len above what model.max_positions holds: training keeps what fits instead of crashing.
    train(tiny_config(data_dir, tmp_path / "run", "train.max_steps=2", "model.max_positions=12", "data.max_len=100"))
    assert latest_checkpoint(tmp_path / "run").name == "step_00000002"


def test_checkpoint_contents(trained, data_dir):
    root = trained / "checkpoints"
    evals = [r for r in read_log(trained) if "valid_ppl" in r]
    assert [r["step"] for r in evals] == [2, 4, 6, 8]
    assert "valid_ppl_mass" not in evals[-1]  # MASS alone: the overall perplexity is MASS's
    best_step = min(evals, key=lambda r: r["valid_ppl"])["step"]
    best = json.loads((root / "best.json").read_text())
    assert best["step"] == best_step and best["checkpoint"] == f"step_{best_step:08d}"
    # keep_checkpoints=1: the latest, plus the best if that is another one
    assert sorted(p.name for p in root.glob("step_*")) == sorted({"step_00000008", f"step_{best_step:08d}"})
    assert not list(root.glob(".*step*"))

    ckpt = root / "step_00000008"
    assert {p.name for p in ckpt.iterdir()} == {"model.safetensors", "state.pt", "config.yaml", "spm.model"}
    assert (ckpt / "spm.model").read_bytes() == (data_dir / "spm.model").read_bytes()
    weights = load_file(ckpt / "model.safetensors")
    assert weights and all(isinstance(t, torch.Tensor) for t in weights.values())
    state = torch.load(ckpt / "state.pt", weights_only=True)
    assert state["step"] == 8 and set(state["streams"]) == {"mass_en", "mass_fr"}
    assert state["best"] == pytest.approx(min(r["valid_ppl"] for r in evals))

    for config_path in (ckpt / "config.yaml", trained / "config.yaml"):
        saved = yaml.safe_load(config_path.read_text())
        assert saved["model"]["vocab_size"] == load_data_dir(data_dir).vocab_size
        assert saved["model"]["num_langs"] == 2
        assert "preset" not in saved["model"]
        assert saved["train"]["max_steps"] == 8
        assert load_config(config_path).model.vocab_size == saved["model"]["vocab_size"]  # loads as a config


def test_init_from_starts_from_the_checkpoint(trained, data_dir, tmp_path):
    fresh, tuned = tmp_path / "fresh", tmp_path / "tuned"
    train(tiny_config(data_dir, fresh, "train.max_steps=1"))
    train(tiny_config(data_dir, tuned, "train.max_steps=1", f"init_from={trained}"))
    # same data, same first batch: the pre-trained weights give a lower loss than a fresh initialisation
    assert train_losses(tuned)[1] < train_losses(fresh)[1] - 0.2
    saved = yaml.safe_load((tuned / "config.yaml").read_text())
    assert saved["init_from"] == str(trained)


def test_a_run_from_a_checkpoint_keeps_its_language_agnostic_encoder(data_dir, tmp_path):
    agnostic = tmp_path / "agnostic"
    train(tiny_config(data_dir, agnostic, "train.max_steps=1", "model.encoder_lang_embed=false"))
    cfg = load_config(None, [f"data.dir={data_dir}", f"init_from={agnostic}"])  # the field left at its default
    assert cfg.model.encoder_lang_embed
    assert not resolve_model_config(cfg, load_data_dir(data_dir)).encoder_lang_embed


def test_a_run_from_a_checkpoint_resumes_after_that_checkpoint_is_gone(trained, data_dir, tmp_path):
    """Its own checkpoint holds the architecture and tokenizer: resuming needs nothing from the run it left."""
    source = tmp_path / "pretrained"
    shutil.copytree(trained, source)
    run = tmp_path / "ft"
    train(tiny_config(data_dir, run, f"init_from={source}", "train.max_steps=2", "train.save_interval=1"))
    shutil.rmtree(source)
    train(load_config(run / "config.yaml", ["train.max_steps=4"]))
    assert latest_checkpoint(run).name == "step_00000004"


def test_init_from_with_another_tokenizer(trained, tmp_path):
    other = make_data_dir(tmp_path / "other", vocab_size=150)
    with pytest.raises(MassError, match="vocabulary") as info:
        train(tiny_config(other, tmp_path / "run", f"init_from={trained}"))
    assert "mass prepare --tokenizer" in str(info.value)
    assert not (tmp_path / "run").exists()


def test_init_from_same_size_but_different_tokenizer(trained, data_dir, tmp_path):
    # same vocabulary size, different pieces: still refused (the ids would mean other subwords)
    other = tmp_path / "other"
    shutil.copytree(data_dir, other)
    spm = other / "spm.model"
    spm.write_bytes(spm.read_bytes() + b"\n")  # a different file, same vocabulary size
    with pytest.raises(MassError, match="vocabulary"):
        train(tiny_config(other, tmp_path / "run", f"init_from={trained}"))


def test_init_from_with_other_languages(trained, data_dir, tmp_path):
    with pytest.raises(MassError, match="languages"):
        train(tiny_config(data_dir, tmp_path / "run", f"init_from={trained}", "data.langs=[fr, en]"))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_fp32_weights_and_resumes_exactly(data_dir, tmp_path, precision):
    extra = ("optim.lr=0.003", "optim.warmup_steps=5", "train.eval_interval=100", "train.save_interval=100")
    full, fp32 = tmp_path / "full", tmp_path / "fp32"
    train(tiny_config(data_dir, fp32, *extra, "train.max_steps=12"))
    train(tiny_config(data_dir, full, *extra, "train.max_steps=12", f"train.precision={precision}"))
    mixed, exact = train_losses(full), train_losses(fp32)
    # autocast is on (the losses differ from fp32's) and close to it (same batches, same initial weights)
    assert mixed[1] != exact[1] and mixed[1] == pytest.approx(exact[1], abs=0.05)
    assert sum(mixed[s] for s in range(8, 13)) / 5 < sum(mixed[s] for s in range(1, 6)) / 5 - 0.3
    weights = final_weights(full)
    assert {t.dtype for t in weights.values()} == {torch.float32}
    state = torch.load(latest_checkpoint(full) / "state.pt", weights_only=True)
    assert bool(state["scaler"]) == (precision == "fp16")  # loss scale saved for fp16 only

    # Interrupted at step 6 and resumed: the same weights as the uninterrupted run (loss scale restored).
    part = tmp_path / "part"
    for steps in (6, 12):
        train(tiny_config(data_dir, part, *extra, f"train.max_steps={steps}", f"train.precision={precision}"))
    assert_same_weights(weights, final_weights(part))
    assert torch.load(latest_checkpoint(part) / "state.pt", weights_only=True)["scaler"] == state["scaler"]


def test_unknown_precision_is_an_error(data_dir, tmp_path):
    with pytest.raises(MassError, match="precision must be one of fp32, bf16, fp16, not 'fp8'"):
        tiny_config(data_dir, tmp_path / "run", "train.precision=fp8")


def test_init_from_adds_a_language_after_the_checkpoints(trained, data_dir, tmp_path):
    """Fine-tuning on a language the pre-trained model never saw ("de": here the fr text under another name)
    appends it to the checkpoint's languages: every pre-trained weight is kept, the new language's embedding
    starts as the mean of the known ones', and the pre-training still helps on the first batch."""
    from mass.checkpoint import load_weights, resolve_checkpoint
    from mass.data.binarize import prepare_dir

    text = data_dir.parent / "text"
    inputs = {split: {"en": text / f"{split}.en", "de": text / f"{split}.fr"} for split in ("train", "valid")}
    de = prepare_dir(tmp_path / "de-data", data_dir / "spm.model", inputs, parallel_splits={"train", "valid"})
    ckpt = resolve_checkpoint(trained)
    extra = ("train.max_steps=1", "objectives=[{name: translate, src: de, tgt: en}]")
    cfg = tiny_config(de, tmp_path / "run", *extra, f"init_from={ckpt}", "data.langs=[en, fr, de]")
    model = MassModel(resolve_model_config(cfg, load_data_dir(de)))
    load_weights(model, ckpt, new_langs=True)
    saved = load_file(ckpt / "model.safetensors")
    for name, tensor in model.state_dict().items():
        if name.endswith("langs.weight"):
            assert torch.equal(tensor[:2], saved[name]) and torch.allclose(tensor[2], saved[name].mean(0))
        else:
            assert torch.equal(tensor, saved[name]), name

    train(cfg)
    train(tiny_config(de, tmp_path / "fresh", *extra, "data.langs=[en, fr, de]"))
    assert train_losses(tmp_path / "run")[1] < train_losses(tmp_path / "fresh")[1] - 0.1
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]["num_langs"] == 3
    with pytest.raises(MassError, match=r"a new language goes after them, e\.g\. data\.langs=\[en,fr,xx\]"):
        train(tiny_config(de, tmp_path / "bad", *extra, f"init_from={ckpt}", "data.langs=[en, de]"))
