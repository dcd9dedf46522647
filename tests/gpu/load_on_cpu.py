"""Load a checkpoint written on a GPU into a CPU-only process (run with CUDA_VISIBLE_DEVICES=""), and save
what it loaded plus the loss of one more step: ``python -m tests.gpu.load_on_cpu ROOT LEVEL OUT``."""

import sys

import torch

from megatron_fp8.layers.weights import param_info
from megatron_fp8.training import Trainer

from ..helpers import tiny_config
from .test_training_cuda import train


def main(root: str, level: str, out: str) -> None:
    if torch.cuda.is_available():
        raise SystemExit("load_on_cpu must run without a visible GPU (CUDA_VISIBLE_DEVICES=)")
    trainer = Trainer(tiny_config(level), device=torch.device("cpu"))
    if not trainer.load(root):
        raise SystemExit(f"no checkpoint under {root}")
    state = {"params": {n: p.detach().clone() for n, p in trainer.model.named_parameters()},
             "scale_invs": {n: param_info(p).scale_inv.clone() for n, p in trainer.model.named_parameters()
                            if param_info(p).scale_inv is not None},
             "optim": trainer.optimizer.state_dict(), "iteration": trainer.progress.iteration}
    with trainer.pstate.rng.fork():  # the TP dropout stream restored from a GPU checkpoint still works here
        torch.rand(3)
    state["next"] = train(trainer, 1)[0]
    torch.save(state, out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
