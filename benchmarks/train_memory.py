"""Compile-time memory of the train steps: XLA's memory analysis, nothing allocated or run.

    python benchmarks/train_memory.py --case t_full              # one named case
    python benchmarks/train_memory.py --case t_full --no-remat   # a case with a setting changed
    timeout 900 python benchmarks/train_memory.py --case l_clip_frozen   # minutes to compile
    python benchmarks/train_memory.py --list                     # the cases and their settings

Each case compiles one jit train step (`make_train_step`) for abstract inputs
(ShapeDtypeStructs from `jax.eval_shape`: parameters, optimizer state, batch) and prints
the compiled program's temp bytes (XLA's buffers for intermediates: activations kept for
the backward pass, attention matrices, ...) and its argument and output bytes. On CPU the
figures are deterministic for a given jax/XLA and model code; on GPU they differ. As a
proxy for a GPU, attention runs "blocked" here (what "auto" picks on GPU for large logits;
on CPU "auto" keeps the faster materialised path up to 4 GiB of logits); `--attention`
changes it. Settings
are printed with the figures. Compiling the large models on a few CPU cores takes minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam_jax.checkpoint import build_from_config, variable_shapes  # noqa: E402
from sam_jax.config import variant_config  # noqa: E402
from sam_jax.models.attention import default_impl  # noqa: E402
from sam_jax.train.step import TrainState, make_optimizer, make_train_step  # noqa: E402
from sam_jax.train.video_step import clip_loss  # noqa: E402

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Case:
    model: str = "sam2.1_t"  # a variant name, or "tiny2" (tests/tiny_configs.py)
    image_size: int = 1024
    batch: int = 1  # images (or clips) per step, per micro-batch
    objects: int = 1  # K objects per image (or per clip)
    frames: int = 0  # T frames per clip: 0 for the image step, else clip_loss
    trainable: str = "all"
    dtype: str = "bf16"  # compute dtype (parameters stay float32)
    remat: bool = True
    remat_frames: bool = True  # clip_loss: recompute each tracked frame in the backward pass
    num_corrections: int = 2
    accumulate: int = 1  # micro-batches in one step (make_train_step(accumulate=N))
    multisteps: int = 1  # optax.MultiSteps(tx, N) around the optimizer (the old way)
    opt_accumulate: int = 1  # make_optimizer(accumulate=N): over N calls, trained leaves only
    attention: str = "blocked"  # attention impl while tracing (sam_jax.models.attention)


CASES = {
    "t_full": Case(),
    "t_full_noremat": Case(remat=False),
    "t_full_f32": Case(dtype="f32"),
    "t_decoder": Case(trainable="decoder"),
    "t_decoder_accum": Case(trainable="decoder", accumulate=4),
    "t_decoder_multisteps": Case(trainable="decoder", multisteps=4),
    "t_decoder_opt_accum": Case(trainable="decoder", opt_accumulate=4),
    "l_clip_frozen": Case(
        model="sam2.1_l", frames=8, objects=3, trainable="all_but_encoder", num_corrections=1
    ),
    "l_clip_all": Case(model="sam2.1_l", frames=8, objects=3, num_corrections=1),
    "t_clip_frozen": Case(frames=8, objects=3, trainable="all_but_encoder", num_corrections=1),
    "t_clip_all": Case(frames=8, objects=3, num_corrections=1),
    "tiny2_clip": Case(model="tiny2", image_size=64, frames=8, objects=3, num_corrections=1),
    "tiny2_decoder_accum": Case(model="tiny2", image_size=64, trainable="decoder", accumulate=4),
}


def _config(case: Case):
    if case.model == "tiny2":
        from tests.tiny_configs import TINY2

        return dataclasses.replace(TINY2, image_size=case.image_size)
    return variant_config(case.model, case.image_size)


def measure(case: Case) -> dict:
    """Lower and compile the case's train step for abstract inputs; XLA's byte counts."""
    model = build_from_config(_config(case), remat=case.remat)
    variables = variable_shapes(model)
    tx = make_optimizer(variables["params"], case.trainable, 1e-4, accumulate=case.opt_accumulate)
    if case.multisteps > 1:
        tx = optax.MultiSteps(tx, case.multisteps)
    state = jax.eval_shape(lambda v: TrainState.create(v, tx), variables)
    dtype = {"bf16": jnp.bfloat16, "f32": jnp.float32}[case.dtype]
    kwargs = {"accumulate": case.accumulate} if case.accumulate > 1 else {}
    s, b, k = case.image_size, case.batch * case.accumulate, case.objects
    if case.frames:
        t = case.frames
        images = jax.ShapeDtypeStruct((b, t, s, s, 3), jnp.float32)
        targets = jax.ShapeDtypeStruct((b, t, k, s, s) if k > 1 else (b, t, s, s), jnp.bool_)
        kwargs.update(loss_fn=clip_loss, remat_frames=case.remat_frames)
    else:
        images = jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32)
        targets = jax.ShapeDtypeStruct((b, k, s, s) if k > 1 else (b, s, s), jnp.bool_)
    key = jax.eval_shape(lambda: jax.random.key(0))
    step = make_train_step(
        model, tx, num_corrections=case.num_corrections, compute_dtype=dtype, **kwargs
    )
    t0 = time.perf_counter()
    with default_impl(case.attention):
        compiled = step.lower(state, images, targets, key).compile()
    mem = compiled.memory_analysis()
    return {
        "temp_GiB": mem.temp_size_in_bytes / GiB,
        "argument_GiB": mem.argument_size_in_bytes / GiB,
        "output_GiB": mem.output_size_in_bytes / GiB,
        "alias_GiB": mem.alias_size_in_bytes / GiB,
        "compile_s": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", choices=sorted(CASES), action="append", help="repeatable")
    ap.add_argument("--list", action="store_true", help="print the cases and exit")
    for f in dataclasses.fields(Case):  # any setting of the chosen case can be overridden
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            ap.add_argument(flag, type=type(f.default), default=None)
    args = ap.parse_args()
    if args.list or not args.case:
        for name, case in CASES.items():
            print(f"{name:<22} {case}")
        return
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(Case)
        if getattr(args, f.name) is not None
    }
    for name in args.case:
        case = dataclasses.replace(CASES[name], **overrides)
        print(f"{name}: {case}", flush=True)
        r = measure(case)
        print(
            f"  temp {r['temp_GiB']:.3f} GiB   arguments {r['argument_GiB']:.3f} GiB   "
            f"outputs {r['output_GiB']:.3f} GiB   (aliased {r['alias_GiB']:.3f} GiB; "
            f"compiled in {r['compile_s']:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
