"""GPTModel: embeddings on the first pipeline stage, transformer layers, output head and loss on the last.

Inputs are ``tokens``/``labels`` [b, s]; hidden states flow as [s, b, h]. A middle or last stage of a
pipeline receives its input hidden states through ``set_input_tensor`` (Megatron's convention).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config
from ..layers.cross_entropy import vocab_parallel_cross_entropy
from ..layers.embedding import PositionEmbedding, VocabParallelEmbedding
from ..layers.weights import init_normal, make_parameter
from ..parallel import comm, mappings
from ..parallel.random import TPRngTracker, dropout, stage_seed
from ..parallel.state import ParallelState
from .masks import packed_causal_mask
from .rope import rope_tables
from .transformer import TransformerBlock, sequence_parallel


class GPTModel(nn.Module):
    def __init__(self, config: Config, pstate: ParallelState, device=None):
        super().__init__()
        m = config.model
        if m.vocab_size is None:
            raise ValueError("model vocab size is unset: build the tokenizer first (it sets the padded size)")
        self.config, self.pstate = config, pstate
        self.sp = sequence_parallel(config, pstate)
        if pstate.rng is None:
            pstate.rng = TPRngTracker(stage_seed(config.training.seed, pstate), pstate.tp_rank, device or "cpu")
        self.pre_process, self.post_process = pstate.is_first_stage, pstate.is_last_stage
        self.tied = not m.untie_embeddings_and_output_weights
        self.input_tensor = None
        if self.pre_process:
            # a tied embedding split over pipeline stages is synced with the last stage's copy
            self.word_embeddings = VocabParallelEmbedding(m.vocab_size, m.hidden_size, config, pstate,
                                                          "embedding.word_embeddings.weight", device,
                                                          shared_embedding=self.tied and pstate.pp_size > 1)
            self.position_embeddings = PositionEmbedding(m.max_position_embeddings, m.hidden_size, config,
                                                         "embedding.position_embeddings.weight", device) \
                if m.position_embedding_type == "learned_absolute" else None
        self.decoder = TransformerBlock(config, pstate, device)
        if self.post_process and (not self.tied or not self.pre_process):
            # untied head, or the last stage's copy of the tied embedding (kept in sync across stages)
            name = "output_layer.weight" if not self.tied else "embedding.word_embeddings.weight"
            full = init_normal((m.vocab_size, m.hidden_size), m.init_method_std, config.training.seed, name)
            self.output_weight = make_parameter(full, policy=config.precision.policy, fp8_eligible=False,
                                                device=device, partition_dim=0, tp_rank=pstate.tp_rank,
                                                tp_size=pstate.tp_size, shared_embedding=self.tied,
                                                embedding_or_output=True)  # takes --decoupled-lr
        self.rope = None
        if m.position_embedding_type == "rope":
            cos, sin = rope_tables(m.seq_length, m.rotary_dim, m.rotary_base, device, config.precision.policy.compute,
                                   m.rope_scaling_factor if m.use_rope_scaling else None)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    def set_input_tensor(self, tensor: torch.Tensor | None) -> None:
        self.input_tensor = tensor

    def head_weight(self) -> torch.Tensor:
        return self.word_embeddings.weight if (self.tied and self.pre_process) else self.output_weight

    def embed(self, tokens: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        h = self.word_embeddings(tokens)
        if self.position_embeddings is not None:
            h = h + self.position_embeddings(position_ids)
        h = h.transpose(0, 1).contiguous()  # [s, b, h]
        if self.sp:
            h = mappings.scatter_to_sp(h, self.pstate)
        return dropout(h, self.config.model.hidden_dropout, self.training, self.pstate, split_across_tp=self.sp)

    def forward(self, tokens: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor | None = None,
                document_ids: torch.Tensor | None = None):
        """Per-token loss [b, s] (with ``labels``), logits [b, s, V] (without), or the hidden states
        [s, b, h] (split along s under sequence parallelism) this stage hands to the next. With
        ``document_ids`` [b, s] (packed samples) no token attends across a document boundary."""
        h = self.embed(tokens, position_ids) if self.pre_process else self.input_tensor
        rope = None
        if hasattr(self, "rope_cos"):  # the angles of each token's position id ([s, b, 1, head_dim])
            index = position_ids.transpose(0, 1)
            rope = (self.rope_cos[index, 0], self.rope_sin[index, 0])
        mask = packed_causal_mask(document_ids) if document_ids is not None else None
        h = self.decoder(h, rope, mask)
        if not self.post_process:
            return h
        h = mappings.gather_from_sp(h, self.pstate) if self.sp else mappings.copy_to_tp(h, self.pstate)
        logits = F.linear(h, self.head_weight())  # [s, b, V/tp]
        if labels is None:
            return comm.all_gather(logits, self.pstate.tp_group, "tp", dim=-1).transpose(0, 1)
        return vocab_parallel_cross_entropy(logits, labels.transpose(0, 1), self.pstate).transpose(0, 1)
