"""AdamW over FP8/FP16-with-scale master weights and moments, on the fused multi-tensor kernel.

Per parameter the precision policy decides the storage of the master weight (the parameter itself
when its storage is the master, else a separate copy), of exp_avg and of exp_avg_sq. One kernel call
per weight-decay group updates every tensor, requantizes each state with a fresh current scale, and
writes the new model weight where the master is separate (FP8 weights at O3, BF16 with ``--bf16``).
"""

import zlib
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import PrecisionPolicy
from ..fp8 import kernels, stats_points
from ..fp8.formats import is_scaled
from ..fp8.stats import RECORDER
from ..fp8.tensor import Fp8Tensor
from ..layers.weights import master_dtype, param_info


@dataclass
class AdamWSettings:
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    margin: int = 0
    seed: int = 0  # of the stochastic rounding's bits (--main-params-rounding stochastic)

    @classmethod
    def from_config(cls, config) -> "AdamWSettings":
        t = config.training
        return cls(t.adam_beta1, t.adam_beta2, t.adam_eps, t.weight_decay, config.precision.recipe.margin, t.seed)


def _scaled_zeros(shape, dtype, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    sinv = torch.ones((), dtype=torch.float32, device=device) if is_scaled(dtype) else None
    return torch.zeros(shape, dtype=dtype, device=device), sinv


class ParamState:
    """One parameter's optimizer state: separate master (or None), moments, and their scale_invs.

    A separate master is the full-precision value the parameter was given, which the parameter's record
    holds until now (never the parameter's own, coarser storage: issue 18).
    """

    STATE_NAMES = ("master", "master_sinv", "exp_avg", "exp_avg_sinv", "exp_avg_sq", "exp_avg_sq_sinv")

    def __init__(self, name: str, param: nn.Parameter, policy: PrecisionPolicy):
        info = param_info(param)
        eligible, dtype = info.fp8_eligible, master_dtype(policy, info.fp8_eligible)
        self.master, self.master_sinv = None, None
        if dtype is not None:
            initial = info.take_initial_master()
            if initial is None or initial[0].dtype != dtype:
                raise RuntimeError(f"{name}: no full-precision initial value for its master copy (a second "
                                   "optimizer over the same model, or a parameter not made by make_parameter)")
            self.master, self.master_sinv = initial
        self.exp_avg, self.exp_avg_sinv = _scaled_zeros(param.shape, policy.exp_avg if eligible else torch.float32,
                                                        param.device)
        self.exp_avg_sq, self.exp_avg_sq_sinv = _scaled_zeros(
            param.shape, policy.exp_avg_sq if eligible else torch.float32, param.device)
        # plain FP16 storage (--fp16 compute) is no scaled kernel operand: the kernel updates the master
        # and the step copies it into the weight
        self.copy_back = self.master is not None and is_scaled(param.dtype) and info.scale_inv is None
        # the FP16/BF16 master of an FP8 linear (the weight itself at O1/O2) may be stored stochastically
        stored = self.master if self.master is not None else param
        self.stochastic = (policy.master_rounding == "stochastic" and eligible
                           and stored.dtype in (torch.float16, torch.bfloat16))

    def kernel_tensors(self, param: nn.Parameter) -> kernels.AdamWTensors:
        grad = param.main_grad
        grad_data, grad_sinv = (grad.data, grad.scale_inv) if isinstance(grad, Fp8Tensor) else (grad, None)
        weight, weight_sinv = param.detach(), param_info(param).scale_inv
        common = dict(grad=grad_data, grad_sinv=grad_sinv, exp_avg=self.exp_avg, exp_avg_sinv=self.exp_avg_sinv,
                      exp_avg_sq=self.exp_avg_sq, exp_avg_sq_sinv=self.exp_avg_sq_sinv)
        if self.master is None:
            return kernels.AdamWTensors(master=weight, master_sinv=weight_sinv, **common)
        if self.copy_back:
            return kernels.AdamWTensors(master=self.master, master_sinv=self.master_sinv, **common)
        return kernels.AdamWTensors(master=self.master, master_sinv=self.master_sinv, weight=weight,
                                    weight_sinv=weight_sinv, **common)

    def copy_master_to(self, param: nn.Parameter) -> None:
        master = self.master.float() * self.master_sinv if self.master_sinv is not None else self.master
        param.detach().copy_(master)

    def tensors(self) -> dict:
        return {k: getattr(self, k) for k in self.STATE_NAMES if getattr(self, k) is not None}

    def nbytes(self) -> dict:
        def size(t):
            return 0 if t is None else t.numel() * t.element_size()
        return {"master": size(self.master) + size(self.master_sinv),
                "exp_avg": size(self.exp_avg) + size(self.exp_avg_sinv),
                "exp_avg_sq": size(self.exp_avg_sq) + size(self.exp_avg_sq_sinv)}


class Fp8AdamW:
    """AdamW with decoupled weight decay (skipped for parameters marked ``no_weight_decay``); parameters
    marked ``embedding_or_output`` take ``decoupled_lr`` when one is given (--decoupled-lr)."""

    def __init__(self, named_params: list[tuple[str, nn.Parameter]], policy: PrecisionPolicy,
                 settings: AdamWSettings):
        self.named_params, self.settings = named_params, settings
        self.state = {name: ParamState(name, p, policy) for name, p in named_params}
        self.step_count = 0

    def step(self, lr: float, grad_scale: float = 1.0, decoupled_lr: float | None = None) -> None:
        """Apply one update with every gradient multiplied by ``grad_scale`` (clip coefficient / loss scale)."""
        self.step_count += 1
        s = self.settings
        groups: dict[tuple[bool, bool], list] = {}
        for name, p in self.named_params:
            info = param_info(p)
            decoupled = decoupled_lr is not None and info.embedding_or_output
            groups.setdefault((not info.no_weight_decay, decoupled), []).append((name, p))
        for (decays, decoupled), group in groups.items():
            decay = s.weight_decay if decays else 0.0
            hyper = kernels.AdamWHyper(lr=decoupled_lr if decoupled else lr, beta1=s.beta1, beta2=s.beta2,
                                       eps=s.eps, weight_decay=decay, step=self.step_count, grad_scale=grad_scale,
                                       margin=s.margin)
            tensors = [self.state[n].kernel_tensors(p) for n, p in group]
            for (n, _), t in zip(group, tensors):
                if self.state[n].stochastic:  # fresh bits per run seed, step and parameter; resumes repeat them
                    t.master_sr_seed = zlib.crc32(f"{s.seed}:{self.step_count}:{n}".encode())
            if RECORDER.active:  # --fp8-stats-interval: the states this step stores, before it stores them
                stats_points.adamw([(p, t) for (_, p), t in zip(group, tensors)], hyper)
            kernels.adamw_step(tensors, hyper)
            for n, p in group:
                if self.state[n].copy_back:
                    self.state[n].copy_master_to(p)
                torch.autograd.graph.increment_version(p)  # the C++ kernel wrote through a raw pointer

    def nbytes(self) -> dict:
        total = {"master": 0, "exp_avg": 0, "exp_avg_sq": 0}
        for st in self.state.values():
            for k, v in st.nbytes().items():
                total[k] += v
        return total

    def state_dict(self) -> dict:
        return {"step": self.step_count, "settings": vars(self.settings).copy(),
                "params": {n: {k: v.clone() for k, v in st.tensors().items()} for n, st in self.state.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.state) - set(state["params"])
        if missing:
            raise ValueError(f"optimizer state has no entry for parameter(s) {sorted(missing)[:3]}")
        for name, st in self.state.items():
            saved = state["params"][name]
            for key, tensor in st.tensors().items():
                if key not in saved or saved[key].dtype != tensor.dtype or saved[key].shape != tensor.shape:
                    got = (saved[key].dtype, tuple(saved[key].shape)) if key in saved else "nothing"
                    raise ValueError(f"optimizer state {name}.{key}: expected {tensor.dtype} "
                                     f"{tuple(tensor.shape)}, checkpoint has {got}")
                tensor.copy_(saved[key])
        self.step_count = int(state["step"])
