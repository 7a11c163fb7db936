"""Typed config: YAML <- dotted overrides, strict keys and types, presets, and the shipped config files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mass.config import Config, from_dict, load_config, save_config, to_dict
from mass.errors import MassError
from mass.model import ModelConfig, tiny

CONFIGS = Path(__file__).parents[1] / "configs"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file_or_overrides():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg == Config()
    assert cfg.objectives == [] and cfg.data.langs == ["en", "fr"]


def test_yaml_then_overrides(tmp_path):
    path = write(
        tmp_path / "c.yaml",
        "run_dir: runs/x\ndata:\n  langs: [de, en]\n  max_tokens: 1234\ntrain:\n  max_steps: 10\n",
    )
    cfg = load_config(path, ["train.max_steps=20", "optim.betas=[0.8, 0.9]", "train.max_steps=30"])
    assert cfg.run_dir == "runs/x"
    assert cfg.data.langs == ["de", "en"] and cfg.data.max_tokens == 1234
    assert cfg.train.max_steps == 30  # the last override wins over YAML and over earlier overrides
    assert cfg.optim.betas == [0.8, 0.9]
    assert cfg.train.eval_interval == Config().train.eval_interval  # untouched fields keep their defaults


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["foo=1"], "config.foo"),
        (["model.embd_dim=32"], "config.model.embd_dim"),
        (["optim.learning_rate=0.1"], "config.optim.learning_rate"),
    ],
)
def test_unknown_keys_are_errors_naming_the_key(overrides, key):
    with pytest.raises(MassError, match="unknown key") as info:
        load_config(None, overrides)
    assert key in str(info.value)


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    path = write(tmp_path / "c.yaml", "model:\n  preset: tiny\n  embd_dim: 32\n")
    with pytest.raises(MassError) as info:
        load_config(path)
    assert info.value.path == str(path)
    assert "model.embd_dim" in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.max_steps=abc", "train.max_steps"),
        ("train.max_steps=1.5", "train.max_steps"),
        ("train.max_steps=true", "train.max_steps"),  # a bool is not an int
        ("data.langs=5", "data.langs"),
        ("data.langs=[[en]]", "data.langs"),
        ("optim.lr=fast", "optim.lr"),
        ("model=3", "model"),
        ("objectives=[1]", "objectives"),
    ],
)
def test_wrong_types_are_errors(override, key):
    with pytest.raises(MassError) as info:
        load_config(None, [override])
    assert key in str(info.value)


def test_int_accepted_for_float():
    cfg = load_config(None, ["optim.lr=1", "optim.clip_norm=5"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert isinstance(cfg.optim.clip_norm, float)


def test_scientific_notation_floats(tmp_path):
    # `lr=1e-4` is how everyone writes a learning rate, but YAML 1.1 (PyYAML) reads "1e-4" as a string.
    cfg = load_config(None, ["optim.lr=1e-4", "optim.eps=1.0e-9"])
    assert cfg.optim.lr == pytest.approx(1e-4) and cfg.optim.eps == pytest.approx(1e-9)
    cfg = load_config(write(tmp_path / "c.yaml", "optim:\n  lr: 3e-4\n  eps: 1e-6\n"))
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.optim.eps == pytest.approx(1e-6)


def test_numbers_accepted_for_strings():
    # a language code or directory name that YAML reads as a number stays usable
    cfg = load_config(None, ["data.langs=[en, 12]", "run_dir=2024"])
    assert cfg.data.langs == ["en", "12"] and cfg.run_dir == "2024"


def test_preset_fills_values_and_explicit_fields_win():
    cfg = load_config(None, ["model.preset=tiny"])
    assert cfg.model == tiny()
    cfg = load_config(None, ["model.preset=tiny", "model.embed_dim=32"])
    assert cfg.model.embed_dim == 32
    assert cfg.model.ffn_dim == tiny().ffn_dim and cfg.model.encoder_layers == tiny().encoder_layers
    assert cfg.model.embed_dim != ModelConfig().embed_dim


def test_preset_in_yaml_with_override(tmp_path):
    path = write(tmp_path / "c.yaml", "model:\n  preset: tiny\n  dropout: 0.3\n")
    cfg = load_config(path, ["model.num_heads=2"])
    assert (cfg.model.embed_dim, cfg.model.num_heads, cfg.model.dropout) == (tiny().embed_dim, 2, 0.3)


def test_unknown_preset_is_an_error():
    with pytest.raises(MassError, match="preset"):
        load_config(None, ["model.preset=huge"])


def test_invalid_values_checked_by_dataclasses_are_mass_errors():
    with pytest.raises(MassError, match="scheme"):
        load_config(None, ["mask.scheme=zigzag"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.langs=[]", "langs must name each language once"),
        ("data.langs=[en,en]", "langs must name each language once"),
        ("data.max_tokens=0", "max_tokens >= 1"),
        ("data.max_len=0", "max_len"),
        ("data.min_len=200", "min_len <= max_len"),
        ("optim.betas=[0.9]", "betas must be two numbers"),
        ("optim.betas=[0.9,1.5]", "betas must be two numbers"),
        ("optim.accum_steps=0", "accum_steps"),
        ("optim.lr=-1", "lr > 0"),
        ("optim.eps=0", "eps > 0"),
        ("optim.label_smoothing=1.5", r"label_smoothing must be in \[0, 1\)"),
        ("train.log_interval=0", "log_interval, eval_interval, save_interval and keep_checkpoints must be >= 1"),
        ("train.save_interval=0", "save_interval"),
        ("train.keep_checkpoints=0", "keep_checkpoints must be >= 1"),
        ("train.time_budget=-1", "time_budget"),
        ("train.max_steps=-3", "max_steps"),
        ("train.patience=-1", "patience"),
        ("model.embed_dim=65", "embed_dim a multiple of num_heads"),
        ("model.num_heads=0", "num_heads"),
        ("model.max_positions=2", "max_positions >= 3"),
        ("model.dropout=1.5", r"dropout, attention_dropout in \[0, 1\)"),
        ("data={1: 2, x: 3}", "unknown key config.data.1"),
    ],
)
def test_out_of_range_values_are_one_line_errors(override, message):
    """Values that would only fail deep inside training (an empty schedule, no batch, Adam's own IndexError)."""
    with pytest.raises(MassError, match=message) as info:
        load_config(None, [override])
    assert "\n" not in str(info.value)


def test_yaml_booleans_for_strings_say_to_quote(tmp_path):
    """YAML 1.1 reads Norwegian's code `no` as false; quoted, it is a language like any other."""
    with pytest.raises(MassError, match=r"data.langs\[1\] must be str, not bool False: quote it"):
        load_config(None, ["data.langs=[en, no]"])
    assert load_config(None, ['data.langs=["en", "no"]']).data.langs == ["en", "no"]


def test_duplicate_yaml_keys_name_file_and_line(tmp_path):
    """Plain YAML keeps the last of two `train:` sections, silently dropping the first one's settings."""
    path = write(tmp_path / "dup.yaml", "train:\n  max_steps: 5\ntrain:\n  seed: 3\n")
    with pytest.raises(MassError, match="key 'train' given twice") as info:
        load_config(path)
    assert info.value.path == str(path) and info.value.line == 3
    with pytest.raises(MassError, match="key 'seed' given twice"):
        load_config(write(tmp_path / "dup2.yaml", "train:\n  seed: 5\n  seed: 3\n"))


def test_config_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes("train:\n  max_steps: 5  # caf\xe9\n".encode("latin-1"))
    with pytest.raises(MassError, match="not UTF-8") as info:
        load_config(path)
    assert info.value.path == str(path)


def test_override_syntax_errors():
    with pytest.raises(MassError, match="key.sub=value"):
        load_config(None, ["train.max_steps"])
    with pytest.raises(MassError, match="not a section"):
        load_config(None, ["run_dir=x", "run_dir.sub=1"])


def test_objectives_from_yaml(tmp_path):
    path = write(
        tmp_path / "c.yaml",
        "objectives:\n  - {name: mass, lang: en}\n  - {name: translate, src: fr, tgt: en, weight: 2}\n",
    )
    cfg = load_config(path)
    assert [(o.name, o.lang, o.src, o.tgt, o.weight) for o in cfg.objectives] == [
        ("mass", "en", "", "", 1.0),
        ("translate", "", "fr", "en", 2.0),
    ]
    path = write(tmp_path / "bad.yaml", "objectives:\n  - {name: mass, language: en}\n")
    with pytest.raises(MassError, match=r"objectives\[0\]\.language"):
        load_config(path)


@pytest.mark.parametrize(
    ("objectives", "message"),
    [
        ("[{name: bt, lang: en}]", "a bt objective takes src and tgt, not lang"),
        ("[{name: translate, src: fr}]", "a translate objective takes src and tgt"),
        ("[{name: dae, src: en, tgt: fr}]", "a dae objective takes lang"),
        ("[{name: mass, lang: en, src: fr}]", "a mass objective takes lang"),
        ("[{name: mass}]", "a mass objective takes lang"),
        ("[{name: bt, src: en, tgt: en}]", "src and tgt must differ"),
        ("[{name: mass, lang: en, weight: -1}]", "need weight > 0"),
        ("[{name: mass, lang: en, every: 0}]", "every >= 1"),
        ("[{name: mlm, lang: en}]", "unknown objective 'mlm' (known: mass, dae, translate, bt)"),
        # No objective at update 1: it would log a loss of 0 and move the learning rate for nothing.
        ("[{name: mass, lang: en, every: 2}, {name: mass, lang: fr, every: 3}]", "some objective needs every: 1"),
    ],
)
def test_inconsistent_objectives_are_config_errors(objectives, message):
    with pytest.raises(MassError, match=re.escape(message)):
        load_config(None, [f"objectives={objectives}"])


def test_summarization_objective_is_a_translate_between_data_sides():
    cfg = load_config(None, ["objectives=[{name: translate, src: en, tgt: en, src_data: src, tgt_data: tgt}]"])
    assert (cfg.objectives[0].src_side, cfg.objectives[0].tgt_side) == ("src", "tgt")


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.yaml", "model:\n  preset: tiny\n  dropout: [0.1\ntrain:\n  max_steps: 3\n")
    with pytest.raises(MassError) as info:
        load_config(path)
    err = info.value
    assert err.path == str(path) and isinstance(err.line, int) and 3 <= err.line <= 4
    assert str(err).startswith(f"{path}:{err.line}: ") and "invalid YAML" in str(err)
    assert "\n" not in str(err)


def test_yaml_that_is_not_a_mapping(tmp_path):
    with pytest.raises(MassError, match="mapping") as info:
        load_config(write(tmp_path / "list.yaml", "- a\n- b\n"))
    assert info.value.path == str(tmp_path / "list.yaml")


def test_empty_yaml_gives_defaults(tmp_path):
    assert load_config(write(tmp_path / "empty.yaml", "")) == Config()


def test_missing_config_file(tmp_path):
    with pytest.raises(MassError, match="not found") as info:
        load_config(tmp_path / "nope.yaml")
    assert info.value.path == str(tmp_path / "nope.yaml")


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(None, ["model.preset=tiny", "data.langs=[de, en]", "optim.lr=0.002"])
    cfg.objectives = from_dict(Config, {"objectives": [{"name": "translate", "src": "de", "tgt": "en"}]}).objectives
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "preset" not in text  # the resolved config spells out every field
    assert load_config(tmp_path / "config.yaml") == cfg
    assert to_dict(load_config(tmp_path / "config.yaml")) == to_dict(cfg)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config) and cfg.run_dir
    assert cfg.model.embed_dim % cfg.model.num_heads == 0


def test_there_are_shipped_configs():
    assert len(list(CONFIGS.glob("*.yaml"))) >= 1
