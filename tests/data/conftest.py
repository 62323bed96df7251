"""Shared fixtures of the data tests: a small built-in tokenizer, a tiny local tfds dataset."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ling_jax.data import builtin_tokenizer


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """A 1,024-token byte-level BPE trained on 1 MB of the built-in corpora (about a second)."""
    return builtin_tokenizer(1024, tmp_path_factory.mktemp("tok_cache"), max_bytes=1_000_000)


class LingJaxTinyCorpus(tfds.core.GeneratorBasedBuilder):
    """A tiny local tfds dataset: no network, no TensorFlow (array_record file format)."""

    VERSION = tfds.core.Version("1.0.0")
    # tfds 4.9.10 locates a builder defined inside a package through `importlib_resources`, a
    # backport absent on Python >= 3.9; no code path just means "no checksum file to read".
    code_path = None

    def _info(self):
        features = tfds.features.FeaturesDict(
            {"text": tfds.features.Text(), "ids": tfds.features.Sequence(np.int32)})
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(12), "test": self._generate_examples(3)}

    def _generate_examples(self, count):
        for i in range(count):
            yield i, {"text": f"document {i}: " + "word " * i, "ids": list(range(1, i + 3))}


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    LingJaxTinyCorpus(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return str(data_dir)
