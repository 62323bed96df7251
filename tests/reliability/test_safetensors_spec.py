"""safetensors headers checked to the letter of the format spec, shard index paths confined to
the checkpoint directory, integer tensors refused for float parameters: one line each, naming the
file and the tensor."""

from __future__ import annotations

import json
import os
import shutil
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ling_jax.interop import hf_import
from ling_jax.interop.safetensors_io import SafetensorsError, SafetensorsFile, write_file
from tests.reliability.hostile import assert_message_one_line


def raw_file(path, header, data: bytes = b"") -> None:
    """A file with exactly this header (object, any JSON value, or raw text) and data bytes."""
    text = header if isinstance(header, str) else json.dumps(header)
    blob = text.encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


F32x2 = {"dtype": "F32", "shape": [2]}
HOSTILE = {  # name: (header, data bytes, words the one-line error must hold)
    "header_list": ([1, 2], b"", ["JSON list"]),
    "header_string": ("\"weights\"", b"", ["JSON str"]),
    "entry_not_object": ({"w": 5}, b"", ["'w'", "int"]),
    "missing_offsets": ({"w": F32x2}, bytes(8), ["'w'", "data_offsets"]),
    "float_offsets": ({"w": {**F32x2, "data_offsets": [0.0, 8.0]}}, bytes(8), ["'w'", "integers"]),
    "negative_offsets": ({"w": {**F32x2, "data_offsets": [-8, 0]}}, b"", ["'w'", "0 <= begin"]),
    "reversed_offsets": ({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}, bytes(8),
                         ["'w'", "0 <= begin"]),
    "float_shape": ({"w": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, bytes(8),
                    ["'w'", "shape"]),
    "aliased": ({"a": {**F32x2, "data_offsets": [0, 8]}, "b": {**F32x2, "data_offsets": [0, 8]}},
                bytes(8), ["overlaps"]),
    "overlapping": ({"a": {**F32x2, "data_offsets": [0, 8]}, "b": {**F32x2, "data_offsets": [4, 12]}},
                    bytes(12), ["'b'", "overlaps", "'a'"]),
    "hole": ({"a": {**F32x2, "data_offsets": [0, 8]}, "b": {**F32x2, "data_offsets": [12, 20]}},
             bytes(20), ["'b'", "hole"]),
    "trailing_bytes": ({"a": {**F32x2, "data_offsets": [0, 8]}}, bytes(12), ["no tensor"]),
    "duplicate_key": ('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
                      '"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}', bytes(16),
                      ["duplicate", "'a'"]),
    "metadata_not_strings": ({"__metadata__": {"format": 1}}, b"", ["__metadata__"]),
}
# Refused (one line) before this suite too: kept as guards against regressions.
GUARDED = {
    "missing_dtype": ({"w": {"shape": [2], "data_offsets": [0, 8]}}, bytes(8), ["'w'", "dtype"]),
    "negative_shape": ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8),
                       ["'w'", "shape"]),
    "past_the_end": ({"a": {**F32x2, "data_offsets": [0, 8]}}, bytes(4), ["'a'", "truncated"]),
    "size_mismatch": ({"a": {**F32x2, "data_offsets": [0, 12]}}, bytes(12), ["'a'", "need 8"]),
    "bad_dtype": ({"a": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}}, bytes(8),
                  ["'a'", "F99"]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_header_is_one_line_naming_file_and_tensor(tmp_path, case):
    _assert_refused(tmp_path, case, *HOSTILE[case])


@pytest.mark.parametrize("case", sorted(GUARDED))
def test_guarded_header_stays_refused(tmp_path, case):
    _assert_refused(tmp_path, case, *GUARDED[case])


def _assert_refused(tmp_path, case, header, data, words) -> None:
    path = tmp_path / f"{case}.safetensors"
    raw_file(path, header, data)
    with pytest.raises(SafetensorsError) as info:
        SafetensorsFile(path)
    assert_message_one_line(str(info.value), str(path), *words)


def test_spec_conforming_files_read_exactly(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"a": rng.standard_normal((3, 5)).astype(np.float32), "empty": np.zeros((0, 4), np.float32),
               "b": rng.integers(-9, 9, (7,)).astype(np.int64)}
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    write_file(ours, tensors)
    save_file(tensors, str(theirs))  # the reference implementation's writer
    for path in (ours, theirs):
        f = SafetensorsFile(path)
        for key, value in tensors.items():
            np.testing.assert_array_equal(f.get(key), value)
    assert load_file(str(ours)).keys() == tensors.keys()


def _sharded(tmp_path, bailing_tiny_dir, target: str):
    """A copy of the fixture's config with an index sending one tensor to `target`."""
    hf = tmp_path / "hf"
    hf.mkdir()
    shutil.copy(bailing_tiny_dir / "config.json", hf)
    keys = SafetensorsFile(bailing_tiny_dir / "model.safetensors").keys()
    shutil.copy(bailing_tiny_dir / "model.safetensors", hf / "model-00001.safetensors")
    weight_map = dict.fromkeys(keys, "model-00001.safetensors")
    weight_map[keys[0]] = target
    (hf / hf_import.INDEX_FILE).write_text(json.dumps({"weight_map": weight_map}))
    return hf, keys[0]


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink"])
def test_index_paths_that_escape_the_directory_are_refused(tmp_path, bailing_tiny_dir, kind):
    outside = tmp_path / "elsewhere" / "model.safetensors"  # a valid file outside the directory
    outside.parent.mkdir()
    shutil.copy(bailing_tiny_dir / "model.safetensors", outside)
    target = {"absolute": str(outside), "dotdot": "../elsewhere/model.safetensors",
              "symlink": "link.safetensors"}[kind]
    hf, key = _sharded(tmp_path, bailing_tiny_dir, target)
    if kind == "symlink":
        os.symlink(outside, hf / "link.safetensors")
    with pytest.raises(hf_import.CheckpointError) as info:
        hf_import.open_files(hf)
    assert_message_one_line(str(info.value), hf_import.INDEX_FILE, repr(key), "inside")


def test_index_inside_the_directory_still_loads(tmp_path, bailing_tiny_dir):
    hf, key = _sharded(tmp_path, bailing_tiny_dir, "model-00001.safetensors")
    files = hf_import.open_files(hf)
    want = load_file(str(bailing_tiny_dir / "model.safetensors"))[key]
    np.testing.assert_array_equal(files[key].get(key), want)


def test_integer_tensor_for_a_float_parameter_is_refused(tmp_path, bailing_tiny_dir):
    hf = shutil.copytree(bailing_tiny_dir, tmp_path / "hf", ignore=shutil.ignore_patterns("*.npz"))
    tensors = load_file(str(hf / "model.safetensors"))
    tensors["model.norm.weight"] = np.arange(tensors["model.norm.weight"].size, dtype=np.int32)
    save_file(tensors, str(hf / "model.safetensors"))
    cfg = hf_import.read_config(hf)
    with pytest.raises(hf_import.CheckpointError) as info:
        hf_import.check_keys(hf_import.open_files(hf), cfg)
    assert_message_one_line(str(info.value), "model.safetensors", "'model.norm.weight'", "I32")
