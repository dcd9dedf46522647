"""The fine-tuning loop users run (README "Fine-tuning on chat data"): a Hugging Face Llama with a chat
template is imported at O2, fine-tuned with ``pretrain_gpt.py --sft --finetune``, exported back, and
transformers' model answers the trained questions; tools/generate.py --chat does too. A tiny random Llama
and a tokenizer trained on local text (tests/checkpoint/hf_models.py): nothing is downloaded."""

import json
import os
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, ROOT)

import convert_checkpoint  # noqa: E402
import generate  # noqa: E402
import pretrain_gpt  # noqa: E402

from .hf_models import build  # noqa: E402

FACTS = [("capital of france?", "paris"), ("color of the sky?", "blue"), ("two plus two?", "four"),
         ("opposite of hot?", "cold")]
# the Llama of hf_models.py, as Megatron flags (issue 11's --use-checkpoint-args would read them instead)
LLAMA = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--ffn-hidden-size", "176",
         "--seq-length", "64", "--position-embedding-type", "rope", "--rotary-base", "50000", "--normalization",
         "RMSNorm", "--norm-epsilon", "1e-5", "--swiglu", "--untie-embeddings-and-output-weights",
         "--disable-bias-linear", "--hidden-dropout", "0", "--attention-dropout", "0"]


@torch.no_grad()
def _hf_answer(model, tok, question: str) -> str:
    text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    ids, new = tok(text, add_special_tokens=False)["input_ids"], []
    for _ in range(8):
        nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
        if nxt == tok.eos_token_id:
            break
        new.append(nxt)
    return tok.decode(new)


def test_import_sft_export_and_transformers_answers(tmp_path, capsys):
    src, _ = build("llama_chat", str(tmp_path / "src"))
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in FACTS))
    ckpt, sft, out = (str(tmp_path / name) for name in ("ckpt", "sft", "exported"))
    convert_checkpoint.main(["--hf-import", src, "--save", ckpt, "--target-fp8-level", "O2"])
    before = transformers.AutoModelForCausalLM.from_pretrained(src).eval()
    tok = transformers.AutoTokenizer.from_pretrained(src)
    assert sum(_hf_answer(before, tok, q) == a for q, a in FACTS) == 0  # a random model knows none of them

    pretrain_gpt.main(LLAMA + [
        "--sft", "--data-path", str(data), "--tokenizer-type", "SFTTokenizer", "--tokenizer-model",
        os.path.join(ckpt, "hf"), "--finetune", "--load", ckpt, "--save", sft, "--no-save-optim", "--fp8-level", "O2",
        "--train-iters", "20", "--lr", "1e-2", "--min-lr", "1e-3", "--lr-warmup-iters", "3", "--weight-decay", "0",
        "--micro-batch-size", "2", "--global-batch-size", "2", "--split", "100,0,0", "--eval-iters", "0",
        "--log-interval", "10", "--data-cache-path", str(tmp_path / "cache")])
    log = capsys.readouterr().out
    assert "fine-tuning from" in log and "4 conversations packed into 2 samples" in log
    assert "iteration       20/      20" in log

    convert_checkpoint.main(["--load", sft, "--hf-export", out])
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.chat_template  # the template travelled with the checkpoint
    assert [_hf_answer(model, tok, q) for q, _ in FACTS] == [a for _, a in FACTS]

    capsys.readouterr()
    generate.main(["--load", sft, "--chat", "--prompt", FACTS[0][0], "--temperature", "0", "--max-new-tokens", "8"])
    assert capsys.readouterr().out.strip() == FACTS[0][1]
