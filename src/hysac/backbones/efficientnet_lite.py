"""Inference-only rewrite of an EfficientNet-Lite feature extractor (the mini backbone's image tower): BatchNorm
folded into the convolutions, TF-"same" padding done by the convolution where symmetric, ReLU6 in place (fp32).
It reads the ``efficientnet_lite_pytorch`` model's layers, so it lives beside the backbone that owns that tower."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError

__all__ = ["FusedEfficientNetLite", "is_efficientnet_lite"]


def is_efficientnet_lite(module: nn.Module) -> bool:
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
        if not is_efficientnet_lite(model):
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
