"""The MiniLM-L6 text tower for inference, in plain PyTorch: what a loaded ``hysac-mini`` runs, so that a command
answers without importing ``transformers`` or ``peft`` (they cost seconds of start-up on a small CPU).

* :class:`MiniLMEncoder` — a BERT encoder whose modules carry the names of ``transformers``' ``BertModel``
  (``embeddings.word_embeddings``, ``encoder.layer.N.attention.self.query``, …), so it loads the pip-installed
  ``model.safetensors`` as it is and takes the same calls the mini backbone makes (``last_hidden_state``,
  ``hidden_states``, one layer at a time).
* :class:`LoraLinear` — a linear layer plus a LoRA adapter with peft's parameter names (``base_layer``,
  ``lora_A.default``, ``lora_B.default``), so a checkpoint written while training with peft loads into it, and
  :meth:`LoraLinear.merged` folds it (``W + (alpha/r)·B·A``).
* :class:`FastTokenizer` — the model's ``tokenizer.json`` through the ``tokenizers`` library, called like a
  ``transformers`` fast tokenizer for what hysac asks of it.

Training keeps the ``transformers`` / ``peft`` tower (gradient checkpointing, attention switches); tests check that
both compute the same features.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MiniLMEncoder", "LoraLinear", "FastTokenizer", "add_lora", "load_encoder"]


@dataclass
class EncoderConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @classmethod
    def from_file(cls, path: Path) -> "EncoderConfig":
        raw = json.loads(Path(path).read_text())
        if raw.get("hidden_act", "gelu") != "gelu" or raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only BERT encoders with gelu and absolute positions are supported")
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


@dataclass
class EncoderOutput:
    last_hidden_state: Tensor
    hidden_states: tuple[Tensor, ...] | None = None


class _Embeddings(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
        x = x + self.token_type_embeddings.weight[0]  # token type 0 for every position (single sentences)
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: Tensor, additive_mask: Tensor | None) -> Tensor:
        b, n, d = x.shape

        def split(t: Tensor) -> Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        if additive_mask is not None:
            scores = scores + additive_mask
        return (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, d)


class _DenseNorm(nn.Module):
    """``LayerNorm(dense(x) + residual)`` — BERT's attention and feed-forward outputs."""

    def __init__(self, d_in: int, d_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.self = _SelfAttention(cfg)
        self.output = _DenseNorm(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)


class _Intermediate(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)


class _Layer(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.attention = _Attention(cfg)
        self.intermediate = _Intermediate(cfg)
        self.output = _DenseNorm(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, hidden: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor]:
        """(B,L,H) states, (B,1,1,L) additive mask → ``(states,)`` (a tuple, as ``transformers`` layers return)."""
        a = self.attention.output(self.attention.self(hidden, attention_mask), hidden)
        return (self.output(F.gelu(self.intermediate.dense(a)), a),)


class _Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))


class _Pooler(nn.Module):
    """Kept so that the checkpoint's pooler weights load; its output is not used."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)


class MiniLMEncoder(nn.Module):
    """BERT encoder (eval-only: no dropout) with ``transformers``' module names. ``forward(input_ids,
    attention_mask, output_hidden_states)`` → :class:`EncoderOutput` (``last_hidden_state`` (B,L,H), and the
    embeddings + every layer's states when asked)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Encoder(cfg)
        self.pooler = _Pooler(cfg)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                output_hidden_states: bool = False) -> EncoderOutput:
        hidden = self.embeddings(input_ids)
        additive = None
        if attention_mask is not None:
            additive = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        states = [hidden]
        for layer in self.encoder.layer:
            hidden = layer(hidden, attention_mask=additive)[0]
            states.append(hidden)
        return EncoderOutput(hidden, tuple(states) if output_hidden_states else None)


class LoraLinear(nn.Module):
    """``base_layer(x) + (alpha/r)·lora_B(lora_A(x))`` with peft's parameter names (adapter ``default``)."""

    def __init__(self, base: nn.Linear, r: int, alpha: float) -> None:
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.ModuleDict({"default": nn.Linear(base.in_features, r, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(r, base.out_features, bias=False)})
        nn.init.zeros_(self.lora_B["default"].weight)  # identity until weights are loaded
        self.scaling = float(alpha) / int(r)

    def forward(self, x: Tensor) -> Tensor:
        return self.base_layer(x) + self.lora_B["default"](self.lora_A["default"](x)) * self.scaling

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The base layer with the adapter folded into its weight (``W += scaling·B·A``)."""
        delta = self.lora_B["default"].weight.double() @ self.lora_A["default"].weight.double()
        w = self.base_layer.weight
        w.copy_((w.double() + self.scaling * delta).to(w.dtype))
        return self.base_layer


#: the linear layers the mini backbone's text LoRA adapts in each of its top layers (peft's target names)
LORA_TARGETS = ("query", "key", "value", "dense")


def add_lora(encoder: MiniLMEncoder, layers: Sequence[int], r: int, alpha: float) -> None:
    """Wrap the :data:`LORA_TARGETS` linears of ``encoder.encoder.layer[i]`` (``i`` in ``layers``) in
    :class:`LoraLinear`, where peft's ``inject_adapter_in_model`` puts its adapters."""
    for i in layers:
        block = encoder.encoder.layer[i]
        for name, module in list(block.named_modules()):
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in LORA_TARGETS:
                parent_name, _, child = name.rpartition(".")
                parent = block.get_submodule(parent_name) if parent_name else block
                setattr(parent, child, LoraLinear(module, r, alpha))


def load_encoder(folder: Path) -> MiniLMEncoder:
    """The encoder described by ``folder/config.json`` with the weights of ``folder/model.safetensors``."""
    from safetensors.torch import load_file

    enc = MiniLMEncoder(EncoderConfig.from_file(Path(folder) / "config.json"))
    state = {k: v for k, v in load_file(str(Path(folder) / "model.safetensors")).items()
             if not k.endswith("position_ids")}
    enc.load_state_dict(state, strict=True)
    return enc.float().eval()


class FastTokenizer:
    """``tokenizer.json`` (``tokenizers``) called like a ``transformers`` fast tokenizer: ``tok(texts,
    padding=False|"longest"|True|"max_length", truncation=True, max_length=N, return_tensors=None|"pt")`` →
    ``{"input_ids", "attention_mask"}``; ``pad_token_id``; ``len(tok)``."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
        self._tok.no_padding()
        self._tok.no_truncation()
        cfg = json.loads((Path(folder) / "tokenizer_config.json").read_text())
        pad = cfg.get("pad_token", "[PAD]")
        self.pad_token = pad if isinstance(pad, str) else pad.get("content", "[PAD]")
        pad_id = self._tok.token_to_id(self.pad_token)
        self.pad_token_id = 0 if pad_id is None else int(pad_id)
        self.model_max_length = int(cfg.get("model_max_length", 512))

    def __len__(self) -> int:
        return self._tok.get_vocab_size()

    def __call__(self, texts: str | Sequence[str], padding: bool | str = False, truncation: bool = False,
                 max_length: int | None = None, return_tensors: str | None = None, **_: Any) -> dict[str, Any]:
        batch = [texts] if isinstance(texts, str) else list(texts)
        limit = max_length if max_length is not None else self.model_max_length
        ids = [e.ids for e in self._tok.encode_batch(batch)]
        if truncation:
            # keep the final [SEP], as the tokenizer's own truncation does
            ids = [x if len(x) <= limit else x[:limit - 1] + x[-1:] for x in ids]
        if padding in (True, "longest") or padding == "max_length":
            longest = max((len(x) for x in ids), default=0)
            width = max(limit, longest) if padding == "max_length" else longest
            mask = [[1] * len(x) + [0] * (width - len(x)) for x in ids]
            ids = [x + [self.pad_token_id] * (width - len(x)) for x in ids]
        else:
            mask = [[1] * len(x) for x in ids]
        if return_tensors == "pt":
            return {"input_ids": torch.tensor(ids, dtype=torch.long),
                    "attention_mask": torch.tensor(mask, dtype=torch.long)}
        return {"input_ids": ids, "attention_mask": mask}
