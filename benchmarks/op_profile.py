"""Where a compiled model spends its time, per XLA operation and per source line of the model.

    python benchmarks/op_profile.py sam2.1_t encoder      # image encoder at the variant's size
    python benchmarks/op_profile.py sam_b decoder         # one click, from cached embeddings
    python benchmarks/op_profile.py sam_b encoder --dtype bfloat16
    python benchmarks/op_profile.py sam2.1_t memory       # memory attention, a full bank

Runs the jitted function under `jax.profiler.trace` (a Perfetto trace: XLA:CPU records each
fused operation it executes), reads the optimised HLO that XLA dumps for the same program to
name each operation's source (its `op_name` metadata), and prints milliseconds per run by
operation kind and by source. Random weights; torch is not needed.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

DUMP = tempfile.mkdtemp(prefix="sam_jax_hlo_")
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={DUMP}"

import jax  # noqa: E402  (after XLA_FLAGS)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import sam_jax  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from common import full_bank_memory_attention  # noqa: E402


def program(variant: str, what: str, dtype: str = "float32"):
    """(jitted function, its arguments) for the variant's encoder, a one-click decode, or
    (SAM 2) the memory attention over a full bank: every memory slot and pointer valid."""
    model = sam_jax.build(variant, dtype=jnp.dtype(dtype))
    s = model.config.image_size
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, s, s, 3), np.float32))
    params = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, method="init_everything"))(x)
    encode = jax.jit(lambda v, x: model.apply(v, x, method="encode_image"))
    if what == "encoder":
        return encode, (params, x)
    if what == "memory":
        attend, inputs = full_bank_memory_attention(model)
        return jax.jit(attend), (params, *inputs)
    feats = encode(params, x)
    pts, lab = jnp.asarray([[[s * 0.4, s * 0.3]]]), jnp.asarray([[1]])
    decode = jax.jit(
        lambda v, f: model.apply(v, f, point_coords=pts, point_labels=lab, method="predict_masks")
    )
    return decode, (params, feats)


def op_times(fn, args, runs: int) -> collections.Counter:
    """Microseconds per run of each executed XLA operation, by name."""
    jax.block_until_ready(fn(*args))
    trace_dir = tempfile.mkdtemp(prefix="sam_jax_trace_")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(runs):
            jax.block_until_ready(fn(*args))
    path = sorted(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True))[-1]
    events = json.load(gzip.open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    times: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X":
            times[e["name"]] += e.get("dur", 0) / runs
    return times


def sources(times: collections.Counter) -> dict[str, str]:
    """Operation name -> source op_name, from the dumped HLO module that names most of the
    traced time."""
    best, best_cover = {}, -1.0
    for path in glob.glob(f"{DUMP}/*after_optimizations.txt"):
        names = {}
        for line in open(path):
            m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = ", line)
            if m:
                src = re.search(r'op_name="([^"]*)"', line)
                names[m.group(1)] = src.group(1) if src else "(no source)"
        cover = sum(t for n, t in times.items() if n in names)
        if cover > best_cover:
            best, best_cover = names, cover
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("variant")
    ap.add_argument("what", choices=("encoder", "decoder", "memory"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--ops", action="store_true", help="also list the slowest operations")
    ap.add_argument("--dtype", default="float32", help="computation dtype (bfloat16)")
    args = ap.parse_args()
    fn, fn_args = program(args.variant, args.what, args.dtype)
    times = op_times(fn, fn_args, args.runs)
    names = sources(times)
    by_kind: collections.Counter = collections.Counter()
    by_source: collections.Counter = collections.Counter()
    for name, t in times.items():
        if name in names:
            by_kind[name.split(".")[0]] += t
            src = re.sub(r"jit\([^)]*\)/", "", names[name])
            by_source[re.sub(r"_\d+(?=/)", "_*", src)[-100:]] += t
    print(f"{args.variant} {args.what}: {sum(by_kind.values()) / 1e3:.1f} ms of XLA operations")
    print("\nby kind (ynn_fusion: matrix products with what XLA fused into them):")
    for k, t in by_kind.most_common(args.top):
        print(f"  {t / 1e3:9.2f} ms  {k}")
    print("\nby source:")
    for k, t in by_source.most_common(args.top):
        print(f"  {t / 1e3:9.2f} ms  {k}")
    if args.ops:
        print("\nby operation (its source):")
        ops = collections.Counter({n: t for n, t in times.items() if n in names})
        for n, t in ops.most_common(args.top):
            print(f"  {t / 1e3:9.2f} ms  {n:<32s} {names[n][-90:]}")


if __name__ == "__main__":
    main()
