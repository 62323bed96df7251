"""Row streams: N processes' rows of a step are exactly one process's batch; states move across
process layouts."""

import json

import numpy as np
import pytest

from ling_jax.data import make_pipeline, merge_data_states
from ling_jax.data.streams import contiguous_rows, owned_streams, resolve_streams

MIX = {"sources": {"py": {"kind": "builtin_python", "weight": 0.5, "max_files": 40},
                   "math": {"kind": "builtin_arithmetic", "weight": 0.5, "num_docs": 500}}}
T, B = 48, 8


def _batches(it, n):
    return [next(it) for _ in range(n)]


def _make(tokenizer, rows=None, cfg=MIX):
    return make_pipeline(cfg, seq_len=T, batch_size=B, tokenizer=tokenizer, seed=3, rows=rows)


@pytest.mark.parametrize("layout", [[[0, 1, 2, 3], [4, 5, 6, 7]], [[0, 1], [2, 3], [4, 5], [6, 7]],
                                    [[2, 3, 6, 7], [0, 1, 4, 5]], [[r] for r in range(8)]])
def test_union_of_process_rows_is_the_one_process_batch(tokenizer, layout):
    one = _batches(_make(tokenizer), 6)
    parts = [_batches(_make(tokenizer, rows), 6) for rows in layout]
    for step, whole in enumerate(one):
        for key, value in whole.items():
            got = np.zeros_like(value)
            seen = np.zeros(B, int)
            for rows, batches in zip(layout, parts, strict=True):
                got[sorted(rows)] = batches[step][key]
                seen[rows] += 1
            assert (seen == 1).all()  # no duplicates, no gaps
            np.testing.assert_array_equal(got, value, err_msg=f"step {step} {key}")


def test_state_moves_between_process_layouts(tokenizer):
    """2 processes save, 1 process resumes (and back to 4): the same batches follow."""
    one = _make(tokenizer)
    _batches(one, 3)
    want = _batches(one, 4)
    halves = [_make(tokenizer, rows) for rows in ([0, 1, 2, 3], [4, 5, 6, 7])]
    for it in halves:
        _batches(it, 3)
    merged = json.loads(json.dumps(merge_data_states([it.get_state() for it in halves])))
    resumed = _make(tokenizer)
    resumed.set_state(merged)
    for a, b in zip(_batches(resumed, 4), want, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    quarter = _make(tokenizer, [6, 7])
    quarter.set_state(merged)
    np.testing.assert_array_equal(next(quarter)["inputs"], want[0]["inputs"][6:8])


def test_stream_count_and_rows_are_checked():
    assert resolve_streams(0, 16) == 16 and resolve_streams(4, 16) == 4
    with pytest.raises(ValueError, match="data.streams=3 must divide the global batch_size=16"):
        resolve_streams(3, 16)
    assert owned_streams([4, 5, 6, 7], 16, 4) == [1]
    with pytest.raises(ValueError, match="split data.streams=4 streams of 4 rows"):
        owned_streams([0, 1], 16, 4)
    assert contiguous_rows(8, 1, 4) == [2, 3]


def test_fewer_streams_than_rows_still_exact(tokenizer):
    cfg = dict(MIX, streams=2)
    one = _batches(_make(tokenizer, cfg=cfg), 3)
    top = _batches(_make(tokenizer, [0, 1, 2, 3], cfg=cfg), 3)
    for a, b in zip(one, top, strict=True):
        np.testing.assert_array_equal(a["inputs"][:4], b["inputs"])
