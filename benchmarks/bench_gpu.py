#!/usr/bin/env python
"""GPU throughput of HySAC on CLIP ViT-L/14 (+ LoRA r=16): the official-style path vs the fast variants, ONE run.

Towers are built from config with random weights (same architecture and FLOPs as HySAC: CLIP ViT-L/14 vision
tower 224 px / patch 14 and the 12-layer text tower, projections to 768) and wrapped with peft LoRA exactly as in
the paper (r=16, alpha=1, dropout 0.1, targets k_proj, v_proj, out_proj, fc1, fc2, patch_embedding). The LoRA
``B`` matrices are randomised too, so that merging them changes the weights. Everything else is the library's
code: :class:`hysac.backbones.clip.ClipBackbone`, :class:`hysac.model.HySAC` (lifting onto the hyperboloid) and
:class:`hysac.losses.HySACLoss` (all seven paper terms).

Inference variants (model only: random pixels / token ids already on the GPU, batch ``--batch`` = 256):

* ``official``: fp32 weights, eager attention, LoRA unmerged (peft), ``torch.no_grad`` — as the released code runs;
* ``bf16_autocast_sdpa``: fp32 weights, ``torch.autocast(bfloat16)``, SDPA attention, LoRA unmerged, inference_mode;
* ``bf16_merged_sdpa``: ``hysac.fast.optimize_for_gpu(model)`` — LoRA merged, bf16 weights, SDPA;
* ``bf16_merged_sdpa_compile``: ``optimize_for_gpu(model, compile=True)``.

Each fast variant is checked against ``official`` on the same inputs: cosine of the tangent features
``log_map0(x)`` >= 0.999 and relative error of the distance to the origin <= 1e-2.

End-to-end JPEG path (files in, hyperboloid points out), both through ``model.encode_image(paths)``:
``official`` = the plain method (decoding + the Hugging Face CLIP processor in the main process) on the fp32 eager
model; ``fast`` = the method installed by ``optimize_for_gpu`` (decoding / resizing / cropping in ``--workers``
loader processes into pinned uint8 chunks, normalisation on the GPU; :mod:`hysac.fast.loader`) on the fastest
model variant; plus the loader alone (``hysac.fast.pixel_batches``: is the pipeline decode-bound?).

Training (quadruplets/s at ``--train-batch`` = 32 quadruplets, i.e. 64 images + 64 texts per step, all 7 loss terms,
LoRA + the HySAC scalars trainable, AdamW): ``official`` = fp32, eager attention, anomaly detection on, for-each
AdamW; ``fast`` = the trainer's ``perf`` settings (``hysac.train.trainer.apply_perf``: SDPA, ``torch.compile`` on
the towers, activation checkpointing when ``--grad-ckpt``) + bf16 autocast + fused AdamW. Both start from the same
weights and see the same batches (a small fixed pool, cycled, so the loss goes down); LoRA dropout is set to 0 in
both so that the two loss curves differ only by numerics, and the curves are compared step by step. ``fast_large``
times the fast step at ``--fast-train-batch`` quadruplets per step (throughput only).

    python benchmarks/bench_gpu.py                    # on the GPU machine (writes benchmarks/results/gpu.*)
    python benchmarks/bench_gpu.py --tiny --out /tmp/g   # CPU smoke test: tiny towers, few iterations

``--tiny`` numbers are NOT GPU numbers; the tiny run never writes to ``benchmarks/results`` unless told to.
After each section the numbers so far are written to ``gpu.partial.json`` (removed when the run completes), so a
run stopped by a time limit still leaves what it measured.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, versions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
COS_MIN = 0.999
DIST_RTOL = 1e-2

#: CLIP ViT-L/14 (openai/clip-vit-large-patch14) and a tiny stand-in for smoke tests
ARCH = {
    "vit-l-14": {
        "vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu"),
        "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     max_position_embeddings=77, vocab_size=49408, projection_dim=768, hidden_act="quick_gelu",
                     bos_token_id=49406, eos_token_id=49407, pad_token_id=1),
    },
    "tiny": {
        "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       image_size=32, patch_size=8, projection_dim=16, hidden_act="quick_gelu"),
        "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=77, vocab_size=1000, projection_dim=16, hidden_act="quick_gelu",
                     bos_token_id=998, eos_token_id=999, pad_token_id=1),
    },
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------- building
def build_model(arch: dict, attn: str, device: torch.device, seed: int, lora_dropout: float | None = None):
    """HySAC(ClipBackbone(random CLIP towers + paper LoRA)), fp32, on ``device``. Same ``seed`` → same weights."""
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)
    from transformers.utils import logging as hf_logging

    from hysac.backbones.clip import PAPER_LORA, ClipBackbone, apply_lora
    from hysac.model import HySAC

    hf_logging.set_verbosity_error()
    lora = dict(PAPER_LORA)
    if lora_dropout is not None:
        lora["lora_dropout"] = lora_dropout
    torch.manual_seed(seed)
    visual = CLIPVisionModelWithProjection._from_config(CLIPVisionConfig(**arch["vision"]), attn_implementation=attn)
    textual = CLIPTextModelWithProjection._from_config(CLIPTextConfig(**arch["text"]), attn_implementation=attn)
    visual, textual = apply_lora(visual, lora), apply_lora(textual, lora)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in [*visual.named_parameters(), *textual.named_parameters()]:
            if "lora_B" in name:  # peft initialises B to 0 (LoRA = no-op); make it count
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    size = arch["vision"]["image_size"]
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    bb = ClipBackbone(visual, textual, tokenizer=None, image_processor=processor, source="random-init", lora=lora)
    return HySAC(bb, name="hysac-clip-vit-l-14-random").to(device)


def fast_variant(model, device, compile_on: bool, args):
    """The library's GPU fast path on a copy of ``model`` (patch_encode=False: model-only timing)."""
    from hysac.fast import optimize_for_gpu

    m = copy.deepcopy(model)
    return optimize_for_gpu(m, device=device, precision="bf16", attention="sdpa", merge_lora=True,
                            compile=compile_on, compile_backend=args.compile_backend, compile_mode=args.compile_mode,
                            workers=args.workers, image_batch_size=args.batch, text_batch_size=args.batch)


# ------------------------------------------------------------------------------------------------------ data
def random_pixels(n: int, size: int, device, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g).to(device)


def random_tokens(n: int, arch: dict, device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP-like token ids (B,77): BOS, random tokens, EOS at a random length, padding; and the attention mask."""
    t = arch["text"]
    length = t["max_position_embeddings"]
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, t["bos_token_id"] - 1, (n, length), generator=g)
    lens = torch.randint(5, length, (n,), generator=g)
    pos = torch.arange(length)[None]
    ids[:, 0] = t["bos_token_id"]
    ids[pos == lens[:, None]] = t["eos_token_id"]
    mask = (pos <= lens[:, None]).long()
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, t["pad_token_id"]))
    return ids.to(device), mask.to(device)


def make_jpegs(folder: Path, n: int, size=(640, 480), seed: int = 0) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    paths = []
    for i in range(n):
        base = rng.uniform(0, 255, (h // 16 + 1, w // 16 + 1, 3))
        arr = np.kron(base, np.ones((16, 16, 1)))[:h, :w] + rng.normal(0, 8, (h, w, 3))
        p = folder / f"{i:05d}.jpg"
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(p, quality=90)
        paths.append(p)
    return paths


# ---------------------------------------------------------------------------------------------------- timing
def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def time_it(fn, device, warmup: int, iters: int) -> dict:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "times_s": [round(x, 5) for x in times]}


def tangent_checks(model, ref: torch.Tensor, got: torch.Tensor) -> dict:
    from hysac import lorentz as L

    c = model.curvature
    a, b = L.log_map0(ref.double().cpu(), c), L.log_map0(got.double().cpu(), c)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    da, db = model.score(ref.double().cpu()), model.score(got.double().cpu())  # geodesic distance to the origin
    rel = (da - db).abs() / da.clamp(min=1e-12)
    ok = bool(cos.min() >= COS_MIN and rel.max() <= DIST_RTOL)
    return {"cos_min": float(cos.min()), "cos_mean": float(cos.mean()), "dist_rel_err_max": float(rel.max()),
            "passed": ok}


# ------------------------------------------------------------------------------------------------- inference
def encode_fns(model, px, ids, mask, ctx_factory):
    bb = model.backbone

    def images():
        with ctx_factory():
            return model.lift_image(bb.image_features(px).float())

    def texts():
        with ctx_factory():
            return model.lift_text(bb.text_features(ids, mask).float())

    return images, texts


def run_inference(args, arch, device) -> tuple[dict, object]:
    B = args.batch
    size = arch["vision"]["image_size"]
    px = random_pixels(B, size, device, seed=1)
    ids, mask = random_tokens(B, arch, device, seed=2)
    log(f"building CLIP {args.arch_name} towers + LoRA (fp32, eager attention)")
    model = build_model(arch, "eager", device, seed=0).eval()
    out: dict = {}
    refs: dict = {}

    def measure(name: str, m, ctx_factory, note: str) -> None:
        reset_peak(device)
        f_img, f_txt = encode_fns(m, px, ids, mask, ctx_factory)
        ti = time_it(f_img, device, args.warmup, args.iters)
        tt = time_it(f_txt, device, args.warmup, args.iters)
        x_img, x_txt = f_img(), f_txt()
        entry = {"note": note, "images_per_s": round(B / ti["median_s"], 2),
                 "texts_per_s": round(B / tt["median_s"], 2),
                 "timings": {"images": ti, "texts": tt}, "peak_mem_gb": peak_gb(device)}
        if not refs:
            refs.update(image=x_img.detach().float().cpu(), text=x_txt.detach().float().cpu())
        else:
            entry["checks"] = {"image": tangent_checks(m, refs["image"], x_img),
                               "text": tangent_checks(m, refs["text"], x_txt)}
        out[name] = entry
        log(f"  {name}: {entry['images_per_s']} images/s, {entry['texts_per_s']} texts/s"
            + (f", image cos min {entry['checks']['image']['cos_min']:.5f}, text cos min "
               f"{entry['checks']['text']['cos_min']:.5f}" if "checks" in entry else ""))

    bf16 = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731

    def inference_bf16():
        return _stack(torch.inference_mode(), bf16())

    measure("official", model, torch.no_grad, "fp32, eager attention, LoRA unmerged, no_grad")
    from hysac.fast import set_attention

    set_attention(model.backbone, "sdpa")
    measure("bf16_autocast_sdpa", model, inference_bf16, "fp32 weights, bf16 autocast, SDPA, LoRA unmerged")
    merged = fast_variant(model, device, False, args)
    del model
    _free(device)
    measure("bf16_merged_sdpa", merged, torch.inference_mode, "optimize_for_gpu: LoRA merged, bf16 weights, SDPA")
    best = "bf16_merged_sdpa"
    if args.compile != "off":
        compiled = fast_variant(merged, device, True, args)
        t0 = time.perf_counter()
        f_img, f_txt = encode_fns(compiled, px, ids, mask, torch.inference_mode)
        f_img(), f_txt()
        sync(device)
        compile_s = time.perf_counter() - t0
        measure("bf16_merged_sdpa_compile", compiled, torch.inference_mode,
                f"optimize_for_gpu(compile=True): LoRA merged, bf16 weights, SDPA, torch.compile("
                f"backend={args.compile_backend}, mode={args.compile_mode})")
        out["bf16_merged_sdpa_compile"]["compile_s"] = round(compile_s, 1)
        if out["bf16_merged_sdpa_compile"]["images_per_s"] >= out[best]["images_per_s"]:
            best, merged = "bf16_merged_sdpa_compile", compiled
        else:
            del compiled
    return out, (merged, best)


class _stack:
    """Enter several context managers (in order)."""

    def __init__(self, *cms):
        self.cms = cms

    def __enter__(self):
        for cm in self.cms:
            cm.__enter__()

    def __exit__(self, *exc):
        for cm in reversed(self.cms):
            cm.__exit__(*exc)


# ------------------------------------------------------------------------------------------------------ e2e
def run_e2e(args, arch, device, fast_model, official_factory) -> dict:
    from hysac.fast import optimize_for_gpu, pixel_batches

    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="hysac-bench-gpu-") as tmp:
        jpeg_size = (64, 48) if args.tiny else (640, 480)
        distinct = make_jpegs(Path(tmp), min(args.jpegs, args.jpeg_distinct), jpeg_size)
        paths = [distinct[i % len(distinct)] for i in range(args.jpegs)]
        model, best = fast_model
        spec = model.backbone.pixel_spec()
        pin = device.type == "cuda"

        # loader alone: decode + resize + crop in workers, pinned uint8, copy and normalise on the device
        for _ in pixel_batches(paths[: args.batch * 2], spec, device=device, batch_size=args.batch,
                               workers=args.workers):
            pass  # warm-up: page cache
        sync(device)
        t = time.perf_counter()
        n = sum(int(px.shape[0]) for _, px in pixel_batches(paths, spec, device=device, batch_size=args.batch,
                                                               workers=args.workers, dtype=torch.bfloat16))
        sync(device)
        out["loader_only"] = {"images_per_s": round(n / (time.perf_counter() - t), 2), "workers": args.workers,
                              "pin_memory": pin}
        log(f"  loader only ({args.workers} workers): {out['loader_only']['images_per_s']} images/s")

        # fast: the encode_image installed by optimize_for_gpu (patch_encode=True) on the fastest variant
        optimize_for_gpu(model, device=device, merge_lora=False, precision="bf16", attention="keep",
                         workers=args.workers, image_batch_size=args.batch)
        model.encode_image(paths[: args.batch])  # warm-up (and compile, if any, for this shape)
        sync(device)
        t = time.perf_counter()
        x = model.encode_image(paths)
        out["fast"] = {"images_per_s": round(len(paths) / (time.perf_counter() - t), 2), "workers": args.workers,
                       "pin_memory": pin, "model": best, "images": int(x.shape[0])}
        log(f"  e2e fast: {out['fast']['images_per_s']} images/s")

        # official: the plain encode_image (main-process decoding + HF processor) on the fp32 eager model
        n_off = min(len(paths), args.official_jpegs)
        off_model = official_factory()
        off_model.encode_image(paths[:4])
        t = time.perf_counter()
        x = off_model.encode_image(paths[:n_off], batch_size=args.batch)
        out["official"] = {"images_per_s": round(n_off / (time.perf_counter() - t), 2), "workers": 0,
                           "pin_memory": False, "model": "official", "images": int(x.shape[0])}
        log(f"  e2e official: {out['official']['images_per_s']} images/s")
        del off_model
    return out


# -------------------------------------------------------------------------------------------------- training
def run_training(args, arch, device) -> dict:
    from hysac.losses import HySACLoss

    B = args.train_batch
    size = arch["vision"]["image_size"]
    pool = [(random_pixels(2 * B, size, device, seed=100 + k), *random_tokens(2 * B, arch, device, seed=200 + k))
            for k in range(args.train_pool)]
    steps = max(args.train_steps, args.curve_steps)
    loss_fn = HySACLoss()
    out: dict = {}
    setups = [("official", B, pool, steps), ("fast", B, pool, steps)]
    if args.fast_train_batch and args.fast_train_batch != B:
        big = args.fast_train_batch
        big_pool = [(random_pixels(2 * big, size, device, seed=300 + k), *random_tokens(2 * big, arch, device,
                                                                                        seed=400 + k))
                    for k in range(2)]
        setups.append(("fast_large", big, big_pool, args.train_warmup + args.train_steps))
    for name, batch, data, n_steps in setups:
        log(f"training: {name} (batch {batch})")
        try:
            out[name] = _train_one(name, args, arch, device, data, n_steps, loss_fn, batch)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory in one setup: keep the other
            import traceback

            log(f"  {name} failed: {type(e).__name__}: {e}")
            out[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
        _free(device)
    if "losses" not in out["official"] or "losses" not in out["fast"]:
        out["loss_curve"] = {"passed": None, "error": "a training setup failed"}
        return out
    a, b = np.array(out["official"]["losses"][:args.curve_steps]), np.array(out["fast"]["losses"][:args.curve_steps])
    rel = np.abs(a - b) / np.maximum(np.abs(a), 1e-12)
    out["loss_curve"] = {"steps": int(len(a)), "max_abs_diff": float(np.abs(a - b).max()),
                         "max_rel_diff": float(rel.max()), "official_first_last": [float(a[0]), float(a[-1])],
                         "fast_first_last": [float(b[0]), float(b[-1])],
                         "passed": bool(rel.max() <= args.curve_rtol), "rtol": args.curve_rtol}
    return out


def _train_one(name, args, arch, device, pool, steps, loss_fn, B) -> dict:
    """One training setup: throughput and the loss of every step."""
    attn = "eager" if name == "official" else "sdpa"
    model = build_model(arch, attn, device, seed=0, lora_dropout=0.0)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    if name == "official":
        opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.2)
        autocast = nullcontext
        anomaly = lambda: torch.autograd.set_detect_anomaly(True)  # noqa: E731
    else:
        from hysac.train.trainer import apply_perf

        try:
            opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.2, fused=True)
            fused = True
        except (RuntimeError, TypeError):  # pragma: no cover - fused AdamW unsupported here
            opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.2)
            fused = False
        perf = apply_perf(model, {"attention": "sdpa", "compile": args.compile != "off",
                                  "compile_backend": args.compile_backend, "compile_mode": args.compile_mode,
                                  "grad_checkpointing": args.grad_ckpt or False})
        ck = bool(perf["applied"]["grad_checkpointing"])
        # as in the trainer: no autocast weight-cast cache under activation checkpointing
        autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=not ck)  # noqa: E731
        anomaly = nullcontext
    bb = model.backbone

    def step(k: int) -> float:
        px, ids, mask = pool[k % len(pool)]
        with anomaly():
            with autocast():
                img = model.lift_image(bb.image_features(px).float())
                txt = model.lift_text(bb.text_features(ids, mask).float())
            batch = {"I": img[:B], "Is": img[B:], "T": txt[:B], "Ts": txt[B:]}
            total, _ = loss_fn(batch, model.curv_tensor(), model.logit_scale.float().exp())
            opt.zero_grad(set_to_none=True)
            total.backward()
        opt.step()
        model.clamp_scalars_()
        return float(total.detach())

    reset_peak(device)
    losses, times = [], []
    t_first = time.perf_counter()
    for k in range(steps):
        sync(device)
        t = time.perf_counter()
        losses.append(step(k))
        sync(device)
        times.append(time.perf_counter() - t)
        if k == 0:
            first = time.perf_counter() - t_first
    timed = times[args.train_warmup:args.train_warmup + args.train_steps] or times[-1:]
    med = statistics.median(timed)
    res = {"quadruplets_per_s": round(B / med, 2), "step_s_median": round(med, 5),
           "first_step_s": round(first, 2), "losses": [round(x, 6) for x in losses],
           "trainable_params": n_train, "peak_mem_gb": peak_gb(device),
           "batch": B,
           "setup": ("fp32, eager attention, anomaly detection, AdamW (for-each)" if name == "official" else
                     f"apply_perf: bf16 autocast, SDPA, AdamW(fused={fused}), torch.compile="
                     f"{args.compile if args.compile == 'off' else args.compile_backend}, activation checkpointing="
                     f"{args.grad_ckpt or 'off'}, batch {B}")}
    log(f"  {res['quadruplets_per_s']} quadruplets/s, losses {res['losses'][:3]} ...")
    model = opt = None  # frees the GPU memory before the next section (the closures above are done)
    return res


# ------------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny towers, few iterations (CPU smoke test)")
    ap.add_argument("--device", default=None, help="default: cuda if available (required unless --tiny)")
    ap.add_argument("--batch", type=int, default=None, help="inference batch (default 256; tiny 8)")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--train-batch", type=int, default=None, help="quadruplets per step (default 32; tiny 4)")
    ap.add_argument("--train-steps", type=int, default=None, help="timed training steps")
    ap.add_argument("--train-warmup", type=int, default=None)
    ap.add_argument("--curve-steps", type=int, default=None, help="steps of the loss-curve comparison")
    ap.add_argument("--curve-rtol", type=float, default=0.05, help="max relative loss difference per step")
    ap.add_argument("--train-pool", type=int, default=4, help="distinct batches cycled during training")
    ap.add_argument("--fast-train-batch", type=int, default=None,
                    help="also time the fast step at this batch (default 128; tiny 8; 0: skip)")
    ap.add_argument("--grad-ckpt", type=int, default=None,
                    help="activation checkpointing in the fast step: every N-th layer (default off)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--jpegs", type=int, default=None, help="images in the end-to-end pass (default 2048)")
    ap.add_argument("--jpeg-distinct", type=int, default=256, help="distinct JPEG files (the rest repeat them)")
    ap.add_argument("--official-jpegs", type=int, default=None, help="images in the official e2e pass (512)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default min(16, CPUs))")
    ap.add_argument("--compile", choices=("on", "off"), default="on")
    ap.add_argument("--compile-backend", default=None, help="default inductor (tiny: eager, a fast smoke test)")
    ap.add_argument("--compile-mode", default=None, help="e.g. max-autotune-no-cudagraphs (default: default)")
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--out", default=None, help="result folder (default benchmarks/results; --tiny: required)")
    args = ap.parse_args(argv)

    tiny = args.tiny
    d = (lambda full, small: small if tiny else full)  # noqa: E731
    args.batch = args.batch or d(256, 8)
    args.iters = args.iters or d(10, 2)
    args.warmup = args.warmup if args.warmup is not None else d(3, 1)
    args.train_batch = args.train_batch or d(32, 4)
    args.fast_train_batch = args.fast_train_batch if args.fast_train_batch is not None else d(128, 8)
    args.train_steps = args.train_steps or d(10, 2)
    args.train_warmup = args.train_warmup if args.train_warmup is not None else d(3, 1)
    args.curve_steps = args.curve_steps or d(30, 3)
    args.jpegs = args.jpegs or d(2048, 16)
    args.official_jpegs = args.official_jpegs or d(512, 8)
    args.workers = args.workers if args.workers is not None else d(min(16, os.cpu_count() or 1), 2)
    args.compile_backend = args.compile_backend or d("inductor", "eager")
    args.arch_name = "tiny" if tiny else "vit-l-14"
    arch = ARCH[args.arch_name]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not tiny:
        ap.error("no CUDA device: the full benchmark needs a GPU (use --tiny for a CPU smoke test)")
    if tiny and args.out is None:
        ap.error("--tiny needs --out (tiny numbers must not land in benchmarks/results)")
    out_dir = Path(args.out or RESULTS)

    info = machine()
    info.update(versions("transformers", "peft", "numpy", "PIL"))
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_mem_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    results: dict = {"machine": info, "tiny": tiny, "device": str(device), "arch": args.arch_name,
                     "settings": {k: v for k, v in vars(args).items() if k not in ("out",)}}
    t_all = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / "gpu.partial.json"

    def checkpoint() -> None:
        """What is measured so far, in case a later section outlives the run's time limit."""
        partial.write_text(json.dumps(results, indent=2))

    inf, fast_model = run_inference(args, arch, device)
    results["inference"] = inf
    checkpoint()
    # the later sections must not lose what was measured before them (one-shot runs on a borrowed GPU)
    if not args.no_e2e:
        log("end-to-end JPEG path")
        results["e2e"] = _guarded("e2e", lambda: run_e2e(args, arch, device, fast_model,
                                                         lambda: build_model(arch, "eager", device, seed=0).eval()))
        checkpoint()
    fast_model = None  # frees the GPU memory before the training section
    _free(device)
    if not args.no_train:
        results["train"] = _guarded("train", lambda: run_training(args, arch, device))
        _free(device)

    off = inf["official"]
    best_img = max((k for k in inf if k != "official"), key=lambda k: inf[k]["images_per_s"])
    best_txt = max((k for k in inf if k != "official"), key=lambda k: inf[k]["texts_per_s"])
    results["speedup"] = {
        "images": round(inf[best_img]["images_per_s"] / off["images_per_s"], 2), "images_variant": best_img,
        "texts": round(inf[best_txt]["texts_per_s"] / off["texts_per_s"], 2), "texts_variant": best_txt}
    e2e, train = results.get("e2e", {}), results.get("train", {})
    if "fast" in e2e and "official" in e2e:
        results["speedup"]["e2e_images"] = round(e2e["fast"]["images_per_s"] / e2e["official"]["images_per_s"], 2)
    if "fast" in train and "official" in train:
        results["speedup"]["train"] = round(train["fast"]["quadruplets_per_s"]
                                            / train["official"]["quadruplets_per_s"], 2)
        if "quadruplets_per_s" in train.get("fast_large", {}):
            results["speedup"]["train_large_batch"] = round(train["fast_large"]["quadruplets_per_s"]
                                                            / train["official"]["quadruplets_per_s"], 2)
    checks = [c["passed"] for v in inf.values() for c in v.get("checks", {}).values()]
    results["checks"] = {"cos_min_required": COS_MIN, "dist_rtol": DIST_RTOL, "inference_passed": all(checks),
                         "loss_curve_passed": train.get("loss_curve", {}).get("passed"),
                         "errors": {k: results[k]["error"] for k in ("e2e", "train")
                                    if isinstance(results.get(k), dict) and "error" in results[k]}}
    results["total_s"] = round(time.perf_counter() - t_all, 1)

    (out_dir / "gpu.json").write_text(json.dumps(results, indent=2))
    md = render_md(results)
    (out_dir / "gpu.md").write_text(md)
    partial.unlink(missing_ok=True)
    print(md)
    return 0 if results["checks"]["inference_passed"] else 1


def _guarded(section: str, fn) -> dict:
    """Run one benchmark section; an exception (e.g. CUDA out of memory) is recorded instead of raised."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - keep the other sections' numbers
        import traceback

        log(f"{section} failed: {type(e).__name__}: {e}")
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}


def _free(device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def render_md(r: dict) -> str:
    m = r["machine"]
    where = (f"{m.get('gpu')} ({m.get('gpu_mem_gb')} GiB), CUDA {m.get('cuda')}" if r["device"].startswith("cuda")
             else "CPU")
    lines = ["# GPU benchmark: HySAC on CLIP ViT-L/14 + LoRA r=16, official-style vs fast variants", ""]
    if r["tiny"]:
        lines += ["**TINY SMOKE RUN (tiny random towers, few iterations, " + r["device"] + "): these are not GPU "
                  "numbers.** The real numbers come from a full run on an H100 "
                  "(`python benchmarks/bench_gpu.py`).", ""]
    else:
        lines += [f"Measured on {where}: numbers from a single full run of `benchmarks/bench_gpu.py` "
                  "(random-init towers, same architecture/FLOPs as HySAC).", ""]
    lines += [f"- date: {m['date']}; host CPU: {m['cpu']} ({m['cpu_count']} logical CPUs); {m['platform']}",
              f"- torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}, numpy {m['numpy']}, "
              f"pillow {m['PIL']}" + (f", cuDNN {m.get('cudnn')}, TF32 matmul {m.get('tf32_matmul')}"
                                      if "cudnn" in m else ""),
              f"- arch {r['arch']}, inference batch {r['settings']['batch']}, train batch "
              f"{r['settings']['train_batch']} quadruplets, total run {r['total_s']} s", "",
              "## Inference (model only, batch on device)", "",
              "| variant | images/s | texts/s | peak mem GiB | image cos min | text cos min | dist rel err max |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, v in r["inference"].items():
        c = v.get("checks")
        lines.append(
            f"| {name} | {v['images_per_s']:.1f} | {v['texts_per_s']:.1f} | {v['peak_mem_gb']} | "
            + (f"{c['image']['cos_min']:.5f} | {c['text']['cos_min']:.5f} | "
               f"{max(c['image']['dist_rel_err_max'], c['text']['dist_rel_err_max']):.2e} |" if c else
               "reference | reference | reference |"))
    lines += ["", "Variants: " + "; ".join(f"**{k}** = {v['note']}" for k, v in r["inference"].items()), ""]
    for section in ("e2e", "train"):
        if isinstance(r.get(section), dict) and "error" in r[section]:
            lines += [f"**{section} failed**: `{r[section]['error']}`", ""]
    if "e2e" in r and "error" not in r["e2e"]:
        e = r["e2e"]
        lines += ["## End-to-end JPEG → hyperboloid points", "",
                  "| path | images/s | workers | pinned | model |", "|---|---:|---:|---|---|",
                  f"| official (main-process decode, fp32) | {e['official']['images_per_s']:.1f} | 0 | no | official |",
                  f"| fast (worker decode, pinned uint8, GPU normalise) | {e['fast']['images_per_s']:.1f} | "
                  f"{e['fast']['workers']} | {e['fast']['pin_memory']} | {e['fast']['model']} |",
                  f"| loader alone | {e['loader_only']['images_per_s']:.1f} | {e['loader_only']['workers']} | "
                  f"{e['loader_only']['pin_memory']} | — |", ""]
    if "train" in r and "error" not in r["train"]:
        t = r["train"]
        lc = t["loss_curve"]
        lines += ["## Training step (all 7 HySAC loss terms)", "",
                  "| setup | quadruplets/s | step s | first step s | peak mem GiB |", "|---|---:|---:|---:|---:|",
                  *(f"| {k}: {t[k]['setup']} | {t[k]['quadruplets_per_s']:.2f} | {t[k]['step_s_median']:.4f} | "
                    f"{t[k]['first_step_s']} | {t[k]['peak_mem_gb']} |" if "error" not in t[k] else
                    f"| {k}: FAILED `{t[k]['error']}` | | | | |"
                    for k in ("official", "fast", "fast_large") if k in t), ""]
        if "error" not in lc:
            lines += [f"Loss curves ({lc['steps']} steps, same init and batches, LoRA dropout 0): official "
                      f"{lc['official_first_last'][0]:.4f} → {lc['official_first_last'][1]:.4f}, fast "
                      f"{lc['fast_first_last'][0]:.4f} → {lc['fast_first_last'][1]:.4f}; "
                      f"max |Δ| {lc['max_abs_diff']:.2e}, max relative {lc['max_rel_diff']:.2e} "
                      f"(tolerance {lc['rtol']}): "
                      f"{'pass' if lc['passed'] else 'FAIL'}.", ""]
    s = r["speedup"]
    lines += ["## Speed-ups over official", "", "- " + ", ".join(f"{k}: {v}" for k, v in s.items()),
              f"- checks: inference {r['checks']['inference_passed']} (cos >= {r['checks']['cos_min_required']}, "
              f"distance rel err <= {r['checks']['dist_rtol']}), loss curve {r['checks']['loss_curve_passed']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
