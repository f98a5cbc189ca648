"""Batched geodesic traversal vs a one-vector-per-call loop (official style), in one run, on CPU.

    python benchmarks/bench_traversal.py [--n 100000] [--dim 256] [--loop-n 2000]

The loop baseline is the released single-vector traversal written from its formula (spec §5.2): distance from the
root, `tau = b + tanh((b - alpha)/c) + 1`, then `tau * x / ||x||` when beyond. The loop is timed on `--loop-n`
vectors and reported per vector; the batched call does all `--n` in one call.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write  # noqa: E402

from hysac import lorentz as L  # noqa: E402
from hysac import safety as S  # noqa: E402


def official_one(emb: torch.Tensor, bound: float, curv: torch.Tensor, alpha: float = 0.8) -> torch.Tensor:
    d = L.pairwise_dist(torch.zeros_like(emb), emb, curv)
    tau = bound + (math.tanh((bound - alpha) / float(curv)) + 1)
    if d > tau:
        return tau * emb / torch.norm(emb, dim=-1, keepdim=True)
    return emb


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--loop-n", type=int, default=2_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    curv = torch.tensor(0.3)
    bound = 0.2
    x = L.exp_map0(torch.randn(args.n, args.dim, generator=g) * (1.2 / math.sqrt(args.dim)), curv)
    tau = S.official_tau(bound, float(curv))

    # batched: best of `repeats`
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        S.traverse(x, curv, tau, mode="paper")
        times.append(time.perf_counter() - t0)
    batched_s = min(times)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        S.traverse(x, curv, tau)
        times.append(time.perf_counter() - t0)
    batched_geo_s = min(times)

    # loop baseline on a prefix (one vector per call)
    sub = x[: args.loop_n]
    t0 = time.perf_counter()
    ref = torch.cat([official_one(v[None], bound, curv) for v in sub])
    loop_s = time.perf_counter() - t0
    ok = torch.allclose(S.traverse(sub, curv, tau, mode="paper"), ref, atol=1e-5)

    batched_vps = args.n / batched_s
    loop_vps = args.loop_n / loop_s
    payload = {
        "machine": machine(),
        "n": args.n, "dim": args.dim, "loop_n": args.loop_n,
        "batched_paper.vectors_per_s": batched_vps,
        "batched_geodesic.vectors_per_s": args.n / batched_geo_s,
        "loop_official.vectors_per_s": loop_vps,
        "speedup_batched_vs_loop": batched_vps / loop_vps,
        "outputs_match_official": bool(ok),
    }
    m = payload["machine"]
    md = f"""# Traversal throughput (CPU)

{m['date']} · {m['cpu']} · {m['cpu_count']} cores · torch {m['torch']} · Python {m['python']} · load average {m['load_avg_1m']:.1f} at start (shared machine; the ratio is measured in one process)

`python benchmarks/bench_traversal.py --n {args.n} --dim {args.dim} --loop-n {args.loop_n}`

| path | vectors/s |
|---|---|
| batched, `mode="paper"` (one call, {args.n:,} vectors) | {batched_vps:,.0f} |
| batched, geodesic (one call) | {args.n / batched_geo_s:,.0f} |
| official-style loop, one vector per call ({args.loop_n:,} vectors) | {loop_vps:,.0f} |

Batched is **{batched_vps / loop_vps:,.0f}×** the loop; batched paper-mode outputs equal the loop's: {ok}.
"""
    write("traversal", payload, md)


if __name__ == "__main__":
    main()
