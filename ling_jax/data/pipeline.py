"""The train loop's data pipeline: sources -> documents -> packed rows -> weighted mix -> batches.

The global batch is made of row streams (data/streams.py): stream s packs its own slice
records[s::streams] of every source, so a process builds only the streams behind its rows and N
processes read exactly what one process reads. Per stream and source (grain): MapDataset over the
slice, shuffled by a per-source seed and repeated forever (reshuffled each epoch), mapped to
document features (tokenize, per-document targets, id checks), read ahead by threads, then packed
greedily. Sources are packed separately and mixed row by row with `grain.IterDataset.mix`, so a
weight is the share of rows (about the share of tokens). Optional grain worker processes
(num_workers > 0) each take a slice of every source; the output stays deterministic but depends on
num_workers, and such a state resumes only on the same process layout.

Worker processes are spawned: the main module is re-imported in each worker (keep a
`if __name__ == "__main__":` guard in scripts) and absl flags are marked parsed there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import grain
import numpy as np
from absl import flags

from ling_jax.data.builtin import ArithmeticSource, PythonSource
from ling_jax.data.chat_template import chat_template
from ling_jax.data.chat_tfds import TfdsChatSource
from ling_jax.data.code_tasks import CodeTaskSource
from ling_jax.data.config import validate_data_config
from ling_jax.data.documents import DocumentEncoder
from ling_jax.data.packing import STAT_KEYS, PackedIterDataset
from ling_jax.data.sources import (
    ArrayRecordSource,
    ChatJsonlSource,
    JsonlSource,
    TextSource,
    TfdsSource,
)
from ling_jax.data.streams import InterleavedStreams, contiguous_rows, owned_streams, resolve_streams
from ling_jax.data.tokenizers import Tokenizer
from ling_jax.data.tool_calls import ToolCallSource

BATCH_KEYS = ("inputs", "targets", "loss_mask", "segment_ids", "positions")
_MIN_SHUFFLED_EPOCH = 4096

# kind -> builder(source spec, pipeline seed) -> random-access source of records.
SOURCE_BUILDERS: dict[str, Callable[[dict[str, Any], int], Any]] = {
    "builtin_python": lambda s, seed: PythonSource(
        s["split"], max_files=s["max_files"], max_bytes=s["max_bytes"], name=s["label"]),
    "builtin_arithmetic": lambda s, seed: ArithmeticSource(
        s["split"], num_docs=int(s["num_docs"]), difficulty=s["difficulty"],
        seed=seed if s["seed"] is None else int(s["seed"]), mask_prompt=s["mask_prompt"],
        name=s["label"]),
    "builtin_code": lambda s, seed: CodeTaskSource(
        s["split"], num_docs=int(s["num_docs"]), difficulty=s["difficulty"],
        seed=seed if s["seed"] is None else int(s["seed"]), mask_prompt=s["mask_prompt"],
        verbose_fraction=float(s["verbose_fraction"]), name=s["label"]),
    "array_record": lambda s, seed: ArrayRecordSource(s["path"], name=s["label"]),
    "jsonl": lambda s, seed: JsonlSource(
        s["path"], name=s["label"], text_key=s["text_key"], prompt_key=s["prompt_key"],
        completion_key=s["completion_key"]),
    "chat_jsonl": lambda s, seed: ChatJsonlSource(
        s["path"], name=s["label"], messages_key=s["messages_key"], tools_key=s["tools_key"]),
    "chat_tfds": lambda s, seed: TfdsChatSource(
        s["name"], split=s["split"], data_dir=s["data_dir"], messages_key=s["messages_key"],
        tools_key=s["tools_key"], source_name=s["label"]),
    "builtin_tool_calls": lambda s, seed: ToolCallSource(
        s["split"], num_docs=int(s["num_docs"]), num_tools=int(s["num_tools"]),
        seed=seed if s["seed"] is None else int(s["seed"]), name=s["label"]),
    "text": lambda s, seed: TextSource(s["path"], name=s["label"], split_on=s["split_on"]),
    "tfds": lambda s, seed: TfdsSource(
        s["name"], split=s["split"], data_dir=s["data_dir"], text_key=s["text_key"],
        tokens_key=s["tokens_key"], source_name=s["label"]),
}


def _source_seed(seed: int, label: str) -> int:
    """A shuffle seed per source, stable across runs (no Python hash randomisation)."""
    return int(hashlib.sha256(f"{seed}:{label}".encode()).hexdigest()[:8], 16)


def _mark_flags_parsed() -> None:
    """grain reads its absl flags when it starts workers; outside an absl app they are unparsed
    (UnparsedFlagAccessError), so take their defaults. A parsed app keeps its values."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _init_worker(worker_index: int, worker_count: int) -> None:
    """Runs first in each grain worker: a spawned process starts with unparsed absl flags."""
    del worker_index, worker_count
    _mark_flags_parsed()


def _packed_source(spec: dict[str, Any], cfg: dict[str, Any], index: int, *, seq_len: int,
                   tokenizer: Tokenizer | None, vocab_size: int, seed: int, pad_id: int,
                   stream: int, streams: int, read_threads: int) -> grain.IterDataset:
    """One source's chain in one row stream, from records to packed rows."""
    label = spec["label"]
    records = SOURCE_BUILDERS[spec["kind"]](spec, seed)
    # Disjoint slices; a source with fewer documents than streams is shared round robin.
    step = max(1, min(streams, len(records)))
    ds = grain.MapDataset.source(records)[stream % step::step]
    if len(ds) < max(cfg["num_workers"], 1):
        raise ValueError(f"source {label!r} has {len(records)} documents: too few for "
                         f"num_workers={cfg['num_workers']}")
    if cfg["shuffle"]:
        # grain re-derives the shuffle each epoch (~15 ms): a small source is repeated first so
        # that one shuffled epoch holds at least _MIN_SHUFFLED_EPOCH documents.
        shuffle_seed = _source_seed(seed, f"{label}/{stream}")
        ds = ds.repeat(-(-_MIN_SHUFFLED_EPOCH // len(ds))).shuffle(seed=shuffle_seed)
    # Two epochs' worth of consecutive empty documents means the (slice of the) source is empty.
    max_empty = 2 * len(ds) * max(cfg["num_workers"], 1)
    template = None if cfg["chat_template"] is None else chat_template(cfg["chat_template"])
    ds = ds.repeat(None).map(DocumentEncoder(label, tokenizer, vocab_size, pad_id=pad_id,
                                             add_bos=cfg["add_bos"], chat_template=template))
    read = grain.ReadOptions(num_threads=read_threads,
                             prefetch_buffer_size=cfg["read_buffer_size"])
    return PackedIterDataset(ds.to_iter_dataset(read), seq_len, source_name=label,
                             source_id=index, long_docs=spec["long_docs"], pad_id=pad_id,
                             max_consecutive_empty=max_empty)


def build_dataset(data_cfg: Any, *, seq_len: int, batch_size: int, tokenizer: Tokenizer | None,
                  seed: int, rows: list[int] | None = None, process_index: int = 0,
                  process_count: int = 1, vocab_size: int | None = None,
                  ) -> tuple[grain.IterDataset, list[str], list[int], int]:
    """(dataset of this process's batches with stats/* fields, source labels, owned streams,
    rows per stream). `rows`: the global batch rows this process holds (default: the contiguous
    block of process_index of process_count)."""
    cfg = validate_data_config(data_cfg)
    if rows is None:
        rows = contiguous_rows(batch_size, process_index, process_count)
    streams = resolve_streams(cfg["streams"], batch_size)
    owned = owned_streams(rows, batch_size, streams)
    if vocab_size is None:
        if tokenizer is None:
            raise ValueError("give a tokenizer or vocab_size to the data pipeline")
        vocab_size = tokenizer.vocab_size
    pad_id = 0 if tokenizer is None or tokenizer.pad_id is None else tokenizer.pad_id
    # Read-ahead threads are shared out over this process's streams (at least one each).
    threads = max(1, cfg["read_threads"] // len(owned))
    weights = [float(spec["weight"]) for spec in cfg["sources"]]
    mixed = []
    for stream in owned:
        packed = [_packed_source(spec, cfg, i, seq_len=seq_len, tokenizer=tokenizer,
                                 vocab_size=vocab_size, seed=seed, pad_id=pad_id, stream=stream,
                                 streams=streams, read_threads=threads)
                  for i, spec in enumerate(cfg["sources"])]
        mixed.append(packed[0] if len(packed) == 1 else grain.IterDataset.mix(packed, weights))
    per = batch_size // streams
    ds = InterleavedStreams(mixed, per)
    ds = ds.batch(len(owned) * per, drop_remainder=True)
    if cfg["num_workers"] > 0:
        _mark_flags_parsed()
        options = grain.MultiprocessingOptions(num_workers=cfg["num_workers"],
                                               per_worker_buffer_size=cfg["worker_buffer_size"])
        ds = ds.mp_prefetch(options, worker_init_fn=_init_worker)
    return ds, [spec["label"] for spec in cfg["sources"]], owned, per


class DataIterator:
    """Batches for the trainer, with a checkpointable state and per-source counters.

    Each batch: inputs/targets/segment_ids/positions int32 [B, T], loss_mask float32 [B, T],
    where B is the number of global rows this process holds, in ascending global order. `stats`
    maps source label -> counters (rows, docs, empty_docs, split_docs, tokens, target_tokens)
    summed over this process's streams; the state keeps them per stream.
    """

    def __init__(self, iterator: grain.DatasetIterator, labels: list[str], streams: list[int],
                 rows_each: int, workers: bool = False):
        self._it, self.labels = iterator, labels
        self.streams, self._rows_each, self._workers = streams, rows_each, workers
        self._stats = {s: {label: self._zero_stats() for label in labels} for s in streams}

    @staticmethod
    def _zero_stats() -> dict[str, int]:
        return {"rows": 0, "docs": 0, "empty_docs": 0, "split_docs": 0, "tokens": 0,
                "target_tokens": 0}

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        """Counters per source label, summed over this process's streams."""
        total = {label: self._zero_stats() for label in self.labels}
        for per_stream in self._stats.values():
            for label, counters in per_stream.items():
                for key, value in counters.items():
                    total[label][key] += value
        return total

    def __iter__(self) -> DataIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._it)
        sources = batch.pop("stats/source")
        counts = {key: batch.pop(key) for key in STAT_KEYS}
        tokens = (batch["segment_ids"] > 0).sum(axis=1)
        targets = batch["loss_mask"].sum(axis=1)
        for row, source in enumerate(sources):
            stats = self._stats[self.streams[row // self._rows_each]][self.labels[int(source)]]
            stats["rows"] += 1
            stats["tokens"] += int(tokens[row])
            stats["target_tokens"] += int(targets[row])
            for key, values in counts.items():
                stats[key.removeprefix("stats/")] += int(values[row])
        return {key: batch[key] for key in BATCH_KEYS}

    def get_state(self) -> dict[str, Any]:
        """A JSON-serialisable state of this process's streams (keyed by global stream index);
        set_state of the union of every process's states resumes the same batches on any
        process layout."""
        stats = {str(s): {k: dict(v) for k, v in self._stats[s].items()} for s in self.streams}
        state = self._it.get_state()
        if self._workers:  # grain's worker state: resumable on the same layout only
            return {"workers": state, "owned": list(self.streams), "stats": stats}
        assert state["cycle"] == 0  # batches hold whole cycles
        return {"streams": {str(s): st for s, st in zip(self.streams, state["streams"],
                                                         strict=True)}, "stats": stats}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore from a state holding (at least) this process's streams."""
        if "workers" in state:
            if list(state["owned"]) != self.streams:
                raise ValueError(f"the data state was saved with num_workers > 0 by a process "
                                 f"holding streams {state['owned']}; this one holds "
                                 f"{self.streams}: resume on the same process layout")
            self._it.set_state(state["workers"])
        else:
            missing = [s for s in self.streams if str(s) not in state["streams"]]
            if missing:
                raise ValueError(f"the data state has no row stream {missing[0]} (it holds "
                                 f"{len(state['streams'])}); was data.streams changed?")
            self._it.set_state({"streams": [state["streams"][str(s)] for s in self.streams],
                                "cycle": 0})
        self._stats = {s: {k: {c: int(n) for c, n in v.items()}
                           for k, v in state["stats"][str(s)].items()} for s in self.streams}

    def close(self) -> None:
        """Stops worker processes, if any."""
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


def merge_data_states(states: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """One state from every process's DataIterator state (the checkpoint keeps the union)."""
    states = [s for s in states if s is not None]
    if not states:
        return None
    if len(states) == 1:
        return states[0]
    if any("workers" in s for s in states):
        return {"per_process": states}
    return {"streams": {k: v for s in states for k, v in s["streams"].items()},
            "stats": {k: v for s in states for k, v in s["stats"].items()}}


def make_pipeline(data_cfg: Any, *, seq_len: int, batch_size: int,
                  tokenizer: Tokenizer | None, seed: int, rows: list[int] | None = None,
                  process_index: int = 0, process_count: int = 1,
                  vocab_size: int | None = None) -> DataIterator:
    """The trainer's batch iterator for one phase's mixture (see module docstring).

    batch_size is global: this process yields the rows `rows` of each global batch (default:
    the contiguous block of process_index of process_count). vocab_size (default: the
    tokenizer's) bounds the token ids; a larger id raises ValueError.
    """
    ds, labels, streams, per = build_dataset(
        data_cfg, seq_len=seq_len, batch_size=batch_size, tokenizer=tokenizer, seed=seed,
        rows=rows, process_index=process_index, process_count=process_count,
        vocab_size=vocab_size)
    workers = validate_data_config(data_cfg)["num_workers"] > 0
    return DataIterator(iter(ds), labels, streams, per, workers)
