"""Where a tracked frame's time goes: the image encoder and the memory attention over a full
bank, sam-jax against the ultralytics reference's own modules, interleaved in one process.

A sam2.1_t frame at 1024 px, once every memory slot is in use, is one image encoding plus
the memory attention over 7 frames of 64x64 memory tokens and 16 object pointers (4 tokens
each); the memory encoder, the mask decoder and the output resizing are the small rest
(compare the sum with `bench_video.py`'s seconds per frame). Same random weights and inputs
on both sides; medians of `--runs` calls each, called in turn after one warm-up call.

Last, the rate a speed-up of `--target` (1.5) on the two parts would ask for: sam-jax's
products in both (benchmarks/flops.py) over the reference's time divided by the target,
against a 2048^3 product's rate measured in the same run.

Run: .venv/bin/python benchmarks/video_parts.py [--runs 3] [--target 1.5]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--target", type=float, default=1.5, help="speed-up to size the rate for")
    args = ap.parse_args()

    import jax
    import torch
    from bench_video import build_reference
    from common import full_bank_memory_attention, interleaved_medians
    from flops import encoder_gflop, peak_gflops, program_gflop

    from sam_jax.checkpoint import build_from_config, variable_shapes
    from sam_jax.convert.keymap import state_dict_to_variables

    torch.set_num_threads(os.cpu_count() or 1)
    cfg, ref = build_reference(1024)
    model = build_from_config(cfg)
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    params = jax.device_put(state_dict_to_variables(sd, variable_shapes(model)))

    image = np.random.default_rng(0).standard_normal((1, cfg.image_size, cfg.image_size, 3))
    image = image.astype(np.float32)
    attend, (curr, curr_pos, mem, mem_pos, valid) = full_bank_memory_attention(model)
    n_ptr = 4 * cfg.max_obj_ptrs_in_encoder
    encode = jax.jit(lambda v, x: model.apply(v, x, method="encode_image"))
    encode = encode.lower(params, image).compile()
    mem_args = (params, curr, curr_pos, mem, mem_pos, valid)
    memory = jax.jit(attend).lower(*mem_args).compile()

    seq_first = lambda a: torch.from_numpy(np.ascontiguousarray(a[0][:, None]))  # noqa: E731
    t_image = torch.from_numpy(np.ascontiguousarray(image.transpose(0, 3, 1, 2)))
    t_curr, t_curr_pos, t_mem, t_mem_pos = map(seq_first, (curr, curr_pos, mem, mem_pos))

    def ref_memory():
        return ref.memory_attention(t_curr, t_mem, t_curr_pos, t_mem_pos, num_obj_ptr_tokens=n_ptr)

    with torch.no_grad():
        ours = np.asarray(memory(*mem_args))[0]
        theirs = ref_memory().numpy()[:, 0]
    err = np.abs(ours - theirs).max() / np.abs(theirs).max()
    print(f"memory attention output: max |ours - ref| / max |ref| = {err:.1e}")

    calls = {
        "image encoder": (
            lambda: jax.block_until_ready(encode(params, image)),
            lambda: ref.forward_image(t_image),
        ),
        "memory attention (full bank)": (
            lambda: jax.block_until_ready(memory(*mem_args)),
            ref_memory,
        ),
    }
    with torch.no_grad():
        medians = {name: interleaved_medians(*fns, args.runs) for name, fns in calls.items()}
    total = [0.0, 0.0]
    for name, (a, b) in medians.items():
        total[0] += a
        total[1] += b
        print(f"{name:<30} sam-jax {a:7.3f} s   reference {b:7.3f} s   x{b / a:.2f}")
    print(
        f"{'sum':<30} sam-jax {total[0]:7.3f} s   reference {total[1]:7.3f} s   "
        f"x{total[1] / total[0]:.2f}"
    )
    # What a given speed-up asks of this machine: sam-jax's products (benchmarks/flops.py;
    # the reference's memory attention multiplies more, its values at width 256) at the
    # rate that time implies, against a 2048^3 product's rate measured now.
    gflop = {
        "image encoder": encoder_gflop(model),
        "memory attention (full bank)": program_gflop(attend, *mem_args),
    }
    peak = peak_gflops()
    for name, (a, _) in medians.items():
        print(
            f"{name:<30} {gflop[name]:6.1f} GFLOP of products, sam-jax {gflop[name] / a:4.0f} GFLOP/s"
        )
    need = sum(gflop.values()) / (total[1] / args.target)
    print(
        f"a 2048^3 product: {peak:.0f} GFLOP/s. x{args.target} on the sum needs "
        f"{sum(gflop.values()):.0f} GFLOP in {total[1] / args.target:.2f} s: {need:.0f} GFLOP/s, "
        f"{need / peak:.0%} of it"
    )


if __name__ == "__main__":
    main()
