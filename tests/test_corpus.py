"""Preparing a shipped corpus into the cache: once, reused, and built once when runs start together."""

from __future__ import annotations

import lzma
import shutil
import threading
from pathlib import Path

from mass.data import corpus
from mass.data.binarize import load_data_dir

SMALL = {"vocab_size": 300, "tokenizer_sentences": 2000}


def test_prepared_once_then_reused_with_its_held_out_text(tmp_path: Path) -> None:
    out = corpus.prepare_corpus("shakespeare", cache=tmp_path, **SMALL)
    data = load_data_dir(out)
    assert set(data.splits) == {"train", "valid", "test"} and data.splits["train"]["src"] > 20_000
    exported = corpus.export_corpus("shakespeare", tmp_path / "text")
    assert data.text("test", "tgt").read_bytes() == (exported / "test.tgt").read_bytes()
    stamp = (out / "meta.json").stat().st_mtime_ns
    assert corpus.prepare_corpus("shakespeare", cache=tmp_path, **SMALL) == out
    assert (out / "meta.json").stat().st_mtime_ns == stamp


def test_a_run_waiting_for_another_ones_build_takes_it(tmp_path: Path, monkeypatch) -> None:
    """Two runs started together on a fresh cache: the second waits for the first's build and reuses it (it
    failed with "already exists" when the first finished during its own tokenizer training)."""
    out = corpus.cache_dir("shakespeare", None, SMALL["vocab_size"], SMALL["tokenizer_sentences"], tmp_path)
    builds = []
    real_build = corpus._build
    monkeypatch.setattr(corpus, "_build", lambda *args: builds.append(args) or real_build(*args))
    results = []

    def second_run() -> None:
        results.append(corpus.prepare_corpus("shakespeare", cache=tmp_path, **SMALL))

    with corpus._locked(out.with_name(f".{out.name}.lock")):  # the first run, building
        waiting = threading.Thread(target=second_run)
        waiting.start()
        waiting.join(timeout=2)
        assert waiting.is_alive() and not results  # blocked on the lock, not building beside it
        real_build("shakespeare", out, None, SMALL["vocab_size"], SMALL["tokenizer_sentences"])
    waiting.join(timeout=120)
    assert results == [out] and builds == []


def test_the_cache_is_keyed_by_the_shipped_text(tmp_path: Path, monkeypatch) -> None:
    """An upgraded package whose shipped corpus changed must not reuse a cache prepared from the old text."""
    shipped = tmp_path / "resources"
    shutil.copytree(corpus.resource_dir("shakespeare"), shipped)
    monkeypatch.setattr(corpus, "resource_dir", lambda name: shipped)
    key = ("shakespeare", None, SMALL["vocab_size"], SMALL["tokenizer_sentences"], tmp_path)
    before = corpus.cache_dir(*key)
    assert before == corpus.cache_dir(*key)  # stable
    (shipped / "valid.tgt.xz").write_bytes(lzma.compress(b"another line\n"))
    after = corpus.cache_dir(*key)
    assert after != before and after.parent == before.parent and after.name.startswith("shakespeare-")
    assert after.name.endswith("-spm300-n2000")
