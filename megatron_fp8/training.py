"""The training loop: build everything from one Config, then step, log, evaluate and save.

``Trainer`` owns the model, gradient buffers, optimizer and progress counters; ``pretrain`` drives it
the way Megatron's ``pretrain`` does (train until ``--train-iters``, evaluate every ``--eval-interval``,
save every ``--save-interval`` and at the end).
"""

import math
import random
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import batches
from .checkpoint.distributed import CheckpointWriter, load_rank_files, model_file, optim_file, rng_file
from .checkpoint.state import load_model_state, model_state, rng_state
from .config import Config
from .data import build_tokenizer, build_train_valid_test_datasets, resolve_default_corpus
from .layers.embedding import padded_vocab_size
from .layers.weights import param_info
from .metrics import ActivationMeter, MetricsLogger, model_flops_per_iteration, weight_bytes
from .model import GPTModel
from .optim.adamw import AdamWSettings, Fp8AdamW
from .optim.distributed import DistributedOptimizer
from .optim.ownership import assign_param_owners
from .optim.clip import clip_coefficient, grad_norm_and_overflow
from .optim.finalize_grads import counts_in_norm, finalize_model_grads
from .optim.grad_buffer import GradBuffers
from .optim.lr_scheduler import LRScheduler
from .parallel import comm
from .parallel.groups import init_distributed
from .parallel.random import stage_seed
from .parallel.state import ParallelState, single_process
from .pipeline.schedules import forward_backward_1f1b, forward_backward_no_pipelining


def default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Progress:
    iteration: int = 0
    consumed_samples: int = 0
    skipped_iterations: int = 0
    nan_iterations: int = 0


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    skipped: bool


class Trainer:
    def __init__(self, config: Config, pstate: ParallelState | None = None, device=None):
        self.config, self.pstate = config, pstate or single_process()
        self.device = device or default_device()
        self.policy = config.precision.policy
        set_seed(stage_seed(config.training.seed, self.pstate))  # weights are seeded by name, not by this
        self.model = GPTModel(config, self.pstate, self.device)
        self.params = [p for p in self.model.parameters()]
        par, t, margin = config.parallel, config.training, config.precision.recipe.margin
        self.distributed_optimizer = par.use_distributed_optimizer and self.pstate.dp_size > 1
        self.owners = owners = assign_param_owners(self.params, self.pstate.dp_size)
        self.grads = GradBuffers(self.params, self.policy, margin, self.pstate, owners,
                                 gather=not self.distributed_optimizer, bucket_elems=par.ddp_bucket_size,
                                 overlap=par.overlap_grad_reduce)
        settings = AdamWSettings(t.adam_beta1, t.adam_beta2, t.adam_eps, t.weight_decay, margin)
        named = list(self.model.named_parameters())
        self.optimizer = DistributedOptimizer(named, self.policy, settings, owners, self.pstate) \
            if self.distributed_optimizer else Fp8AdamW(named, self.policy, settings)
        self.scheduler = LRScheduler(t)
        self.progress = Progress()
        self.activations = ActivationMeter()
        self._writer: CheckpointWriter | None = None

    # ---- one iteration ----------------------------------------------------------------------------
    def forward_backward(self, micro_batches: list[dict], forward_only: bool = False) -> list[torch.Tensor]:
        ps = self.pstate
        meter = None if forward_only else self.activations
        if ps.pp_size == 1:
            return forward_backward_no_pipelining(self.model, micro_batches, meter, forward_only)
        m = self.config.model
        seq = m.seq_length // (ps.tp_size if self.config.parallel.sequence_parallel else 1)
        shape = (seq, micro_batches[0]["tokens"].shape[0], m.hidden_size)
        return forward_backward_1f1b(self.model, micro_batches, ps, shape, self.policy.compute, self.device,
                                     meter, forward_only)

    def _mean_loss(self, losses: list[torch.Tensor]) -> float:
        """Mean loss over micro-batches and data-parallel replicas (NaN where no loss exists: not last stage)."""
        if not losses:
            return float("nan")
        mean = torch.stack(losses).mean().reshape(1)
        if self.pstate.dp_size > 1:
            comm.all_reduce(mean, self.pstate.dp_group, "other")
            mean /= self.pstate.dp_size
        return float(mean)

    def _counted_in_norm(self, p) -> bool:
        """Each parameter counts once: TP/PP replicas excluded, and under the distributed optimizer only
        the owner's (the only fully reduced) copy."""
        owned = not self.distributed_optimizer or self.owners[id(p)] == self.pstate.dp_rank
        return owned and counts_in_norm(p, self.pstate)

    def _reduce_norm(self, stats: torch.Tensor) -> torch.Tensor:
        ps = self.pstate
        if ps.tp_size * ps.pp_size > 1:
            comm.all_reduce(stats, ps.mp_group, "other")
        if self.distributed_optimizer:
            comm.all_reduce(stats, ps.dp_group, "other")
        return stats

    def train_step(self, micro_batches: list[dict], lr: float) -> StepResult:
        """Forward/backward over the micro-batches, then one optimizer step unless a gradient overflowed."""
        self.model.train()
        self.grads.zero(len(micro_batches))
        losses = self.forward_backward(micro_batches)
        self.grads.reduce()
        finalize_model_grads(self.params, self.pstate)
        norm_t, bad_t = grad_norm_and_overflow(self.params, counted=self._counted_in_norm,
                                               reduce_sum=self._reduce_norm)
        norm, bad = float(norm_t), bool(bad_t)
        if bad:
            self.progress.skipped_iterations += 1
            self.progress.nan_iterations += int(math.isnan(norm))
        else:
            self.optimizer.step(lr, clip_coefficient(norm, self.config.training.clip_grad))
        return StepResult(self._mean_loss(losses), norm, bad)

    @torch.no_grad()
    def evaluate(self, dataset, iters: int) -> float:
        self.model.eval()
        t = self.config.training
        losses = []
        for k in range(iters):
            mbs = batches.global_batch(dataset, k * t.global_batch_size, t.global_batch_size, t.micro_batch_size,
                                       self.pstate.dp_rank, self.pstate.dp_size, self.device)
            losses += self.forward_backward(mbs, forward_only=True)
        return self._mean_loss(losses)

    # ---- accounting and state ---------------------------------------------------------------------
    def memory(self) -> dict:
        opt = self.optimizer.nbytes()
        return {"weights": weight_bytes(self.params), "grads": self.grads.nbytes(), "master": opt["master"],
                "exp_avg": opt["exp_avg"], "exp_avg_sq": opt["exp_avg_sq"],
                "activations_peak": self.activations.peak}

    def checkpoint_shards(self) -> dict:
        """The files this rank contributes to a checkpoint (see checkpoint.distributed)."""
        ps = self.pstate
        shards = {rng_file(ps.rank): rng_state(ps)}
        if ps.dp_rank == 0:
            shards[model_file(ps.tp_rank, ps.pp_rank)] = model_state(self.model, ps, self.config)
        if ps.dp_rank == 0 or self.distributed_optimizer:
            dp = ps.dp_rank if self.distributed_optimizer else 0
            shards[optim_file(ps.tp_rank, ps.pp_rank, dp)] = self.optimizer.state_dict()
        return shards

    def save(self, root: str, async_save: bool = False) -> float:
        """Save a checkpoint of the current iteration; returns the seconds training was blocked."""
        if self._writer is None or self._writer.root != root:
            self._writer = CheckpointWriter(root, self.config, self.pstate, async_save)
        progress = dict(vars(self.progress), scheduler=self.scheduler.state_dict())
        return self._writer.save(self.progress.iteration, self.checkpoint_shards(), progress)

    def poll_saves(self) -> None:
        if self._writer is not None:
            self._writer.poll()

    def finish_saves(self) -> None:
        if self._writer is not None:
            self._writer.wait()

    def load(self, root: str) -> bool:
        """Resume from the newest checkpoint under ``root``; False when there is none yet."""
        loaded = load_rank_files(root, self.config, self.pstate, self.distributed_optimizer)
        if loaded is None:
            return False
        model, optim, metadata = loaded
        load_model_state(self.model, model, root)
        self.optimizer.load_state_dict(optim)
        progress = {k: v for k, v in metadata["progress"].items() if k != "scheduler"}
        self.progress = Progress(**progress)
        return True


def build_data(config: Config, pstate: ParallelState, printer=print):
    """Tokenizer and train/valid/test datasets; sets the padded vocabulary size on the model config."""
    barrier = torch.distributed.barrier if pstate.world_size > 1 else None
    data_cfg = resolve_default_corpus(config.data, rank=pstate.rank, barrier=barrier)
    config.data = data_cfg
    tokenizer = build_tokenizer(data_cfg)
    m, t = config.model, config.training
    m.unpadded_vocab_size = tokenizer.vocab_size
    m.vocab_size = padded_vocab_size(tokenizer.vocab_size, m.make_vocab_size_divisible_by, pstate.tp_size)
    printer(f" > padded vocab (size: {tokenizer.vocab_size}) with {m.vocab_size - tokenizer.vocab_size} dummy "
            f"tokens (new size: {m.vocab_size})")
    evals = (t.train_iters // t.eval_interval + 1) * t.eval_iters * t.global_batch_size
    datasets = build_train_valid_test_datasets(data_cfg, tokenizer, t.train_iters * t.global_batch_size, evals,
                                               t.eval_iters * t.global_batch_size, rank=pstate.rank,
                                               barrier=barrier)
    return tokenizer, datasets


def print_startup(trainer: Trainer, printer) -> None:
    policy, cfg = trainer.policy, trainer.config
    total = sum(p.numel() for p in trainer.params)
    eligible = sum(p.numel() for p in trainer.params if param_info(p).fp8_eligible)
    printer(f" > number of parameters: {total} ({eligible} FP8-eligible in linear layers)")
    printer(f" > precision: --fp8-level {cfg.precision.fp8_level} | compute {policy.compute} | weight "
            f"{policy.weight} | grad {policy.grad} | master {policy.master or 'weight'} | exp_avg {policy.exp_avg} | "
            f"exp_avg_sq {policy.exp_avg_sq} | grad reduce {policy.grad_reduce} | recipe "
            f"{cfg.precision.recipe.recipe}/{cfg.precision.recipe.format}")
    printer(f" > theoretical model-state bytes per FP8-eligible parameter: "
            f"{policy.eligible_bytes_per_param(trainer.pstate.dp_size, cfg.parallel.use_distributed_optimizer):g}")


def pretrain(config: Config, printer=print) -> dict:
    """Train as the flags say; returns a summary (final losses, iterations) for scripts and tests."""
    pstate = init_distributed(config)
    printer = printer if pstate.is_logging_rank else (lambda *a, **k: None)
    t = config.training
    _, (train_ds, valid_ds, test_ds) = build_data(config, pstate, printer)
    trainer = Trainer(config, pstate)
    if t.load and trainer.load(t.load):
        printer(f" > loaded checkpoint from {t.load} at iteration {trainer.progress.iteration}")
    print_startup(trainer, printer)
    logger = MetricsLogger(t.train_iters, t.log_json, t.tensorboard_dir, enabled=pstate.is_logging_rank,
                           printer=printer)
    comm.COUNTER.take()  # count from the first iteration on
    summary = {"train_losses": [], "valid_loss": None}
    tokens_per_iter = t.global_batch_size * config.model.seq_length
    flops = model_flops_per_iteration(config.model, tokens_per_iter)
    window = []
    try:
        while trainer.progress.iteration < t.train_iters:
            p = trainer.progress
            p.iteration += 1
            lr = trainer.scheduler.lr(p.iteration)
            start = time.perf_counter()
            mbs = batches.global_batch(train_ds, p.consumed_samples, t.global_batch_size, t.micro_batch_size,
                                       pstate.dp_rank, pstate.dp_size, trainer.device)
            result = trainer.train_step(mbs, lr)
            elapsed = time.perf_counter() - start
            p.consumed_samples += t.global_batch_size
            window.append((result, elapsed))
            summary["train_losses"].append(result.loss)
            if p.iteration % t.log_interval == 0 or p.iteration == t.train_iters:
                step_time = sum(e for _, e in window) / len(window)
                logger.log_iteration({
                    "iteration": p.iteration, "consumed_samples": p.consumed_samples, "lr": lr,
                    "global_batch_size": t.global_batch_size,
                    "lm_loss": sum(r.loss for r, _ in window) / len(window), "grad_norm": window[-1][0].grad_norm,
                    "skipped_iterations": p.skipped_iterations, "nan_iterations": p.nan_iterations,
                    "step_time_s": step_time, "tokens_per_sec": tokens_per_iter / step_time,
                    "tflops": flops / step_time / 1e12 / pstate.world_size, "mem": trainer.memory(),
                    "comm": comm.COUNTER.take()})
                window = []
            if valid_ds is not None and t.eval_iters and p.iteration % t.eval_interval == 0:
                summary["valid_loss"] = trainer.evaluate(valid_ds, t.eval_iters)
                logger.log_eval(p.iteration, summary["valid_loss"])
                comm.COUNTER.take()  # the next log line reports training traffic only
            trainer.poll_saves()
            if t.save and t.save_interval and p.iteration % t.save_interval == 0:
                blocked = trainer.save(t.save, t.async_save)
                printer(f" > checkpoint at iteration {p.iteration}: training blocked for {blocked * 1000:.1f} ms"
                        f"{' (writing continues in the background)' if t.async_save else ''}")
            if t.exit_interval and p.iteration % t.exit_interval == 0:
                printer(f" > exiting at iteration {p.iteration} (--exit-interval)")
                break
        if valid_ds is not None and t.eval_iters and trainer.progress.iteration % t.eval_interval:
            summary["valid_loss"] = trainer.evaluate(valid_ds, t.eval_iters)
            logger.log_eval(trainer.progress.iteration, summary["valid_loss"])
        if t.save and not (t.save_interval and trainer.progress.iteration % t.save_interval == 0):
            trainer.save(t.save)
        trainer.finish_saves()
    finally:
        logger.close()
    summary.update(iterations=trainer.progress.iteration, skipped=trainer.progress.skipped_iterations,
                   memory=trainer.memory())
    return summary
