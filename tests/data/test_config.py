"""Data-config validation: defaults, and errors that name the field before anything is built."""

import ml_collections
import pytest

from ling_jax.data import SOURCE_FIELDS, validate_data_config


def test_defaults_and_both_source_forms(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    cfg = ml_collections.ConfigDict({"sources": {
        "py": {"kind": "builtin_python", "weight": 3},
        "mine": {"kind": "jsonl", "path": str(tmp_path / "a.jsonl"), "long_docs": "error"}}})
    out = validate_data_config(cfg)
    assert out["num_workers"] == 0 and out["shuffle"] is True
    assert [s["label"] for s in out["sources"]] == ["mine", "py"]  # label order
    assert out["sources"][1]["split"] == "train" and out["sources"][1]["long_docs"] == "split"
    assert out["sources"][0]["text_key"] == "text" and out["sources"][0]["long_docs"] == "error"
    listed = validate_data_config({"sources": [{"kind": "builtin_arithmetic"},
                                               {"kind": "builtin_arithmetic", "label": "b"}]})
    assert [s["label"] for s in listed["sources"]] == ["builtin_arithmetic[0]", "b"]


@pytest.mark.parametrize("sources, message", [
    ({"x": {"kind": "parquet"}}, r"data.sources.x.kind='parquet' is unknown; allowed kinds: "
                                 r"\['array_record', 'builtin_arithmetic'"),
    ({"x": {"kind": "jsonl"}}, r"data.sources.x: missing required field\(s\) \['path'\]"),
    ({"x": {"kind": "jsonl", "path": "/nonexistent/d.jsonl"}},
     r"data.sources.x.path='/nonexistent/d.jsonl' matches no file"),
    ({"x": {"kind": "builtin_python", "wieght": 2}}, r"unknown field\(s\) \['wieght'\]"),
    ({"x": {"kind": "builtin_python", "weight": 0}}, r"data.sources.x.weight=0 must be"),
    ({"x": {"kind": "builtin_python", "split": "dev"}}, r"data.sources.x.split='dev'"),
    ({"x": {"kind": "builtin_arithmetic", "difficulty": [1, 8]}}, r"x.difficulty=\[1, 8\]"),
    ({"x": {"kind": "text", "path": __file__, "split_on": "word"}}, r"x.split_on='word'"),
    ({"x": {"kind": "builtin_python", "long_docs": "truncate"}}, r"x.long_docs='truncate'"),
    ({"x": {"kind": "tfds", "name": "d", "data_dir": "/nonexistent"}}, r"x.data_dir="),
    ({"x": {"kind": "tfds"}}, r"missing required field\(s\) \['name'\]"),
    ({}, "data.sources is empty"),
])
def test_bad_sources_are_rejected(sources, message):
    with pytest.raises(ValueError, match=message):
        validate_data_config({"sources": sources})


def test_bad_top_level_fields():
    src = {"a": {"kind": "builtin_python"}}
    with pytest.raises(ValueError, match=r"data.num_workers=-1"):
        validate_data_config({"sources": src, "num_workers": -1})
    with pytest.raises(ValueError, match=r"data: unknown field\(s\) \['workers'\]"):
        validate_data_config({"sources": src, "workers": 2})
    with pytest.raises(ValueError, match=r"missing required field\(s\) \['sources'\]"):
        validate_data_config({})


def test_every_kind_has_a_builder():
    from ling_jax.data.pipeline import SOURCE_BUILDERS

    assert set(SOURCE_BUILDERS) == set(SOURCE_FIELDS)
