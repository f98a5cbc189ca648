"""CPU fast path for the offline ``mini`` model (MiniLM-L6 text tower + EfficientNet-Lite0 image tower).

What is slow in the plain path, and what this module does about it:

* **Padding** (the largest text lever). ``HySAC.encode_text`` tokenises per chunk in arrival order, so one long
  I2P prompt makes its whole chunk run at up to 128 tokens while the median text has ~13. :func:`~hysac.fast.text.encode_text_fast`
  tokenises everything once, **sorts by token length**, encodes length-homogeneous batches (dynamic padding) and
  restores the input order. This is the same computation (padding is masked out); only float summation order
  changes (cosine to the plain path > 0.99999).
* **Tower runtime.** :func:`optimize_for_cpu` installs faster stand-ins ("engines", see
  :meth:`hysac.backbones.mini.MiniBackbone.set_inference_engines`) for the *frozen* towers:

  - ``backend="onnxruntime"`` (default when ``onnx`` and ``onnxruntime`` are installed): both towers exported to
    ONNX (cached under ``~/.cache/hysac/onnx``) and run by ONNX Runtime in fp32 — same numbers as PyTorch
    (cos > 0.99999), several times faster for the EfficientNet (fused conv + BN + clip, NCHWc kernels).
  - ``backend="torch"``: the image tower as :class:`FusedEfficientNetLite` (BatchNorm folded into the convs, the
    TF-"same" ``ZeroPad2d`` copies turned into conv padding where symmetric, ReLU6 in place; fp32) and the text
    tower as it is.

  ``text_precision`` picks the text tower's arithmetic: ``"auto"`` / ``"fp32"`` (exact: the default), ``"bf16"``
  (opt-in: a torch copy of the tower with bf16 GEMMs, fp32 elsewhere — the fastest text path on CPUs with native
  bf16, tangent cosine ≈ 0.9999, distances within 1 %, AUROC unchanged) or ``"int8"`` (dynamic quantisation with
  ``torch.ao.quantization.quantize_dynamic``, per-channel weights). **int8 is not accurate enough for this
  model**: MiniLM's activation outliers leave a tangent-feature cosine of only ~0.88-0.95 to fp32 and distances
  off by up to ~35 % (see ``benchmarks/results/cpu.md``), so it is never chosen automatically.
* **Autograd bookkeeping.** The fast encoders run under :func:`torch.inference_mode` and return ordinary tensors.
* **Image decoding.** :func:`encode_image_fast` decodes and preprocesses the next batch in a background thread
  (PIL and ONNX Runtime release the GIL) while the tower runs on the current one; the pixels are exactly those of
  the plain path.
* **Threads.** ``threads=`` sets ``torch.set_num_threads`` (process-wide) and the ONNX Runtime intra-op pool; by
  default both use PyTorch's current count (one thread per physical core).

Usage::

    from hysac.model import load_model
    from hysac.fast import optimize_for_cpu

    model = optimize_for_cpu(load_model("hysac-mini"))   # in place; returns the model
    x = model.encode_text(texts)                          # now length-bucketed, engines, inference_mode
    v = model.encode_image(paths)                         # prefetching decode thread

``optimize_for_cpu`` makes ``model.encode_text`` / ``model.encode_image`` call :func:`encode_text_fast` /
:func:`encode_image_fast` (instance attributes; the class is untouched), so code that only uses the model API (CLI,
service, index) gets the fast path. :func:`restore_cpu_defaults` undoes everything. The model's weights, state
dict and checkpoints are never changed: the engines are kept beside the towers, and are used only for CPU inputs
that need no gradient through the tower (the heads still train on their output).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from .text import check_batch_size, patched_encode_text, progress_bar

__all__ = [
    "FusedEfficientNetLite",
    "OrtEngine",
    "TorchImageEngine",
    "TorchTextEngine",
    "cpu_supports_bf16",
    "encode_image_fast",
    "onnxruntime_available",
    "optimize_for_cpu",
    "restore_cpu_defaults",
]

#: default batch size of the bucketed text path (texts of one batch have about the same length)
TEXT_BATCH = 64
#: default batch size of the image path
IMAGE_BATCH = 32
#: ONNX opset used for the exports
ONNX_OPSET = 17
BACKENDS = ("auto", "onnxruntime", "torch")
TEXT_PRECISIONS = ("auto", "fp32", "bf16", "int8")


# ---------------------------------------------------------------------------------------------------------------
# capability checks
# ---------------------------------------------------------------------------------------------------------------

def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX), so bf16 GEMMs beat fp32 ones."""
    cpu = getattr(torch, "cpu", None)
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(cpu, name, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # noqa: BLE001 - private helpers; absent or failing means "no"
            pass
    return False


def onnxruntime_available() -> bool:
    """True when ``onnxruntime`` (to run) and ``onnx`` (needed by ``torch.onnx.export``) can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except Exception:  # noqa: BLE001 - broken installs count as missing
        return False
    return True


# ---------------------------------------------------------------------------------------------------------------
# optimize_for_cpu / restore_cpu_defaults
# ---------------------------------------------------------------------------------------------------------------

def optimize_for_cpu(model, *, backend: str = "auto", text_precision: str = "auto", threads: int | None = None,
                     cache_dir: str | os.PathLike | None = None, patch_encode: bool = True,
                     text_batch_size: int = TEXT_BATCH, image_prefetch: bool = True):
    """Make ``model`` (a :class:`~hysac.model.HySAC`) fast on the CPU, **in place**, and return it.

    * ``backend``: ``"onnxruntime"``, ``"torch"`` or ``"auto"`` (ONNX Runtime when :func:`onnxruntime_available`).
    * ``text_precision``: ``"auto"`` / ``"fp32"`` — exact (ONNX Runtime fp32 with that backend, else the torch
      tower itself); ``"bf16"`` — torch text tower with bf16 GEMMs (fastest text path on CPUs with native bf16,
      see :func:`cpu_supports_bf16`; distances move by < 1 %, AUROC unchanged); ``"int8"`` — dynamic int8
      quantisation (fast but **not accurate enough** for the safety score, see the module docstring).
    * ``threads``: ``torch.set_num_threads(threads)`` (process-wide) and the ONNX Runtime pool size.
    * ``cache_dir``: where exported ONNX files are kept (default ``~/.cache/hysac/onnx``, see
      :func:`hysac.data.default_cache_dir`); an unwritable cache falls back to exporting in memory.
    * ``patch_encode``: make ``model.encode_text`` / ``model.encode_image`` the fast encoders.

    Only the mini backend's frozen towers get engines; on other backbones (or towers with unfrozen layers) only
    the encode patch and thread setting apply. Calling it again replaces the previous settings.
    Raises :class:`~hysac.errors.InputError` for bad options, a model not on the CPU, or ``backend="onnxruntime"``
    without onnxruntime/onnx.
    """
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if text_precision not in TEXT_PRECISIONS:
        raise InputError(f"text_precision must be one of {TEXT_PRECISIONS}, got {text_precision!r}")
    if threads is not None:
        if isinstance(threads, bool) or int(threads) != threads or threads < 1:
            raise InputError(f"threads must be a positive integer, got {threads!r}")
        torch.set_num_threads(int(threads))
    if model.device.type != "cpu":
        raise InputError(f"optimize_for_cpu: the model is on {model.device}; move it to the CPU first")
    if backend == "auto":
        backend = "onnxruntime" if onnxruntime_available() else "torch"
    elif backend == "onnxruntime" and not onnxruntime_available():
        raise InputError("backend='onnxruntime' needs the packages onnxruntime and onnx (pip install onnxruntime "
                         "onnx), or use backend='torch'")
    n_threads = torch.get_num_threads()
    model.eval()
    bb = model.backbone
    info: dict[str, Any] = {"backend": backend, "threads": n_threads, "text": None, "image": None}
    if hasattr(bb, "set_inference_engines"):
        bb.set_inference_engines(None, None)  # a fresh start when called again
        text_engine = image_engine = None
        trains_text = bb.text_trainable_from() is not None
        if trains_text and patch_encode:  # inference: LoRA folded into the weights the engine exports
            model.merge_lora()
            trains_text = bb.text_trainable_from() is not None
        if not getattr(bb, "unfreeze_text_layers", 0) and not trains_text:
            precision = text_precision
            if backend == "onnxruntime" and precision in ("auto", "fp32"):
                precision = "ort"
            elif precision == "auto":
                precision = "fp32"  # the default fast path is exact; bf16 / int8 are opt-in
            if precision == "ort":
                text_engine = OrtEngine.for_text_model(bb.text_model, threads=n_threads, cache_dir=cache_dir)
                info["text"] = "onnxruntime-fp32"
            elif precision != "fp32":
                text_engine = TorchTextEngine(bb.text_model, precision)
                info["text"] = f"torch-{precision}"
            else:
                info["text"] = "torch-fp32"
        if not getattr(bb, "unfreeze_image_blocks", 0) and _is_efficientnet_lite(bb.image_model):
            if backend == "onnxruntime":
                image_engine = OrtEngine.for_image_model(bb.image_model, threads=n_threads, cache_dir=cache_dir)
                info["image"] = "onnxruntime-fp32"
            else:
                image_engine = TorchImageEngine(bb.image_model)
                info["image"] = "torch-fused-fp32"
        bb.set_inference_engines(text=text_engine, image=image_engine)
    _unpatch(model)
    if patch_encode:
        # instance attributes shadow the class methods for this model only
        object.__setattr__(model, "encode_text", patched_encode_text(model, int(text_batch_size)))
        object.__setattr__(model, "encode_image", functools.partial(
            _encode_image_method, model, prefetch=bool(image_prefetch)))
    info["patched_encode"] = bool(patch_encode)
    model.__dict__.pop("_fast_gpu", None)
    object.__setattr__(model, "_fast_cpu", info)
    return model


def restore_cpu_defaults(model):
    """Undo :func:`optimize_for_cpu` (engines and encode patch; the thread count is left as it is). In place."""
    bb = model.backbone
    if hasattr(bb, "set_inference_engines"):
        bb.set_inference_engines(None, None)
    _unpatch(model)
    model.__dict__.pop("_fast_cpu", None)
    return model


def _unpatch(model) -> None:
    for name in ("encode_text", "encode_image"):
        model.__dict__.pop(name, None)


def _encode_image_method(model, images, *, project: bool = True, batch_size: int = IMAGE_BATCH,
                         progress: bool = False, prefetch: bool = True) -> Tensor:
    return encode_image_fast(model, images, project=project, batch_size=batch_size, progress=progress,
                             prefetch=prefetch)


# ---------------------------------------------------------------------------------------------------------------
# images: prefetching encoder
# ---------------------------------------------------------------------------------------------------------------

def encode_image_fast(model, images, *, batch_size: int = IMAGE_BATCH, project: bool = True,
                      progress: bool = False, prefetch: bool = True) -> Tensor:
    """``model.encode_image`` under ``torch.inference_mode``; with ``prefetch``, the files / PIL images of the next
    batch are decoded and preprocessed in a background thread while the tower runs on the current batch. Same
    pixels, output and order as the plain method."""
    from ..images import load_image

    batch_size = check_batch_size(batch_size)
    bb = model.backbone
    if isinstance(images, Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"pixel tensor must have shape (B,3,H,W), got {tuple(images.shape)}")
        from .. import lorentz as L

        L.check_finite(images, "pixel tensor")
        n = int(images.shape[0])
        batches: Iterable[Tensor] = (images[i:i + batch_size] for i in range(0, n, batch_size))
    else:
        if isinstance(images, (str, os.PathLike)) or hasattr(images, "mode"):
            images = [images]
        items = list(images)
        n = len(items)

        def prep(i: int) -> Tensor:
            return bb.preprocess_images([load_image(s) for s in items[i:i + batch_size]])

        starts = range(0, n, batch_size)
        batches = _prefetched(prep, starts) if prefetch and n > batch_size else (prep(i) for i in starts)
    if n == 0:
        return torch.zeros(0, model.embed_dim)
    device = model.device
    bar = progress_bar(progress, n, "images")
    out: list[Tensor] = []
    with torch.inference_mode():
        for px in batches:
            feats = bb.image_features(px.to(device)).float()
            out.append((model.lift_image(feats) if project else feats).cpu())
            if bar is not None:
                bar.update(int(px.shape[0]))
    if bar is not None:
        bar.close()
    return torch.cat(out)  # outside inference mode: an ordinary tensor


def _prefetched(fn: Callable[[int], Tensor], starts: Iterable[int]) -> Iterator[Tensor]:
    """fn(start) for each start, computing the next one in a worker thread while the caller uses the current."""
    starts = list(starts)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hysac-prefetch") as pool:
        pending = pool.submit(fn, starts[0])
        try:
            for nxt in starts[1:]:
                current = pending.result()
                pending = pool.submit(fn, nxt)
                yield current
            yield pending.result()
        finally:
            pending.cancel()


# ---------------------------------------------------------------------------------------------------------------
# torch engines
# ---------------------------------------------------------------------------------------------------------------

class _BF16Linear(nn.Module):
    """Linear layer with bf16 weights: bf16 GEMM (fp32 accumulation), fp32 bias and output."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().to(torch.bfloat16).contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x.to(torch.bfloat16), self.weight).float()
        return y if self.bias is None else y.add_(self.bias)


def _swap_linears(module: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, make(child))
        else:
            _swap_linears(child, make)


class TorchTextEngine:
    """Mean-pooled MiniLM features (B,384) from a copy of the text tower whose transformer-layer Linear layers run
    in ``precision`` (``"fp32"``, ``"bf16"`` or ``"int8"``); the embedding table is shared, not copied."""

    def __init__(self, text_model: nn.Module, precision: str = "bf16") -> None:
        if precision not in ("fp32", "bf16", "int8"):
            raise InputError(f"text engine precision must be fp32, bf16 or int8, got {precision!r}")
        memo = {id(text_model.embeddings): text_model.embeddings} if hasattr(text_model, "embeddings") else {}
        model = copy.deepcopy(text_model, memo).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        layers = model.encoder.layer
        if precision == "bf16":
            for layer in layers:
                _swap_linears(layer, _BF16Linear)
        elif precision == "int8":
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            with warnings.catch_warnings():
                # the eager-mode torch.ao.quantization API is deprecated in favour of torchao, but still works
                warnings.simplefilter("ignore")
                for i, layer in enumerate(layers):
                    layers[i] = quantize_dynamic(layer, {nn.Linear: per_channel_dynamic_qconfig},
                                                 dtype=torch.qint8)
        self.model = model
        self.precision = precision

    def __call__(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        from ..backbones.mini import mean_pool

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        with torch.no_grad():  # not inference_mode: callers may train heads on the output
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return mean_pool(hidden.float(), attention_mask)

    def __repr__(self) -> str:
        return f"TorchTextEngine(precision={self.precision!r})"


class TorchImageEngine:
    """Pooled EfficientNet-Lite features (B,C) from :class:`FusedEfficientNetLite` (fp32)."""

    def __init__(self, image_model: nn.Module) -> None:
        self.model = FusedEfficientNetLite(image_model)

    def __call__(self, pixel_values: Tensor) -> Tensor:
        with torch.no_grad():
            return self.model(pixel_values.float())

    def __repr__(self) -> str:
        return "TorchImageEngine(fused fp32)"


# ---------------------------------------------------------------------------------------------------------------
# ONNX Runtime engines
# ---------------------------------------------------------------------------------------------------------------

class _TextPool(nn.Module):
    def __init__(self, text_model: nn.Module) -> None:
        super().__init__()
        self.text_model = text_model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        from ..backbones.mini import mean_pool

        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)


class _ImagePool(nn.Module):
    def __init__(self, image_model: nn.Module) -> None:
        super().__init__()
        self.image_model = image_model

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.image_model.extract_features(pixel_values).mean(dim=(2, 3))


def _fingerprint(kind: str, module: nn.Module) -> str:
    """Content hash of a tower (weights + versions): the name of its cached ONNX file."""
    import transformers

    h = hashlib.sha256(f"{kind}|torch={torch.__version__}|transformers={transformers.__version__}|"
                       f"opset={ONNX_OPSET}".encode())
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(str(tuple(value.shape)).encode())
        h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]


def _export(wrapper: nn.Module, args: tuple[Tensor, ...], input_names: list[str],
            dynamic_axes: dict[str, dict[int, str]]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper.eval(), args, buf, dynamo=False, input_names=input_names,
                          output_names=["features"], dynamic_axes=dynamic_axes, opset_version=ONNX_OPSET,
                          do_constant_folding=True)
    return buf.getvalue()


def _cached_onnx(kind: str, module: nn.Module, build: Callable[[], bytes],
                 cache_dir: str | os.PathLike | None) -> tuple[bytes | None, Path | None]:
    """(bytes, None) or (None, path of the cached file), exporting on a miss."""
    try:
        if cache_dir is None:
            from ..data.paths import default_cache_dir

            cache_dir = Path(default_cache_dir()) / "onnx"
        folder = Path(cache_dir)
        path = folder / f"{kind}-{_fingerprint(kind, module)}.onnx"
        if path.is_file() and path.stat().st_size > 0:
            return None, path
        data = build()
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{kind}-", suffix=".onnx", dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return None, path
    except OSError:
        return build(), None


class OrtEngine:
    """A frozen tower exported to ONNX and run by ONNX Runtime (CPU, fp32): callable with CPU tensors, returns a
    float32 tensor. Sessions are thread-safe; ``copy.deepcopy`` shares the session, pickling reloads the file."""

    def __init__(self, model: bytes | str | os.PathLike, input_names: Sequence[str], *, threads: int | None = None,
                 kind: str = "tower", spinning: bool = False) -> None:
        import onnxruntime as ort

        self.kind = kind
        self.path = None if isinstance(model, (bytes, bytearray)) else str(model)
        self.threads = int(threads or torch.get_num_threads())
        self.input_names = list(input_names)
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        # no busy-waiting between ops: on a shared CPU (or beside the image-decoding thread) spinning pool threads
        # take cycles from everything else, and the gain when idle is small
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.spinning = bool(spinning)
        self.session = ort.InferenceSession(bytes(model) if self.path is None else self.path, so,
                                            providers=["CPUExecutionProvider"])
        self._bytes = bytes(model) if self.path is None else None

    @classmethod
    def for_text_model(cls, text_model: nn.Module, *, threads: int | None = None,
                       cache_dir: str | os.PathLike | None = None) -> "OrtEngine":
        """Mean-pooled features (B,384) of a BERT-like ``text_model`` for (input_ids, attention_mask)."""
        def build() -> bytes:
            ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]])
            mask = (ids != 0).long()
            axes = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
                    "features": {0: "batch"}}
            return _export(_TextPool(text_model), (ids, mask), ["input_ids", "attention_mask"], axes)

        return cls._cached("text", text_model, build, cache_dir, ["input_ids", "attention_mask"], threads)

    @classmethod
    def for_image_model(cls, image_model: nn.Module, *, threads: int | None = None,
                        cache_dir: str | os.PathLike | None = None, image_size: int = 224) -> "OrtEngine":
        """Globally pooled features (B,C) of an EfficientNet-Lite ``image_model`` for (B,3,H,W) pixels."""
        def build() -> bytes:
            px = torch.zeros(1, 3, image_size, image_size)
            axes = {"pixel_values": {0: "batch"}, "features": {0: "batch"}}
            return _export(_ImagePool(image_model), (px,), ["pixel_values"], axes)

        return cls._cached("image", image_model, build, cache_dir, ["pixel_values"], threads)

    @classmethod
    def _cached(cls, kind: str, module: nn.Module, build: Callable[[], bytes], cache_dir, input_names: list[str],
                threads: int | None) -> "OrtEngine":
        data, path = _cached_onnx(kind, module, build, cache_dir)
        if path is not None:
            try:
                return cls(path, input_names, threads=threads, kind=kind)
            except Exception:  # noqa: BLE001 - a damaged cache file: drop it, export again in memory
                try:
                    path.unlink()
                except OSError:
                    pass
                data = build()
        return cls(data, input_names, threads=threads, kind=kind)

    def __call__(self, *tensors: Tensor | None) -> Tensor:
        feeds = {}
        for name, t in zip(self.input_names, tensors):
            if t is None:  # attention mask omitted: all tokens count
                t = torch.ones_like(tensors[0])
            t = t.detach().cpu()
            t = t.long() if name != "pixel_values" else t.float()
            feeds[name] = np.ascontiguousarray(t.numpy())
        return torch.from_numpy(self.session.run(None, feeds)[0])

    def __deepcopy__(self, memo) -> "OrtEngine":
        return self

    def __reduce__(self):
        src = self.path if self.path is not None else self._bytes
        return (_rebuild_ort_engine, (src, self.input_names, self.threads, self.kind, self.spinning))

    def __repr__(self) -> str:
        where = self.path or "in memory"
        return f"OrtEngine({self.kind}, threads={self.threads}, {where})"


def _rebuild_ort_engine(src, input_names, threads, kind, spinning=False) -> OrtEngine:
    return OrtEngine(src, input_names, threads=threads, kind=kind, spinning=spinning)


# ---------------------------------------------------------------------------------------------------------------
# fused EfficientNet-Lite (torch backend)
# ---------------------------------------------------------------------------------------------------------------

def _is_efficientnet_lite(module: nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("_conv_stem", "_bn0", "_blocks", "_conv_head", "_bn1",
                                            "extract_features"))


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Weights and bias of ``bn(conv(x))`` as one convolution (eval-mode BatchNorm), computed in fp64."""
    w = conv.weight.detach().double()
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    bias = bn.bias.detach().double() - bn.running_mean.detach().double() * scale
    if conv.bias is not None:
        bias = bias + conv.bias.detach().double() * scale
    return (w * scale.reshape(-1, 1, 1, 1)).float(), bias.float()


class _ConvBNAct(nn.Module):
    """TF-"same" padded conv with folded BatchNorm (and in-place ReLU6)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: bool) -> None:
        super().__init__()
        if isinstance(conv.padding, str) or tuple(conv.padding) != (0, 0):
            raise InputError("fuse EfficientNet-Lite: expected convolutions with explicit 'same' padding only")
        w, b = _fold(conv, bn)
        self.register_buffer("weight", w.contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", b)
        self.stride = tuple(conv.stride)
        self.dilation = tuple(conv.dilation)
        self.groups = conv.groups
        pad = getattr(conv, "static_padding", None)
        left, right, top, bottom = (int(p) for p in getattr(pad, "padding", (0, 0, 0, 0)))
        if left == right and top == bottom:  # symmetric: the convolution pads by itself, no copy
            self.padding, self.pad = (top, left), None
        else:
            self.padding, self.pad = (0, 0), (left, right, top, bottom)
        self.act = bool(act)

    def forward(self, x: Tensor) -> Tensor:
        if self.pad is not None:
            x = F.pad(x, self.pad)
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return F.hardtanh_(x, 0.0, 6.0) if self.act else x

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1] * self.groups}->{self.weight.shape[0]}, k={tuple(self.weight.shape[2:])}, "
                f"stride={self.stride}, groups={self.groups}, relu6={self.act}")


class _FusedMBConv(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        args = block._block_args
        if getattr(block, "has_se", False):
            raise InputError("fuse EfficientNet-Lite: squeeze-excitation blocks are not supported (not a Lite model)")
        if not isinstance(block._swish, nn.ReLU6):
            raise InputError("fuse EfficientNet-Lite: expected ReLU6 activations")
        self.expand = _ConvBNAct(block._expand_conv, block._bn0, True) if args.expand_ratio != 1 else None
        self.depthwise = _ConvBNAct(block._depthwise_conv, block._bn1, True)
        self.project = _ConvBNAct(block._project_conv, block._bn2, False)
        stride = args.stride if isinstance(args.stride, int) else args.stride[0]
        self.residual = bool(args.id_skip and stride == 1 and args.input_filters == args.output_filters)

    def forward(self, x: Tensor) -> Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return y.add_(x) if self.residual else y


class FusedEfficientNetLite(nn.Module):
    """Inference-only EfficientNet-Lite feature extractor with BatchNorm folded into the convolutions (fp32).

    ``extract_features(x)`` equals the source's eval-mode ``extract_features(x)`` up to float rounding;
    ``forward(x)`` is its global average (B,C). The source model is not modified."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not _is_efficientnet_lite(model):
            raise InputError(f"{type(model).__name__} is not an EfficientNet-Lite model")
        if not isinstance(model._swish, nn.ReLU6):
            raise InputError("fuse EfficientNet-Lite: expected ReLU6 activations")
        self.stem = _ConvBNAct(model._conv_stem, model._bn0, True)
        self.blocks = nn.ModuleList(_FusedMBConv(b) for b in model._blocks)
        self.head = _ConvBNAct(model._conv_head, model._bn1, True)
        device = next(model.parameters()).device
        self.to(device)
        self.eval()

    def extract_features(self, x: Tensor) -> Tensor:
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.extract_features(x).mean(dim=(2, 3))

    def train(self, mode: bool = True) -> "FusedEfficientNetLite":
        return super().train(False)  # folded BatchNorm: inference only
