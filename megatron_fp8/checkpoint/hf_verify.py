"""``convert_checkpoint.py --hf-import DIR --verify``: our model against transformers on the same tokens.

Our model is built at ``--fp8-level off`` in float32 on one process from the converted full tensors (the
very values the import writes, before any layout split or FP8 storage), transformers loads ``DIR`` itself
in float32, and both run the same random tokens in eval mode. The largest absolute logit difference is
printed; above ``TOLERANCE`` the import stops before writing anything. Float32 models that compute the same
function differ by summation order only (~1e-6 on logits of order 1-10); a wrong mapping (a swapped or
misplaced head, a missing bias, another RoPE) moves logits by far more.
"""

from dataclasses import replace

import torch

from ..config import Config, PrecisionConfig
from ..layers.embedding import padded_vocab_size
from ..model import GPTModel
from ..parallel.state import ParallelState
from .hf_common import require_transformers
from .names import global_name, resize_vocab
from .state import model_config_of

TOLERANCE = 1e-3
TOKENS = (2, 64)  # sequences x tokens (fewer tokens when the model's sequence is shorter)


def _our_logits(params: dict, m: dict, tokens: torch.Tensor) -> torch.Tensor:
    model_cfg = replace(model_config_of(m), hidden_dropout=0.0, attention_dropout=0.0, seq_length=tokens.shape[1])
    model_cfg.unpadded_vocab_size = m["vocab_size"]
    model_cfg.vocab_size = padded_vocab_size(m["vocab_size"], model_cfg.make_vocab_size_divisible_by, 1)
    config = Config(model=model_cfg, precision=PrecisionConfig(fp8_level="off"))
    pstate = ParallelState()
    model = GPTModel(config, pstate).eval()
    tied = not model_cfg.untie_embeddings_and_output_weights
    with torch.no_grad():
        for local, p in model.named_parameters():
            full = params[global_name(local, pstate, model_cfg.num_layers, tied)]
            p.copy_(resize_vocab(full, p.shape[0]) if p.shape != full.shape else full)
        positions = torch.arange(tokens.shape[1]).expand_as(tokens)
        return model(tokens, positions)[..., : m["vocab_size"]]


def _their_logits(src: str, tokens: torch.Tensor) -> torch.Tensor:
    transformers = require_transformers()
    dtype = {"dtype": torch.float32} if int(transformers.__version__.split(".")[0]) >= 5 \
        else {"torch_dtype": torch.float32}  # transformers 4 names the argument torch_dtype
    model = transformers.AutoModelForCausalLM.from_pretrained(src, local_files_only=True, attn_implementation="eager",
                                                              **dtype).eval()
    with torch.no_grad():
        return model(tokens).logits.float()


def verify_import(src: str, params: dict, m: dict, log=print) -> float:
    """Max |logit difference| between our model on ``params`` and transformers on ``src``; raises ValueError
    above TOLERANCE."""
    batch, length = TOKENS[0], min(TOKENS[1], m["seq_length"])
    tokens = torch.randint(0, m["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(0))
    diff = float((_our_logits(params, m, tokens) - _their_logits(src, tokens)).abs().max())
    log(f" > max |logit difference| vs transformers: {diff:.3e} ({batch} x {length} random tokens, "
        f"--fp8-level off, float32)")
    if not diff <= TOLERANCE:
        raise ValueError(f"--verify: {src}: max |logit difference| vs transformers is {diff:.3e}, above "
                         f"{TOLERANCE:g}: the converted model does not compute what transformers computes; "
                         "nothing was written")
    return diff
