"""Throughput of the csrc kernels against the pure-torch reference and a plain copy.

    python bench/kernels.py [--numel 16777216] [--repeats 7] [--device cpu]

For each kernel: median wall time of the compiled path (``megatron_fp8.fp8.kernels``), the reference
(``megatron_fp8.fp8.reference``) and ``clone()`` of the kernel's main input (the copy baseline), after
warm-up runs. AdamW is also timed per parameter against ``torch.optim.AdamW(foreach=True)`` on FP32
states of the same size. The compiled path and its baselines run in interleaved rounds and ratios are
medians of per-round ratios, so load from other processes on a shared machine hits them alike. Prints a
table and writes ``bench/results/kernels.json``.

Byte model (stated once, used for every GB/s figure):
- ``moved``: the bytes the kernel's algorithm reads and writes, every pass counted. Kernels that store
  with a fresh scale read their inputs twice (pass 1 takes the amax, pass 2 recomputes and writes), so
  their inputs count twice. This is the figure compared with copy bandwidth.
- ``min``: each input read once plus each output written once (what a one-pass kernel would move).
- copy: ``clone()`` reads and writes the input once: 2 x input bytes; ``copy_`` into a preallocated
  tensor is reported too.

On CPU, glibc returns large freed blocks to the OS, so every fresh output (the kernels', clone()'s) would
first pay for page faults; that is allocator cost, not kernel or copy bandwidth. The script therefore
re-executes itself with ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` set so freed memory is
reused, as torch's caching allocator does on GPUs (``--fresh-pages`` keeps glibc's default).
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch


from megatron_fp8.fp8 import kernels, reference
from megatron_fp8.fp8.reference import AdamWHyper, AdamWTensors

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# perf_counter (wall) by default; `--clock thread` switches to the calling thread's CPU time, which other
# processes on a shared machine disturb far less (valid with one thread: all work runs on the caller).
CLOCK = time.perf_counter


def time_once(fn, device, setup=None):
    if setup is not None:
        setup()
    sync(device)
    start = CLOCK()
    fn()
    sync(device)
    return CLOCK() - start


def interleaved(fns: dict, device, rounds: int, warmup: int = 2, setups: dict | None = None) -> dict:
    """Median seconds of each function, timed in interleaved rounds (one run of each per round), so
    that load from other processes hits every contender alike. Also the median per-round time ratio of
    every function to the first one (the robust figure on a shared machine)."""
    setups = setups or {}
    times = {name: [] for name in fns}
    for i in range(warmup + rounds):
        for name, fn in fns.items():
            t = time_once(fn, device, setups.get(name))
            if i >= warmup:
                times[name].append(t)
    first = next(iter(fns))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    ratio = {name: statistics.median(a / b for a, b in zip(ts, times[first])) for name, ts in times.items()}
    return med, ratio


def nbytes(dtype):
    return torch.empty((), dtype=dtype).element_size()


def quantize(values, dtype):
    return values.clamp(-448, 448).to(dtype) if dtype in (E4M3, E5M2) else values.to(dtype)


def case_scale_cast(n, device):
    x = torch.randn(n, device=device)
    scale = torch.tensor(4.0, device=device)
    return {"name": "scale_cast_amax f32->e4m3", "copy_of": x,
            "ours": lambda: kernels.scale_cast_amax(x, scale, E4M3),
            "ref": lambda: reference.scale_cast_amax(x, scale, E4M3),
            "moved": n * (4 + 1), "min": n * (4 + 1)}


def case_scale_cast_bf16(n, device):
    x = torch.randn(n, device=device).to(torch.bfloat16)
    scale = torch.tensor(4.0, device=device)
    return {"name": "scale_cast_amax bf16->e5m2", "copy_of": x,
            "ours": lambda: kernels.scale_cast_amax(x, scale, E5M2),
            "ref": lambda: reference.scale_cast_amax(x, scale, E5M2),
            "moved": n * (2 + 1), "min": n * (2 + 1)}


def case_cast_transpose(n, device):
    side = int(n ** 0.5)
    x = torch.randn(side, n // side, device=device)
    scale = torch.tensor(4.0, device=device)
    m = x.numel()
    return {"name": "cast_transpose f32->e4m3", "copy_of": x,
            "ours": lambda: kernels.cast_transpose_amax(x, scale, E4M3),
            "ref": lambda: reference.cast_transpose_amax(x, scale, E4M3),
            "moved": m * (4 + 1 + 1), "min": m * (4 + 1 + 1)}


def case_accumulate(n, device):
    acc0 = torch.randn(n, device=device).to(E4M3)
    grad = torch.randn(n, device=device).to(torch.bfloat16)
    acc, sinv = acc0.clone(), torch.tensor(1.0, device=device)

    def reset():
        acc.copy_(acc0)
        sinv.fill_(1.0)
    return {"name": "fp8_accumulate e4m3+=bf16", "copy_of": grad, "setup": reset,
            "ours": lambda: kernels.fp8_accumulate(acc, sinv, grad),
            "ref": lambda: reference.fp8_accumulate(acc, sinv, grad),
            "moved": n * (2 * (1 + 2) + 1), "min": n * (1 + 2 + 1)}


def case_sum_shards(n, device, shards=4):
    per = n // shards
    data = torch.randn(shards, per, device=device).to(E4M3)
    sinv = torch.full((shards,), 0.5, device=device)
    return {"name": f"sum_shards {shards}x e4m3->e4m3", "copy_of": data,
            "ours": lambda: kernels.sum_shards(data, sinv, E4M3, 1.0 / shards),
            "ref": lambda: reference.sum_shards(data, sinv, E4M3, 1.0 / shards),
            "moved": per * (2 * shards + 1), "min": per * (shards + 1)}


ADAMW_COMBOS = {
    # name: (master, grad, exp_avg, exp_avg_sq, weight)
    "O2 (fp16/e4m3/e4m3/fp16 +e4m3 w)": (torch.float16, E4M3, E4M3, torch.float16, E4M3),
    "all-fp32": (torch.float32, torch.float32, torch.float32, torch.float32, None),
}


def adamw_state(n, device, combo):
    master, grad, m, v, w = combo
    one = lambda: torch.ones((), device=device)  # noqa: E731
    t = AdamWTensors(master=quantize(torch.randn(n, device=device), master),
                     grad=quantize(torch.randn(n, device=device) * 1e-2, grad),
                     exp_avg=quantize(torch.randn(n, device=device) * 1e-3, m),
                     exp_avg_sq=quantize(torch.rand(n, device=device) * 1e-5, v),
                     master_sinv=one(), grad_sinv=one(), exp_avg_sinv=one(), exp_avg_sq_sinv=one())
    if w is not None:
        t.weight, t.weight_sinv = torch.zeros(n, device=device).to(w), one()
    return t


def adamw_bytes(n, combo):
    master, grad, m, v, w = combo
    reads = nbytes(master) + nbytes(grad) + nbytes(m) + nbytes(v)
    writes = nbytes(master) + nbytes(m) + nbytes(v) + (nbytes(w) if w is not None else 0)
    scaled = any(d in (torch.float16, E4M3, E5M2) for d in (master, m, v, w) if d is not None)
    return n * ((2 if scaled else 1) * reads + writes), n * (reads + writes)


def case_adamw(n, device, label, combo):
    t = adamw_state(n, device, combo)
    hyper = AdamWHyper(lr=1e-4, weight_decay=0.1, step=10)
    moved, minimum = adamw_bytes(n, combo)
    return {"name": f"adamw {label}", "copy_of": t.master.float(),
            "ours": lambda: kernels.adamw_step([t], hyper),
            "ref": lambda: reference.adamw_step([t], hyper), "moved": moved, "min": minimum,
            "params": n}


def torch_adamw_step(n, device):
    """One step of torch.optim.AdamW(foreach=True) on FP32 parameter, grad and states of n elements."""
    p = torch.nn.Parameter(torch.randn(n, device=device))
    p.grad = torch.randn(n, device=device) * 1e-2
    opt = torch.optim.AdamW([p], lr=1e-4, weight_decay=0.1, foreach=True)
    opt.step()  # allocate the states outside the timing
    return opt.step


KEEP_FREED = {"MALLOC_MMAP_THRESHOLD_": str(1 << 40), "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


def main(argv=None):
    if "--fresh-pages" not in sys.argv and any(os.environ.get(k) != v for k, v in KEEP_FREED.items()):
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, **KEEP_FREED})
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--numel", type=int, default=16 * 1024 * 1024)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--ref-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fresh-pages", action="store_true",
                        help="keep glibc's default of returning freed blocks (outputs then pay page faults)")
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                        help="thread: CPU time of the calling thread (implies --threads 1, CPU only)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "kernels.json"))
    args = parser.parse_args(argv)
    global CLOCK
    if args.clock == "thread":
        if args.device != "cpu":
            parser.error("--clock thread measures CPU work on the calling thread: use --device cpu")
        CLOCK, args.threads = time.thread_time, 1
        if args.out.endswith("kernels.json"):
            args.out = args.out[:-len(".json")] + "_thread_clock.json"
    torch.set_num_threads(args.threads)
    device, n = torch.device(args.device), args.numel
    print(f"backend {kernels.BACKEND} ({kernels.LOCATION}); device {device}; {n} elements; "
          f"{torch.get_num_threads()} threads; {args.clock} clock; median of {args.repeats} rounds; "
          f"load {os.getloadavg()[0]:.1f}")

    cases = [case_scale_cast(n, device), case_scale_cast_bf16(n, device), case_cast_transpose(n, device),
             case_accumulate(n, device), case_sum_shards(n, device)]
    cases += [case_adamw(n, device, label, combo) for label, combo in ADAMW_COMBOS.items()]

    rows = []
    header = (f"{'kernel':<36} {'ours ms':>8} {'ref ms':>8} {'GB/s':>7} {'GB/s min':>8} {'clone GB/s':>10} "
              f"{'copy_ GB/s':>10} {'/clone':>6} {'/copy_':>6} {'vs ref':>7}")
    print(header)
    print("-" * len(header))
    for case in cases:
        src = case["copy_of"]
        dst = torch.empty_like(src)
        fns = {"ours": case["ours"], "clone": src.clone, "copy_": lambda: dst.copy_(src)}
        if "params" in case:
            fns["torch_adamw"] = torch_adamw_step(case["params"], device)
        med, ratio = interleaved(fns, device, args.repeats, setups={"ours": case.get("setup")})
        ref_t, _ = interleaved({"ref": case["ref"]}, device, args.ref_repeats, warmup=1,
                               setups={"ref": case.get("setup")})
        ours_t, copy_bytes = med["ours"], 2 * src.numel() * src.element_size()
        gbs, gbs_min = case["moved"] / ours_t / 1e9, case["min"] / ours_t / 1e9
        clone_gbs, copy_gbs = copy_bytes / med["clone"] / 1e9, copy_bytes / med["copy_"] / 1e9
        # Bandwidth ratio = (moved / t_ours) / (copy bytes / t_copy), from the per-round time ratios.
        vs_clone = case["moved"] / copy_bytes * ratio["clone"]
        vs_copy = case["moved"] / copy_bytes * ratio["copy_"]
        row = {"kernel": case["name"], "ours_s": ours_t, "reference_s": ref_t["ref"], "clone_s": med["clone"],
               "copy_into_s": med["copy_"], "gbps_moved": gbs, "gbps_min": gbs_min, "clone_gbps": clone_gbs,
               "copy_into_gbps": copy_gbs, "bytes_moved": case["moved"], "bytes_min": case["min"],
               "ratio_vs_clone_bw": vs_clone, "ratio_vs_copy_into_bw": vs_copy,
               "speedup_vs_reference": ref_t["ref"] / ours_t}
        if "params" in case:
            row["ns_per_param"] = ours_t / case["params"] * 1e9
            row["torch_adamw_fp32_foreach_s"] = med["torch_adamw"]
            row["torch_adamw_fp32_foreach_ns_per_param"] = med["torch_adamw"] / case["params"] * 1e9
            row["speedup_vs_torch_adamw"] = ratio["torch_adamw"]
        rows.append(row)
        del dst, fns
        print(f"{case['name']:<36} {ours_t * 1e3:8.2f} {ref_t['ref'] * 1e3:8.1f} {gbs:7.2f} {gbs_min:8.2f} "
              f"{clone_gbs:10.2f} {copy_gbs:10.2f} {vs_clone:6.2f} {vs_copy:6.2f} "
              f"{ref_t['ref'] / ours_t:6.1f}x")
    print()
    for row in rows:
        if "ns_per_param" in row:
            print(f"{row['kernel']:<36} {row['ns_per_param']:.3f} ns/param; torch AdamW(foreach) FP32 "
                  f"{row['torch_adamw_fp32_foreach_ns_per_param']:.3f} ns/param: "
                  f"{row['speedup_vs_torch_adamw']:.2f}x faster")

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    meta = {"backend": kernels.BACKEND, "location": kernels.LOCATION, "device": str(device), "numel": n,
            "threads": torch.get_num_threads(), "repeats": args.repeats, "torch": torch.__version__,
            "load_average": os.getloadavg(), "clock": args.clock, "reuse_freed_memory": not args.fresh_pages,
            "timing": "median over interleaved rounds (ours, clone, copy_, [torch AdamW]); ratios are medians "
                      "of per-round time ratios",
            "byte_model": "moved = every pass's reads and writes (two-pass kernels read inputs twice); "
                          "min = inputs read once + outputs written once; copy = 2 x input bytes "
                          "(clone: fresh allocation; copy_into: preallocated destination)"}
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "results": rows}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
