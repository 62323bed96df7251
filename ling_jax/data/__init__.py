"""Data for the train loop: sources, tokenizers, built-in corpora, packing and the grain pipeline.

Read in the order the data flows: sources.py / builtin.py (records) -> documents.py (per-document
targets and masks) -> packing.py (rows) -> pipeline.py (mixture, batches, state).
"""

from ling_jax.data.arithmetic import (
    ArithmeticProblem,
    arithmetic_problem,
    arithmetic_problems,
    extract_answer,
)
from ling_jax.data.builtin import (
    ArithmeticSource,
    PythonSource,
    builtin_tokenizer,
    python_stdlib_files,
)
from ling_jax.data.config import SOURCE_FIELDS, validate_data_config
from ling_jax.data.documents import DocumentEncoder, document_features
from ling_jax.data.packing import PackedIterDataset
from ling_jax.data.pipeline import BATCH_KEYS, DataIterator, build_dataset, make_pipeline, merge_data_states
from ling_jax.data.sources import ArrayRecordSource, JsonlSource, TextSource, TfdsSource
from ling_jax.data.token_records import (
    decode_token_record,
    encode_token_record,
    write_token_records,
)
from ling_jax.data.tokenizers import HFTokenizer, Tokenizer, load_tokenizer, train_bpe

__all__ = [
    "BATCH_KEYS", "SOURCE_FIELDS", "ArithmeticProblem", "ArithmeticSource", "ArrayRecordSource",
    "DataIterator", "DocumentEncoder", "HFTokenizer", "JsonlSource", "PackedIterDataset",
    "PythonSource", "TextSource", "TfdsSource", "Tokenizer", "arithmetic_problem",
    "arithmetic_problems", "build_dataset", "builtin_tokenizer", "decode_token_record",
    "document_features", "encode_token_record", "extract_answer", "load_tokenizer",
    "make_pipeline", "merge_data_states", "python_stdlib_files", "train_bpe", "validate_data_config",
    "write_token_records",
]
