"""What training reports: Megatron-style log lines, JSONL metrics, TensorBoard, memory and FLOP accounting.

Memory is read from the real tensors (parameters, gradient buffers, optimizer states) and activations
from the tensors autograd saves for backward, so the figures hold on CPU and GPU alike.
"""

import json
import math
import os
import time
from contextlib import contextmanager

import torch

from .config import ModelConfig
from .fp8.gemm import FALLBACKS as GEMM_FALLBACKS
from .layers.weights import param_info
from .stats_collector import log_line_part, tensorboard_scalars

MB = 1024 * 1024


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def weight_bytes(params) -> int:
    """Parameter storage plus the scale each FP16/FP8 weight carries."""
    return sum(_nbytes(p) + (4 if param_info(p).scale_inv is not None else 0) for p in params)


def fp8_weight_cache_bytes(model: torch.nn.Module) -> int:
    """The FP8 weight operands the FP8 linears cache between optimizer steps (fp8/linear.Fp8LinearState): the
    storages they hold apart from the parameters themselves (an O3 weight is its own row-major operand)."""
    own = set()
    for p in model.parameters():
        own.add(p.untyped_storage().data_ptr())
        if param_info(p).scale_inv is not None:
            own.add(param_info(p).scale_inv.untyped_storage().data_ptr())
    seen: dict[int, int] = {}
    for module in model.modules():
        state = getattr(module, "fp8_state", None)
        for operand in (getattr(state, "_weight", None) or ()):
            for t in (getattr(operand, k, None) for k in ("data", "scale_inv", "amax")):
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in own:
                    seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


class ActivationMeter:
    """Bytes of tensors saved for backward during a forward pass (each storage counted once).

    ``peak``: the most one micro-batch's forward keeps until its backward (with recomputation, what the
    recomputed regions keep: their inputs). ``rebuilt_peak``: the most one recomputed region rebuilds
    during backward (model/recompute.py reports it to the meter that measured its forward)."""

    _measuring: list = []  # meters whose forward is running (innermost last)

    def __init__(self):
        self.peak = 0
        self.rebuilt_peak = 0

    @staticmethod
    def current() -> "ActivationMeter | None":
        return ActivationMeter._measuring[-1] if ActivationMeter._measuring else None

    @contextmanager
    def _saved(self):
        seen: dict[int, int] = {}

        def pack(t):
            if t.device.type != "meta":
                storage = t.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield seen

    @contextmanager
    def measure(self):
        ActivationMeter._measuring.append(self)
        try:
            with self._saved() as seen:
                yield
        finally:
            ActivationMeter._measuring.pop()
        self.peak = max(self.peak, sum(seen.values()))

    @contextmanager
    def measure_rebuild(self):
        """Around a recomputed forward (during backward)."""
        with self._saved() as seen:
            yield
        self.rebuilt_peak = max(self.rebuilt_peak, sum(seen.values()))


def model_flops_per_iteration(m: ModelConfig, tokens: int) -> float:
    """Forward + backward FLOPs of the GEMMs and attention for ``tokens`` tokens (3x the forward)."""
    h, f, s = m.hidden_size, m.ffn_hidden_size, m.seq_length
    attn = m.num_attention_heads * m.head_dim  # = h unless --kv-channels; GQA shrinks only the K/V rows
    per_layer = 2 * (h * (m.qkv_size + attn) + (3 if m.swiglu else 2) * h * f) + 4 * s * attn
    forward = tokens * (m.num_layers * per_layer + 2 * h * m.vocab_size)
    return 3.0 * forward


class MetricsLogger:
    """Prints the log line, appends JSON records and writes TensorBoard scalars (on the logging rank)."""

    def __init__(self, train_iters: int, log_json: str | None = None, tensorboard_dir: str | None = None,
                 enabled: bool = True, printer=print):
        self.train_iters, self.enabled, self.print = train_iters, enabled, printer
        self.json_file = None
        self.writer = None
        if not enabled:
            return
        if log_json:
            os.makedirs(os.path.dirname(os.path.abspath(log_json)), exist_ok=True)
            self.json_file = open(log_json, "a", encoding="utf-8")
        if tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # Megatron warns and trains on
                printer(f"WARNING: --tensorboard-dir {tensorboard_dir}: the tensorboard package is not installed "
                        "(pip install 'megatron_fp8[tb]'); no TensorBoard logs will be written")
            else:
                self.writer = SummaryWriter(tensorboard_dir)

    def log_iteration(self, rec: dict) -> None:
        if not self.enabled:
            return
        fallbacks = GEMM_FALLBACKS.snapshot()  # FP8 GEMMs run as dequantize+matmul (per shape, cumulative)
        if fallbacks:
            rec = dict(rec, gemm_fallbacks=fallbacks)
        mem = " ".join(f"{k}={v / MB:.2f}" for k, v in rec["mem"].items())
        comm = " ".join(f"{k}={v / MB:.2f}" for k, v in rec.get("comm", {}).items()) or "none"
        self.print(
            f" [{time.strftime('%Y-%m-%d %H:%M:%S')}] iteration {rec['iteration']:8d}/{self.train_iters:8d} |"
            f" consumed samples: {rec['consumed_samples']:12d} |"
            f" elapsed time per iteration (ms): {rec['step_time_s'] * 1000:.1f} |"
            f" throughput per GPU (TFLOP/s/GPU): {rec['tflops']:.4f} |"
            f" tokens per second: {rec['tokens_per_sec']:.1f} |"
            f" learning rate: {rec['lr']:.6E} |"
            + (f" decoupled learning rate: {rec['decoupled_lr']:.6E} |" if "decoupled_lr" in rec else "")
            + f" global batch size: {rec['global_batch_size']:5d} | lm loss: {rec['lm_loss']:.6E} |"
            + (f" loss scale: {rec['loss_scale']:.1f} |" if "loss_scale" in rec else "")
            + f" grad norm: {rec['grad_norm']:.3f} |"
            f" number of skipped iterations: {rec['skipped_iterations']:3d} |"
            f" number of nan iterations: {rec['nan_iterations']:3d} |"
            f" mem (MB): {mem} | comm (MB): {comm} |"
            + (f" fp8 gemm fallbacks: {sum(fallbacks.values())} |" if fallbacks else "")
            + (log_line_part(rec["fp8_stats"]) if rec.get("fp8_stats") else ""))
        if self.json_file:
            self.json_file.write(json.dumps(rec) + "\n")
            self.json_file.flush()
        if self.writer:
            step = rec["iteration"]
            for key in ("lm_loss", "lr", "grad_norm", "tokens_per_sec", "step_time_s", "skipped_iterations",
                        "global_batch_size", "loss_scale"):
                if key in rec:
                    self.writer.add_scalar(key.replace("_", "-"), rec[key], step)
            for key, value in rec["mem"].items():
                self.writer.add_scalar(f"mem/{key}", value, step)
            if fallbacks:
                self.writer.add_scalar("fp8-gemm-fallbacks", sum(fallbacks.values()), step)
            for tag, value in tensorboard_scalars(rec.get("fp8_stats") or {}).items():
                self.writer.add_scalar(tag, value, rec.get("fp8_stats_iteration", step))

    def log_eval(self, iteration: int, loss: float, split: str = "validation") -> None:
        if not self.enabled:
            return
        ppl = math.exp(min(20.0, loss))
        line = f" {split} loss at iteration {iteration} | lm loss value: {loss:.6E} | lm loss PPL: {ppl:.6E} | "
        bar = "-" * (len(line) + 1)
        self.print(f"{bar}\n{line}\n{bar}")
        if self.json_file:
            self.json_file.write(json.dumps({"iteration": iteration, f"{split}_lm_loss": loss}) + "\n")
            self.json_file.flush()
        if self.writer:
            self.writer.add_scalar(f"{split}-lm-loss", loss, iteration)

    def close(self) -> None:
        if self.json_file:
            self.json_file.close()
        if self.writer:
            self.writer.close()
