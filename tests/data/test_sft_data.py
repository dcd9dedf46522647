"""Chat data for --sft: row formats, assistant-only targets, packing, caching, blending, and every bad-data
message (file and line named). Tokenizers are built here from local text (tests/checkpoint/hf_models.py)."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("transformers")

from megatron_fp8.data import DataConfig, build_train_valid_test_datasets  # noqa: E402
from megatron_fp8.data.chat import SFTTokenizer, read_jsonl  # noqa: E402
from megatron_fp8.data.indexed_dataset import DataFormatError  # noqa: E402
from megatron_fp8.data.ltor import ltor_sample  # noqa: E402
from megatron_fp8.data.sft_dataset import SFTConversations, SFTDataset  # noqa: E402

from ..checkpoint.hf_models import CHAT_SPECIALS, CHAT_TEMPLATE, tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tok_dirs(tmp_path_factory):
    """A tokenizer directory with a chat template and one without."""
    dirs = {}
    for name, template in (("chat", CHAT_TEMPLATE), ("plain", None)):
        tok = tokenizer(CHAT_SPECIALS, "</s>", "<s>")
        tok.chat_template = template
        dirs[name] = str(tmp_path_factory.mktemp(name))
        tok.save_pretrained(dirs[name])
    return dirs


def _jsonl(path, rows) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


def _chat(q, a, system=None):
    head = [{"role": "system", "content": system}] if system else []
    return {"messages": head + [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def _decoded_targets(tok, ids, marks):
    return tok.decode([int(i) for i, m in zip(ids, marks) if m])


def test_default_format_targets_only_the_assistant(tok_dirs):
    tok = SFTTokenizer(tok_dirs["chat"], "default")
    conv = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is two plus two?"},
            {"role": "assistant", "content": "four"}, {"role": "user", "content": "and three?"},
            {"role": "assistant", "content": "six"}]
    ids, marks = tok.tokenize_conversation(conv)
    assert tok.decode(ids) == tok.render(conv)  # the template's text, ending with eos
    assert _decoded_targets(tok, ids, marks) == "four</s>six</s>"  # each reply and its end-of-turn token
    assert int(ids[-1]) == tok.eod and tok.decode(tok.prompt_ids(conv[:2])).endswith("<|assistant|>\n")


def test_identity_format_and_input_output_rows(tok_dirs, tmp_path):
    tok = SFTTokenizer(tok_dirs["plain"], "identity")  # no template needed
    path = _jsonl(tmp_path / "io.jsonl", [{"input": "2+2=", "output": "4"}, {"system": "s", "input": "a", "output": "b"}])
    (line1, conv1), (line2, conv2) = list(read_jsonl(path))
    assert (line1, [m["role"] for m in conv1]) == (1, ["user", "assistant"])
    assert (line2, [m["role"] for m in conv2]) == (2, ["system", "user", "assistant"])
    ids, marks = tok.tokenize_conversation(conv1)
    assert tok.decode(ids) == "2+2=4</s>" and _decoded_targets(tok, ids, marks) == "4</s>"


def test_a_row_with_several_system_messages_holds_several_conversations(tmp_path):
    row = {"messages": _chat("q1", "a1", "s1")["messages"] + _chat("q2", "a2", "s2")["messages"]}
    convs = [c for _, c in read_jsonl(_jsonl(tmp_path / "two.jsonl", [row]))]
    assert [[m["content"] for m in c] for c in convs] == [["s1", "q1", "a1"], ["s2", "q2", "a2"]]


@pytest.mark.parametrize("row, message", [
    ("{not json", r"bad.jsonl:2: not valid JSON"),
    ({"text": "plain"}, r"bad.jsonl:2: a row needs \"messages\""),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]},
     r"bad.jsonl:2: message 1 has role 'bot'; roles are system, user, assistant"),
    ({"messages": [{"role": "user", "content": "q"}]}, r"bad.jsonl:2: no assistant turn"),
    ({"messages": [{"role": "assistant", "content": "a"}]}, r"bad.jsonl:2: assistant turn 0 does not follow a user"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]},
     r"bad.jsonl:2: message 0 \(user\) has non-text content"),
    ({"messages": []}, r"bad.jsonl:2: \"messages\" must be a non-empty list"),
    ([1, 2], r"bad.jsonl:2: a row must be a JSON object"),
])
def test_bad_rows_name_file_and_line(tmp_path, row, message):
    path = _jsonl(tmp_path / "bad.jsonl", [_chat("fine", "row"), row])
    with pytest.raises(DataFormatError, match=message):
        list(read_jsonl(path))


def test_default_format_needs_a_chat_template(tok_dirs):
    with pytest.raises(ValueError, match=r"--tokenizer-model .*plain.*: no chat template.*prompt-format identity"):
        SFTTokenizer(tok_dirs["plain"], "default")


def test_sft_flags_are_checked(tok_dirs, tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [_chat("q", "a")])
    with pytest.raises(ValueError, match="--sft: needs --tokenizer-type SFTTokenizer"):
        DataConfig(sft=True, data_path=[path], tokenizer_type="HuggingFaceTokenizer", tokenizer_model=tok_dirs["chat"])
    with pytest.raises(ValueError, match="--data-path: no such JSONL file"):
        DataConfig(sft=True, data_path=[path + "x"], tokenizer_type="SFTTokenizer", tokenizer_model=tok_dirs["chat"])
    with pytest.raises(ValueError, match="--sft: needs --data-path"):
        DataConfig(sft=True)


def _conversations(tok, tmp_path, rows, name="chat.jsonl"):
    return SFTConversations(_jsonl(tmp_path / name, rows), tok, str(tmp_path / "cache"))


def test_packing_masks_positions_and_overlong_conversations(tok_dirs, tmp_path):
    tok = SFTTokenizer(tok_dirs["chat"])
    long_answer = _chat("q", "x " * 40)  # over a sample: truncated, its reply starts inside
    long_prompt = _chat("y " * 40, "z")  # over a sample with no reply inside: skipped
    rows = [_chat(f"question {i}", f"answer {i}") for i in range(8)] + [long_answer, long_prompt]
    low = _conversations(tok, tmp_path, rows)
    ds = SFTDataset(low, (0, len(low)), None, 31, 5, str(tmp_path / "cache"), "train", tok.pad)
    assert "10 conversations" in ds.summary and "1 truncated" in ds.summary and "1 skipped" in ds.summary
    seen, replies = 0, ""
    for i in range(len(ds)):
        s = ds[i]
        assert all(v.shape == (31,) for v in s.values())
        doc, pos = s["document_ids"], s["position_ids"]
        starts = np.nonzero(np.diff(doc))[0] + 1
        assert np.all(pos[starts] == 0) and np.all(np.diff(pos)[np.diff(doc) == 0] == 1)
        mask = s["loss_mask"] > 0
        assert np.all(doc[1:][mask[:-1]] == doc[:-1][mask[:-1]])  # no target across a boundary
        seen += len(set(doc[s["tokens"] != tok.pad].tolist()))
        replies += tok.decode(s["labels"][mask])
    assert seen == 9  # every conversation but the skipped one, once per epoch
    assert "question" not in replies and "y" not in replies  # prompts are never targets
    assert all(replies.count(f"answer {i}</s>") == 1 for i in range(8)) and "x x" in replies


def test_tokenization_is_cached_and_the_cache_follows_the_file(tok_dirs, tmp_path, monkeypatch):
    tok = SFTTokenizer(tok_dirs["chat"])
    rows = [_chat(f"q{i}", f"a{i}") for i in range(5)]
    first = _conversations(tok, tmp_path, rows)
    with monkeypatch.context() as m:
        m.setattr(SFTConversations, "_tokenize", staticmethod(lambda *a: pytest.fail("tokenized again")))
        again = SFTConversations(first.prefix, tok, str(tmp_path / "cache"))
    assert np.array_equal(first.tokens, again.tokens) and np.array_equal(first.lines, again.lines)
    assert len(os.listdir(tmp_path / "cache")) == 5  # four arrays and their description
    changed = _conversations(tok, tmp_path, rows + [_chat("q5", "a5")])  # the file changed: rebuilt
    assert len(changed) == 6 and int(changed.lines[-1]) == 6


def test_blended_sft_datasets_through_the_builder(tok_dirs, tmp_path):
    a = _jsonl(tmp_path / "a.jsonl", [_chat(f"alpha {i}", f"A{i}") for i in range(30)])
    b = _jsonl(tmp_path / "b.jsonl", [_chat(f"beta {i}", f"B{i}") for i in range(30)])
    cfg = DataConfig(sft=True, data_path=["0.75", a, "0.25", b], split="90,10,0", seq_length=32, seed=3,
                     tokenizer_type="SFTTokenizer", tokenizer_model=tok_dirs["chat"],
                     data_cache_path=str(tmp_path / "cache"))
    lines = []
    tok = SFTTokenizer(tok_dirs["chat"])
    train, valid, test = build_train_valid_test_datasets(cfg, tok, 40, 4, 0, log=lines.append)
    assert test is None and len(train) == 40 and len(valid) == 4
    assert len(lines) == 4 and all("SFT data" in line for line in lines)
    alpha = sum("alpha" in tok.decode(train[i]["tokens"]) for i in range(40))
    assert 26 <= alpha <= 34  # 3/4 of the samples, within the blend's rounding


def test_pretraining_ltor_masks_follow_megatron():
    eod = 0
    text = np.array([5, 6, eod, 7, 8, 9, eod, 3, 4])
    s = ltor_sample(text, eod, reset_position_ids=True, reset_attention_mask=True, eod_mask_loss=True)
    assert s["tokens"].tolist() == [5, 6, 0, 7, 8, 9, 0, 3] and s["labels"].tolist() == [6, 0, 7, 8, 9, 0, 3, 4]
    assert s["position_ids"].tolist() == [0, 1, 2, 0, 1, 2, 3, 0]
    assert s["document_ids"].tolist() == [0, 0, 0, 1, 1, 1, 1, 2]  # a document ends after its eod
    assert s["loss_mask"].tolist() == [1, 1, 0, 1, 1, 1, 0, 1]
    plain = ltor_sample(text, eod, False, False, False)
    assert "document_ids" not in plain and plain["position_ids"].tolist() == list(range(8))
    assert plain["loss_mask"].tolist() == [1.0] * 8


def test_megatron_document_flags_wrap_pretraining_data(tmp_path):
    from megatron_fp8.data.tokenizer import NullTokenizer

    cfg = DataConfig(mock_data=True, seq_length=16, reset_attention_mask=True, reset_position_ids=True,
                     data_cache_path=str(tmp_path))
    train, _, _ = build_train_valid_test_datasets(cfg, NullTokenizer(cfg.vocab_size), 4, 0, 0)
    sample = train[0]
    assert set(sample) == {"tokens", "labels", "loss_mask", "position_ids", "document_ids"}
    plain, _, _ = build_train_valid_test_datasets(DataConfig(mock_data=True, seq_length=16), NullTokenizer(8192),
                                                  4, 0, 0)
    assert set(plain[0]) == {"text"} and np.array_equal(plain[0]["text"][:-1], sample["tokens"])


def test_a_template_that_rejects_a_conversation_names_the_line(tmp_path):
    tok = tokenizer(CHAT_SPECIALS, "</s>", "<s>")
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system "
                         "role') }}{% endif %}{{ m['content'] + eos_token }}{% endfor %}")
    tok.save_pretrained(tmp_path / "strict")
    sft = SFTTokenizer(str(tmp_path / "strict"))
    path = _jsonl(tmp_path / "c.jsonl", [_chat("q", "a"), _chat("q", "a", system="s")])
    low = list(read_jsonl(path))
    sft.tokenize_conversation(low[0][1], f"{path}:1")
    with pytest.raises(DataFormatError, match=r"c.jsonl:2: the chat template of .*strict rejects .*no system role"):
        sft.tokenize_conversation(low[1][1], f"{path}:2")
