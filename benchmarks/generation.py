"""Generation against the reference library on the same GPT-2-shaped checkpoint, in one process.

    python -m benchmarks.generation                      # the committed CPU run (124M GPT-2 shapes)
    python -m benchmarks.generation --quick --no-reference   # the smoke test: 2 layers, d=64

The checkpoint is `benchmarks.pretrained_load.make_checkpoint`'s random GPT-2 (float32 safetensors
under GPT-2's own names), read by both sides. The reference (transformers `GPT2LMHeadModel`,
sdpa attention, `torch.no_grad()`) runs in a subprocess of its own venv (`--reference-python`,
default /work/refenv/bin/python; this project never imports torch) driven over a pipe, so the two
are timed ALTERNATING in each round: ours, then the reference, on the same prompts.

Per case (batch x prompt -> new tokens) and weight dtype (float32, bfloat16, int8):
- total: greedy generation of exactly N new tokens (no EOS on either side), median of rounds;
  tokens/s = B * N / total, and ours / reference;
- prefill: the prompt's pass that fills the cache and gives the first token's logits (ours:
  `Prepared.prefill`; reference: `model(ids, use_cache=True, logits_to_keep=1)`); beside it one
  plain forward of the same tokens (all logits, no cache), ours;
- decode step: (total - prefill) / (N - 1), per generated token after the first;
- first call: the first generate call of this process (trace + compile + run for ours);
- bound: at batch 1 a step must read every weight once: weight bytes / read bandwidth, both measured
  in this run (the bandwidth of a jitted sum over a 512 MiB float32 array);
- agreement: per row, the fraction of new tokens equal to the reference's and the first index
  where they differ (-1: none). bfloat16 rows compare with the reference in bfloat16; int8 rows
  with the reference in float32 (torch has no int8 path for GPT-2's Conv1D layers).
`--speculative K` times speculative greedy decoding (K drafts per round) against plain greedy with a
draft of the target's first two layers (agrees often) and a random two-layer one (rarely agrees).
`--first-call` also times a fresh process's first generate call with the persistent compilation
cache off, cold (empty cache directory) and warm (the same directory again).

Results: benchmarks/results/generation_<backend>.json, written atomically with the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common
from benchmarks.pretrained_load import (GPT2_SMALL, QUICK_SHAPE, REFERENCE_PYTHON, ROOT, Reference, _emit, _parse,
                                        _worker_env, make_checkpoint)

FULL_CASES = "1x128x64,8x128x64,1x512x32,1x512x64"
QUICK_CASES = "1x16x8,2x16x8"
DTYPES = ("float32", "bfloat16", "int8")


# --------------------------------------------------------------------------------------- reference

def worker_reference(directory: str, threads: int) -> None:
    """transformers' GPT-2, driven by JSON commands on stdin (one per line), answers on stdout."""
    import torch
    import transformers

    torch.set_num_threads(threads)
    models = {}

    def model_for(dtype: str):
        if dtype not in models:
            m = transformers.GPT2LMHeadModel.from_pretrained(directory, attn_implementation="sdpa",
                                                             dtype=getattr(torch, dtype))
            m.eval()
            m.generation_config.eos_token_id = None  # exactly N new tokens, as ours
            m.generation_config.pad_token_id = 0
            models[dtype] = m
        return models[dtype]

    _emit({"ready": True, "torch": torch.__version__, "transformers": transformers.__version__,
           "torch_num_threads": torch.get_num_threads()})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        model = model_for(cmd["dtype"])
        ids = torch.from_numpy(np.load(cmd["ids"]).astype(np.int64))
        times, out = [], None
        with torch.no_grad():
            for _ in range(cmd.get("repeats", 1)):
                t = time.perf_counter()
                if cmd["op"] == "generate":
                    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=cmd["n"],
                                         do_sample=False, num_beams=1)
                else:  # "prefill"
                    model(input_ids=ids, use_cache=True, logits_to_keep=1)
                times.append(time.perf_counter() - t)
        result = {"times_s": times}
        if out is not None:
            result["tokens"] = out[:, ids.shape[1]:].tolist()
        _emit(result)


# --------------------------------------------------------------------------------------- ours

class Ours:
    """Our model in one dtype: generate, prefill and a plain forward, each jitted once per shape."""

    def __init__(self, directory: str, dtype: str):
        import jax
        import jax.numpy as jnp

        import transformer_jax as tj
        from transformer_jax import decode, quantization

        self.jax, self.jnp, self.tj, self.decode = jax, jnp, tj, decode
        compute = "bfloat16" if dtype == "bfloat16" else "float32"
        self.model, variables = tj.from_pretrained(directory, dtype=compute, param_dtype=compute)
        self.config = decode.GenerationConfig(eos_ids=(), pad_id=0)  # exactly N new tokens
        if dtype == "int8":
            self.q = quantization.quantize(variables)
            self.variables = None
            self.weight_bytes = quantization.tree_bytes(self.q.variables)
            self._generate = lambda ids, n: quantization.generate(self.model, self.q, ids, max_new_tokens=n,
                                                                  generation_config=self.config)
            self._vars = lambda: quantization.dequantize(self.q)
        else:
            self.variables = variables
            self.weight_bytes = int(sum(x.nbytes for x in jax.tree_util.tree_leaves(variables)))
            self._generate = lambda ids, n: tj.generate(self.model, self.variables, ids, max_new_tokens=n,
                                                        generation_config=self.config)
            self._vars = lambda: self.variables
        self._prefill = jax.jit(self._prefill_fn)
        self._forward = jax.jit(lambda v, ids: self.model.apply(v, ids))

    def _prefill_fn(self, variables, ids, n):
        prepared = self.decode.adapters._adapter(self.model).prepare(
            self.model, variables, ids, None, self.config,
            self.decode.cache_bucket(ids.shape[1] + n - 1, self.model.cfg.max_len))
        lengths = self.jnp.full((ids.shape[0],), ids.shape[1], self.jnp.int32)
        return prepared.prefill(prepared.cache, ids, lengths)[0]

    def generate(self, ids, n):
        return np.asarray(self._generate(self.jnp.asarray(ids), n))[:, ids.shape[1]:]

    def prefill(self, ids, n):
        return self.jax.block_until_ready(self._prefill(self._vars(), self.jnp.asarray(ids), n))

    def forward(self, ids):
        return self.jax.block_until_ready(self._forward(self._vars(), self.jnp.asarray(ids)))


def _prefill_static(ours: Ours):
    import jax
    ours._prefill = jax.jit(ours._prefill_fn, static_argnums=2)


def read_bandwidth(repeats: int = 5) -> float:
    """Bytes per second of a jitted sum over a 512 MiB float32 array (one streaming read)."""
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(np.random.default_rng(0).standard_normal(128 * 2**20, dtype=np.float32))
    f = jax.jit(jnp.sum)
    jax.block_until_ready(f(x))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(x))
        times.append(time.perf_counter() - t)
    return x.nbytes / statistics.median(times)


def agreement(ours: np.ndarray, theirs: np.ndarray) -> list[dict]:
    rows = []
    for a, b in zip(ours, theirs):
        diff = np.flatnonzero(np.asarray(a) != np.asarray(b))
        rows.append({"equal_fraction": float(np.mean(np.asarray(a) == np.asarray(b))),
                     "first_difference": int(diff[0]) if diff.size else -1})
    return rows


def worker_first_call(directory: str, cache_dir: str, b: int, p: int, n: int) -> None:
    """A fresh process: load, then the first generate call, with the persistent compilation cache at
    cache_dir ('' = off)."""
    import transformer_jax as tj

    if cache_dir:
        tj.enable_compilation_cache(cache_dir)
    model, variables = tj.from_pretrained(directory)
    ids = np.random.default_rng(1).integers(0, model.cfg.vocab_size - 1, (b, p)).astype(np.int32)
    t = time.perf_counter()
    np.asarray(tj.generate(model, variables, ids, max_new_tokens=n,
                           generation_config=tj.decode.GenerationConfig(eos_ids=(), pad_id=0)))
    _emit({"first_call_s": time.perf_counter() - t})


def first_call_rows(directory: str, b: int, p: int, n: int) -> dict:
    def run(cache_dir: str) -> float:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.generation", "--worker", "first_call", directory,
                               cache_dir, str(b), str(p), str(n)], cwd=ROOT, env=_worker_env(),
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode:
            raise RuntimeError(proc.stderr[-2000:])
        return _parse(proc.stdout)["first_call_s"]

    with tempfile.TemporaryDirectory() as cache:
        return {"case": f"{b}x{p}x{n}", "no_cache_s": run(""), "cold_cache_s": run(cache), "warm_cache_s": run(cache)}


def truncated_draft(model, variables, layers: int, seed: int | None = None):
    """A draft of the target's first `layers` decoder layers (its embeddings and final norm too):
    with GPT-2's scaled residual branches it agrees with the target often. With `seed`, the same
    shape with fresh random weights instead (it rarely agrees)."""
    import jax

    cfg = model.cfg.replace(num_decoder_layers=layers)
    draft = type(model)(cfg)
    if seed is not None:
        return draft, draft.init(jax.random.key(seed), np.zeros((1, 4), np.int32))
    params = dict(variables["params"])
    decoder = {k: v for k, v in params["decoder"].items()
               if not k.startswith("layer_") or int(k.split("_")[1]) < layers}
    return draft, {"params": {**params, "decoder": decoder}}


def speculative_rows(directory: str, case: tuple, k: int, rounds: int) -> list[dict]:
    """Plain greedy against speculative greedy with two drafts (float32, ours only)."""
    import jax.numpy as jnp

    import transformer_jax as tj
    from transformer_jax.decode.speculative import speculative_generate

    b, p, n = case
    model, variables = tj.from_pretrained(directory)
    config = tj.decode.GenerationConfig(eos_ids=(), pad_id=0)
    ids = jnp.asarray(np.random.default_rng(7).integers(0, model.cfg.vocab_size - 1, (b, p)).astype(np.int32))
    plain = lambda: np.asarray(tj.generate(model, variables, ids, max_new_tokens=n, generation_config=config))
    want = plain()
    base = _median([_timed(plain) for _ in range(rounds)])
    rows = []
    for name, seed in (("truncated 2 layers (agrees often)", None), ("random 2 layers (rarely agrees)", 1)):
        draft, dv = truncated_draft(model, variables, 2, seed)
        run = lambda: speculative_generate(model, variables, draft, dv, ids, max_new_tokens=n, num_draft_tokens=k,
                                           generation_config=config, return_stats=True)
        out, stats = run()
        times = [_timed(lambda: np.asarray(run()[0])) for _ in range(rounds)]
        rows.append({"draft": name, "case": "x".join(map(str, case)), "num_draft_tokens": k,
                     "equal_to_greedy": bool(np.array_equal(np.asarray(out), want)),
                     "target_passes": int(stats.rounds), "accepted_per_row": np.asarray(stats.accepted).tolist(),
                     "greedy_s": base, "speculative_s": _median(times), "speedup": base / _median(times)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# --------------------------------------------------------------------------------------- main

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.generation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a 2-layer d=64 GPT-2 and tiny cases (the smoke test)")
    p.add_argument("--cases", help=f"comma-separated BATCHxPROMPTxNEW (default {FULL_CASES})")
    p.add_argument("--dtypes", default=",".join(DTYPES), help="weight dtypes among float32,bfloat16,int8")
    p.add_argument("--other-cases", default="1x128x64",
                   help="the cases of the dtypes other than float32 (default 1x128x64; 'same': all --cases)")
    p.add_argument("--rounds", type=int, default=3, help="alternating timed rounds per case (median)")
    p.add_argument("--checkpoint-dir", help="where to write (or reuse) the checkpoint; default a temporary one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--reference-python", default=REFERENCE_PYTHON)
    p.add_argument("--first-call", action="store_true",
                   help="also time a fresh process's first call without, cold and warm compilation cache")
    p.add_argument("--speculative", type=int, default=0, metavar="K",
                   help="also time speculative greedy decoding with K drafts per round (two drafts) on the first case")
    p.add_argument("--out", help="result JSON (default benchmarks/results/generation_<backend>.json)")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.shape = dict(QUICK_SHAPE if args.quick else GPT2_SMALL)
    text = args.cases or (QUICK_CASES if args.quick else FULL_CASES)
    try:
        args.cases = [tuple(int(x) for x in c.lower().split("x")) for c in text.split(",") if c.strip()]
    except ValueError:
        p.error(f"--cases: expected BATCHxPROMPTxNEW,...; got {text!r}")
    if any(len(c) != 3 or min(c) < 1 or c[1] + c[2] > args.shape["n_positions"] for c in args.cases):
        p.error(f"--cases: each BATCHxPROMPTxNEW positive with PROMPT + NEW <= {args.shape['n_positions']}")
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    args.other_cases = args.cases if args.other_cases == "same" or args.quick else [
        tuple(int(x) for x in c.lower().split("x")) for c in args.other_cases.split(",") if c.strip()]
    if not set(args.dtypes) <= set(DTYPES) or args.rounds < 1:
        p.error(f"--dtypes must be among {', '.join(DTYPES)}; --rounds >= 1")
    return args


def _median(xs):
    return statistics.median(xs) if xs else None


def run_case(ours: Ours, ref: Reference | None, dtype: str, case: tuple, rounds: int, bandwidth: float,
             tmp: str) -> dict:
    b, p, n = case
    rng = np.random.default_rng(hash(case) % 2**32)
    ids = rng.integers(0, ours.model.cfg.vocab_size - 1, (b, p)).astype(np.int32)
    ids_path = os.path.join(tmp, f"ids_{b}x{p}.npy")
    np.save(ids_path, ids)
    ref_dtype = "bfloat16" if dtype == "bfloat16" else "float32"
    row: dict[str, Any] = {"dtype": dtype, "batch": b, "prompt": p, "new": n}
    t = time.perf_counter()
    tokens = ours.generate(ids, n)
    row["ours_first_call_s"] = time.perf_counter() - t
    ours.prefill(ids, n)
    ours.forward(ids)
    if ref is not None:
        first = ref.ask(op="generate", dtype=ref_dtype, ids=ids_path, n=n, repeats=1)
        row["ref_first_call_s"] = first["times_s"][0]
        row["agreement"] = agreement(tokens, np.asarray(first["tokens"]))
    ours_total, ours_prefill, ours_forward, ref_total, ref_prefill = [], [], [], [], []
    for _ in range(rounds):
        t = time.perf_counter()
        ours.generate(ids, n)
        ours_total.append(time.perf_counter() - t)
        if ref is not None:
            ref_total.append(ref.ask(op="generate", dtype=ref_dtype, ids=ids_path, n=n)["times_s"][0])
        t = time.perf_counter()
        ours.prefill(ids, n)
        ours_prefill.append(time.perf_counter() - t)
        if ref is not None:
            ref_prefill.append(ref.ask(op="prefill", dtype=ref_dtype, ids=ids_path)["times_s"][0])
        t = time.perf_counter()
        ours.forward(ids)
        ours_forward.append(time.perf_counter() - t)
    row.update(ours_total_s=_median(ours_total), ours_prefill_s=_median(ours_prefill),
               ours_forward_s=_median(ours_forward), ref_total_s=_median(ref_total), ref_prefill_s=_median(ref_prefill))
    row["ours_tokens_per_s"] = b * n / row["ours_total_s"]
    row["ours_step_s"] = (row["ours_total_s"] - row["ours_prefill_s"]) / max(n - 1, 1)
    row["prefill_over_forward"] = row["ours_prefill_s"] / row["ours_forward_s"]
    if ref is not None:
        row["ref_tokens_per_s"] = b * n / row["ref_total_s"]
        row["ref_step_s"] = (row["ref_total_s"] - row["ref_prefill_s"]) / max(n - 1, 1)
        row["speedup"] = row["ours_tokens_per_s"] / row["ref_tokens_per_s"]
    row["weight_bytes"] = ours.weight_bytes
    if b == 1:
        row["bound_step_s"] = ours.weight_bytes / bandwidth
        row["step_over_bound"] = row["ours_step_s"] / row["bound_step_s"]
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        kind, *rest = args.worker
        if kind == "reference":
            worker_reference(rest[0], int(rest[1]))
        elif kind == "first_call":
            worker_first_call(rest[0], rest[1], *(int(x) for x in rest[2:5]))
        return 0
    import jax

    tmp = tempfile.mkdtemp(prefix="generation_bench_")
    directory = args.checkpoint_dir or os.path.join(tmp, "gpt2")
    if not os.path.exists(os.path.join(directory, "config.json")):
        make_checkpoint(Path(directory), args.shape, args.seed)
    bandwidth = read_bandwidth()
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s", flush=True)
    threads = max(os.cpu_count() or 1, 1)
    ref = None if args.no_reference else Reference(args.reference_python, directory, threads, "PASSIVE",
                                                   module="benchmarks.generation")
    rows, errors = [], []
    load_before = os.getloadavg()
    try:
        for dtype in args.dtypes:
            ours = Ours(directory, dtype)
            _prefill_static(ours)
            for case in (args.cases if dtype == "float32" else args.other_cases):
                try:
                    row = run_case(ours, ref, dtype, case, args.rounds, bandwidth, tmp)
                except Exception as err:  # noqa: BLE001 -- a failed row is recorded, the rest still run
                    errors.append({"dtype": dtype, "case": "x".join(map(str, case)), "error": common.short_error(err)})
                    print(f"{dtype} {case}: {errors[-1]['error']}", flush=True)
                    continue
                rows.append(row)
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                                  if k != "agreement"}), flush=True)
    finally:
        if ref is not None:
            ref.close()
    speculative = speculative_rows(directory, args.cases[0], args.speculative, args.rounds) if args.speculative else None
    first_call = first_call_rows(directory, *args.cases[0]) if args.first_call else None
    result = {"environment": {**common.environment(), "load_average_before": load_before,
                              "load_average_after": os.getloadavg(),
                              "reference": None if ref is None else ref.info},
              "model_shape": args.shape, "read_bandwidth_bytes_per_s": bandwidth, "rows": rows, "errors": errors,
              "first_call": first_call, "speculative": speculative}
    out = args.out or os.path.join(ROOT, "benchmarks", "results", f"generation_{jax.default_backend()}.json")
    common.write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
