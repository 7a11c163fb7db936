"""The `mass` command: happy paths, and bad input as one line on stderr, a non-zero exit and nothing half-written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import fast_training, read_log, synthetic_pairs, tiny_overrides, write_corpus, write_lines
from safetensors.torch import load_file, save_file

from mass.checkpoint import latest_checkpoint, read_checkpoint_config
from mass.cli import main


@pytest.fixture(autouse=True)
def no_plots_and_keep_threads(monkeypatch):
    """Skip drawing curves.png (about a second per run); restore the thread count train() changes."""
    monkeypatch.setattr("mass.plots.plot_metrics", lambda log_path, out: None)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, str]:
    """Text files {train,valid}.{en,fr}: {"train": prefix, "valid": prefix}."""
    return write_corpus(tmp_path_factory.mktemp("cli-text"))


@pytest.fixture(scope="module")
def data_dir(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli-data") / "data"
    argv = ["prepare", "--langs", "en,fr", "--train", corpus["train"], "--valid", corpus["valid"]]
    assert main([*argv, "--out", str(out), "--vocab-size", "300", "--parallel"]) == 0
    return out


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory) -> Path:
    """A 2-step pre-training through the CLI (overrides first, no config file)."""
    run = tmp_path_factory.mktemp("cli-run") / "run"
    overrides = tiny_overrides(data_dir, "unused", "train.max_steps=2")
    overrides = [o for o in overrides if not o.startswith(("run_dir=", "model.preset="))]
    with fast_training():
        assert main(["pretrain", *overrides, "--preset", "tiny", "--run-dir", str(run), "--langs", "en,fr"]) == 0
    return run


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"mass {command}: error: ") and "Traceback" not in err
    return err


def prepare_text(tmp_path: Path, train_en: list[str], train_fr: list[str]) -> str:
    """Write train.en/train.fr under tmp_path/text; return the prefix."""
    prefix = tmp_path / "text" / "train"
    write_lines(Path(f"{prefix}.en"), train_en)
    write_lines(Path(f"{prefix}.fr"), train_fr)
    return str(prefix)


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir()] if out.parent.exists() else []
    assert leftovers == [], leftovers


def test_prepare_creates_data_dir(data_dir, capsys):
    meta = json.loads((data_dir / "meta.json").read_text())
    assert meta["langs"] == ["en", "fr"]
    assert meta["splits"] == {"train": {"en": 300, "fr": 300}, "valid": {"en": 40, "fr": 40}}
    assert 100 < meta["vocab_size"] <= 300
    assert (data_dir / "spm.model").is_file()
    assert sorted(p.name for p in data_dir.glob("train.*")) == [
        "train.en.bin",
        "train.en.idx",
        "train.fr.bin",
        "train.fr.idx",
    ]


def test_pretrain_happy_path(run_dir):
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]
    assert latest_checkpoint(run_dir).name == "step_00000002"


def test_prepare_missing_input_file(corpus, tmp_path, capsys):
    prefix = tmp_path / "text" / "train"
    write_lines(Path(f"{prefix}.en"), ["a b c"])  # train.fr is missing
    out = tmp_path / "out" / "data"
    assert main(["prepare", "--langs", "en,fr", "--train", str(prefix), "--out", str(out)]) == 1
    err = one_line_error(capsys, "prepare")
    assert f"{prefix}.fr" in err and "not found" in err
    assert not out.exists() and not out.parent.exists()


def test_prepare_empty_file(corpus, tmp_path, capsys):
    en, fr = synthetic_pairs(50, 3)
    prefix = prepare_text(tmp_path, en, fr)
    empty = write_lines(tmp_path / "text" / "valid.fr", [])
    write_lines(tmp_path / "text" / "valid.en", en[:5])
    out = tmp_path / "out" / "data"
    argv = ["prepare", "--langs", "en,fr", "--train", prefix, "--valid", str(tmp_path / "text" / "valid")]
    assert main([*argv, "--out", str(out), "--vocab-size", "100"]) == 1
    err = one_line_error(capsys, "prepare")
    assert str(empty) in err and "empty" in err
    assert_nothing_written(out)


@pytest.mark.parametrize("bad_split", ["train", "valid"])
def test_prepare_invalid_utf8_names_file_and_line(tmp_path, capsys, bad_split):
    en, fr = synthetic_pairs(50, 3)
    prefix = prepare_text(tmp_path, en, fr)
    write_lines(tmp_path / "text" / "valid.en", en[:5])
    write_lines(tmp_path / "text" / "valid.fr", fr[:5])
    bad = tmp_path / "text" / f"{bad_split}.fr"
    lines = bad.read_bytes().split(b"\n")
    lines[2] = b"caf\xe9 au lait"  # Latin-1, not UTF-8, on line 3
    bad.write_bytes(b"\n".join(lines))
    out = tmp_path / "out" / "data"
    argv = ["prepare", "--langs", "en,fr", "--train", prefix, "--valid", str(tmp_path / "text" / "valid")]
    assert main([*argv, "--out", str(out), "--vocab-size", "100", "--parallel"]) == 1
    err = one_line_error(capsys, "prepare")
    assert f"{bad}:3:" in err and "UTF-8" in err
    assert_nothing_written(out)


def test_prepare_parallel_files_of_different_lengths(tmp_path, capsys):
    en, fr = synthetic_pairs(50, 3)
    prefix = prepare_text(tmp_path, en, fr[:-1])
    out = tmp_path / "out" / "data"
    assert main(["prepare", "--langs", "en,fr", "--train", prefix, "--out", str(out), "--parallel"]) == 1
    err = one_line_error(capsys, "prepare")
    assert f"{prefix}.en" in err and "differ" in err and "50" in err and "49" in err
    assert_nothing_written(out)


@pytest.mark.parametrize("bad_split", ["train", "valid"])
def test_prepare_absurdly_long_line(tmp_path, capsys, bad_split):
    en, fr = synthetic_pairs(50, 3)
    prefix = prepare_text(tmp_path, en, fr)
    write_lines(tmp_path / "text" / "valid.en", en[:5])
    write_lines(tmp_path / "text" / "valid.fr", fr[:5])
    bad = tmp_path / "text" / f"{bad_split}.en"
    lines = bad.read_text().splitlines()
    lines[1] = "word " * 10_000  # 50,000 characters on line 2
    write_lines(bad, lines)
    out = tmp_path / "out" / "data"
    argv = ["prepare", "--langs", "en,fr", "--train", prefix, "--valid", str(tmp_path / "text" / "valid")]
    assert main([*argv, "--out", str(out), "--vocab-size", "100", "--parallel"]) == 1
    err = one_line_error(capsys, "prepare")
    assert f"{bad}:2:" in err and "50000 characters" in err
    assert_nothing_written(out)


def test_prepare_refuses_to_overwrite(data_dir, corpus, capsys):
    before = (data_dir / "meta.json").read_bytes()
    argv = ["prepare", "--langs", "en,fr", "--train", corpus["train"], "--out", str(data_dir)]
    assert main([*argv, "--vocab-size", "100"]) == 1
    assert "already exists" in one_line_error(capsys, "prepare")
    assert (data_dir / "meta.json").read_bytes() == before


def test_pretrain_missing_config_file(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["pretrain", str(missing), f"run_dir={tmp_path / 'run'}"]) == 1
    err = one_line_error(capsys, "pretrain")
    assert str(missing) in err and "not found" in err
    assert not (tmp_path / "run").exists()


def test_pretrain_unknown_key_in_config(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\nmodel:\n  preset: tiny\n  embd_dim: 32\n")
    assert main(["pretrain", str(config)]) == 1
    err = one_line_error(capsys, "pretrain")
    assert str(config) in err and "model.embd_dim" in err
    assert not (tmp_path / "run").exists()


def test_pretrain_unknown_key_in_override(tmp_path, capsys):
    assert main(["pretrain", "model.preset=tiny", "train.max_stpes=3", f"run_dir={tmp_path / 'run'}"]) == 1
    assert "train.max_stpes" in one_line_error(capsys, "pretrain")
    assert not (tmp_path / "run").exists()


def test_overrides_may_follow_the_options(tmp_path, capsys):
    # The typo is found, so the override after --run-dir was read as an override, not rejected by argparse.
    assert main(["pretrain", "model.preset=tiny", "--run-dir", str(tmp_path / "run"), "train.max_stpes=3"]) == 1
    assert "train.max_stpes" in one_line_error(capsys, "pretrain")
    with pytest.raises(SystemExit) as info:
        main(["pretrain", "--run-dir", str(tmp_path / "run"), "--no-such-option"])
    assert info.value.code == 2 and "--no-such-option" in capsys.readouterr().err


def test_pretrain_data_dir_not_prepared(tmp_path, capsys):
    not_prepared = tmp_path / "raw"
    not_prepared.mkdir()
    run = tmp_path / "run"
    assert main(["pretrain", *tiny_overrides(not_prepared, run)]) == 1
    err = one_line_error(capsys, "pretrain")
    assert str(not_prepared) in err and "prepare" in err
    assert not run.exists()


def test_pretrain_init_from_checkpoint_of_another_architecture(run_dir, data_dir, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(latest_checkpoint(run_dir), ckpt)
    weights = load_file(ckpt / "model.safetensors")
    name = next(k for k, v in weights.items() if v.dim() == 2)
    rows, cols = weights[name].shape
    weights[name] = torch.zeros(rows, cols + 8)
    save_file(weights, ckpt / "model.safetensors")
    run = tmp_path / "run"
    assert main(["pretrain", *tiny_overrides(data_dir, run, f"init_from={ckpt}")]) == 1
    err = one_line_error(capsys, "pretrain")
    assert "another architecture" in err and str(ckpt / "model.safetensors") in err and name in err
    assert not run.exists()


def test_argparse_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["prepare", "--train", "x"])  # --langs and --out are required
    assert info.value.code == 2
    assert "--langs" in capsys.readouterr().err


def mass_command() -> list[str]:
    script = Path(sys.executable).parent / "mass"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mass.cli"]


@pytest.mark.parametrize("command", ["prepare", "pretrain"])
def test_installed_command_prints_one_line_and_exits_non_zero(tmp_path, command):
    missing = tmp_path / "missing"
    if command == "prepare":
        args = ["prepare", "--langs", "en,fr", "--train", str(missing), "--out", str(tmp_path / "out")]
    else:
        args = ["pretrain", str(missing / "config.yaml")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([*mass_command(), *args], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"mass {command}: error: ") and str(missing) in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def finetuned(run_dir, data_dir, tmp_path_factory) -> Path:
    """Two fr->en fine-tuning updates from the pre-trained run, through the CLI."""
    run = tmp_path_factory.mktemp("cli-ft") / "fr-en"
    overrides = [o for o in tiny_overrides(data_dir, run, "train.max_steps=2") if not o.startswith("model.preset=")]
    with fast_training():
        assert main(["finetune", "--from", str(run_dir), "--src", "fr", "--tgt", "en", *overrides]) == 0
    return run


def test_finetune_scores_the_translate_objective_of_its_config(run_dir, data_dir, tmp_path, capsys):
    """A config may list MASS steps before the translation: the translation is what gets scored."""
    run = tmp_path / "mixed"
    mixed = "objectives=[{name: mass, lang: fr}, {name: translate, src: fr, tgt: en}]"
    overrides = [o for o in tiny_overrides(data_dir, run, "train.max_steps=2", mixed) if not o.startswith("model.")]
    assert main(["finetune", "--from", str(run_dir), "--src", "en", "--tgt", "fr", *overrides]) == 1
    assert "--src en --tgt fr: the config's objectives translate fr-en" in one_line_error(capsys, "finetune")
    with fast_training():
        assert main(["finetune", "--from", str(run_dir), *overrides]) == 0
    last = read_log(run)[-1]
    assert "bleu" in last and "loss_mass_fr" in read_log(run)[0]


def test_finetune_rerun_resumes_after_the_pretrained_run_is_deleted(run_dir, data_dir, tmp_path, capsys):
    """The same `mass finetune --from RUN ...` command resumes its run once RUN is gone: nothing of RUN is
    needed after the first checkpoint. Without a checkpoint of its own, a missing RUN is a one-line error."""
    source = tmp_path / "pretrain"
    shutil.copytree(run_dir, source)
    run = tmp_path / "ft"
    overrides = [o for o in tiny_overrides(data_dir, run, "train.save_interval=1") if not o.startswith("model.")]
    command = ["finetune", "--from", str(source), "--src", "fr", "--tgt", "en", *overrides]
    assert main([*command, "train.max_steps=1"]) == 0
    started = read_checkpoint_config(latest_checkpoint(run))["init_from"]
    shutil.rmtree(source)
    assert main([*command, "train.max_steps=2"]) == 0
    assert sorted(r["step"] for r in read_log(run) if "loss" in r) == [1, 2]
    assert read_checkpoint_config(latest_checkpoint(run))["init_from"] == started
    other = [o.replace(f"run_dir={run}", f"run_dir={tmp_path / 'new'}") for o in command]
    capsys.readouterr()
    assert main([*other, "train.max_steps=1"]) == 1
    assert "no checkpoint found" in one_line_error(capsys, "finetune")


def test_finetune_then_generate_writes_one_line_per_input(finetuned, tmp_path):
    src = tmp_path / "in.fr"
    write_lines(src, ["le chat dort", "la maison est grande", "un"])
    out = tmp_path / "out.en"
    argv = ["generate", str(finetuned), "--src", "fr", "--tgt", "en", "--input", str(src), "--output", str(out)]
    assert main(argv) == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 3


def test_generate_with_sampling_draws_nbest_lines_per_input_repeatably(finetuned, tmp_path, capsys):
    src = tmp_path / "in.fr"
    write_lines(src, ["le chat dort", "la maison est grande"])
    argv = ["generate", str(finetuned), "--src", "fr", "--tgt", "en", "--input", str(src), "--sampling"]
    outputs = []
    for seed in ("1", "1", "2"):
        capsys.readouterr()
        assert main([*argv, "--nbest", "3", "--temperature", "1.5", "--sampling-topk", "50", "--seed", seed]) == 0
        outputs.append(capsys.readouterr().out.splitlines())
    assert len(outputs[0]) == 6 and outputs[0] == outputs[1] and outputs[0] != outputs[2]


def test_translate_prompt_and_python_api_agree_with_generate(finetuned, tmp_path, capsys, monkeypatch):
    from mass.inference import load_generator

    lines = ["le chat dort", "la maison est grande"]
    src = tmp_path / "in.fr"
    write_lines(src, lines)
    assert main(["generate", str(finetuned), "--src", "fr", "--tgt", "en", "--input", str(src)]) == 0
    expected = capsys.readouterr().out.splitlines()
    # A blank line is skipped, so is invalid UTF-8 (as surrogates under the C locale's surrogateescape, or as
    # UnicodeDecodeError under a strict one), and Ctrl-D (EOFError) ends the prompt.
    typed = iter([lines[0], "  ", "\udcff chat", "STRICT", lines[1]])

    def fake_input(prompt: str) -> str:
        line = next(typed, None)
        if line is None:
            raise EOFError
        if line == "STRICT":
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return line

    monkeypatch.setattr("builtins.input", fake_input)
    assert main(["translate", str(finetuned), "--src", "fr", "--tgt", "en"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == expected and out.err.count("invalid UTF-8: line skipped") == 2
    assert load_generator(finetuned).translate(lines, "fr", "en") == expected  # the README's Python example
    with pytest.raises(TypeError, match="list of sentences"):  # not one translation per character
        load_generator(finetuned).translate(lines[0], "fr", "en")


def test_generate_scores_prefix_each_nbest_line_best_first(finetuned, tmp_path, capsys):
    src = tmp_path / "in.fr"
    write_lines(src, ["le chat dort", "la maison est grande"])
    argv = ["generate", str(finetuned), "--src", "fr", "--tgt", "en", "--input", str(src), "--beam", "3"]
    assert main([*argv, "--nbest", "3"]) == 0
    plain = capsys.readouterr().out.splitlines()
    assert main([*argv, "--nbest", "3", "--scores"]) == 0
    captured = capsys.readouterr()
    assert "fr->en" in captured.err and "2/2" in captured.err  # the progress bar, on stderr only
    scored = [line.split("\t") for line in captured.out.splitlines()]
    assert [text for _, text in scored] == plain  # the same hypotheses, each behind its score
    scores = [float(score) for score, _ in scored]
    for first in (0, 3):  # per input, best first, and each a log-prob (below zero)
        assert scores[first] >= scores[first + 1] >= scores[first + 2] and scores[first] < 0


@pytest.mark.parametrize(
    "lines, number, message",
    [
        (["le chat", "x" * 20_000], 2, "characters, more than"),
        (["le chat", "le chat " * 400], 2, "subwords, more than the model's"),
    ],
    ids=["too_many_characters", "too_many_subwords"],
)
def test_generate_bad_source_line_names_file_and_line(finetuned, tmp_path, capsys, lines, number, message):
    src = tmp_path / "in.fr"
    write_lines(src, lines)
    out = tmp_path / "out.en"
    assert main(["generate", str(finetuned), "--src", "fr", "--input", str(src), "--output", str(out)]) == 1
    err = one_line_error(capsys, "generate")
    assert f"{src}:{number}" in err and message in err
    assert not out.exists()


def test_generate_keeps_outputs_aligned_with_inputs(finetuned, tmp_path, capsys):
    """An empty input line gets empty outputs (nbest of them) and a stray carriage return inside a line does not
    split it: output line i * nbest belongs to input line i."""
    src = tmp_path / "in.fr"
    src.write_bytes(b"le chat dort\n\n  \nla maison\rest grande\n")
    argv = ["generate", str(finetuned), "--src", "fr", "--tgt", "en", "--input", str(src), "--beam", "2"]
    assert main([*argv, "--nbest", "2"]) == 0
    out = capsys.readouterr().out.split("\n")[:-1]
    assert len(out) == 8 and out[2:6] == ["", "", "", ""]
    assert main([*argv, "--nbest", "1"]) == 0
    alone = capsys.readouterr().out.split("\n")[:-1]
    assert [alone[0], alone[3]] == [out[0], out[6]]


def test_generate_prints_nbest_lines_even_when_fewer_finish(finetuned, tmp_path, capsys):
    # max length int(0.1 * 2) = 0 for the short line: only one hypothesis can finish (the beams start as one).
    src = tmp_path / "in.fr"
    src.write_bytes(b"le chat\n" + b"la maison est grande et belle le chat dort ici\n")
    argv = ["generate", str(finetuned), "--src", "fr", "--tgt", "en", "--input", str(src), "--scores"]
    assert main([*argv, "--beam", "3", "--nbest", "3", "--max-len-a", "0.1", "--max-len-b", "0"]) == 0
    out = capsys.readouterr().out.split("\n")[:-1]
    assert len(out) == 6
    assert out[1:3] == ["-inf\t", "-inf\t"] and all(float(line.split("\t")[0]) > -1e9 for line in out[3:])


@pytest.mark.parametrize(
    "options, message",
    [
        (["--beam", "3", "--nbest", "5"], "need beam >= 1 and 1 <= nbest <= beam, not beam 3, nbest 5"),
        (["--beam", "0"], "need beam >= 1"),
        (["--max-len-a", "-5"], "must be >= 0"),
        (["--max-len-a", "0", "--max-len-b", "0"], "every output would be empty"),
        (["--sampling-topk", "5", "--temperature", "0.5"], "--sampling-topk, --temperature only apply with --sampling"),
        (["--sampling", "--temperature", "0"], "temperature > 0"),
        (["--device", "bogus"], "unknown device 'bogus'"),
        (["--beam", "100000"], "beam 100000 is larger than the vocabulary"),
        (["--sampling", "--beam", "4"], "--beam does not apply with --sampling"),
    ],
)
def test_generate_bad_options_are_one_line_errors(finetuned, tmp_path, capsys, options, message):
    src = write_lines(tmp_path / "in.fr", ["le chat dort"])
    assert main(["generate", str(finetuned), "--input", str(src), *options]) == 1
    err = one_line_error(capsys, "generate")
    assert message in err and "object at" not in err


def test_generate_output_that_is_a_directory(finetuned, tmp_path, capsys):
    src = write_lines(tmp_path / "in.fr", ["le chat dort"])
    assert main(["generate", str(finetuned), "--input", str(src), "--output", str(tmp_path)]) == 1
    assert "is a directory" in one_line_error(capsys, "generate")


def test_generate_input_file_problems(finetuned, tmp_path, capsys, monkeypatch):
    """A byte-order mark is not text; a directory or an unreadable file is a one-line error, not a traceback."""
    src = write_lines(tmp_path / "in.fr", ["le chat dort"])
    argv = ["generate", str(finetuned), "--src", "fr", "--tgt", "en"]
    assert main([*argv, "--input", str(src)]) == 0
    plain = capsys.readouterr().out
    src.write_bytes("\ufeffle chat dort\n".encode())
    assert main([*argv, "--input", str(src)]) == 0
    assert capsys.readouterr().out == plain
    assert main([*argv, "--input", str(tmp_path)]) == 1
    assert f"{tmp_path}: is a directory, not a file" in one_line_error(capsys, "generate")

    def unreadable(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", unreadable)
    assert main([*argv, "--input", str(src)]) == 1
    assert one_line_error(capsys, "generate") == f"mass generate: error: {src}: Permission denied\n"


def test_evaluate_mass_refuses_data_prepared_again_with_another_tokenizer(run_dir, corpus, tmp_path, capsys):
    """The run's data directory re-prepared with another vocabulary would give wrong ids to the model."""
    other = tmp_path / "data"
    argv = ["prepare", "--langs", "en,fr", "--train", corpus["train"], "--valid", corpus["valid"]]
    assert main([*argv, "--out", str(other), "--vocab-size", "200"]) == 0
    ckpt = tmp_path / "ckpt"
    shutil.copytree(latest_checkpoint(run_dir), ckpt)
    config = (ckpt / "config.yaml").read_text(encoding="utf-8")
    (ckpt / "config.yaml").write_text(config.replace(f"dir: {read_checkpoint_config(ckpt)['data']['dir']}",
                                                     f"dir: {other}"), encoding="utf-8")
    assert read_checkpoint_config(ckpt)["data"]["dir"] == str(other)
    capsys.readouterr()
    assert main(["evaluate", str(ckpt), "--task", "mass", "--split", "valid", "--src", "en"]) == 1
    assert "prepared again with another tokenizer" in one_line_error(capsys, "evaluate")


def test_evaluate_from_inside_a_checkpoint_writes_beside_the_run(finetuned, capsys, monkeypatch):
    from mass.checkpoint import best_checkpoint

    own = best_checkpoint(finetuned) or latest_checkpoint(finetuned)
    result = finetuned / "eval" / "mt-fr-en-valid-first2.json"
    result.unlink(missing_ok=True)
    monkeypatch.chdir(own)
    assert main(["evaluate", ".", "--split", "valid", "--limit", "2"]) == 0
    assert json.loads(result.read_text(encoding="utf-8"))["metrics"]["sentences"] == 2
    assert not (own / "eval").exists()


def test_evaluate_says_how_many_references_perplexity_cut(finetuned, tmp_path):
    src = write_lines(tmp_path / "in.fr", ["le chat dort", "la maison"])
    ref = write_lines(tmp_path / "ref.en", ["the cat sleeps", "the house " * 400])
    out = tmp_path / "r.json"
    assert main(["evaluate", str(finetuned), "--input", str(src), "--reference", str(ref), "--output", str(out)]) == 0
    assert json.loads(out.read_text(encoding="utf-8"))["metrics"]["ppl_references_cut"] == 1
    write_lines(ref, ["the cat sleeps", "the house"])
    assert main(["evaluate", str(finetuned), "--input", str(src), "--reference", str(ref), "--output", str(out)]) == 0
    assert "ppl_references_cut" not in json.loads(out.read_text(encoding="utf-8"))["metrics"]


def test_evaluate_bad_requests_are_one_line_errors(finetuned, tmp_path, capsys):
    src = write_lines(tmp_path / "in.fr", ["le chat dort", "le chat " * 400])
    ref = write_lines(tmp_path / "ref.en", ["the cat sleeps", "the cat"])
    with pytest.raises(SystemExit):  # argparse: usage and the error
        main(["evaluate", str(finetuned), "--limit", "-1"])
    assert "argument --limit: expected a whole number >= 0, not '-1'" in capsys.readouterr().err
    assert main(["evaluate", str(finetuned), "--reference", str(ref)]) == 1
    assert "--reference goes with --input" in one_line_error(capsys, "evaluate")
    assert main(["evaluate", str(finetuned), "--task", "mass", "--input", str(src)]) == 1
    assert "takes no --input" in one_line_error(capsys, "evaluate")
    for task in ("mass", "align", "dialogue"):  # they score references as they are: decoding options would be lost
        assert main(["evaluate", str(finetuned), "--task", task, "--beam", "2", "--min-len", "3"]) == 1
        assert f"--beam, --min-len: --task {task} decodes nothing" in one_line_error(capsys, "evaluate")
    assert main(["evaluate", str(finetuned), "--input", str(src), "--reference", str(ref)]) == 1
    assert f"{src}:2: line has" in one_line_error(capsys, "evaluate")  # not silently cut to the model's length
    for task in ("mt", "mass"):
        assert main(["evaluate", str(finetuned), "--task", task, "--src", "de", "--tgt", "en"]) == 1
        assert "language 'de' is not in the model (its languages: en, fr)" in one_line_error(capsys, "evaluate")
    assert main(["evaluate", str(finetuned), "--input", str(src), "--reference", str(ref), "--limit", "1"]) == 0
    result = json.loads((finetuned / "eval" / "mt-fr-en-input-in.fr-first1.json").read_text(encoding="utf-8"))
    assert result["input"] == str(src) and result["reference"] == str(ref) and "split" not in result


def test_evaluate_prints_scores_with_the_sacrebleu_signature(finetuned, tmp_path, capsys):
    src, ref, out = tmp_path / "in.fr", tmp_path / "ref.en", tmp_path / "scores.json"
    write_lines(src, ["le chat dort", "la maison est grande"])
    write_lines(ref, ["the cat sleeps", "the house is big"])
    argv = ["evaluate", str(finetuned), "--src", "fr", "--tgt", "en", "--input", str(src), "--reference", str(ref)]
    assert main([*argv, "--output", str(out)]) == 0
    printed = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines() if ": " in line)
    metrics = json.loads(out.read_text())["metrics"]
    assert printed["bleu_signature"] == metrics["bleu_signature"] and "nrefs:1" in metrics["bleu_signature"]
    assert float(printed["bleu"]) == pytest.approx(metrics["bleu"], abs=0.01) and printed["sentences"] == "2"
    assert len(out.with_suffix(".hyp.txt").read_text().splitlines()) == 2


def test_evaluate_align_retrieves_translations_by_content(finetuned, tmp_path, capsys):
    """`--task align`: each sentence's nearest neighbour on the other side; the same English text on both sides
    retrieves every line, the same text in reverse order none (no line is its own reversed partner)."""
    lines = ["the cat sleeps", "a house is big", "the dog runs fast", "one two three", "rain falls", "we sing"]
    src, same, reverse = tmp_path / "in.en", tmp_path / "same.en", tmp_path / "reverse.en"
    for path, text in ((src, lines), (same, lines), (reverse, lines[::-1])):
        write_lines(path, text)
    scores = {}
    for ref in (same, reverse):
        out = tmp_path / f"{ref.stem}.json"
        argv = ["evaluate", str(finetuned), "--task", "align", "--src", "en", "--tgt", "en", "--input", str(src)]
        assert main([*argv, "--reference", str(ref), "--output", str(out)]) == 0
        scores[ref.stem] = json.loads(out.read_text())["metrics"]
    assert "retrieval: 100.00" in capsys.readouterr().out  # percentages, like BLEU
    assert scores["same"]["retrieval"] == 100.0 and scores["same"]["sentences"] == 6
    assert scores["reverse"]["retrieval"] == 0.0
    assert scores["same"]["chance"] == pytest.approx(100 / 6)


def test_average_then_evaluate_keeps_the_runs_own_results(finetuned, tmp_path, capsys):
    """An averaged checkpoint evaluates like any other, into its own result file beside the run's: the mean
    of the last checkpoint alone is that checkpoint, so it translates identically."""
    src, ref = tmp_path / "in.fr", tmp_path / "ref.en"
    write_lines(src, ["le chat dort", "la maison est grande", "un chien"])
    write_lines(ref, ["the cat sleeps", "the house is big", "a dog"])
    avg = finetuned / "checkpoints" / "average_last1"
    assert main(["average", str(finetuned), "--last", "1"]) == 0
    assert f"into {avg}" in capsys.readouterr().out
    scored = {}
    for ckpt in (finetuned, avg):
        argv = ["evaluate", str(ckpt), "--src", "fr", "--tgt", "en", "--input", str(src), "--reference", str(ref)]
        assert main(argv) == 0
        written = capsys.readouterr().out.splitlines()[-1].removeprefix("wrote ")
        scored[ckpt] = (Path(written), Path(written).with_suffix(".hyp.txt").read_text())
    (own, own_hyps), (averaged, avg_hyps) = scored[finetuned], scored[avg]
    assert own.parent == averaged.parent == finetuned / "eval" and own.is_file()
    assert averaged.name == own.name.replace(".json", "-average_last1.json")
    assert avg_hyps == own_hyps and len(own_hyps.splitlines()) == 3


def test_average_bad_requests_are_one_line_errors(finetuned, tmp_path, capsys):
    assert main(["average", str(finetuned), "--last", "50"]) == 1
    assert "the last 50 checkpoints, the run has" in one_line_error(capsys, "average")
    assert main(["average", str(finetuned), str(finetuned)]) == 1
    assert "--out" in one_line_error(capsys, "average")
    assert main(["average", str(tmp_path / "missing"), "--out", str(tmp_path / "avg")]) == 1
    assert "no checkpoint found" in one_line_error(capsys, "average")
    assert main(["average", str(finetuned), "--last", "0"]) == 1
    assert "the last 0 checkpoints" in one_line_error(capsys, "average")
    assert main(["average", str(tmp_path / "missing"), "--last", "2"]) == 1
    assert "not a run directory" in one_line_error(capsys, "average")
    assert not (tmp_path / "avg").exists()


@pytest.mark.parametrize("command", ["generate", "evaluate"])
def test_language_not_in_the_model(finetuned, tmp_path, capsys, command):
    src = tmp_path / "in.de"
    write_lines(src, ["der Hund"])
    ref = ["--reference", str(src)] if command == "evaluate" else []
    assert main([command, str(finetuned), "--src", "de", "--tgt", "en", "--input", str(src), *ref]) == 1
    err = one_line_error(capsys, command)
    assert "'de'" in err and "en, fr" in err


def test_single_language_model_needs_no_direction(data_dir, tmp_path, capsys):
    """Summarization and dialogue models have one language: --src/--tgt default to it, not to fr/en."""
    run = tmp_path / "en-only"
    overrides = tiny_overrides(data_dir, run, "train.max_steps=1", "data.langs=[en]")
    with fast_training():
        assert main(["finetune", *overrides]) == 0
    assert "en-en" in (run / "metrics.jsonl").read_text()
    src = tmp_path / "in.en"
    write_lines(src, ["the cat sleeps"])
    capsys.readouterr()
    assert main(["generate", str(run), "--input", str(src)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


@pytest.mark.parametrize(
    "langs, task, trained, given, expected",
    [
        (["en", "fr"], "mt", None, (None, None), ("fr", "en")),
        (["en", "fr"], "summarization", None, (None, None), ("en", "en")),  # not French into English
        (["en", "fr"], "dialogue", None, ("fr", None), ("fr", "fr")),  # the target follows the source
        (["de", "fr"], "summarization", None, (None, None), ("de", "de")),
        (["en"], "mt", None, (None, None), ("en", "en")),
        (["en", "fr"], "mt", ("en", "fr"), (None, None), ("en", "fr")),  # the fine-tuned direction
        (["en", "fr"], "mt", ("en", "en"), (None, None), ("en", "en")),  # a summarizer, task not named
        (["en", "fr"], "mt", ("en", "fr"), ("fr", "en"), ("fr", "en")),  # what is asked for wins
        (["en", "fr"], "mt", ("fr", "en"), ("en", None), ("en", "fr")),  # the fine-tuned pair's other side
        (["en", "fr"], "mt", ("fr", "en"), (None, "fr"), ("en", "fr")),
        (["en", "fr"], "mt", None, ("en", None), ("en", "fr")),  # the model's other language, not en->en
        (["de", "en", "fr"], "mt", None, ("de", None), ("de", "en")),
        (["de", "en"], "mt", None, (None, None), ("de", "en")),  # into English
        (["de", "ro"], "mt", None, (None, None), ("de", "ro")),
    ],
)
def test_default_direction(langs, task, trained, given, expected):
    from argparse import Namespace

    from mass.cli import _direction

    args = Namespace(src=given[0], tgt=given[1])
    _direction(args, langs, task, trained)
    assert (args.src, args.tgt) == expected


def test_summarization_on_own_line_files_with_an_en_fr_model(run_dir, corpus, tmp_path, capsys):
    """The README's route for one's own summaries (Gigaword-style line files): prepared as sides src/tgt with
    the pre-trained model's tokenizer, fine-tuned and scored as English -> English though the model knows
    en and fr; scoring and generating with the fine-tuned run need neither task nor direction."""
    en = Path(corpus["train"] + ".en").read_text(encoding="utf-8").splitlines()
    text = tmp_path / "giga"
    for split, lines in (("train", en[:200]), ("valid", en[200:240]), ("test", en[240:250])):
        write_lines(text / f"{split}.src", lines)
        write_lines(text / f"{split}.tgt", [" ".join(line.split()[:3]) for line in lines])
    data, run = tmp_path / "bin", tmp_path / "summ"
    spm = latest_checkpoint(run_dir) / "spm.model"
    argv = ["prepare", "--langs", "src,tgt", "--train", str(text / "train"), "--valid", str(text / "valid")]
    argv += ["--test", str(text / "test")]
    assert main([*argv, "--out", str(data), "--parallel", "--tokenizer", str(spm)]) == 0
    overrides = [o for o in tiny_overrides(data, run, "train.max_steps=2") if not o.startswith("model.preset=")]
    with fast_training():
        assert main(["finetune", "--task", "summarization", "--from", str(run_dir), *overrides]) == 0
    last = read_log(run)[-1]
    assert "valid_ppl_en-en" in last and "rougeL" in last

    # No --task, --src, --tgt: the run's own task (its decoding defaults, its metrics) and direction.
    valid = [str(text / "valid.src"), "--reference", str(text / "valid.tgt"), "--limit", "8"]
    assert main(["evaluate", str(run), "--input", *valid]) == 0
    result = json.loads((run / "eval" / "summarization-en-en-input-valid.src-first8.json").read_text(encoding="utf-8"))
    assert (result["src"], result["tgt"]) == ("en", "en") and result["metrics"]["sentences"] == 8
    assert {"rouge1", "rouge2", "rougeL"} <= set(result["metrics"]) and result["generation"]["no_repeat_ngram"] == 3

    # Without --input: the held-out text that prepare kept in the run's data directory, not a shipped corpus.
    assert main(["evaluate", str(run), "--split", "valid", "--limit", "8"]) == 0
    kept = json.loads((run / "eval" / "summarization-en-en-valid-first8.json").read_text(encoding="utf-8"))
    assert kept["metrics"] == result["metrics"]
    assert main(["evaluate", str(run)]) == 0
    test = json.loads((run / "eval" / "summarization-en-en-test.json").read_text(encoding="utf-8"))
    assert test["metrics"]["sentences"] == 10
    assert main(["evaluate", str(run), "--limit", "3"]) == 0  # a quick look keeps the full scores beside it
    full = json.loads((run / "eval" / "summarization-en-en-test.json").read_text(encoding="utf-8"))
    quick = json.loads((run / "eval" / "summarization-en-en-test-first3.json").read_text(encoding="utf-8"))
    assert (full["metrics"]["sentences"], quick["metrics"]["sentences"]) == (10, 3)
    named_test = tmp_path / "mine" / "test"  # a file named like the split does not overwrite its scores
    named_test.parent.mkdir()
    shutil.copyfile(text / "valid.src", named_test)
    assert main(["evaluate", str(run), "--input", str(named_test), "--reference", str(text / "valid.tgt")]) == 0
    assert json.loads((run / "eval" / "summarization-en-en-test.json").read_text(encoding="utf-8")) == full
    capsys.readouterr()
    assert main(["evaluate", str(run), "--split", "train"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no text kept for split 'train'" in err and "--input" in err

    assert main(["generate", str(run), "--input", str(text / "valid.src")]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 40 and "en->en" in err
    assert main(["generate", str(run), "--input", str(text / "valid.src"), "--task", "summarization"]) == 0
    assert capsys.readouterr().out == out


def test_prepare_long_documents_need_max_line_chars(tmp_path, capsys):
    """Documents longer than the default 10,000 characters (long-document summarization) can be prepared."""
    doc = " ".join(f"word{i % 50}" for i in range(2000))  # about 13,000 characters
    write_lines(tmp_path / "t" / "train.src", [doc, "a short one"])
    argv = ["prepare", "--langs", "src", "--train", str(tmp_path / "t" / "train"), "--vocab-size", "60"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 1
    assert f"train.src:1: line has {len(doc)} characters, more than max_line_chars=10000" in one_line_error(
        capsys, "prepare"
    )
    assert main([*argv, "--out", str(tmp_path / "b"), "--max-line-chars", "20000"]) == 0
    assert json.loads((tmp_path / "b" / "meta.json").read_text())["splits"] == {"train": {"src": 2}}
    assert main(["prepare", "--langs", ",", "--train", "x", "--out", str(tmp_path / "c")]) == 1
    assert "--langs names no language" in one_line_error(capsys, "prepare")


def test_langs_option_quotes_codes_yaml_would_read_as_booleans():
    from argparse import Namespace

    from mass.cli import _split_config_args
    from mass.config import load_config

    args = Namespace(config=None, overrides=[], langs="en, no", run_dir=None, preset=None)
    config, overrides = _split_config_args(args)
    assert load_config(config, overrides).data.langs == ["en", "no"]


def test_unsup_on_own_monolingual_files(tmp_path, capsys):
    """The README's route for unsupervised MT on one's own text: non-parallel training files, a line-aligned
    validation split (checked by `--parallel valid`) that only scores."""
    en, fr = synthetic_pairs(300, 0)
    ven, vfr = synthetic_pairs(40, 1)
    text = tmp_path / "mono"
    for name, lines in (("train.en", en[:150]), ("train.fr", fr[150:280]), ("valid.en", ven), ("valid.fr", vfr)):
        write_lines(text / name, lines)
    argv = ["prepare", "--langs", "en,fr", "--train", str(text / "train"), "--valid", str(text / "valid")]
    assert main([*argv, "--out", str(tmp_path / "all"), "--vocab-size", "300", "--parallel"]) == 1
    assert "differ in length" in one_line_error(capsys, "prepare")  # train is not parallel
    assert main([*argv, "--out", str(tmp_path / "x"), "--parallel", "valid,test"]) == 1
    assert "--parallel names splits not given: test" in one_line_error(capsys, "prepare")
    data = tmp_path / "bin"
    assert main([*argv, "--out", str(data), "--vocab-size", "300", "--parallel", "valid"]) == 0

    run = tmp_path / "run"
    with fast_training():
        assert main(["unsup", *tiny_overrides(data, run, "train.max_steps=2")]) == 1
        assert "no unsup.en data (en is in train, valid: choose the split with data.train_split=NAME)" in (
            one_line_error(capsys, "unsup")
        )
        assert main(["unsup", *tiny_overrides(data, run, "data.train_split=train", "data.langs=[en,de]")]) == 1
        assert "no train.de data (the data has en, fr)" in one_line_error(capsys, "unsup")
        assert main(["unsup", *tiny_overrides(data, run, "data.train_split=train", "data.langs=[en]")]) == 1
        assert "unsupervised MT needs two languages, not data.langs=['en']" in one_line_error(capsys, "unsup")
        bt_only = "objectives=[{name: bt, src: en, tgt: fr}]"
        with_objectives = tiny_overrides(data, run, "data.train_split=train", bt_only)
        assert main(["unsup", "--no-mass", *with_objectives]) == 1
        assert "--no-mass changes the default schedule" in one_line_error(capsys, "unsup")
        assert main(["unsup", *tiny_overrides(data, run, "train.max_steps=2", "data.train_split=train")]) == 0
        # The same non-parallel text taken for a supervised pair: one line naming both sides, no traceback.
        capsys.readouterr()
        assert main(["finetune", "--src", "fr", "--tgt", "en", *tiny_overrides(data, tmp_path / "ft")]) == 1
        assert "train.fr has 130 sentences and train.en 150: a parallel split needs line-aligned files" in (
            one_line_error(capsys, "finetune")
        )
    last = read_log(run)[-1]
    assert {"bleu_en-fr", "bleu_fr-en", "retrieval"} <= set(last) and last["step"] == 2
    assert read_log(run)[0]["loss_bt_en-fr-en"] > 0

    # A validation split whose sides do not line up cannot score translations: one line, before training.
    write_lines(text / "valid.fr", vfr[:30])
    assert main([*argv, "--out", str(tmp_path / "bad"), "--vocab-size", "300"]) == 0
    capsys.readouterr()
    overrides = tiny_overrides(tmp_path / "bad", tmp_path / "run2", "data.train_split=train")
    assert main(["unsup", *overrides]) == 1
    assert "valid.en has 40 sentences and valid.fr 30" in one_line_error(capsys, "unsup")
    assert not (tmp_path / "run2").exists()


def test_evaluate_mass_perplexity_of_every_language_equals_validation(run_dir, capsys):
    """`--task mass` without --src scores each language with training's seeded masks: on the validation
    sentences training scored, the very perplexities the training log reports for that checkpoint."""
    logged = read_log(run_dir)[-1]
    assert main(["evaluate", str(run_dir), "--task", "mass", "--split", "valid", "--limit", "32"]) == 0
    out = capsys.readouterr().out
    for lang in ("en", "fr"):
        result = json.loads((run_dir / "eval" / f"mass-{lang}-valid-first32.json").read_text(encoding="utf-8"))
        assert result["metrics"]["mass_ppl"] == pytest.approx(logged[f"valid_ppl_mass_{lang}"], rel=1e-5)
        assert f"{lang} mass_ppl: {result['metrics']['mass_ppl']:.2f}" in out
        assert f"{lang} sentences: {result['metrics']['sentences']}\n" in out and result["metrics"]["sentences"] == 32
    assert main(["evaluate", str(run_dir), "--task", "mass", "--split", "valid", "--src", "fr"]) == 0
    single = capsys.readouterr().out
    assert single.startswith("mass_ppl: ") and single.count("mass_ppl") == 1  # one language, asked for


def test_demo_refuses_bad_budgets_and_a_run_dir_started_with_other_settings(tmp_path, capsys):
    run = tmp_path / "demo"
    for bad in (["--minutes", "0"], ["--minutes", "-1"], ["--pairs", "0"], ["--test-sentences", "0"]):
        assert main(["demo", "--run-dir", str(run), *bad]) == 1
        assert "need --minutes > 0, --pairs >= 1, --test-sentences >= 1" in one_line_error(capsys, "demo")
    assert not run.exists()
    # A demo records its budget and size: a longer one must not reuse the short one's finished stages.
    run.mkdir()
    (run / "demo.json").write_text(json.dumps({"minutes": 15.0, "pairs": 10000}))
    assert main(["demo", "--run-dir", str(run), "--minutes", "120"]) == 1
    assert "started with --minutes 15, --pairs 10000: give another --run-dir" in one_line_error(capsys, "demo")
    assert sorted(p.name for p in run.iterdir()) == ["demo.json"]
