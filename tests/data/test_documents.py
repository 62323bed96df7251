"""Per-document features: next-token targets inside the document, loss masks, id checks."""

import numpy as np
import pytest

from ling_jax.data import DocumentEncoder, document_features


def test_features_of_one_document():
    feats = document_features(np.array([5, 6, 7, 8]), np.array([0, 0, 1, 1]), pad_id=3)
    np.testing.assert_array_equal(feats["inputs"], [5, 6, 7, 8])
    np.testing.assert_array_equal(feats["targets"], [6, 7, 8, 3])
    # Position i is trained when token i+1 is a target token; the last token has no next token.
    np.testing.assert_array_equal(feats["loss_mask"], [0, 1, 1, 0])
    assert feats["inputs"].dtype == feats["targets"].dtype == np.int32
    assert feats["loss_mask"].dtype == np.float32


def test_text_prompt_and_token_records(tokenizer):
    enc = DocumentEncoder("src", tokenizer, tokenizer.vocab_size, pad_id=tokenizer.pad_id)
    text = enc({"index": 0, "text": "x = 1\n"})
    ids = tokenizer.encode("x = 1\n") + [tokenizer.eos_id]
    np.testing.assert_array_equal(text["inputs"], ids)
    np.testing.assert_array_equal(text["targets"][:-1], ids[1:])
    assert text["loss_mask"].tolist() == [1.0] * (len(ids) - 1) + [0.0]

    prompt, completion = "Question: 2 + 3?\nAnswer:\n", "2 + 3 = 5.\n#### 5"
    pc = enc({"index": 1, "prompt": prompt, "completion": completion})
    trained = pc["targets"][pc["loss_mask"] > 0]
    # Exactly the completion tokens and the closing EOS are targets; no prompt token is.
    np.testing.assert_array_equal(trained, tokenizer.encode(completion) + [tokenizer.eos_id])
    assert pc["loss_mask"][: len(tokenizer.encode(prompt)) - 1].sum() == 0

    toks = enc({"index": 2, "tokens": np.array([9, 8, 7]), "target_mask": np.array([1, 0, 1])})
    assert toks["loss_mask"].tolist() == [0.0, 1.0, 0.0]
    assert enc({"index": 3, "text": "  \n\t"})["inputs"].size == 0  # blank text: empty document

    bos = DocumentEncoder("src", tokenizer, tokenizer.vocab_size, add_bos=True)
    assert bos({"index": 4, "text": "a"})["inputs"][0] == tokenizer.bos_id


def test_token_id_out_of_range_names_source_document_and_id():
    enc = DocumentEncoder("my_source", None, vocab_size=100)
    with pytest.raises(ValueError, match=r"'my_source', document 7: token id 100 .*vocab_size=100"):
        enc({"index": 7, "tokens": np.array([1, 100, 2])})
    with pytest.raises(ValueError, match="token id -1"):
        enc({"index": 0, "tokens": np.array([-1])})
    with pytest.raises(ValueError, match="no tokenizer"):
        enc({"index": 0, "text": "hello"})
