"""Helpers shared by the benchmark scripts: environment record, atomic result files, timing.

Every result file carries `environment()` (device kind, versions, date, CPU count) so a number is
never separated from the machine that produced it. Files are written to a temporary name and
renamed (`os.replace` is atomic on POSIX), so a benchmark killed mid-write leaves the previous
result intact instead of a torn one.
"""

from __future__ import annotations

import csv
import datetime
import importlib.util
import io
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

# Dense bf16 peak FLOP/s of known accelerators (vendor datasheets, without sparsity).
PEAK_BF16_FLOPS = {
    "H100 80GB HBM3": 989e12,  # H100 SXM
    "H100 SXM": 989e12,
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "A100-SXM4-80GB": 312e12,
    "A100-SXM4-40GB": 312e12,
    "TPU v4": 275e12,
    "TPU v5e": 197e12,
    "TPU v5 lite": 197e12,
}


def environment() -> dict[str, Any]:
    """Device kind, backend, jax/jaxlib/flax versions, date (UTC) and CPU count of this run."""
    import flax
    import jax
    import jaxlib

    devices = jax.devices()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def known_peak_flops(device_kind: str) -> float | None:
    """The datasheet bf16 dense peak of `device_kind`, if we know it (substring match)."""
    for name, peak in PEAK_BF16_FLOPS.items():
        if name.lower() in device_kind.lower():
            return peak
    return None


def _atomic_write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf become None (strict JSON has no NaN), numpy scalars become Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def load_module(path: str, name: str):
    """The Python file at `path` imported as module `name` (configs, a peer's model code)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_json(path: str, obj: Any) -> None:
    """Write strict JSON atomically (temp file + fsync + os.replace)."""
    _atomic_write(path, json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n")


def write_csv(path: str, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    """Write rows (dicts) as CSV atomically; columns default to the union of keys in first-seen order."""
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in _clean(dict(row)).items()})
    _atomic_write(path, buf.getvalue())


def short_error(err: BaseException) -> str:
    """One line for a result file: the exception's type and the first line of its message."""
    first = str(err).splitlines()[0][:300] if str(err) else ""
    return f"{type(err).__name__}: {first}"


def block(x: Any) -> Any:
    import jax

    return jax.block_until_ready(x)


def time_fn(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5,
            max_seconds: float | None = None) -> dict[str, Any]:
    """Median wall time of `fn()` (blocked until ready) after `warmup` untimed calls.

    Stops early once `max_seconds` of timed runs have passed (at least one timed run is kept).
    Returns {"median_s", "min_s", "times_s", "warmup_s"}.
    """
    t0 = time.perf_counter()
    for _ in range(warmup):
        block(fn())
    warmup_s = time.perf_counter() - t0
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - t)
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times, "warmup_s": warmup_s}


def matmul_flops_per_s(m: int, k: int, n: int, dtype: str = "float32", repeats: int = 5) -> dict[str, Any]:
    """Measured FLOP/s (2·m·k·n per call, median time) of a jit-compiled [m,k]@[k,n] matmul.

    On a CPU there is no meaningful datasheet peak, so this is the 'peak' the benchmarks divide by.
    """
    import jax
    import jax.numpy as jnp

    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (m, k), jnp.dtype(dtype))
    b = jax.random.normal(kb, (k, n), jnp.dtype(dtype))
    f = jax.jit(jnp.matmul)
    t = time_fn(lambda: f(a, b), warmup=2, repeats=repeats)
    return {"shape": [m, k, n], "dtype": dtype, "median_s": t["median_s"],
            "flops_per_s": 2.0 * m * k * n / t["median_s"]}


def available_memory_bytes() -> int | None:
    """Free memory of the device: accelerator `bytes_limit - bytes_in_use`, or MemAvailable on CPU."""
    import jax

    dev = jax.devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def compiled_memory_bytes(compiled) -> dict[str, int] | None:
    """Argument/output/temporary bytes of a compiled program and their total (aliased bytes counted once)."""
    mem = compiled.memory_analysis()
    if mem is None:
        return None
    out = {f: int(getattr(mem, f"{f}_size_in_bytes", 0) or 0)
           for f in ("argument", "output", "temp", "alias", "generated_code")}
    out["total"] = out["argument"] + out["output"] + out["temp"] + out["generated_code"] - out["alias"]
    return out


def compiled_flops(compiled) -> float | None:
    """FLOPs XLA counts for one call of a compiled program (executed, not 'useful'), if available."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A fixed-width text table; columns are (key, header, format spec)."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        line = []
        for key, _, fmt in columns:
            v = row.get(key)
            line.append("-" if v is None or v == "" else (format(v, fmt) if fmt else str(v)))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    text = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)
