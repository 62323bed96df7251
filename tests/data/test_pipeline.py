"""The whole pipeline: batch format, every source kind, determinism, state, mixtures, sharding."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ling_jax.data import BATCH_KEYS, make_pipeline, write_token_records

T, B = 64, 4


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def check_batch(batch, rows=B):
    """Format and the invariants every batch must satisfy."""
    assert tuple(batch) == BATCH_KEYS
    for key in BATCH_KEYS:
        assert batch[key].shape == (rows, T)
        assert batch[key].dtype == (np.float32 if key == "loss_mask" else np.int32)
    seg, pos = batch["segment_ids"], batch["positions"]
    same = (seg[:, :-1] == seg[:, 1:]) & (seg[:, :-1] > 0)
    np.testing.assert_array_equal(batch["targets"][:, :-1][same], batch["inputs"][:, 1:][same])
    np.testing.assert_array_equal(pos[:, 1:][same], pos[:, :-1][same] + 1)
    starts = np.c_[seg[:, :1] > 0, (seg[:, 1:] != seg[:, :-1]) & (seg[:, 1:] > 0)]
    assert (pos[starts] == 0).all()
    assert batch["loss_mask"][seg == 0].sum() == 0


MIX = {"sources": {"py": {"kind": "builtin_python", "weight": 0.5, "max_files": 40},
                   "math": {"kind": "builtin_arithmetic", "weight": 0.3, "num_docs": 500},
                   "held": {"kind": "builtin_arithmetic", "weight": 0.2, "split": "heldout",
                            "num_docs": 200, "mask_prompt": False}}}


def test_builtin_mixture_format_and_proportions(tokenizer):
    it = make_pipeline(MIX, seq_len=T, batch_size=B, tokenizer=tokenizer, seed=0)
    for batch in take(it, 100):
        check_batch(batch)
    rows = {k: v["rows"] for k, v in it.stats.items()}
    assert sum(rows.values()) == 400
    for label, weight in (("py", 0.5), ("math", 0.3), ("held", 0.2)):
        assert abs(rows[label] / 400 - weight) < 0.02, rows
    assert it.stats["py"]["split_docs"] > 0  # stdlib files are longer than 64 tokens
    # Prompt tokens of the masked arithmetic source are not trained; the unmasked one trains all.
    math, held = it.stats["math"], it.stats["held"]
    assert math["target_tokens"] < 0.7 * math["tokens"]
    # Untrained: only each document's last token (EOS); "docs" also counts the one document per
    # row stream (one per row: B) read but waiting for the next row, if any.
    assert held["docs"] - B <= held["tokens"] - held["target_tokens"] <= held["docs"]


def test_deterministic_and_state_round_trip(tokenizer):
    make = lambda seed: make_pipeline(MIX, seq_len=T, batch_size=B, tokenizer=tokenizer,
                                      seed=seed)
    a, b = make(1), make(1)
    assert_same(take(a, 15), take(b, 15))
    other = take(make(2), 5)
    assert any((x["inputs"] != y["inputs"]).any() for x, y in zip(take(a, 5), other, strict=True))
    state = json.loads(json.dumps(a.get_state()))  # a checkpoint stores it as JSON
    want, want_stats = take(a, 20), json.loads(json.dumps(a.stats))
    restored = make(1)
    restored.set_state(state)
    assert_same(take(restored, 20), want)
    assert restored.stats == want_stats


def test_each_file_kind(tmp_path, tokenizer, tfds_dir):
    write_token_records(tmp_path / "t.array_record",
                        [np.arange(1, 40) % 1000, [5, 6, 7]], [None, [0, 1, 1]])
    (tmp_path / "d.jsonl").write_text(
        json.dumps({"prompt": "Q: what is 2+2?\n", "completion": "4"}) + "\n"
        + json.dumps({"text": "def f(x):\n    return x\n"}) + "\n")
    (tmp_path / "t.txt").write_text("first paragraph\n\nsecond paragraph\n")
    for spec in [{"kind": "array_record", "path": str(tmp_path / "*.array_record")},
                 {"kind": "jsonl", "path": str(tmp_path / "d.jsonl")},
                 {"kind": "text", "path": str(tmp_path / "t.txt"), "split_on": "paragraph"},
                 {"kind": "tfds", "name": "ling_jax_tiny_corpus", "data_dir": tfds_dir},
                 {"kind": "tfds", "name": "ling_jax_tiny_corpus", "data_dir": tfds_dir,
                  "split": "test", "tokens_key": "ids"}]:
        it = make_pipeline({"sources": {"s": spec}}, seq_len=T, batch_size=B,
                           tokenizer=tokenizer, seed=0)
        for batch in take(it, 3):
            check_batch(batch)
        assert it.stats["s"]["docs"] > 0 and it.stats["s"]["empty_docs"] == 0, spec


def test_prompt_tokens_are_masked_in_batches(tmp_path, tokenizer):
    pairs = [(f"Question {i}: add {i} and 1.\n", f"It is {i + 1}.") for i in range(5)]
    (tmp_path / "mid.jsonl").write_text("".join(
        json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in pairs))
    it = make_pipeline({"sources": {"mid": {"kind": "jsonl", "path": str(tmp_path / "*.jsonl")}},
                        "shuffle": False}, seq_len=T, batch_size=1, tokenizer=tokenizer, seed=0)
    seen = []
    for batch in take(it, 5):
        seg, mask, targets = batch["segment_ids"][0], batch["loss_mask"][0], batch["targets"][0]
        for s in range(1, seg.max() + 1):
            trained = targets[(seg == s) & (mask > 0)]
            seen.append(trained.tolist())
    expected = [tokenizer.encode(c) + [tokenizer.eos_id] for _, c in pairs]
    assert seen[:5] == expected  # exactly completion + EOS, in order (no shuffle)


def test_process_shards_are_disjoint(tmp_path):
    # Document d is [d+1, d+1, ...]: its first input names it.
    write_token_records(tmp_path / "ids.array_record", [[d + 1] * 5 for d in range(60)])
    cfg = {"sources": {"ids": {"kind": "array_record", "path": str(tmp_path / "ids.array_record")}}}
    seen = []
    for process in range(2):
        it = make_pipeline(cfg, seq_len=10, batch_size=4, tokenizer=None, vocab_size=100, seed=0,
                           process_index=process, process_count=2)
        docs = set()
        for batch in take(it, 60):  # 240 documents: several epochs of the 30 in each shard
            assert batch["inputs"].shape == (2, 10)
            starts = batch["positions"] == 0
            docs |= set(batch["inputs"][starts & (batch["segment_ids"] > 0)].tolist())
        seen.append(docs)
    assert len(seen[0]) == len(seen[1]) == 30 and not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(1, 61))


def test_bad_data_errors_and_counts(tmp_path, tokenizer):
    write_token_records(tmp_path / "big.array_record", [[1, 2, 3], [4, 5000, 6]])
    cfg = {"sources": {"big": {"kind": "array_record", "path": str(tmp_path / "big.array_record")}}}
    with pytest.raises(ValueError, match=r"'big', document 1: token id 5000 .*vocab_size=1024"):
        take(make_pipeline(cfg, seq_len=T, batch_size=B, tokenizer=tokenizer, seed=0), 2)

    (tmp_path / "long.jsonl").write_text(json.dumps({"text": "word " * 200}) + "\n"
                                         + json.dumps({"text": ""}) + "\n"
                                         + json.dumps({"text": "short"}) + "\n")
    spec = {"kind": "jsonl", "path": str(tmp_path / "long.jsonl")}
    # One row stream: with one per row, the stream holding only the empty document would stop
    # as "effectively empty" (tested below).
    it = make_pipeline({"sources": {"j": spec}, "streams": 1}, seq_len=T, batch_size=B,
                       tokenizer=tokenizer, seed=0)
    take(it, 10)
    stats = it.stats["j"]
    assert stats["split_docs"] > 0 and stats["empty_docs"] > 0  # counted, as documented
    with pytest.raises(ValueError, match=r"'j', document 0: \d+ tokens > seq_len=64"):
        take(make_pipeline({"sources": {"j": spec | {"long_docs": "error"}}, "streams": 1}, seq_len=T,
                           batch_size=B, tokenizer=tokenizer, seed=0), 3)
    with pytest.raises(ValueError, match="not divisible by process_count=3"):
        make_pipeline(cfg, seq_len=T, batch_size=4, tokenizer=tokenizer, seed=0,
                      process_index=0, process_count=3)


_WORKER_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from ling_jax.data import load_tokenizer, make_pipeline

    def run():
        tok = load_tokenizer(sys.argv[1])
        cfg = {"num_workers": 2, "sources": {
            "py": {"kind": "builtin_python", "max_files": 30},
            "math": {"kind": "builtin_arithmetic", "num_docs": 300},
            "tf": {"kind": "tfds", "name": "ling_jax_tiny_corpus", "data_dir": sys.argv[2]}}}
        make = lambda: make_pipeline(cfg, seq_len=64, batch_size=4, tokenizer=tok, seed=0)
        a, b = make(), make()
        first = [next(a) for _ in range(6)]
        state = json.loads(json.dumps(a.get_state()))
        want = [next(a) for _ in range(6)]
        again = [next(b) for _ in range(3)]
        b.set_state(state)
        got = [next(b) for _ in range(6)]
        same = lambda xs, ys: all((x[k] == y[k]).all() for x, y in zip(xs, ys) for k in x)
        print(json.dumps({"resume": same(got, want), "repeat": same(first[:3], again),
                          "differs": not same(first[:3], want[:3]),
                          "rows": sum(v["rows"] for v in a.stats.values())}))
        a.close()
        b.close()

    if __name__ == "__main__":  # workers are spawned and re-import this module
        run()
""")


@pytest.mark.slow  # spawns 4 worker processes that each import grain and tfds: ~25 s on 2 cores
def test_worker_processes(tmp_path, tokenizer, tfds_dir):
    """num_workers=2 in a fresh interpreter (as the trainer runs it, tfds builder unknown there)."""
    tokenizer.save(tmp_path / "tok.json")
    script = tmp_path / "workers.py"
    script.write_text(_WORKER_SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "tok.json"), tfds_dir],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"resume": True, "repeat": True, "differs": True, "rows": 48}
