"""Built-in corpora: the stdlib corpus (deterministic, disjoint splits) and arithmetic records."""

import pathlib
import sysconfig

import pytest

from ling_jax.data import ArithmeticSource, PythonSource, extract_answer, python_stdlib_files


def test_stdlib_files_are_sorted_disjoint_and_real():
    train, heldout = python_stdlib_files("train"), python_stdlib_files("heldout")
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    assert len(train) > 200 and len(heldout) > 5
    assert not set(train) & set(heldout)
    assert set(train) | set(heldout) == set(python_stdlib_files("all"))
    rel = [str(p.relative_to(root)) for p in train]
    assert rel == sorted(rel)
    assert not any(part in ("site-packages", "test", "tests") for r in rel
                   for part in pathlib.PurePath(r).parts)
    assert python_stdlib_files("train") == train  # deterministic


def test_stdlib_limits():
    assert len(python_stdlib_files("train", max_files=7)) == 7
    small = python_stdlib_files("train", max_bytes=200_000)
    assert sum(p.stat().st_size for p in small) <= 200_000 or len(small) == 1
    with pytest.raises(ValueError, match="split 'dev'"):
        python_stdlib_files("dev")


def test_python_source_reads_files():
    source = PythonSource("train", max_files=5)
    assert len(source) == 5
    record = source[3]
    assert record["index"] == 3
    assert record["text"] == pathlib.Path(source.files[3]).read_text(encoding="utf-8")


def test_arithmetic_source_records():
    masked = ArithmeticSource("heldout", num_docs=10, difficulty=[2, 4], seed=1)
    plain = ArithmeticSource("heldout", num_docs=10, difficulty=[2, 4], seed=1, mask_prompt=False)
    assert len(masked) == 10
    for i in range(10):
        record = masked[i]
        assert record["prompt"].startswith("Question: ")
        assert extract_answer(record["completion"]) is not None
        assert plain[i]["text"] == record["prompt"] + record["completion"]
    with pytest.raises(ValueError, match="split 'test'"):
        ArithmeticSource("test")
