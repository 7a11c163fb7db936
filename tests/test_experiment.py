"""Every study YAML under configs/studies runs end to end at a tiny size, and resumes instead of redoing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import write_corpus

from mass.checkpoint import latest_checkpoint, load_state
from mass.config import load_config
from mass.data.binarize import prepare_dir
from mass.data.tokenizer import train_tokenizer
from mass.errors import MassError
from mass.experiment import load_study, run_study
from mass.tasks import get_task

STUDIES = sorted((Path(__file__).parents[1] / "configs" / "studies").glob("*.yaml"))
TINY = [
    "model.preset=tiny",
    "data.vocab_size=600",
    "data.tokenizer_sentences=3000",
    "data.max_tokens=600",
    "data.valid_sentences=16",
    "train.max_steps=2",
    "train.eval_interval=1000",
    "generate.max_len_b=3",
    "generate.max_len_a=0.0",
    "train.threads=1",
]


@pytest.fixture(scope="module", autouse=True)
def shared_cache(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("MASS_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_studies_exist():
    assert {p.stem for p in STUDIES} >= {"low_resource", "k_sweep", "ablations", "summarization", "dialogue"}


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_study_runs_end_to_end_at_tiny_size(path, tmp_path, monkeypatch):
    study = load_study(path)
    monkeypatch.setattr("mass.tasks.make_evaluator", lambda *a, **k: None)  # validation decoding: not needed here
    rows = run_study(study, tmp_path, TINY, test_limit=4)
    assert [r["run"] for r in rows] == [run.name for run in study.runs]
    table = (tmp_path / "results.md").read_text()
    for run in study.runs:
        assert f"| {run.name} |" in table
    evaluated = [r for r, run in zip(rows, study.runs, strict=True) if run.evaluate]
    assert evaluated and all(r["metrics"] for r in evaluated)
    metrics = {m for r in rows for m in r["metrics"]}
    assert set(study.metrics) & metrics, f"none of the study's metrics {study.metrics} were measured ({metrics})"
    assert (tmp_path / "plot.png").stat().st_size > 1000
    for row, run in zip(rows, study.runs, strict=True):
        if run.kind == "unsup":  # both directions' retrieval and their mean, beside BLEU
            m = row["metrics"]
            assert m["retrieval"] == pytest.approx((m["retrieval_en-fr"] + m["retrieval_fr-en"]) / 2)
            assert 0 <= m["retrieval"] <= 100
    for row, run in zip(rows, study.runs, strict=True):  # a pre-training's mass_ppl is MASS's alone, even beside DAE
        per_lang = [v for k, v in row["metrics"].items() if k.startswith("mass_ppl_")]
        if run.kind == "pretrain" and len(per_lang) > 1:
            assert min(per_lang) * 0.999 <= row["metrics"]["mass_ppl"] <= max(per_lang) * 1.001, row
    for run in study.runs:  # validation decodes as the task does (a summary: no repeated trigram), greedily
        if run.kind == "finetune":
            saved_generate = load_config(tmp_path / run.name / "config.yaml").generate
            task_generate = get_task(run.task).generate
            assert (saved_generate.no_repeat_ngram, saved_generate.beam) == (task_generate.no_repeat_ngram, 1)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["study"] == study.name and len(saved["rows"]) == len(study.runs)

    # Rerunning resumes: finished runs are not trained again.
    first = (tmp_path / study.runs[0].name / "result.json").stat().st_mtime_ns
    run_study(study, tmp_path, TINY, test_limit=4)
    assert (tmp_path / study.runs[0].name / "result.json").stat().st_mtime_ns == first


def test_bad_study_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nruns:\n  - name: a\n    kind: finetune\n    init: later\n")
    with pytest.raises(MassError, match="not an earlier run"):
        load_study(bad)
    bad.write_text("name: x\nrunz: []\n")
    with pytest.raises(MassError, match="unknown key"):
        load_study(bad)
    bad.write_text("name: [x\n")
    with pytest.raises(MassError, match=r"bad.yaml:\d+"):
        load_study(bad)
    # Checked whole before anything trains: a typo in the last run's overrides, a task, a name, a duplicate key.
    run = "  - {name: p, kind: pretrain, steps: 2}\n  - {name: f, kind: finetune, init: p, "
    for tail, message in [
        ("overrides: [optim.lrr=0.1]}", "run f: unknown key config.optim.lrr"),
        ("overrides: [optim.lr=abc]}", "run f: config.optim.lr must be float"),
        ("task: mtt}", "run f: unknown task 'mtt'"),
        ("src: de}", "run f: de-en is not a pair of its languages \\(en, fr\\)"),  # the languages of run p
        ("src: de, overrides: ['data.langs=[en,fr,de]']}", None),  # a language added after p's
    ]:
        bad.write_text(f"name: x\nruns:\n{run}{tail}\n")
        if message is None:
            assert load_study(bad).runs[1].src == "de"
            continue
        with pytest.raises(MassError, match=message) as info:
            load_study(bad)
        assert (info.value.path, info.value.line) == (str(bad), 4)  # the file and the line of run f
    bad.write_text("name: x\ncommon: [train.max_stepz=3]\nruns:\n  - {name: p, kind: pretrain}\n")
    with pytest.raises(MassError, match="run p: unknown key config.train.max_stepz"):
        load_study(bad)
    bad.write_text("name: x\nruns:\n  - {name: ../out, kind: pretrain}\n")
    with pytest.raises(MassError, match="run name '../out': letters"):
        load_study(bad)
    bad.write_text("name: x\nruns:\n  - {name: p, kind: pretrain}\n  - {name: p, kind: pretrain}\n")
    with pytest.raises(MassError, match="'p' is used twice") as info:
        load_study(bad)
    assert info.value.line == 3
    bad.write_text("name: x\nruns:\n  - {name: p, kind: pretrain}\n  - {name: q, kind: pretrain, bogus: 1}\n")
    with pytest.raises(MassError, match=r"unknown key study.runs\[1\].bogus") as info:
        load_study(bad)
    assert info.value.line == 4
    bad.write_text("name: x\nname: y\nruns: []\n")
    with pytest.raises(MassError, match="key 'name' given twice") as info:
        load_study(bad)
    assert info.value.line == 2
    bad.write_text("- a\n- b\n")
    with pytest.raises(MassError, match="a study file must be a mapping"):
        load_study(bad)


def test_a_pretraining_run_without_validation_data_is_a_clear_error(tmp_path):
    prefixes = write_corpus(tmp_path, 200, 10)
    tok = train_tokenizer([Path(prefixes["train"] + ".en")], tmp_path / "spm", 200)
    data = prepare_dir(tmp_path / "data", tok.path, {"train": {"en": Path(prefixes["train"] + ".en")}})
    study_file = tmp_path / "s.yaml"
    study_file.write_text("name: s\nruns:\n  - {name: pre, kind: pretrain, steps: 2}\n")
    with pytest.raises(MassError, match="run pre has no validation to report: set evaluate: false"):
        run_study(load_study(study_file), tmp_path / "study", [*TINY, f"data.dir={data}", "data.langs=[en]"])


def test_resumed_run_reports_the_training_time_of_every_invocation(tmp_path):
    """A study killed mid-run and restarted reports the run's whole training time, not just the last part."""
    study_file = tmp_path / "s.yaml"
    study_file.write_text("name: s\nruns:\n  - name: pre\n    kind: pretrain\n    steps: 2\n    evaluate: false\n")
    study = load_study(study_file)
    root = tmp_path / "study"
    [first] = run_study(study, root, TINY)
    assert 0 < first["train_minutes"] < 5
    # As if the process had trained for ten minutes before the kill: the time recorded in the checkpoint.
    ckpt = latest_checkpoint(root / "pre")
    state = load_state(ckpt)
    state["train_seconds"] += 600
    torch.save(state, ckpt / "state.pt")
    (root / "pre" / "result.json").unlink()
    [again] = run_study(study, root, TINY)
    assert 10 < again["train_minutes"] < 15
