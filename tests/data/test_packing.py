"""Packing vs a naive per-position reference: segments, positions, targets, counts, state."""

import grain
import numpy as np
import pytest

from ling_jax.data import DocumentEncoder, PackedIterDataset

T, VOCAB, PAD = 32, 1000, 999


def random_records(seed: int, count: int = 120) -> list[dict]:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        length = int(rng.choice([0, 1, 2, 3, 7, 15, 31, 32, 33, 40, 64, 70, 100]))
        record = {"index": i, "tokens": rng.integers(0, VOCAB - 1, size=length)}
        if rng.random() < 0.3:  # prompt/completion style: a masked prompt prefix
            record["target_mask"] = np.arange(length) >= rng.integers(0, length + 1)
        records.append(record)
    return records


def packed(records, *, long_docs="split", repeat=False, seed=None):
    ds = grain.MapDataset.source(records)
    if seed is not None:
        ds = ds.shuffle(seed=seed)
    if repeat:
        ds = ds.repeat(None)
    ds = ds.map(DocumentEncoder("unit", None, VOCAB, pad_id=PAD)).to_iter_dataset()
    return PackedIterDataset(ds, T, source_name="unit", long_docs=long_docs, pad_id=PAD,
                             max_consecutive_empty=10 * len(records))


def reference_rows(records):
    """Naive packer written per position from the definition in the docs."""
    kept, empty, split = [], 0, 0
    for r in records:
        toks = list(r["tokens"])
        w = list(r.get("target_mask", np.ones(len(toks), bool)))
        if len(toks) < 2 or not any(w[1:]):
            empty += 1
            continue
        split += len(toks) > T
        kept.append((toks, w))
    pieces = [(d, s, min(s + T, len(d[0]))) for d in kept for s in range(0, len(d[0]), T)]
    rows, current = [], []
    for piece in pieces:
        if sum(e - s for _, s, e in current) + piece[2] - piece[1] > T:
            rows.append(current)
            current = []
        current.append(piece)
    rows.append(current)
    out = []
    for row in rows:
        cols = {k: [] for k in ("inputs", "targets", "loss_mask", "segment_ids", "positions")}
        for seg, ((toks, w), start, end) in enumerate(row, start=1):
            for p in range(start, end):
                last = p + 1 == len(toks)
                cols["inputs"].append(toks[p])
                cols["targets"].append(PAD if last else toks[p + 1])
                cols["loss_mask"].append(0.0 if last else float(w[p + 1]))
                cols["segment_ids"].append(seg)
                cols["positions"].append(p - start)
        fill = T - len(cols["inputs"])
        for k, v in cols.items():
            v.extend([PAD if k in ("inputs", "targets") else 0] * fill)
        out.append({k: np.array(v) for k, v in cols.items()})
    return out, len(kept), empty, split


def test_matches_naive_reference_and_counts():
    records = random_records(0)
    rows = list(packed(records))
    expected, docs, empty, split = reference_rows(records)
    assert len(rows) == len(expected)
    for got, want in zip(rows, expected, strict=True):
        for key, value in want.items():
            np.testing.assert_array_equal(got[key], value, err_msg=key)
    assert sum(int(r["stats/docs"]) for r in rows) == docs
    assert sum(int(r["stats/empty_docs"]) for r in rows) == empty > 0
    assert sum(int(r["stats/split_docs"]) for r in rows) == split > 0


def test_no_target_crosses_a_document():
    records = random_records(1)
    long_docs = [r["tokens"] for r in records if len(r["tokens"]) > T]
    for row in packed(records):
        seg, inputs, targets = row["segment_ids"], row["inputs"], row["targets"]
        same = (seg[:-1] == seg[1:]) & (seg[:-1] > 0)
        # Inside a segment the target is the next input; padding is never trained.
        np.testing.assert_array_equal(targets[:-1][same], inputs[1:][same])
        assert row["loss_mask"][seg == 0].sum() == 0
        for s in range(1, seg.max() + 1):
            where = np.flatnonzero(seg == s)
            assert where.tolist() == list(range(where[0], where[-1] + 1))  # contiguous
            assert row["positions"][where].tolist() == list(range(len(where)))
            end = where[-1]
            if row["loss_mask"][end]:  # a trained segment end: a chunk of a split document
                doc, start = _locate(long_docs, inputs[where])
                assert start % T == 0 and targets[end] == doc[start + len(where)]


def _locate(docs, piece):
    """(document, start) of the document holding `piece` as a contiguous run."""
    for doc in docs:
        for start in range(len(doc) - len(piece) + 1):
            if np.array_equal(doc[start: start + len(piece)], piece):
                return doc, start
    raise AssertionError("a trained segment end is not inside any split document")


def test_long_document_error_policy():
    records = [{"index": 0, "tokens": np.arange(10)}, {"index": 1, "tokens": np.arange(T + 1)}]
    with pytest.raises(ValueError, match=rf"document 1: {T + 1} tokens > seq_len={T}"):
        list(packed(records, long_docs="error"))


def test_only_empty_documents_is_an_error():
    records = [{"index": i, "tokens": np.arange(i % 2)} for i in range(5)]
    with pytest.raises(ValueError, match="no trainable tokens"):
        next(iter(packed(records, repeat=True)))


@pytest.mark.parametrize("skip", [0, 1, 5, 13])
def test_state_round_trip_gives_identical_rows(skip):
    records = random_records(2, count=40)
    it = iter(packed(records, repeat=True, seed=4))
    for _ in range(skip):
        next(it)
    state = it.get_state()
    want = [next(it) for _ in range(25)]
    fresh = iter(packed(records, repeat=True, seed=4))
    fresh.set_state(state)
    for got, row in zip((next(fresh) for _ in range(25)), want, strict=True):
        assert got.keys() == row.keys()
        for key in row:
            np.testing.assert_array_equal(got[key], row[key], err_msg=key)
