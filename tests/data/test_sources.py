"""File sources on small generated files: records, document counts and clear errors."""

import json

import pytest
from array_record.python import array_record_module

from ling_jax.data import (
    ArrayRecordSource,
    JsonlSource,
    TextSource,
    TfdsSource,
    write_token_records,
)
from ling_jax.data.sources import resolve_paths


def test_tfds_source_text_and_tokens(tfds_dir):
    text = TfdsSource("ling_jax_tiny_corpus", split="train", data_dir=tfds_dir)
    assert len(text) == 12
    texts = sorted(text[i]["text"] for i in range(12))
    assert texts == sorted(f"document {i}: " + "word " * i for i in range(12))
    ids = TfdsSource("ling_jax_tiny_corpus", split="test", data_dir=tfds_dir, tokens_key="ids")
    assert sorted(len(ids[i]["tokens"]) for i in range(3)) == [2, 3, 4]
    with pytest.raises(ValueError, match="no feature 'body'.*'ids', 'text'"):
        TfdsSource("ling_jax_tiny_corpus", data_dir=tfds_dir, text_key="body")[0]
    with pytest.raises(ValueError, match="cannot open tfds dataset 'no_such_dataset'"):
        TfdsSource("no_such_dataset", data_dir=tfds_dir)


def test_jsonl_text_and_prompt_completion(tmp_path):
    path = tmp_path / "a.jsonl"
    lines = [{"text": "first"}, {"prompt": "Q?", "completion": "A."}, {"body": "x", "text": ""}]
    path.write_text("\n".join(json.dumps(x) for x in lines[:2]) + "\n\n  \n"
                    + json.dumps(lines[2]) + "\n")
    source = JsonlSource(str(path))
    assert len(source) == 3  # blank lines are not documents
    assert source[0] == {"index": 0, "text": "first"}
    assert source[1] == {"index": 1, "prompt": "Q?", "completion": "A."}
    assert source[2] == {"index": 2, "text": ""}
    assert JsonlSource(str(path), text_key="body")[2]["text"] == "x"
    with pytest.raises(ValueError, match=r"a.jsonl:1 has no 'body' field"):
        JsonlSource(str(path), text_key="body")[0]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2 is not valid JSON"):
        JsonlSource(str(tmp_path / "bad.jsonl"))[1]


def test_text_splits_and_globs(tmp_path):
    (tmp_path / "b.txt").write_text("para one\nstill one\n\n\npara two\n")
    (tmp_path / "a.txt").write_text("solo")
    files = TextSource(str(tmp_path / "*.txt"))
    assert len(files) == 2 and files[0]["text"] == "solo"  # sorted: a.txt first
    paragraphs = TextSource(str(tmp_path / "b.txt"), split_on="paragraph")
    assert [paragraphs[i]["text"] for i in range(2)] == ["para one\nstill one\n", "para two\n"]
    lines = TextSource([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], split_on="line")
    assert [lines[i]["text"].strip() for i in range(len(lines))] == [
        "solo", "para one", "still one", "para two"]
    with pytest.raises(ValueError, match="split_on='sentence'"):
        TextSource(str(tmp_path / "a.txt"), split_on="sentence")


def test_empty_files_and_bad_paths_are_errors(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    (tmp_path / "empty.txt").write_text("")
    write_token_records(tmp_path / "empty.array_record", [])
    for source, name in [(JsonlSource, "empty.jsonl"), (TextSource, "empty.txt"),
                         (ArrayRecordSource, "empty.array_record")]:
        with pytest.raises(ValueError, match=rf"file .*{name} is empty"):
            source(str(tmp_path / name))
    with pytest.raises(ValueError, match="matches no file"):
        resolve_paths(str(tmp_path / "nothing*.jsonl"))
    with pytest.raises(ValueError, match="is a directory"):
        resolve_paths(str(tmp_path))


def test_array_record_source_over_several_files(tmp_path):
    write_token_records(tmp_path / "p0.array_record", [[1, 2, 3], [4, 5]])
    write_token_records(tmp_path / "p1.array_record", [[6, 7, 8, 9]], [[0, 1, 1, 1]])
    source = ArrayRecordSource(str(tmp_path / "p*.array_record"))
    assert [source[i]["tokens"].tolist() for i in range(3)] == [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    assert source[2]["target_mask"].tolist() == [False, True, True, True]
    writer = array_record_module.ArrayRecordWriter(str(tmp_path / "raw.array_record"))
    writer.write(b"raw bytes, not a token record")
    writer.close()
    with pytest.raises(ValueError, match="'array_record', record 0: .*not a ling-jax token"):
        ArrayRecordSource(str(tmp_path / "raw.array_record"))[0]
