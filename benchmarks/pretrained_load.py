"""Loading a Hugging Face GPT-2 checkpoint, and its forward pass against the reference implementation.

    python -m benchmarks.pretrained_load                 # the committed CPU run: GPT-2 small shapes (124M)
    python -m benchmarks.pretrained_load --quick --no-reference   # the smoke test: 2 layers, d=64

1. The checkpoint. A random GPT-2 with the real GPT-2 small shapes (n_layer 12, n_embd 768,
   n_head 12, vocab 50257, n_positions 1024: 124.4M parameters, tied output embedding) is written
   without torch: `config.json` (GPT2LMHeadModel) and `model.safetensors` holding float32 tensors
   under GPT-2's own names and layouts (Conv1D weights [in, out]; see
   tests/fixtures/pretrained/TENSORS.md), metadata {"format": "pt"} so transformers loads it too.
   Seeded (`--seed`): the same bytes every run.

2. Loading. `transformer_jax.from_pretrained(dir)` runs in a fresh subprocess (`--load-repeats`,
   median of 3), which records: the import time and RSS after `import transformer_jax`; the XLA
   backend start-up (first device array) separately; the wall time of `from_pretrained` until every
   parameter is on the device (`block_until_ready`); peak RSS (`ru_maxrss`) minus the RSS after the
   import, and minus the RSS after the backend start-up (the load's own share); and the RSS once
   loaded. Compare with the file size: the parameters themselves must stay resident (on CPU the
   "device" memory is host memory), so the floor is about the file size; reading one tensor at a
   time bounds the excess to a few copies of the largest tensor (the 154 MB token embedding at
   GPT-2 small). The file was just written, so it is read from the page cache (a warm load).
   With the reference venv, transformers' own `GPT2LMHeadModel.from_pretrained` is measured the
   same way (after `import torch, transformers`) for comparison.

3. Forward throughput. Our jitted `model.apply(variables, ids)` (float32, full logits) against
   `transformers.GPT2LMHeadModel` (attn_implementation="sdpa", float32, `torch.no_grad()`,
   use_cache=False: neither side builds a KV cache), on the same token ids, batch 1 x 512 and
   4 x 128. The reference runs in a subprocess of the separate reference venv (`--reference-python`,
   default /work/refenv/bin/python; this project never imports torch), driven over a pipe so the two
   are timed INTERLEAVED: after warm-up, each timed round runs one call of ours then one of the
   reference, so both see the same machine load; median of `--repeats` (5) each; tokens/s and the
   ratio ours / reference per shape. torch gets the thread count XLA's CPU client uses (counted from
   its `tf_XLAEigen` intra-op threads after a forward; XLA sizes that pool to the schedulable CPUs);
   both counts are recorded. The reference runs with OMP_WAIT_POLICY=PASSIVE (`--omp-wait-policy`):
   on this shared 2-core machine (load average above the core count) torch's default spinning
   OpenMP barriers made a small forward 30-200x slower, which measures the neighbours, not the
   implementation. Forward FLOPs per token (`flops_per_token / 3`, attention over the causal
   keys) give GFLOP/s for both, beside a measured [B*T, d] @ [d, 4d] matmul.

   Beside each shape, the attention op alone (one layer's: our `cfg.decoder_attention` jitted vs torch's
   `scaled_dot_product_attention`, causal, same [B, T, 12, 64] inputs, interleaved the same way), and
   its share of the forward (x n_layer / forward time): where the time of a shape goes.

4. Correctness guard: our logits and the reference's on the first shape's input,
   max |diff| / max |reference logit| < 1e-4, recorded in the JSON (`correctness`).

Results: benchmarks/results/pretrained_load_<backend>.json (+ .csv of the forward rows), written
atomically, with the environment (device kind, jax/jaxlib/flax, torch/transformers, threads, date,
load average before/after).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_PYTHON = "/work/refenv/bin/python"
MARK = "@@"  # prefix of the protocol lines workers print (anything else on stdout is ignored)

# The real GPT-2 small shapes.
GPT2_SMALL = dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
QUICK_SHAPE = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=256)
FULL_SHAPES = "1x512,4x128"
QUICK_SHAPES = "1x128,4x32"
THRESHOLD = 1e-4


# --------------------------------------------------------------------------------------- checkpoint

def gpt2_config(shape: dict) -> dict:
    eot = shape["vocab_size"] - 1
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
            "n_layer": shape["n_layer"], "n_embd": shape["n_embd"], "n_head": shape["n_head"],
            "vocab_size": shape["vocab_size"], "n_positions": shape["n_positions"], "n_inner": None,
            "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "resid_pdrop": 0.1, "embd_pdrop": 0.1,
            "attn_pdrop": 0.1, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False, "add_cross_attention": False, "tie_word_embeddings": True,
            "bos_token_id": eot, "eos_token_id": eot, "use_cache": True, "dtype": "float32"}


def gpt2_tensor_shapes(shape: dict) -> dict[str, tuple[int, ...]]:
    """GPT-2's tensor names and stored shapes (Conv1D weights are [in, out]); tied lm_head is not stored."""
    d, v, p = shape["n_embd"], shape["vocab_size"], shape["n_positions"]
    out = {"transformer.wte.weight": (v, d), "transformer.wpe.weight": (p, d)}
    for i in range(shape["n_layer"]):
        h = f"transformer.h.{i}"
        out.update({f"{h}.ln_1.weight": (d,), f"{h}.ln_1.bias": (d,),
                    f"{h}.attn.c_attn.weight": (d, 3 * d), f"{h}.attn.c_attn.bias": (3 * d,),
                    f"{h}.attn.c_proj.weight": (d, d), f"{h}.attn.c_proj.bias": (d,),
                    f"{h}.ln_2.weight": (d,), f"{h}.ln_2.bias": (d,),
                    f"{h}.mlp.c_fc.weight": (d, 4 * d), f"{h}.mlp.c_fc.bias": (4 * d,),
                    f"{h}.mlp.c_proj.weight": (4 * d, d), f"{h}.mlp.c_proj.bias": (d,)})
    out.update({"transformer.ln_f.weight": (d,), "transformer.ln_f.bias": (d,)})
    return out


def make_checkpoint(directory: Path, shape: dict, seed: int) -> dict[str, Any]:
    """Write config.json + model.safetensors of a random GPT-2 (GPT-2's initialisation scales)."""
    from safetensors.numpy import save_file

    t0 = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    residual_std = 0.02 / np.sqrt(2 * shape["n_layer"])  # GPT-2 scales the residual projections
    tensors = {}
    for name, shp in gpt2_tensor_shapes(shape).items():
        if name.endswith((".ln_1.weight", ".ln_2.weight", "ln_f.weight")):
            x = 1.0 + 0.05 * rng.standard_normal(shp, dtype=np.float32)
        elif name.endswith(".bias"):
            x = 0.02 * rng.standard_normal(shp, dtype=np.float32)
        elif name.endswith("c_proj.weight"):
            x = residual_std * rng.standard_normal(shp, dtype=np.float32)
        elif name == "transformer.wpe.weight":
            x = 0.01 * rng.standard_normal(shp, dtype=np.float32)
        else:
            x = 0.02 * rng.standard_normal(shp, dtype=np.float32)
        tensors[name] = np.ascontiguousarray(x, np.float32)
    params = int(sum(t.size for t in tensors.values()))
    tmp = directory / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(gpt2_config(shape), indent=2) + "\n")
    del tensors
    return {"params": params, "param_bytes": 4 * params, "make_s": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------- workers

def _status_bytes(field: str) -> int:
    """A size field of /proc/self/status (VmRSS: resident now, VmHWM: this process image's peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return -1


def _rss_bytes() -> int:
    return _status_bytes("VmRSS")


def _rss_after_malloc_trim() -> int | None:
    """RSS once glibc has returned its free heap pages to the system (what the allocator merely kept)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return _rss_bytes()


def _first_forward_rss(forward) -> int:
    """RSS after one 1 x 8 forward: weights a loader left memory-mapped are paged in by then."""
    forward(np.arange(8, dtype=np.int32)[None])
    return _rss_bytes()


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _emit(obj: dict) -> None:
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


def worker_load(directory: str) -> None:
    """One cold load of ours in this (fresh) process; prints one MARK line of figures."""
    t0 = time.perf_counter()
    import transformer_jax as tj

    import_s = time.perf_counter() - t0
    rss_import, peak_import = _rss_bytes(), _peak_rss_bytes()
    anon_import, file_import = _status_bytes("RssAnon"), _status_bytes("RssFile")
    import jax
    import jax.numpy as jnp

    t0 = time.perf_counter()
    jax.block_until_ready(jnp.zeros(()))  # the XLA client and its thread pools start here
    backend_s = time.perf_counter() - t0
    rss_backend = _rss_bytes()
    t0 = time.perf_counter()
    model, variables = tj.from_pretrained(directory)
    jax.block_until_ready(variables)
    load_s = time.perf_counter() - t0
    peak, hwm = _peak_rss_bytes(), _status_bytes("VmHWM")
    leaves = jax.tree_util.tree_leaves(variables)
    _emit({"import_s": import_s, "backend_init_s": backend_s, "load_s": load_s, "vm_hwm": hwm,
           "rss_after_import": rss_import, "peak_rss_at_import": peak_import, "rss_after_backend_init": rss_backend,
           "peak_rss": peak, "rss_after_load": _rss_bytes(),
           "rss_anon_after_import": anon_import, "rss_file_after_import": file_import,
           "rss_anon_after_load": _status_bytes("RssAnon"), "rss_file_after_load": _status_bytes("RssFile"),
           "rss_after_malloc_trim": _rss_after_malloc_trim(),
           "peak_minus_import": peak - rss_import, "peak_minus_backend_init": peak - rss_backend,
           "device_param_bytes": int(sum(x.nbytes for x in leaves)), "num_arrays": len(leaves)})


def worker_reference_load(directory: str, threads: int) -> None:
    """One cold load of transformers' GPT2LMHeadModel (reference venv) in this fresh process."""
    t0 = time.perf_counter()
    import torch
    import transformers

    import_s = time.perf_counter() - t0
    torch.set_num_threads(threads)
    rss_import, peak_import = _rss_bytes(), _peak_rss_bytes()
    anon_import, file_import = _status_bytes("RssAnon"), _status_bytes("RssFile")
    t0 = time.perf_counter()
    model = transformers.GPT2LMHeadModel.from_pretrained(directory, attn_implementation="sdpa",
                                                         dtype=torch.float32)
    model.eval()
    load_s = time.perf_counter() - t0
    peak, hwm = _peak_rss_bytes(), _status_bytes("VmHWM")
    anon, file = _status_bytes("RssAnon"), _status_bytes("RssFile")

    def forward(ids):
        with torch.no_grad():
            return model(input_ids=torch.from_numpy(ids.astype(np.int64)), use_cache=False).logits

    _emit({"import_s": import_s, "load_s": load_s, "vm_hwm": hwm, "rss_after_import": rss_import,
           "peak_rss_at_import": peak_import, "peak_rss": peak, "rss_after_load": _rss_bytes(),
           "rss_anon_after_import": anon_import, "rss_file_after_import": file_import,
           "rss_anon_after_load": anon, "rss_file_after_load": file,
           "peak_minus_import": peak - rss_import,
           "param_bytes": int(sum(p.numel() * p.element_size() for p in model.parameters())),
           "rss_after_first_forward": _first_forward_rss(forward),
           "rss_anon_after_first_forward": _status_bytes("RssAnon"),
           "rss_file_after_first_forward": _status_bytes("RssFile"),
           "peak_rss_after_first_forward": _peak_rss_bytes()})


def worker_reference(directory: str, threads: int) -> None:
    """The reference forward, driven by JSON commands on stdin (one per line), answers on stdout."""
    import torch
    import transformers

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = transformers.GPT2LMHeadModel.from_pretrained(directory, attn_implementation="sdpa",
                                                         dtype=torch.float32)
    model.eval()
    load_s = time.perf_counter() - t0
    _emit({"ready": True, "torch": torch.__version__, "transformers": transformers.__version__,
           "torch_num_threads": torch.get_num_threads(), "torch_num_interop_threads": torch.get_num_interop_threads(),
           "attn_implementation": model.config._attn_implementation, "dtype": str(next(model.parameters()).dtype),
           "load_s": load_s, "parallel_backend": torch.__config__.parallel_info().splitlines()[-1].strip()})
    inputs: dict[str, Any] = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        if cmd["op"] == "attention":  # the attention op alone: sdpa, causal, [B, N, T, H]
            q, k, v = (torch.from_numpy(x.transpose(0, 2, 1, 3).copy()) for x in _qkv(cmd["shape"]))
            times = []
            with torch.no_grad():
                for _ in range(cmd.get("repeats", 1)):
                    t = time.perf_counter()
                    torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
                    times.append(time.perf_counter() - t)
            _emit({"times_s": times})
            continue
        if cmd["ids"] not in inputs:
            inputs[cmd["ids"]] = torch.from_numpy(np.load(cmd["ids"]).astype(np.int64))
        ids = inputs[cmd["ids"]]
        with torch.no_grad():
            if cmd["op"] == "logits":
                logits = model(input_ids=ids, use_cache=False).logits
                np.save(cmd["out"], logits.float().numpy())
                _emit({"ok": True})
            else:  # "forward": time `repeats` calls
                times = []
                for _ in range(cmd.get("repeats", 1)):
                    t = time.perf_counter()
                    model(input_ids=ids, use_cache=False).logits
                    times.append(time.perf_counter() - t)
                _emit({"times_s": times})


def _qkv(shape) -> list[np.ndarray]:
    """Seeded random q, k, v of shape [B, T, N, H] (our layout), float32."""
    rng = np.random.default_rng(0)
    return [rng.standard_normal(tuple(shape), dtype=np.float32) for _ in range(3)]


def _worker_env(omp_wait_policy: str | None = None) -> dict:
    env = dict(os.environ)
    if omp_wait_policy:
        env["OMP_WAIT_POLICY"] = omp_wait_policy
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _parse(stdout: str) -> dict:
    lines = [line[len(MARK):] for line in stdout.splitlines() if line.startswith(MARK)]
    if not lines:
        raise RuntimeError("worker printed no result")
    return json.loads(lines[-1])


# ru_maxrss survives fork + execve: a worker forked straight from this (large) process would start with
# our peak as its own. Forked from a small `sh` instead (which must fork: a command follows), it starts
# from the shell's few MB. VmHWM (per process image, reset by execve) is recorded as a cross-check.
_VIA_SHELL = ["sh", "-c", '"$@"; exit $?', "sh"]


def run_worker(python: str, args: list[str], timeout: float = 900, omp_wait_policy: str | None = None) -> dict:
    proc = subprocess.run([*_VIA_SHELL, python, "-m", "benchmarks.pretrained_load", *args], cwd=ROOT,
                          env=_worker_env(omp_wait_policy),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args[:2]} failed (rc {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return _parse(proc.stdout)


class Reference:
    """The reference forward process (reference venv), driven over a pipe."""

    def __init__(self, python: str, directory: str, threads: int, omp_wait_policy: str | None,
                 module: str = "benchmarks.pretrained_load"):
        """`module`: the benchmark whose `--worker reference` answers (generation.py has its own)."""
        self.stderr = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty worker cannot block
        self.proc = subprocess.Popen([python, "-m", module, "--worker", "reference",
                                      directory, str(threads)], cwd=ROOT, env=_worker_env(omp_wait_policy), text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr)
        self.info = self._read()

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
        self.stderr.seek(0)
        err = self.stderr.read()
        raise RuntimeError(f"reference worker exited (rc {self.proc.wait()}): {err.strip()[-2000:]}")

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


# --------------------------------------------------------------------------------------- main

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pretrained_load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a small GPT-2 (" + ", ".join(f"{k}={v}" for k, v in QUICK_SHAPE.items())
                        + f"), shapes {QUICK_SHAPES}: the smoke test")
    p.add_argument("--shapes", help=f"comma-separated BATCHxLENGTH forward inputs (default {FULL_SHAPES}; "
                                    f"{QUICK_SHAPES} with --quick)")
    p.add_argument("--checkpoint-dir", help="where to write (or reuse, if its config.json matches) the checkpoint; "
                                            "default: a temporary directory, removed afterwards")
    p.add_argument("--seed", type=int, default=0, help="seed of the random checkpoint and inputs")
    p.add_argument("--load-repeats", type=int, default=3, help="fresh-process loads (median reported)")
    p.add_argument("--repeats", type=int, default=5, help="timed forward calls per shape and side (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed forward calls per shape and side after compiling")
    p.add_argument("--no-reference", action="store_true", help="skip everything that needs torch/transformers")
    p.add_argument("--reference-python", default=REFERENCE_PYTHON,
                   help="python of the reference venv with torch and transformers")
    p.add_argument("--omp-wait-policy", default="PASSIVE",
                   help="OMP_WAIT_POLICY of the reference processes ('' leaves torch's default, ACTIVE spinning): on "
                        "a shared machine whose load exceeds its cores, spinning OpenMP barriers wait on descheduled "
                        "threads and one small forward took 400 ms instead of 2-15 ms; PASSIVE sleeps as XLA's pool does")
    p.add_argument("--out", help="result JSON (default benchmarks/results/pretrained_load_<backend>.json)")
    p.add_argument("--csv", help="result CSV of the forward rows (default: the JSON path with .csv)")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.shape = dict(QUICK_SHAPE if args.quick else GPT2_SMALL)
    text = args.shapes or (QUICK_SHAPES if args.quick else FULL_SHAPES)
    try:
        args.shapes = [tuple(int(n) for n in s.lower().split("x")) for s in text.split(",") if s.strip()]
    except ValueError:
        p.error(f"--shapes: expected BATCHxLENGTH,...; got {text!r}")
    if any(len(s) != 2 or min(s) <= 0 or s[1] > args.shape["n_positions"] for s in args.shapes):
        p.error(f"--shapes: each BATCHxLENGTH must be positive with LENGTH <= {args.shape['n_positions']}")
    if args.load_repeats < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--load-repeats and --repeats must be >= 1, --warmup >= 0")
    return args


def _median_of(runs: list[dict], key: str):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize_loads(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float))]
    return {"median": {k: _median_of(runs, k) for k in keys}, "runs": runs}


def xla_intra_op_threads() -> int:
    """Threads of XLA:CPU's intra-op pool in this process (named tf_XLAEigen), 0 if none found."""
    count = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                count += f.read().strip().startswith("tf_XLAEigen")
        except OSError:
            pass
    return count


def reference_skip_reason(args) -> str | None:
    if args.no_reference:
        return "skipped: --no-reference"
    if not os.path.exists(args.reference_python):
        return f"skipped: reference python {args.reference_python} does not exist"
    probe = subprocess.run([args.reference_python, "-c", "import torch, transformers"], capture_output=True,
                           text=True, timeout=300)
    if probe.returncode != 0:
        return f"skipped: {args.reference_python} cannot import torch/transformers: {probe.stderr.strip()[-300:]}"
    return None


COLUMNS = [("shape", "B x T", ""), ("ours_median_s", "ours s", ".4f"), ("ours_tokens_per_s", "ours tok/s", ",.0f"),
           ("ref_median_s", "ref s", ".4f"), ("ref_tokens_per_s", "ref tok/s", ",.0f"),
           ("ratio_ours_over_ref", "ours/ref", ".3f"), ("ours_gflops_per_s", "ours GFLOP/s", ".1f"),
           ("matmul_gflops_per_s", "matmul GFLOP/s", ".1f"), ("ours_attention_share", "ours attn", ".2f"),
           ("ref_attention_share", "ref attn", ".2f")]


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.worker:
        kind, rest = args.worker[0], args.worker[1:]
        if kind == "load":
            worker_load(rest[0])
        elif kind == "reference_load":
            worker_reference_load(rest[0], int(rest[1]))
        elif kind == "reference":
            worker_reference(rest[0], int(rest[1]))
        else:
            raise SystemExit(f"unknown worker {kind!r}")
        return {}

    import jax
    import jax.numpy as jnp

    import transformer_jax as tj
    from transformer_jax.model import flops_per_token

    backend = jax.default_backend()
    json_path = args.out or str(ROOT / "benchmarks" / "results" / f"pretrained_load_{backend}.json")
    csv_path = args.csv or os.path.splitext(json_path)[0] + ".csv"
    env = common.environment()
    env["load_average_start"] = list(os.getloadavg())
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "csv", "worker")}
    settings["command"] = "python -m benchmarks.pretrained_load " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"{env['device_kind']} ({backend}), jax {env['jax']}, {env['cpu_affinity']} CPUs, "
          f"load average {env['load_average_start'][0]:.2f}", flush=True)

    tmp_root = None
    if args.checkpoint_dir:
        ckpt = Path(args.checkpoint_dir)
    else:
        tmp_root = tempfile.mkdtemp(prefix="pretrained_load_")
        ckpt = Path(tmp_root) / "gpt2"
    result: dict[str, Any] = {"benchmark": "pretrained_load", "environment": env, "settings": settings}

    def save():
        common.write_json(json_path, result)
        if result.get("forward"):
            common.write_csv(csv_path, result["forward"])

    try:
        reuse = False
        if (ckpt / "config.json").exists() and (ckpt / "model.safetensors").exists():
            reuse = json.loads((ckpt / "config.json").read_text()) == gpt2_config(args.shape)
        if reuse:
            info = {"params": int(sum(np.prod(s) for s in gpt2_tensor_shapes(args.shape).values())), "make_s": None}
            info["param_bytes"] = 4 * info["params"]
        else:
            info = make_checkpoint(ckpt, args.shape, args.seed)
        file_bytes = (ckpt / "model.safetensors").stat().st_size
        result["checkpoint"] = dict(shape=args.shape, **info, file_bytes=file_bytes, reused=reuse, seed=args.seed,
                                    dtype="float32", tensors=len(gpt2_tensor_shapes(args.shape)),
                                    largest_tensor_bytes=4 * args.shape["vocab_size"] * args.shape["n_embd"])
        print(f"checkpoint: {info['params'] / 1e6:.1f}M parameters, model.safetensors {file_bytes / 1e6:.1f} MB"
              + (" (reused)" if reuse else f", written in {info['make_s']:.1f} s"), flush=True)
        save()

        # ---- 2. load time and peak RSS, fresh process each
        runs = []
        for i in range(args.load_repeats):
            runs.append(run_worker(sys.executable, ["--worker", "load", str(ckpt)]))
            r = runs[-1]
            print(f"load {i + 1}/{args.load_repeats}: {r['load_s']:.2f} s, peak RSS - RSS after import "
                  f"{r['peak_minus_import'] / 1e6:.0f} MB (- after backend init {r['peak_minus_backend_init'] / 1e6:.0f}"
                  f" MB), RSS once loaded {r['rss_after_load'] / 1e6:.0f} MB", flush=True)
        result["load"] = summarize_loads(runs)
        med = result["load"]["median"]
        result["load"]["peak_minus_import_over_file"] = med["peak_minus_import"] / file_bytes
        result["load"]["peak_minus_backend_init_over_file"] = med["peak_minus_backend_init"] / file_bytes
        result["load"]["load_mb_per_s"] = file_bytes / 1e6 / med["load_s"]
        result["load"]["note"] = (
            "warm page cache (the file was just written); load_s = tj.from_pretrained(dir) until every parameter "
            "is on the device, after the XLA backend was started (backend_init_s, separately); peak_rss is "
            "ru_maxrss of the worker (the whole process); the parameters themselves (device_param_bytes) stay "
            "resident because the CPU device's memory is host memory; workers are forked from a small sh, since "
            "ru_maxrss is inherited across fork+exec (vm_hwm, the kernel's per-image peak, agrees)")
        save()

        # ---- 3. forward throughput, ours (this process) vs reference (subprocess), interleaved
        model, variables = tj.from_pretrained(ckpt)
        fwd = jax.jit(model.apply)
        rng = np.random.default_rng(args.seed + 1)
        inputs = [rng.integers(0, args.shape["vocab_size"], s, dtype=np.int32) for s in args.shapes]
        for x, (b, t) in zip(inputs, args.shapes):
            np.save(ckpt / f"ids_{b}x{t}.npy", x)
        jax_ids = [jax.device_put(x) for x in inputs]
        compiled = []
        for x in jax_ids:
            t0 = time.perf_counter()
            c = fwd.lower(variables, x).compile()
            compiled.append((c, time.perf_counter() - t0))
            jax.block_until_ready(c(variables, x))
        jax_threads = xla_intra_op_threads()
        threads = jax_threads or env["cpu_affinity"] or os.cpu_count()
        env["threads"] = {"xla_intra_op_threads": jax_threads, "torch_threads_requested": threads}

        skip = reference_skip_reason(args)
        ref = None
        if skip is None:
            try:
                ref = Reference(args.reference_python, str(ckpt), threads, args.omp_wait_policy)
                env.update(torch=ref.info["torch"], transformers=ref.info["transformers"])
                env["threads"].update(torch_num_threads=ref.info["torch_num_threads"],
                                      torch_num_interop_threads=ref.info["torch_num_interop_threads"],
                                      torch_parallel_backend=ref.info["parallel_backend"],
                                      torch_omp_wait_policy=args.omp_wait_policy or "(default)")
            except Exception as err:  # noqa: BLE001 - the benchmark of ours still stands
                skip = f"skipped: reference worker failed: {str(err)[-500:]}"
                ref = None
        result["reference"] = {"status": skip or "ok", **({k: v for k, v in ref.info.items() if k != "ready"}
                                                          if ref else {})}
        print(f"threads: XLA intra-op {jax_threads}, torch {env['threads'].get('torch_num_threads', '-')}; "
              f"reference: {result['reference']['status']}", flush=True)

        rows = []
        result["forward"] = rows
        try:
            for (b, t), x, (c, compile_s) in zip(args.shapes, jax_ids, compiled):
                ids_path = str(ckpt / f"ids_{b}x{t}.npy")
                call = lambda: c(variables, x)  # noqa: E731
                for _ in range(args.warmup):
                    jax.block_until_ready(call())
                if ref:
                    ref.ask(op="forward", ids=ids_path, repeats=max(1, args.warmup))
                ours, theirs = [], []
                for _ in range(args.repeats):  # interleaved: one of ours, one of theirs, same load
                    t0 = time.perf_counter()
                    jax.block_until_ready(call())
                    ours.append(time.perf_counter() - t0)
                    if ref:
                        theirs += ref.ask(op="forward", ids=ids_path, repeats=1)["times_s"]
                cfg = model.cfg
                fpt = flops_per_token(cfg, 1, t) / 3.0  # forward only, causal keys, incl. the logits
                mem = common.compiled_memory_bytes(c)
                mm = common.matmul_flops_per_s(b * t, cfg.d_model, cfg.d_ff, "float32", repeats=3)
                row = {"shape": f"{b}x{t}", "batch": b, "seq_len": t, "tokens": b * t, "compile_s": compile_s,
                       "ours_median_s": statistics.median(ours), "ours_min_s": min(ours), "ours_times_s": ours,
                       "ours_tokens_per_s": b * t / statistics.median(ours),
                       "forward_flops_per_token": fpt,
                       "ours_gflops_per_s": fpt * b * t / statistics.median(ours) / 1e9,
                       "ours_compiled_memory_bytes": mem["total"] if mem else None,
                       "matmul_gflops_per_s": mm["flops_per_s"] / 1e9, "matmul_shape": mm["shape"]}
                if theirs:
                    rm = statistics.median(theirs)
                    row.update(ref_median_s=rm, ref_min_s=min(theirs), ref_times_s=theirs,
                               ref_tokens_per_s=b * t / rm, ref_gflops_per_s=fpt * b * t / rm / 1e9,
                               ratio_ours_over_ref=(b * t / row["ours_median_s"]) / (b * t / rm))
                # The attention op alone (one layer's), same interleaving: where the time of a shape goes.
                shp = [b, t, cfg.num_heads, cfg.resolved_head_dim]
                q, k, v = (jax.device_put(a) for a in _qkv(shp))
                attn = jax.jit(lambda q, k, v: cfg.decoder_attention(q, k, v, causal=True))
                for _ in range(max(1, args.warmup)):
                    jax.block_until_ready(attn(q, k, v))
                if ref:
                    ref.ask(op="attention", shape=shp, repeats=max(1, args.warmup))
                ours_a, theirs_a = [], []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    jax.block_until_ready(attn(q, k, v))
                    ours_a.append(time.perf_counter() - t0)
                    if ref:
                        theirs_a += ref.ask(op="attention", shape=shp, repeats=1)["times_s"]
                layers = cfg.num_decoder_layers
                row.update(attention_op=repr(cfg.decoder_attention), ours_attention_s=statistics.median(ours_a),
                           ours_attention_share=layers * statistics.median(ours_a) / row["ours_median_s"])
                if theirs_a:
                    row.update(ref_attention_s=statistics.median(theirs_a),
                               ref_attention_share=layers * statistics.median(theirs_a) / row["ref_median_s"],
                               attention_ratio_ours_over_ref=statistics.median(theirs_a) / statistics.median(ours_a))
                rows.append(row)
                print(f"{b}x{t}: ours {row['ours_median_s'] * 1e3:.1f} ms ({row['ours_tokens_per_s']:,.0f} tok/s)"
                      + (f", reference {row['ref_median_s'] * 1e3:.1f} ms ({row['ref_tokens_per_s']:,.0f} tok/s), "
                         f"ours/ref {row['ratio_ours_over_ref']:.3f}" if theirs else "")
                      + f"; attention op x {layers} layers: ours {row['ours_attention_share']:.0%} of the forward"
                      + (f", reference {row['ref_attention_share']:.0%} (op speed ours/ref "
                         f"{row['attention_ratio_ours_over_ref']:.2f})" if theirs_a else ""), flush=True)
                save()

            # ---- 4. correctness guard on the first shape's input
            if ref:
                (b, t), x = args.shapes[0], jax_ids[0]
                out_path = str(ckpt / "ref_logits.npy")
                ref.ask(op="logits", ids=str(ckpt / f"ids_{b}x{t}.npy"), out=out_path)
                theirs = np.load(out_path)
                ours = np.asarray(compiled[0][0](variables, x))
                diff = float(np.abs(ours - theirs).max())
                scale = float(np.abs(theirs).max())
                result["correctness"] = {
                    "input": f"{b}x{t}", "max_abs_diff": diff, "max_abs_logit": scale,
                    "relative": diff / scale, "threshold": THRESHOLD, "pass": diff / scale < THRESHOLD,
                    "argmax_agreement": float((ours.argmax(-1) == theirs.argmax(-1)).mean()),
                    "logit_std": float(theirs.std())}
                print(f"logits vs reference ({b}x{t}): max|diff| {diff:.3g} / max|logit| {scale:.3g} = "
                      f"{diff / scale:.3g} ({'pass' if diff / scale < THRESHOLD else 'FAIL'})", flush=True)
            else:
                result["correctness"] = {"status": skip}
        finally:
            if ref:
                ref.close()
        result["model"] = {"decoder_attention": repr(model.cfg.decoder_attention), "dtype": model.cfg.dtype,
                           "activation": model.cfg.activation, "params": info["params"]}
        save()

        # ---- transformers' own load, fresh process each, for comparison
        if skip is None:
            ref_runs = []
            try:
                for _ in range(args.load_repeats):
                    ref_runs.append(run_worker(args.reference_python,
                                               ["--worker", "reference_load", str(ckpt), str(threads)],
                                               omp_wait_policy=args.omp_wait_policy))
                result["reference_load"] = summarize_loads(ref_runs)
                m = result["reference_load"]["median"]
                print(f"reference load: {m['load_s']:.2f} s, peak RSS - RSS after import "
                      f"{m['peak_minus_import'] / 1e6:.0f} MB", flush=True)
            except Exception as err:  # noqa: BLE001
                result["reference_load"] = {"status": f"error: {str(err)[-500:]}"}
        else:
            result["reference_load"] = {"status": skip}
    finally:
        if tmp_root:
            shutil.rmtree(tmp_root, ignore_errors=True)
    env["load_average_end"] = list(os.getloadavg())
    save()
    med = result["load"]["median"]
    print(f"load: {med['load_s']:.2f} s (median of {args.load_repeats}); peak RSS - RSS after import "
          f"{med['peak_minus_import'] / 1e6:.0f} MB vs file {file_bytes / 1e6:.0f} MB")
    print(common.format_table(result["forward"], COLUMNS))
    print(f"wrote {json_path} and {csv_path}")
    return result


if __name__ == "__main__":
    main()
