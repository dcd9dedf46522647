"""Sample text from a megatron_fp8 checkpoint (temperature and top-k), to see what a model learned.

    python tools/generate.py --load checkpoints/gpt_default --prompt "def " --max-new-tokens 120
    python tools/generate.py --load checkpoints/sft --chat --prompt "What is the capital of France?"

The model shape, precision level and tokenizer are read from the checkpoint itself. ``--chat`` sends the
prompt as a user turn (after ``--system``, if given) through the tokenizer's chat template and prints the
assistant's reply only.
"""

import argparse
import os
import tempfile
from types import SimpleNamespace

import torch


from megatron_fp8.checkpoint.distributed import read_metadata
from megatron_fp8.checkpoint.state import TOKENIZER_FIELDS, config_from_summary
from megatron_fp8.data.chat import SFTTokenizer
from megatron_fp8.checkpoint.universal import read_universal, write_layout
from megatron_fp8.data import build_tokenizer
from megatron_fp8.training import Trainer


def load_for_inference(root: str):
    """Rebuild, in this one process, the model and tokenizer of a checkpoint of any layout under ``root``."""
    universal = read_universal(root)
    config = config_from_summary(universal["config"])
    with tempfile.TemporaryDirectory() as tmp:  # reshard to one process through the universal form
        write_layout(universal, config, 1, 1, 1, tmp)
        trainer = Trainer(config)
        trainer.load(tmp)
    tok = universal["config"]["tokenizer"]
    tokenizer = build_tokenizer(SimpleNamespace(**{k: tok.get(k) for k in TOKENIZER_FIELDS}))
    return trainer.model.eval(), tokenizer, config


def chat_tokenizer(config_tokenizer: dict):
    """The checkpoint's tokenizer as an SFTTokenizer (it renders chat templates); errors say what is missing."""
    kind, path = config_tokenizer.get("tokenizer_type"), config_tokenizer.get("tokenizer_model")
    if kind not in ("SFTTokenizer", "HuggingFaceTokenizer") or not path or not os.path.isdir(path):
        raise SystemExit(f"generate.py: --chat needs a Hugging Face tokenizer directory with a chat template; "
                         f"this checkpoint's tokenizer is {kind} {path or ''}")
    try:
        return SFTTokenizer(path, config_tokenizer.get("sft_tokenizer_prompt_format") or "default")
    except ValueError as err:
        raise SystemExit(f"generate.py: --chat: {err}") from None


@torch.no_grad()
def generate(model, tokenizer, prompt: str, max_new_tokens: int, temperature: float, top_k: int,
             seq_length: int, seed: int, prompt_ids: list[int] | None = None) -> str:
    """The prompt and its continuation (or, given ``prompt_ids``, the continuation alone) as text."""
    generator = torch.Generator().manual_seed(seed)
    tokens = list(prompt_ids) if prompt_ids is not None else (tokenizer.tokenize(prompt) or [tokenizer.eod])
    start = len(tokens) if prompt_ids is not None else 0
    for _ in range(max_new_tokens):
        context = torch.tensor([tokens[-seq_length:]])
        positions = torch.arange(context.shape[1]).unsqueeze(0)
        logits = model(context, positions)[0, -1, : tokenizer.vocab_size].float()
        if temperature <= 0:
            nxt = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k > 0:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
        if nxt == tokenizer.eod:
            break
        tokens.append(nxt)
    return tokenizer.detokenize(tokens[start:])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", required=True, help="checkpoint directory (holds latest_checkpointed_iteration.txt)")
    parser.add_argument("--prompt", default="")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=40, help="0 = no top-k filtering")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--chat", action="store_true", help="apply the tokenizer's chat template to the prompt "
                                                            "(a user turn) and print the assistant's reply")
    parser.add_argument("--system", default=None, help="with --chat: a system message before the prompt")
    args = parser.parse_args(argv)
    if args.system is not None and not args.chat:
        parser.error("--system needs --chat")
    model, tokenizer, config = load_for_inference(args.load)
    prompt_ids = None
    if args.chat:
        if not isinstance(tokenizer, SFTTokenizer):  # e.g. an import's HuggingFaceTokenizer directory
            tokenizer = chat_tokenizer(read_metadata(args.load)[1]["config"].get("tokenizer") or {})
        messages = ([{"role": "system", "content": args.system}] if args.system is not None else []) + \
            [{"role": "user", "content": args.prompt}]
        prompt_ids = tokenizer.prompt_ids(messages)
    print(generate(model, tokenizer, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                   config.model.seq_length, args.seed, prompt_ids))


if __name__ == "__main__":
    main()
