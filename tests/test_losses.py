"""Tests for hysac.losses (fast, CPU).

Expected values come from the float64 NumPy reference written from the spec's formulas (tests/reference_lorentz.py),
not from hysac's own functions; ``L.exp_map0`` only generates inputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import reference_lorentz as R
from hysac import lorentz as L
from hysac.errors import InputError
from hysac.losses import (
    EXTENSION_TERMS,
    PAPER_TERMS,
    HySACLoss,
    HySACLossWeights,
    SafeCLIPLossWeights,
    category_loss,
    clip_contrastive,
    entailment_loss,
    lorentz_contrastive,
    radial_order_loss,
    safeclip_loss,
    weighted_mean,
)

B, D = 6, 8


def hyp(n=B, d=D, scale=0.4, seed=0, c=1.0):
    g = torch.Generator().manual_seed(seed)
    return L.exp_map0(torch.randn(n, d, generator=g) * scale, c)


def hysac_batch(seed=0, c=1.0, grad=False):
    b = {k: hyp(seed=seed + i, c=c) for i, k in enumerate(("T", "I", "Ts", "Is"))}
    if grad:
        b = {k: v.clone().requires_grad_() for k, v in b.items()}
    return b


def _np(t):
    """A tensor as a float64 NumPy array for the reference."""
    return t.detach().double().numpy()


def finite_grads(*ts):
    return all(t.grad is not None and torch.isfinite(t.grad).all() for t in ts)


# ----------------------------------------------------------------------------------------------- contrastive


def test_contrastive_equal_distances_is_log_b():
    # All points at the origin: every distance is 0 → uniform softmax → CE = log(B) both ways.
    z = torch.zeros(B, D)
    assert torch.allclose(lorentz_contrastive(z, z, 1.0, 10.0), torch.tensor(math.log(B)), atol=1e-5)
    # Points on a "regular simplex" at equal mutual distance, each paired with itself: not log B but small.
    x = L.exp_map0(torch.eye(D)[:B] * 2.0, 1.0)
    assert lorentz_contrastive(x, x, 1.0, 10.0) < 0.1


def test_contrastive_matches_manual_formula():
    img, txt, c, s = hyp(seed=1), hyp(seed=2), 0.7, 5.0
    ref = torch.tensor(R.contrastive_loss(_np(img), _np(txt), c, s), dtype=torch.float32)
    assert torch.allclose(lorentz_contrastive(img, txt, c, s), ref, atol=1e-5)
    # tensor curvature and scale are accepted and receive gradients
    ct = torch.tensor(0.7, requires_grad=True)
    st = torch.tensor(5.0, requires_grad=True)
    out = lorentz_contrastive(img, txt, ct, st)
    assert torch.allclose(out, ref, atol=1e-5)
    out.backward()
    assert finite_grads(ct, st) and ct.grad != 0 and st.grad != 0


def test_contrastive_mask_equals_slice_and_garbage_rows_ignored():
    img, txt = hyp(seed=3), hyp(seed=4)
    m = torch.tensor([True, False, True, True, False, True])
    ref = torch.tensor(R.contrastive_loss(_np(img[m]), _np(txt[m]), 1.0, 10.0), dtype=torch.float32)
    img2 = img.clone()
    img2[~m] = float("nan")  # rows outside the mask may hold anything
    img2.requires_grad_()
    out = lorentz_contrastive(img2, txt, 1.0, 10.0, mask=m)
    assert torch.allclose(out, ref, atol=1e-5)
    out.backward()
    assert torch.isfinite(img2.grad).all() and (img2.grad[~m] == 0).all()


def test_contrastive_empty_mask_zero_with_grad():
    img = hyp(seed=5).requires_grad_()
    txt = hyp(seed=6).requires_grad_()
    out = lorentz_contrastive(img, txt, 1.0, 10.0, mask=torch.zeros(B, dtype=torch.bool))
    assert out.item() == 0.0 and out.grad_fn is not None
    out.backward()
    assert finite_grads(img, txt) and (img.grad == 0).all()


def test_contrastive_extra_negatives():
    img, txt = hyp(n=1, seed=7), hyp(n=1, seed=8)
    # B = 1: no negatives → loss 0. One extra text equal to the positive text: the image row becomes log 2, the
    # text row (no extra images) stays 0 → 0.5·log 2.
    assert lorentz_contrastive(img, txt, 1.0, 10.0).item() == pytest.approx(0.0, abs=1e-6)
    out = lorentz_contrastive(img, txt, 1.0, 10.0, extra_txt=txt.clone())
    assert out.item() == pytest.approx(0.5 * math.log(2), abs=1e-5)
    both = lorentz_contrastive(img, txt, 1.0, 10.0, extra_txt=txt.clone(), extra_img=img.clone())
    assert both.item() == pytest.approx(math.log(2), abs=1e-5)
    # masked-out extras are ignored; far-away extras barely matter; extras never decrease the loss
    out_m = lorentz_contrastive(img, txt, 1.0, 10.0, extra_txt=txt.clone(), extra_txt_mask=torch.tensor([False]))
    assert out_m.item() == pytest.approx(0.0, abs=1e-6)
    img6, txt6 = hyp(seed=9), hyp(seed=10)
    base = lorentz_contrastive(img6, txt6, 1.0, 10.0)
    far = L.exp_map0(torch.randn(5, D) * 20.0, 1.0)
    assert lorentz_contrastive(img6, txt6, 1.0, 10.0, extra_txt=far).item() == pytest.approx(base.item(), abs=1e-4)
    near = hyp(n=5, seed=11)
    assert lorentz_contrastive(img6, txt6, 1.0, 10.0, extra_txt=near, extra_img=near) > base
    # the extras are just more columns: matches the reference CE over the concatenated logits
    ref = torch.tensor(R.contrastive_loss(_np(img6), _np(txt6), 1.0, 10.0, extra_txt=_np(near)), dtype=torch.float32)
    assert torch.allclose(lorentz_contrastive(img6, txt6, 1.0, 10.0, extra_txt=near), ref, atol=1e-5)
    ref2 = R.contrastive_loss(_np(img6), _np(txt6), 1.0, 10.0, extra_txt=_np(near), extra_img=_np(far))
    out2 = lorentz_contrastive(img6, txt6, 1.0, 10.0, extra_txt=near, extra_img=far)
    assert out2.item() == pytest.approx(ref2, abs=1e-5)


def test_contrastive_coincident_points_finite_grads():
    x = hyp(seed=12)
    img, txt = x.clone().requires_grad_(), x.clone().requires_grad_()
    c = torch.tensor(1.0, requires_grad=True)
    lorentz_contrastive(img, txt, c, 10.0).backward()
    assert finite_grads(img, txt, c)


def test_contrastive_bad_input():
    with pytest.raises(InputError):
        lorentz_contrastive(hyp(), hyp(n=B - 1), 1.0, 10.0)
    with pytest.raises(InputError):
        lorentz_contrastive(hyp(), hyp(), 1.0, 10.0, mask=torch.ones(B + 1, dtype=torch.bool))
    with pytest.raises(InputError):
        lorentz_contrastive(hyp(), hyp(), 1.0, -1.0)
    with pytest.raises(InputError):
        lorentz_contrastive(hyp(), hyp(), 0.0, 10.0)


def test_clip_contrastive_matches_manual_formula():
    img, txt = torch.randn(B, D), torch.randn(B, D)
    logits = 7.0 * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    lab = torch.arange(B)
    ref = 0.5 * (F.cross_entropy(logits, lab) + F.cross_entropy(logits.T, lab))
    assert torch.allclose(clip_contrastive(img, txt, 7.0), ref, atol=1e-5)
    m = torch.tensor([True, True, False, True, False, True])
    ref_m = R.cosine_contrastive_loss(_np(img[m]), _np(txt[m]), 7.0)
    assert clip_contrastive(img, txt, 7.0, m).item() == pytest.approx(ref_m, abs=1e-5)


# ----------------------------------------------------------------------------------------------- entailment


def test_entailment_zero_inside_cone_positive_outside():
    parent = hyp(seed=13, scale=0.3)
    child_out = parent * 3.0  # same ray, farther from the origin: inside the cone
    assert entailment_loss(parent, child_out, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    child_opp = -parent * 3.0  # opposite side of the origin: outside the cone
    out = entailment_loss(parent, child_opp, 1.0)
    assert out > 0.5
    # the reference formula, also on random pairs (some inside, some outside) and another curvature
    ref = R.entailment_loss(_np(parent), _np(child_opp), 1.0, aperture_scale=0.8)
    assert entailment_loss(parent, child_opp, 1.0, aperture_scale=0.8).item() == pytest.approx(ref, abs=1e-6)
    p, ch = hyp(seed=18, scale=0.4, c=2.0), hyp(seed=19, scale=0.6, c=2.0)
    ref = R.entailment_loss(_np(p), _np(ch), 2.0, aperture_scale=1.2, min_radius=0.2)
    assert ref > 0
    out = entailment_loss(p, ch, 2.0, aperture_scale=1.2, min_radius=0.2)
    assert out.item() == pytest.approx(ref, abs=1e-6)


def test_entailment_mask_slice_empty_and_coincident():
    p, ch = hyp(seed=14), hyp(seed=15)
    m = torch.tensor([False, True, True, False, True, False])
    assert entailment_loss(p, ch, 1.0, mask=m).item() == pytest.approx(R.entailment_loss(_np(p[m]), _np(ch[m]), 1.0),
                                                                      abs=1e-6)
    pg, cg = p.clone().requires_grad_(), ch.clone().requires_grad_()
    out = entailment_loss(pg, cg, 1.0, mask=torch.zeros(B, dtype=torch.bool))
    assert out.item() == 0.0 and out.grad_fn is not None
    out.backward()
    assert finite_grads(pg, cg)
    # coincident parent/child, and parent at the origin
    x = torch.cat([hyp(n=B - 1, seed=16), torch.zeros(1, D)])
    pg, cg = x.clone().requires_grad_(), x.clone().requires_grad_()
    c = torch.tensor(1.3, requires_grad=True)
    out = entailment_loss(pg, cg, c)
    assert torch.isfinite(out)
    out.backward()
    assert finite_grads(pg, cg, c)


def test_radial_order_loss():
    p = hyp(seed=17, scale=0.2)
    assert radial_order_loss(p, p * 4.0, 1.0, margin=0.05).item() == pytest.approx(0.0, abs=1e-7)
    assert radial_order_loss(p, -p, 1.0, margin=0.05).item() == pytest.approx(0.05, abs=1e-6)  # same radius: margin
    q = hyp(seed=18, scale=0.25, c=0.5)
    ref = np.maximum(0.0, R.dist0(_np(p), 0.5) + 0.1 - R.dist0(_np(q), 0.5)).mean()
    assert 0 < ref and radial_order_loss(p, q, 0.5, margin=0.1).item() == pytest.approx(ref, abs=1e-6)
    x = torch.zeros(B, D, requires_grad=True)
    radial_order_loss(x, x, 1.0).backward()
    assert finite_grads(x)


# ----------------------------------------------------------------------------------------------- HySACLoss


def test_hysac_total_is_weighted_mean_of_terms():
    w = HySACLossWeights.from_lambdas(lambda_con=1.0, lambda_ent=0.5)
    total, terms = HySACLoss(w)(hysac_batch(), 1.0, 10.0)
    assert set(terms) == set(PAPER_TERMS)
    wd = w.as_dict()
    manual = sum(wd[k] * terms[k] for k in terms) / sum(wd[k] for k in terms)
    assert torch.allclose(total, manual)
    # each term is the reference formula on the right pair (the spec's terms 1..7, mapped by name)
    b = hysac_batch()
    ref = R.official_terms({k: _np(v) for k, v in b.items()}, 1.0, 10.0)
    for name, want in zip(R.TERM_NAMES, ref):
        assert terms[name].item() == pytest.approx(want, abs=1e-5), name
    # Weighting conventions: the spec's official total normalises λ = [1,1,1,1,λe,λe,λe] by Σλ and then divides by
    # 7 again; HySACLoss divides by Σλ once (loss.scale = 1/7 in a training config gives the official magnitude).
    # With all seven terms active: HySACLoss total = 7 × official total, for any λe.
    assert total.item() == pytest.approx(7 * R.official_total(ref, lambda_ent=0.5), rel=1e-5)
    # per-term weights; zero-weight paper terms are still reported but not in the total
    w2 = HySACLossWeights(ent_I_Ts=0.0, con_TI=3.0)
    total2, terms2 = HySACLoss(w2)(b, 1.0, 10.0)
    assert "ent_I_Ts" in terms2
    wd2 = w2.as_dict()
    assert torch.allclose(total2, sum(wd2[k] * terms2[k] for k in terms2) / sum(wd2.values()))


def test_hysac_masks_skip_terms_and_renormalise():
    b = hysac_batch()
    b["has_T"] = torch.ones(B, dtype=torch.bool)
    b["has_I"] = torch.ones(B, dtype=torch.bool)
    b["has_Ts"] = torch.tensor([True, True, True, False, False, False])
    b["has_Is"] = torch.zeros(B, dtype=torch.bool)  # no unsafe image in this batch
    b["Is"] = torch.full((B, D), float("nan"))  # placeholder content must not matter
    total, terms = HySACLoss()(b, 1.0, 10.0)
    assert set(terms) == {"con_TI", "con_TsI", "ent_T_I", "ent_I_Ts"}
    assert torch.allclose(total, sum(terms.values()) / 4)
    # every active term is the reference formula on the rows where both members are present (the sliced batch)
    masks = {k: b[f"has_{k}"].numpy() for k in ("T", "I", "Ts", "Is")}
    ref = R.official_terms({k: _np(b[k]) for k in ("T", "I", "Ts", "Is")}, 1.0, 10.0, masks=masks)
    assert {n for n, v in zip(R.TERM_NAMES, ref) if v is not None} == set(terms)
    for name, want in zip(R.TERM_NAMES, ref):
        if want is not None:
            assert terms[name].item() == pytest.approx(want, abs=1e-5), name
    assert torch.isfinite(total)


def test_hysac_text_only_batches_and_extensions():
    b = hysac_batch()
    text_only = {"T": b["T"], "Ts": b["Ts"]}
    # paper terms only → nothing active → exact zero that still backprops
    tt = {k: v.clone().requires_grad_() for k, v in text_only.items()}
    total, terms = HySACLoss()(tt, 1.0, 10.0)
    assert terms == {} and total.item() == 0.0 and total.grad_fn is not None
    total.backward()
    assert finite_grads(*tt.values())
    # extension on: (T, Ts) contrastive + T ⊒ Ts entailment (+ radial)
    w = HySACLossWeights.from_lambdas(lambda_text=1.0, lambda_radial=0.5)
    total, terms = HySACLoss(w, radial_margin=0.1)(text_only, 1.0, 10.0)
    assert set(terms) == {"con_TTs", "ent_T_Ts", "radial_T_Ts"}
    t, ts = _np(b["T"]), _np(b["Ts"])
    assert terms["con_TTs"].item() == pytest.approx(R.contrastive_loss(ts, t, 1.0, 10.0), abs=1e-5)
    assert terms["ent_T_Ts"].item() == pytest.approx(R.entailment_loss(t, ts, 1.0), abs=1e-6)
    radial = np.maximum(0.0, R.dist0(t, 1.0) + 0.1 - R.dist0(ts, 1.0)).mean()
    assert terms["radial_T_Ts"].item() == pytest.approx(radial, abs=1e-6)
    assert torch.allclose(total, (terms["con_TTs"] + terms["ent_T_Ts"] + 0.5 * terms["radial_T_Ts"]) / 2.5)
    # defaults: extensions off
    assert all(HySACLossWeights().as_dict()[k] == 0.0 for k in EXTENSION_TERMS)
    # a full batch with extensions on: 7 + 2 + 4 terms
    total, terms = HySACLoss(w)(b, 1.0, 10.0)
    assert set(terms) == set(PAPER_TERMS) | set(EXTENSION_TERMS)


def test_hysac_extra_negatives():
    b = hysac_batch()
    extra = {k: hyp(n=3, seed=40 + i) for i, k in enumerate(("T", "I", "Ts", "Is"))}
    extra["has_Is"] = torch.tensor([True, False, True])
    _, terms = HySACLoss()(b, 1.0, 10.0, extra=extra)
    ref = R.contrastive_loss(_np(b["Is"]), _np(b["T"]), 1.0, 10.0, extra_txt=_np(extra["T"]),
                             extra_img=_np(extra["Is"][extra["has_Is"]]))
    assert terms["con_TIs"].item() == pytest.approx(ref, abs=1e-5)
    _, base = HySACLoss()(b, 1.0, 10.0)
    assert terms["con_TI"] > base["con_TI"]
    assert torch.allclose(terms["ent_T_I"], base["ent_T_I"])  # entailment ignores extras


def test_hysac_coincident_points_and_learnable_scalars():
    x = hyp(seed=20)
    b = {k: x.clone().requires_grad_() for k in ("T", "I", "Ts", "Is")}
    c = torch.tensor(1.0, requires_grad=True)
    s = torch.tensor(14.3, requires_grad=True)
    w = HySACLossWeights.from_lambdas(lambda_text=1.0, lambda_radial=1.0)
    total, _ = HySACLoss(w)(b, c, s)
    assert torch.isfinite(total)
    total.backward()
    assert finite_grads(*b.values(), c, s)


def test_hysac_bf16_autocast_matches_fp32():
    b32 = hysac_batch(seed=30)
    total32, terms32 = HySACLoss()(b32, 1.0, 10.0)
    b16 = {k: v.to(torch.bfloat16).requires_grad_() for k, v in b32.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total16, terms16 = HySACLoss()(b16, torch.tensor(1.0, dtype=torch.bfloat16), 10.0)
    assert total16.dtype == torch.float32 and torch.isfinite(total16)
    # bf16 inputs carry ~3 significant digits: compare against fp32 on the rounded inputs (tight) and raw (loose)
    total_r, _ = HySACLoss()({k: v.detach().float() for k, v in b16.items()}, 1.0, 10.0)
    assert torch.allclose(total16, total_r, atol=1e-4)
    assert torch.allclose(total16, total32, rtol=2e-2, atol=2e-2)
    total16.backward()
    assert finite_grads(*b16.values())


def test_weights_validation():
    with pytest.raises(InputError):
        HySACLossWeights(con_TI=-1.0)
    with pytest.raises(InputError):
        HySACLoss({"con_XY": 1.0})
    with pytest.raises(InputError):
        weighted_mean({"a": torch.tensor(1.0)}, {"a": 0.0})
    assert HySACLoss({"con_TI": 2.0}).weights.con_TI == 2.0
    with pytest.raises(InputError):
        HySACLoss()({}, 1.0, 10.0)


# ----------------------------------------------------------------------------------------------- Safe-CLIP


def safeclip_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(B, D, generator=g) for k in ("T", "Ts", "I", "Is", "T0", "Ts0", "I0", "Is0")}


def test_safeclip_zero_when_perfect_redirection_and_preservation():
    b = safeclip_batch()
    perfect = dict(b, T=b["T0"].clone(), I=b["I0"].clone(), Ts=b["T0"] * 2.0, Is=b["I0"] * 0.5)
    w = SafeCLIPLossWeights(con_TI=0.0, con_TsI=0.0, con_TIs=0.0, sep_Ts=1.0, sep_Is=1.0)
    for dist in ("cosine", "l2"):
        total, terms = safeclip_loss(perfect, 10.0, w, distance=dist)
        assert total.item() == pytest.approx(0.0, abs=1e-6)
        assert all(terms[k].item() == pytest.approx(0.0, abs=1e-6) for k in ("redir_T", "redir_I", "pres_T", "pres_I"))
    # untouched fine-tuned model (unsafe still at its own embedding) → redirection positive, preservation zero
    untouched = dict(b, T=b["T0"], I=b["I0"], Ts=b["Ts0"], Is=b["Is0"])
    total, terms = safeclip_loss(untouched, 10.0, w)
    assert terms["pres_T"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["redir_T"] > 0.1 and terms["sep_Ts"] > 0 and total > 0


def test_safeclip_terms_formulas_and_total():
    b = safeclip_batch(1)
    total, terms = safeclip_loss(b, 10.0)
    assert set(terms) == {"redir_T", "redir_I", "pres_T", "pres_I", "con_TI", "con_TsI", "con_TIs"}
    assert torch.allclose(terms["redir_T"], (1 - F.cosine_similarity(b["Ts"], b["T0"])).mean(), atol=1e-6)
    for name, (img, txt) in {"con_TsI": ("I0", "Ts"), "con_TIs": ("Is", "T0"), "con_TI": ("I", "T")}.items():
        ref = R.cosine_contrastive_loss(_np(b[img]), _np(b[txt]), 10.0)
        assert terms[name].item() == pytest.approx(ref, abs=1e-5), name
    assert torch.allclose(total, sum(terms.values()) / 7)
    _, t2 = safeclip_loss(b, 10.0, cross_reference="finetuned")
    assert t2["con_TsI"].item() == pytest.approx(R.cosine_contrastive_loss(_np(b["I"]), _np(b["Ts"]), 10.0), abs=1e-5)
    # a mapping overrides the defaults (1.0) of the terms it names
    wd = {"redir_T": 2.0, "con_TI": 0.5, "redir_I": 0.0, "pres_T": 0.0, "pres_I": 0.0, "con_TsI": 0.0, "con_TIs": 0.0}
    total3, t3 = safeclip_loss(b, 10.0, wd)
    assert torch.allclose(total3, (2.0 * t3["redir_T"] + 0.5 * t3["con_TI"]) / 2.5)
    total4, t4 = safeclip_loss(b, 10.0, {"redir_T": 2.0})
    assert torch.allclose(total4, (sum(t4.values()) + t4["redir_T"]) / 8)
    # l2 of normalised vectors is 2·cosine distance
    _, t5 = safeclip_loss(b, 10.0, distance="l2")
    assert torch.allclose(t5["pres_I"], 2 * terms["pres_I"], atol=1e-5)


def test_safeclip_masks_bf16_and_grads():
    b = safeclip_batch(2)
    b["has_Is"] = torch.zeros(B, dtype=torch.bool)
    b["has_Ts"] = torch.tensor([True, False] * 3)
    b["Is"] = torch.full((B, D), float("nan"))
    total, terms = safeclip_loss(b, 10.0)
    assert "redir_I" not in terms and "con_TIs" not in terms and torch.isfinite(total)
    m = b["has_Ts"]
    assert torch.allclose(terms["redir_T"], (1 - F.cosine_similarity(b["Ts"][m], b["T0"][m])).mean(), atol=1e-6)
    # bf16 under autocast
    b16 = {k: v.to(torch.bfloat16).requires_grad_() for k, v in safeclip_batch(3).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        t16, _ = safeclip_loss(b16, torch.tensor(10.0, dtype=torch.bfloat16))
    t32, _ = safeclip_loss({k: v.detach().float() for k, v in b16.items()}, 10.0)
    assert t16.dtype == torch.float32 and torch.allclose(t16, t32, atol=1e-4)
    t16.backward()
    assert finite_grads(b16["T"], b16["Ts"])
    # nothing active → zero with grad
    only = {"T": torch.randn(B, D, requires_grad=True)}
    t0, terms0 = safeclip_loss(only, 10.0)
    assert t0.item() == 0.0 and terms0 == {}
    t0.backward()
    assert finite_grads(only["T"])


# ----------------------------------------------------------------------------------------------- category head


def test_category_loss():
    logits = torch.randn(B, 7)
    y = torch.randint(0, 2, (B, 7))
    ref = F.binary_cross_entropy_with_logits(logits, y.float())
    assert torch.allclose(category_loss(logits, y), ref, atol=1e-6)
    assert torch.allclose(category_loss(logits, y.bool()), ref, atol=1e-6)
    m = torch.tensor([True, False, True, True, False, False])
    assert torch.allclose(category_loss(logits, y, m), category_loss(logits[m], y[m]), atol=1e-6)
    lg = logits.clone().requires_grad_()
    out = category_loss(lg, y, torch.zeros(B, dtype=torch.bool))
    assert out.item() == 0.0
    out.backward()
    assert finite_grads(lg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o16 = category_loss(logits.bfloat16(), y)
    assert o16.dtype == torch.float32 and torch.allclose(o16, category_loss(logits.bfloat16().float(), y), atol=1e-5)
    with pytest.raises(InputError):
        category_loss(logits, y[:, :6])


def test_contrastive_terms_can_read_other_points_of_the_same_rows():
    """``contrastive=``: the contrastive terms read those points, the entailment terms the batch's own; the same
    points give the same loss, other points change only the contrastive terms."""
    from hysac.losses import HySACLoss

    g = torch.Generator().manual_seed(3)
    batch = {k: L.exp_map0(torch.randn(6, 8, generator=g) * 0.5, 1.0) for k in ("T", "I", "Ts", "Is")}
    other = {k: L.exp_map0(torch.randn(6, 8, generator=g) * 0.5, 1.0) for k in batch}
    fn = HySACLoss()
    base, t0 = fn(batch, 1.0, 10.0)
    same, t1 = fn(batch, 1.0, 10.0, contrastive=batch)
    torch.testing.assert_close(base, same)
    _, t2 = fn(batch, 1.0, 10.0, contrastive=other)
    for name in t0:
        if name.startswith("ent_"):
            torch.testing.assert_close(t0[name], t2[name])
        else:
            assert not torch.allclose(t0[name], t2[name]), name


def test_safety_rank_loss_is_a_smooth_auroc_surrogate():
    """Pairwise logistic ranking of (log) distances: equals the hand-computed pair mean, falls as the two classes
    separate, pushes unsafe rows out and safe rows in, and is zero-with-gradient when a class is absent."""
    import torch.nn.functional as F

    from hysac.losses import safety_rank_loss

    g = torch.Generator().manual_seed(5)
    d = torch.rand(9, generator=g) * 3 + 0.5
    u = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1, 0], dtype=torch.bool)
    ld = d.log()
    expect = torch.stack([F.softplus((ld[i] - ld[j]) / 0.1) for i in range(9) for j in range(9)
                          if not u[i] and u[j]]).mean()
    torch.testing.assert_close(safety_rank_loss(d, u, 0.1), expect)
    torch.testing.assert_close(safety_rank_loss(d, u, 0.1, log_space=False),
                               torch.stack([F.softplus((d[i] - d[j]) / 0.1) for i in range(9) for j in range(9)
                                            if not u[i] and u[j]]).mean())
    apart = torch.where(u, d + 5.0, d)
    assert safety_rank_loss(apart, u, 0.1) < safety_rank_loss(d, u, 0.1)
    x = d.clone().requires_grad_()
    safety_rank_loss(x, u, 0.1).backward()
    assert bool((x.grad[u] < 0).all()) and bool((x.grad[~u] > 0).all())  # descent: unsafe out, safe in
    y = d.clone().requires_grad_()
    none = safety_rank_loss(y, torch.zeros(9, dtype=torch.bool))
    none.backward()
    assert none.item() == 0.0 and y.grad is not None and bool((y.grad == 0).all())
    with pytest.raises(ValueError):
        safety_rank_loss(d, u, 0.0)
