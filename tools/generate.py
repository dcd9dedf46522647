"""Sample text from a megatron_fp8 checkpoint (temperature and top-k), to see what a model learned.

    python tools/generate.py --load checkpoints/gpt_default --prompt "def " --max-new-tokens 120

The model shape, precision level and tokenizer are read from the checkpoint itself.
"""

import argparse
import tempfile
from types import SimpleNamespace

import torch


from megatron_fp8.checkpoint.state import TOKENIZER_FIELDS, config_from_summary
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


@torch.no_grad()
def generate(model, tokenizer, prompt: str, max_new_tokens: int, temperature: float, top_k: int,
             seq_length: int, seed: int) -> str:
    generator = torch.Generator().manual_seed(seed)
    tokens = tokenizer.tokenize(prompt) or [tokenizer.eod]
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
    return tokenizer.detokenize(tokens)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", required=True, help="checkpoint directory (holds latest_checkpointed_iteration.txt)")
    parser.add_argument("--prompt", default="")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=40, help="0 = no top-k filtering")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    model, tokenizer, config = load_for_inference(args.load)
    print(generate(model, tokenizer, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                   config.model.seq_length, args.seed))


if __name__ == "__main__":
    main()
