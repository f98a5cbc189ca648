"""CPU fast path for the offline ``mini`` model (MiniLM-L6 text tower + EfficientNet-Lite0 image tower).

What is slow in the plain path, and what this module does about it:

* **Padding.** Every model encodes texts in length-sorted, dynamically padded batches (:mod:`hysac.runtime`); the
  CPU runtime caps a bucket at 64 texts, which suits a few cores better than the plain runtime's 256.
* **Tower runtime.** :func:`optimize_for_cpu` installs faster stand-ins ("engines", see
  :meth:`hysac.backbones.base.Backbone.engine_modules`) for the *frozen* towers:

  - ``backend="onnxruntime"`` (default when ``onnx`` and ``onnxruntime`` are installed): both towers exported to
    ONNX (cached under ``~/.cache/hysac/onnx``) and run by ONNX Runtime in fp32 — the same numbers as PyTorch,
    faster for the EfficientNet (fused conv + BN + clip, NCHWc kernels).
  - ``backend="torch"``: the image tower as :class:`FusedEfficientNetLite` (BatchNorm folded into the convs) and
    the text tower as it is.

  ``text_precision`` picks the text tower's arithmetic: ``"auto"`` / ``"fp32"`` (exact: the default), ``"bf16"``
  (opt-in: bf16 GEMMs, fp32 elsewhere — the fastest text path on CPUs with native bf16) or ``"int8"`` (dynamic
  quantisation; **not accurate enough for this model** because of MiniLM's activation outliers, so never chosen
  automatically). What each costs and how close it stays to fp32 is measured in ``benchmarks/results/cpu.md``.
* **Autograd bookkeeping.** The fast encoders run under :func:`torch.inference_mode` and return ordinary tensors.
* **Image decoding.** :class:`CpuRuntime` decodes and preprocesses the next batch in a background thread
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

``optimize_for_cpu`` installs :class:`CpuRuntime` as the model's encode runtime (``model.set_runtime``), so code
that only uses the model API (CLI, service, index) gets the fast path. :func:`restore_cpu_defaults` undoes
everything. The model's weights, state
dict and checkpoints are never changed: the engines are kept beside the towers, and are used only for CPU inputs
that need no gradient through the tower (the heads still train on their output).
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..backbones.efficientnet_lite import FusedEfficientNetLite
from ..runtime import EncodeRuntime, check_batch_size

__all__ = [
    "CpuRuntime",
    "FusedEfficientNetLite",
    "OrtEngine",
    "TorchImageEngine",
    "TorchTextEngine",
    "cpu_supports_bf16",
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
    * ``patch_encode``: run ``model.encode_text`` / ``model.encode_image`` on :class:`CpuRuntime` (False: engines
      only, the plain runtime; what a trainer wants while caching features).

    Only towers the backbone declares in :meth:`~hysac.backbones.base.Backbone.engine_modules` (the mini
    backbone's frozen towers) get engines; on other backbones only the runtime and thread setting apply. Calling
    it again replaces the previous settings.
    Raises :class:`~hysac.errors.InputError` for bad options, a model not on the CPU, or ``backend="onnxruntime"``
    without onnxruntime/onnx.
    """
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if text_precision not in TEXT_PRECISIONS:
        raise InputError(f"text_precision must be one of {TEXT_PRECISIONS}, got {text_precision!r}")
    text_batch_size = check_batch_size(text_batch_size)
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
    bb.set_inference_engines(None, None)  # a fresh start when called again
    if bb.has_lora and patch_encode:  # inference: LoRA folded into the weights the engine exports
        model.merge_lora()
    engines, info = _build_engines(bb.engine_modules(fuse=backend == "torch"), backend, text_precision, n_threads,
                                   cache_dir)
    bb.set_inference_engines(**engines)
    info.update(backend=backend, threads=n_threads, patched_encode=bool(patch_encode))
    if patch_encode:
        model.set_runtime(CpuRuntime(text_batch=text_batch_size, image_prefetch=bool(image_prefetch), info=info))
    else:
        model.set_runtime(None)
    return model


def _build_engines(modules: dict[str, nn.Module], backend: str, text_precision: str, n_threads: int,
                   cache_dir) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stand-ins for the backbone's engine modules → ``({"text": engine|None, "image": ...}, what each is)``."""
    engines: dict[str, Any] = {"text": None, "image": None}
    info: dict[str, Any] = {"text": None, "image": None}
    if "text" in modules:
        precision = text_precision
        if backend == "onnxruntime" and precision in ("auto", "fp32"):
            precision = "ort"
        elif precision == "auto":
            precision = "fp32"  # the default fast path is exact; bf16 / int8 are opt-in
        if precision == "ort":
            engines["text"] = OrtEngine.for_text_model(modules["text"], threads=n_threads, cache_dir=cache_dir)
            info["text"] = "onnxruntime-fp32"
        elif precision != "fp32":
            engines["text"] = TorchTextEngine(modules["text"], precision)
            info["text"] = f"torch-{precision}"
        else:
            info["text"] = "torch-fp32"
    if "image" in modules:
        if backend == "onnxruntime":
            engines["image"] = OrtEngine.for_image_model(modules["image"], threads=n_threads, cache_dir=cache_dir)
            info["image"] = "onnxruntime-fp32"
        else:
            engines["image"] = TorchImageEngine(modules["image"])
            info["image"] = "torch-fused-fp32"
    return engines, info


class CpuRuntime(EncodeRuntime):
    """The CPU fast path's encode runtime: length buckets capped at the tuned ``text_batch`` (a caller's batch
    size is a memory bound, not a request for padding), the next image batch decoded in a background thread."""

    path = "cpu"

    def __init__(self, *, text_batch: int = TEXT_BATCH, image_prefetch: bool = True,
                 info: dict[str, Any] | None = None) -> None:
        super().__init__(text_batch=text_batch, image_batch=IMAGE_BATCH, max_text_batch=text_batch,
                         image_prefetch=image_prefetch, info=info)


def restore_cpu_defaults(model):
    """Undo :func:`optimize_for_cpu` (engines and runtime; the thread count is left as it is). In place."""
    model.backbone.set_inference_engines(None, None)
    model.set_runtime(None)
    return model


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
    """Text base features from a copy of the backbone's text engine module whose Linear layers run in
    ``precision`` (``"fp32"``, ``"bf16"`` or ``"int8"``); embedding tables are shared, not copied."""

    def __init__(self, text_module: nn.Module, precision: str = "bf16") -> None:
        if precision not in ("fp32", "bf16", "int8"):
            raise InputError(f"text engine precision must be fp32, bf16 or int8, got {precision!r}")
        memo = {id(m): m for m in text_module.modules() if isinstance(m, nn.Embedding)}
        model = copy.deepcopy(text_module, memo).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        if precision == "bf16":
            _swap_linears(model, _BF16Linear)
        elif precision == "int8":
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            with warnings.catch_warnings():
                # the eager-mode torch.ao.quantization API is deprecated in favour of torchao, but still works
                warnings.simplefilter("ignore")
                model = quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
        self.model = model
        self.precision = precision

    def __call__(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        with torch.no_grad():  # not inference_mode: callers may train heads on the output
            return self.model(input_ids, attention_mask).float()

    def __repr__(self) -> str:
        return f"TorchTextEngine(precision={self.precision!r})"


class TorchImageEngine:
    """Image base features from the backbone's (fused) image engine module, fp32, no autograd."""

    def __init__(self, image_module: nn.Module) -> None:
        self.model = image_module.eval()

    def __call__(self, pixel_values: Tensor) -> Tensor:
        with torch.no_grad():
            return self.model(pixel_values.float())

    def __repr__(self) -> str:
        return f"TorchImageEngine({type(self.model).__name__})"


# ---------------------------------------------------------------------------------------------------------------
# ONNX Runtime engines
# ---------------------------------------------------------------------------------------------------------------

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
    def for_text_model(cls, text_module: nn.Module, *, threads: int | None = None,
                       cache_dir: str | os.PathLike | None = None) -> "OrtEngine":
        """A text engine module (``(input_ids, attention_mask) → (B, base dim)``, from
        :meth:`~hysac.backbones.base.Backbone.engine_modules`) exported to ONNX."""
        def build() -> bytes:
            ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]])
            mask = (ids != 0).long()
            axes = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
                    "features": {0: "batch"}}
            return _export(text_module, (ids, mask), ["input_ids", "attention_mask"], axes)

        return cls._cached("text", text_module, build, cache_dir, ["input_ids", "attention_mask"], threads)

    @classmethod
    def for_image_model(cls, image_module: nn.Module, *, threads: int | None = None,
                        cache_dir: str | os.PathLike | None = None, image_size: int = 224) -> "OrtEngine":
        """An image engine module (``(B,3,H,W) pixels → (B, base dim)``) exported to ONNX."""
        def build() -> bytes:
            px = torch.zeros(1, 3, image_size, image_size)
            axes = {"pixel_values": {0: "batch"}, "features": {0: "batch"}}
            return _export(image_module, (px,), ["pixel_values"], axes)

        return cls._cached("image", image_module, build, cache_dir, ["pixel_values"], threads)

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
