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
from .checkpoint.paths import prepare_for_run
from .checkpoint.state import load_model_state, model_state, rng_state
from .checkpoint.tracker import iteration_dir
from .config import Config
from .data import build_tokenizer, build_train_valid_test_datasets, resolve_default_corpus
from .divergence import DivergenceGuard
from .exit_conditions import ExitConditions
from .finetune import load_checkpoint
from .layers.embedding import padded_vocab_size
from .layers.weights import param_info, seed_master_from_storage
from .metrics import (ActivationMeter, MetricsLogger, fp8_weight_cache_bytes, model_flops_per_iteration,
                      weight_bytes)
from .model import GPTModel
from .optim.adamw import AdamWSettings, Fp8AdamW
from .optim.distributed import DistributedOptimizer
from .optim.ownership import assign_param_owners
from .optim.clip import clip_coefficient, grad_norm_and_overflow
from .optim.finalize_grads import counts_in_norm, finalize_model_grads
from .optim.grad_buffer import GradBuffers
from .optim.loss_scaler import make_loss_scaler
from .optim.lr_scheduler import schedulers
from .parallel import comm
from .parallel.groups import init_distributed
from .parallel.random import stage_seed
from .process_memory import current_rss_bytes, process_peaks
from .parallel.state import ParallelState, single_process
from .pipeline.schedules import forward_backward_1f1b, forward_backward_no_pipelining
from .schedule import training_plan
from .stats_collector import Fp8StatsCollector


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
    scheduler_samples: int = 0  # how far the lr schedule has advanced: skipped iterations do not advance it


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    skipped: bool
    lr: float = 0.0
    global_batch_size: int = 0
    decoupled_lr: float | None = None


class Trainer:
    def __init__(self, config: Config, pstate: ParallelState | None = None, device=None):
        self.config, self.pstate = config, pstate or single_process()
        self.device = device or default_device()
        self.rss_at_start = current_rss_bytes()  # imports (and data) before any model tensor: the log's baseline
        self.policy = config.precision.policy
        ps = self.pstate
        config.validate_layout(ps.tp_size * ps.pp_size * ps.dp_size)
        set_seed(stage_seed(config.training.seed, self.pstate))  # weights are seeded by name, not by this
        self.model = GPTModel(config, self.pstate, self.device)
        self.params = [p for p in self.model.parameters()]
        par, margin = config.parallel, config.precision.recipe.margin
        self.distributed_optimizer = par.use_distributed_optimizer and self.pstate.dp_size > 1
        self.owners = owners = assign_param_owners(self.params, self.pstate.dp_size)
        self.grads = GradBuffers(self.params, self.policy, margin, self.pstate, owners,
                                 gather=not self.distributed_optimizer, bucket_elems=par.ddp_bucket_size,
                                 overlap=par.overlap_grad_reduce)
        self.build_optimizer()
        self.plan = training_plan(config)  # batch-size schedule, iterations, lr lengths in samples
        self.scheduler, self.decoupled_scheduler = schedulers(config.training, self.plan)
        self.loss_scaler = make_loss_scaler(config.precision)  # None: no loss scaling
        self.progress = Progress()
        self.activations = ActivationMeter()
        self._writer: CheckpointWriter | None = None

    def build_optimizer(self) -> None:
        """A fresh optimizer whose master copies (where the level keeps them) start from the full-precision
        values the weights were last given (initialisation, fine-tuning's load), not from their storage."""
        settings = AdamWSettings.from_config(self.config)
        named = list(self.model.named_parameters())
        self.optimizer = DistributedOptimizer(named, self.policy, settings, self.owners, self.pstate) \
            if self.distributed_optimizer else Fp8AdamW(named, self.policy, settings)

    # ---- one iteration ----------------------------------------------------------------------------
    def loss_tokens(self, micro_batches: list[dict]) -> float:
        """Unmasked tokens in the global batch: this rank's micro-batches summed over the data-parallel ranks
        (TP ranks and pipeline stages hold the same micro-batches, so they agree without communicating)."""
        count = torch.stack([mb["loss_mask"].sum(dtype=torch.float64) for mb in micro_batches]).sum().reshape(1)
        if self.pstate.dp_size > 1:
            comm.all_reduce(count, self.pstate.dp_group, "other")
        return float(count)

    def forward_backward(self, micro_batches: list[dict], forward_only: bool = False,
                         loss_tokens: float | None = None, loss_scale: float = 1.0) -> list[torch.Tensor]:
        """Masked loss sums per micro-batch (last stage); the backward pass (unless ``forward_only``) yields
        the gradient of the masked token mean over the global batch of ``loss_tokens`` unmasked tokens,
        times ``loss_scale`` (FP16 loss scaling; the optimizer divides it out again)."""
        ps = self.pstate
        meter = None if forward_only else self.activations
        scale = 0.0
        if not forward_only:
            tokens = self.loss_tokens(micro_batches) if loss_tokens is None else loss_tokens
            scale = loss_scale * ps.dp_size / max(tokens, 1.0)  # the data-parallel reduction averages: undo its 1/dp
        if ps.pp_size == 1:
            return forward_backward_no_pipelining(self.model, micro_batches, meter, forward_only, scale)
        m = self.config.model
        seq = m.seq_length // (ps.tp_size if self.config.parallel.sequence_parallel else 1)
        shape = (seq, micro_batches[0]["tokens"].shape[0], m.hidden_size)
        return forward_backward_1f1b(self.model, micro_batches, ps, shape, self.policy.compute, self.device,
                                     meter, forward_only, scale)

    def _global_loss(self, sums: list[torch.Tensor], tokens: float) -> float:
        """Masked token mean over micro-batches and data-parallel ranks (NaN where no loss exists: not the
        last stage)."""
        if not sums:
            return float("nan")
        total = torch.stack(sums).sum().reshape(1).double()
        if self.pstate.dp_size > 1:
            comm.all_reduce(total, self.pstate.dp_group, "other")
        return float(total) / max(tokens, 1.0)

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

    def train_step(self, micro_batches: list[dict], lr: float, decoupled_lr: float | None = None) -> StepResult:
        """Forward/backward over the micro-batches, then one optimizer step unless a gradient overflowed.

        Under loss scaling the gradients hold ``scale x`` their values: the norm is divided by it and the
        optimizer multiplies every gradient by ``clip coefficient / scale``; an overflow skips the step and
        lets the scaler back off."""
        self.model.train()
        self.grads.zero(len(micro_batches))
        scale = self.loss_scaler.scale if self.loss_scaler is not None else 1.0
        tokens = self.loss_tokens(micro_batches)
        losses = self.forward_backward(micro_batches, loss_tokens=tokens, loss_scale=scale)
        self.grads.reduce()
        finalize_model_grads(self.params, self.pstate)
        norm_t, bad_t = grad_norm_and_overflow(self.params, counted=self._counted_in_norm,
                                               reduce_sum=self._reduce_norm)
        norm, bad = float(norm_t) / scale, bool(bad_t)
        if self.loss_scaler is not None:
            self.loss_scaler.update(bad)
        if bad:
            self.progress.skipped_iterations += 1
            # an FP16 overflow (inf - inf) is the loss scaler's business, not a NaN iteration
            self.progress.nan_iterations += int(math.isnan(norm) and self.loss_scaler is None)
        else:
            self.optimizer.step(lr, clip_coefficient(norm, self.config.training.clip_grad) / scale, decoupled_lr)
        return StepResult(self._global_loss(losses, tokens), norm, bad, lr)

    def train_iteration(self, dataset) -> StepResult:
        """The next iteration on ``dataset``: its global batch (by consumed samples), learning rate, step
        and progress."""
        p, t, ps = self.progress, self.config.training, self.pstate
        p.iteration += 1
        gbs = self.plan.batch.at(p.consumed_samples)
        mbs = batches.global_batch(dataset, p.consumed_samples, gbs, t.micro_batch_size, ps.dp_rank, ps.dp_size,
                                   self.device)
        lr_samples = p.scheduler_samples + gbs  # the schedule as it stands after this step
        decoupled = self.decoupled_scheduler.lr(lr_samples) if self.decoupled_scheduler is not None else None
        result = self.train_step(mbs, self.scheduler.lr(lr_samples), decoupled)
        p.consumed_samples += gbs
        p.scheduler_samples += 0 if result.skipped else gbs
        result.global_batch_size, result.decoupled_lr = gbs, decoupled
        return result

    @torch.no_grad()
    def evaluate(self, dataset, iters: int) -> float:
        self.model.eval()
        t = self.config.training
        losses, tokens = [], 0.0
        for k in range(iters):
            mbs = batches.global_batch(dataset, k * t.global_batch_size, t.global_batch_size, t.micro_batch_size,
                                       self.pstate.dp_rank, self.pstate.dp_size, self.device)
            losses += self.forward_backward(mbs, forward_only=True)
            tokens += self.loss_tokens(mbs)
        return self._global_loss(losses, tokens)

    # ---- accounting and state ---------------------------------------------------------------------
    def memory(self) -> dict:
        opt = self.optimizer.nbytes()
        return {"weights": weight_bytes(self.params), "grads": self.grads.nbytes(), "master": opt["master"],
                "exp_avg": opt["exp_avg"], "exp_avg_sq": opt["exp_avg_sq"],
                "fp8_weight_cache": fp8_weight_cache_bytes(self.model), "activations_peak": self.activations.peak,
                **({"activations_rebuilt": self.activations.rebuilt_peak}
                   if self.config.training.recompute_granularity else {})}

    def checkpoint_shards(self) -> dict:
        """The files this rank contributes to a checkpoint (see checkpoint.distributed)."""
        ps, t = self.pstate, self.config.training
        shards = {} if t.no_save_rng else {rng_file(ps.rank): rng_state(ps)}
        if ps.dp_rank == 0:
            shards[model_file(ps.tp_rank, ps.pp_rank)] = model_state(self.model, ps, self.config)
        if not t.no_save_optim and (ps.dp_rank == 0 or self.distributed_optimizer):
            dp = ps.dp_rank if self.distributed_optimizer else 0
            shards[optim_file(ps.tp_rank, ps.pp_rank, dp)] = self.optimizer.state_dict()
        return shards

    def save(self, root: str, async_save: bool = False) -> float:
        """Save a checkpoint of the current iteration; returns the seconds training was blocked."""
        if self._writer is None or self._writer.root != root:
            self._writer = CheckpointWriter(root, self.config, self.pstate, async_save)
        progress = dict(vars(self.progress), scheduler=self.scheduler.state_dict())
        if self.loss_scaler is not None:
            progress["loss_scaler"] = self.loss_scaler.state_dict()
        return self._writer.save(self.progress.iteration, self.checkpoint_shards(), progress)

    def poll_saves(self) -> None:
        if self._writer is not None:
            self._writer.poll()

    def finish_saves(self) -> None:
        if self._writer is not None:
            self._writer.wait()

    def load(self, root: str, load_optim: bool = True, load_rng: bool = True) -> bool:
        """Resume from the newest checkpoint under ``root``; False when there is none yet. Without
        ``load_optim`` the optimizer starts afresh from the loaded weights (--no-load-optim)."""
        loaded = load_rank_files(root, self.config, self.pstate, self.distributed_optimizer, load_optim, load_rng)
        if loaded is None:
            return False
        model, optim, metadata = loaded
        load_model_state(self.model, model, root)
        if optim is not None:
            self.optimizer.load_state_dict(optim)
        else:  # the optimizer file is not read: the masters start from the weights just loaded
            for p in self.model.parameters():
                seed_master_from_storage(p)
            self.build_optimizer()
        saved = metadata["progress"]
        progress = {k: v for k, v in saved.items() if k not in ("scheduler", "loss_scaler")}
        progress.setdefault("scheduler_samples", progress["consumed_samples"])  # checkpoints before it existed
        self.progress = Progress(**progress)
        if self.loss_scaler is not None and "loss_scaler" in saved:
            self.loss_scaler.load_state_dict(saved["loss_scaler"])
        return True


def build_data(config: Config, pstate: ParallelState, printer=print):
    """Tokenizer and train/valid/test datasets; sets the padded vocabulary size on the model config."""
    barrier = comm.barrier if pstate.world_size > 1 else None
    data_cfg = resolve_default_corpus(config.data, rank=pstate.rank, barrier=barrier)
    config.data = data_cfg
    tokenizer = build_tokenizer(data_cfg)
    m, t = config.model, config.training
    m.unpadded_vocab_size = tokenizer.vocab_size
    m.vocab_size = padded_vocab_size(tokenizer.vocab_size, m.make_vocab_size_divisible_by, pstate.tp_size)
    printer(f" > padded vocab (size: {tokenizer.vocab_size}) with {m.vocab_size - tokenizer.vocab_size} dummy "
            f"tokens (new size: {m.vocab_size})")
    plan = training_plan(config)
    evals = (plan.train_iters // t.eval_interval + 1) * t.eval_iters * t.global_batch_size
    datasets = build_train_valid_test_datasets(data_cfg, tokenizer, plan.train_samples, evals,
                                               t.eval_iters * t.global_batch_size, rank=pstate.rank,
                                               barrier=barrier, log=printer)
    return tokenizer, datasets


def print_startup(trainer: Trainer, printer) -> None:
    policy, cfg = trainer.policy, trainer.config
    for note in cfg.startup_notes:
        printer(f" > {note}")
    total = sum(p.numel() for p in trainer.params)
    eligible = sum(p.numel() for p in trainer.params if param_info(p).fp8_eligible)
    printer(f" > number of parameters: {total} ({eligible} FP8-eligible in linear layers)")
    printer(f" > precision: --fp8-level {cfg.precision.fp8_level} | compute {policy.compute} | weight "
            f"{policy.weight} | grad {policy.grad} | master {policy.master or 'weight'} ({policy.master_rounding} "
            f"rounding) | exp_avg {policy.exp_avg} | "
            f"exp_avg_sq {policy.exp_avg_sq} | grad reduce {policy.grad_reduce} | recipe "
            f"{cfg.precision.recipe.recipe}/{cfg.precision.recipe.format}")
    dp, sharded = trainer.pstate.dp_size, cfg.parallel.use_distributed_optimizer
    printer(f" > theoretical model-state bytes per FP8-eligible parameter: "
            f"{policy.eligible_bytes_per_param(dp, sharded):g}")
    if cfg.precision.first_last_layers_bf16:
        high = sum(p.numel() for p in trainer.params if param_info(p).high_precision_layer)
        printer(f" > {cfg.precision.first_last_note()}: {high} linear parameters on this rank at "
                f"{policy.other_bytes_per_param(dp, sharded):g} bytes each")


def _log_record(trainer: Trainer, window: list, flops_per_token: float) -> dict:
    """The log line's figures over the iterations since the last line (their batch sizes may differ)."""
    p, last = trainer.progress, window[-1][0]
    seconds = sum(e for _, e in window)
    tokens = sum(r.global_batch_size for r, _ in window) * trainer.config.model.seq_length
    record = {"iteration": p.iteration, "consumed_samples": p.consumed_samples, "lr": last.lr,
              "global_batch_size": last.global_batch_size,
              "lm_loss": sum(r.loss for r, _ in window) / len(window), "grad_norm": last.grad_norm,
              "skipped_iterations": p.skipped_iterations, "nan_iterations": p.nan_iterations,
              "step_time_s": seconds / len(window), "tokens_per_sec": tokens / seconds,
              "tflops": flops_per_token * tokens / seconds / 1e12 / trainer.pstate.world_size,
              "mem": {**trainer.memory(), **process_peaks(trainer.device), "rss_at_start": trainer.rss_at_start},
              "comm": comm.COUNTER.take()}
    if trainer.loss_scaler is not None:
        record["loss_scale"] = trainer.loss_scaler.scale
    if last.decoupled_lr is not None:
        record["decoupled_lr"] = last.decoupled_lr
    return record


def pretrain(config: Config, printer=print) -> dict:
    """Train as the flags say; returns a summary (final losses, iterations) for scripts and tests."""
    start_time = time.time()  # --exit-duration-in-mins counts from here, set-up included (as Megatron)
    pstate = init_distributed(config)
    printer = printer if pstate.is_logging_rank else (lambda *a, **k: None)
    loads, lock = prepare_for_run(config.training.load, config.training.save, pstate, printer)
    try:
        return _pretrain(config, pstate, loads, printer, start_time)
    finally:
        if lock is not None:
            lock.release()


def _pretrain(config: Config, pstate: ParallelState, loads: bool, printer, start_time: float) -> dict:
    t = config.training
    exits = ExitConditions(t, start_time, pstate.world_size, default_device())  # SIGTERM handled from now on
    logger = None
    try:
        _, (train_ds, valid_ds, test_ds) = build_data(config, pstate, printer)
        trainer = Trainer(config, pstate)
        last_saved = None
        if loads and load_checkpoint(trainer, t.load, printer) and not t.finetune:
            last_saved = iteration_dir(t.load, trainer.progress.iteration)
            printer(f" > loaded checkpoint from {t.load} at iteration {trainer.progress.iteration}")
        train_iters = trainer.plan.train_iters
        start_iteration = trainer.progress.iteration
        if start_iteration >= train_iters:
            length = (f"--train-iters {train_iters}" if t.train_samples is None
                      else f"--train-samples {t.train_samples} ({train_iters} iterations)")
            printer(f" > the checkpoint is at iteration {start_iteration}, which already reached {length}: "
                    f"nothing to train (raise {length.split()[0]} to continue)")
        # the gradient norm and the overflow flag are already global; only the loss lives on the last
        # pipeline stage, so the guard shares its flags only when there are several stages
        guard = DivergenceGuard(t.check_for_nan_in_loss_and_grad, t.max_consecutive_skipped_iterations,
                                pstate.is_last_stage, pstate.world_size if pstate.pp_size > 1 else 1,
                                trainer.loss_scaler)
        print_startup(trainer, printer)
        logger = MetricsLogger(train_iters, t.log_json, t.tensorboard_dir, enabled=pstate.is_logging_rank,
                               printer=printer)
        comm.COUNTER.take()  # count from the first iteration on
        summary = {"train_losses": [], "valid_loss": None}
        flops_per_token = model_flops_per_iteration(config.model, 1)
        window, stop = [], None
        fp8_stats = Fp8StatsCollector.for_trainer(trainer, printer)
        while trainer.progress.iteration < train_iters:
            p = trainer.progress
            start = time.perf_counter()
            with fp8_stats.iteration(p.iteration + 1):  # --fp8-stats-interval (nothing at 0)
                result = trainer.train_iteration(train_ds)
            guard.check(p.iteration, result.loss, result.grad_norm, result.skipped, last_saved)
            window.append((result, time.perf_counter() - start))
            summary["train_losses"].append(result.loss)
            if p.iteration % t.log_interval == 0 or p.iteration == train_iters:
                logger.log_iteration({**_log_record(trainer, window, flops_per_token), **fp8_stats.take()})
                window = []
            if valid_ds is not None and t.eval_iters and p.iteration % t.eval_interval == 0:
                summary["valid_loss"] = trainer.evaluate(valid_ds, t.eval_iters)
                logger.log_eval(p.iteration, summary["valid_loss"])
                comm.COUNTER.take()  # the next log line reports training traffic only
            trainer.poll_saves()
            if t.save and t.save_interval and p.iteration % t.save_interval == 0:
                blocked = trainer.save(t.save, t.async_save)
                last_saved = iteration_dir(t.save, p.iteration)
                printer(f" > checkpoint at iteration {p.iteration}: training blocked for {blocked * 1000:.1f} ms"
                        f"{' (writing continues in the background)' if t.async_save else ''}")
            stop = exits.check(p.iteration)
            if stop:
                break
        if stop is None and valid_ds is not None and t.eval_iters and trainer.progress.iteration % t.eval_interval:
            summary["valid_loss"] = trainer.evaluate(valid_ds, t.eval_iters)
            logger.log_eval(trainer.progress.iteration, summary["valid_loss"])
        trained = trainer.progress.iteration > start_iteration  # a finished run is not saved again
        if t.save and trained and not (t.save_interval and trainer.progress.iteration % t.save_interval == 0):
            trainer.save(t.save)
        trainer.finish_saves()
        if stop:
            printer(f" > {stop}")
    finally:
        exits.close()
        if logger is not None:
            logger.close()
    summary.update(iterations=trainer.progress.iteration, skipped=trainer.progress.skipped_iterations,
                   memory=trainer.memory(), stopped=stop)
    return summary
