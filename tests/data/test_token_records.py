"""The ArrayRecord token format: round trips and malformed records."""

import numpy as np
import pytest

from ling_jax.data import (
    ArrayRecordSource,
    decode_token_record,
    encode_token_record,
    write_token_records,
)


def test_round_trip_with_and_without_mask(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 2**31 - 1, size=n) for n in (1, 5, 300, 0)]
    masks = [None, rng.integers(0, 2, size=5), None, np.zeros(0)]
    assert write_token_records(tmp_path / "d.array_record", docs, masks) == 4
    source = ArrayRecordSource(str(tmp_path / "d.array_record"))
    assert len(source) == 4
    for i, (doc, mask) in enumerate(zip(docs, masks, strict=True)):
        record = source[i]
        assert record["index"] == i
        np.testing.assert_array_equal(record["tokens"], doc)
        if mask is None:
            assert "target_mask" not in record
        else:
            np.testing.assert_array_equal(record["target_mask"], mask.astype(bool))


def test_malformed_records():
    with pytest.raises(ValueError, match="not a ling-jax token record"):
        decode_token_record(b"XXXX" + bytes(8))
    with pytest.raises(ValueError, match="record length"):
        decode_token_record(encode_token_record([1, 2, 3])[:-1])
    with pytest.raises(ValueError, match=r"\[0, 2\*\*31\)"):
        encode_token_record([-1])
    with pytest.raises(ValueError, match="target_mask shape"):
        encode_token_record([1, 2], [1])
