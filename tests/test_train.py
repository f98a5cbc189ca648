"""Tiny end-to-end training: the loss falls, interrupt + resume gives bit-identical weights, export loads."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hysac.data import default_data_dir
from hysac.model import HySAC
from hysac.testing import TINY_EMOJI, TINY_LORA
from hysac.train import load_config, run_training
from hysac.errors import InputError

pytestmark = pytest.mark.skipif(not (default_data_dir() / "i2p_dev.csv").is_file(),
                                reason="shared dev data (../shared/data) not found")

EMOJI = TINY_EMOJI


def _cfg(tmp, clip, out, **over):
    items = [f"out_dir={out}", "data.max_per_source=24", "data.openmoji_size=28", f"data.cache_dir={tmp / 'cache'}",
             f"data.emoji_codepoints={json.dumps(EMOJI)}", "optim.epochs=2", "optim.warmup_steps=1",
             "checkpoint_every=1", "optim.lr=0.01", "name=tiny"]
    items += [f"{k}={v}" for k, v in over.items()]
    cfg = load_config(None, items)
    cfg["backbone"] = {"kind": "clip", "source": str(clip), "lora": TINY_LORA}
    cfg["data"]["batch"] = {"unsafe_text": 6, "safe_text": 6, "safe_image": 4, "unsafe_image": 2}
    return cfg


def test_train_loss_falls_resume_exact_and_export(tmp_path, clip_folder):
    # uninterrupted reference run
    # the optional extension term and tolerant epoch selection ride along (logged, resumed exactly)
    rank = {"loss.safety_rank": 1.0, "select_tolerance": 1.0}
    ref = run_training(_cfg(tmp_path, clip_folder, tmp_path / "a", **rank))
    assert ref["global_step"] == 2 * -(-ref["data"]["train_unsafe_texts"] // 6)  # epochs × steps per epoch
    log = [json.loads(l) for l in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == ref["global_step"]
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses
    for key in ("con_TI", "ent_T_I", "class_order", "safety_rank", "curvature", "visual_alpha", "lr"):
        assert key in log[0]

    # interrupted after 3 optimizer steps, then resumed to the end
    cut = run_training(_cfg(tmp_path, clip_folder, tmp_path / "b", max_steps=3, **rank))
    assert cut["interrupted"] and cut["stopped_at_step"] == 3
    resumed = run_training(_cfg(tmp_path, clip_folder, tmp_path / "b", **rank))
    assert resumed["global_step"] == ref["global_step"]
    wa = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resume is not exact"

    # the exported model loads and carries fitted bounds with thresholds
    m = HySAC.from_pretrained(tmp_path / "a" / "model")
    assert set(m.bounds.classes) >= {"S", "U"} and "text" in m.bounds.thresholds
    assert m.categorize(m.encode_text(["a knife"])).shape == (1, 7)
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert "auroc_text" in metrics["val"] and "median_dist" in metrics["test"]
    assert ref["best_epoch"] == 2  # a tolerance wider than any score gap selects the last epoch


def test_config_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("bogus_key: 1\n")
    with pytest.raises(InputError, match="bogus_key"):
        load_config(bad)
    with pytest.raises(InputError, match="key=value"):
        load_config(None, ["optim.lr"])
    with pytest.raises(InputError, match="objective"):
        load_config(None, ["objective=magic"])
    for bad_rank in (["loss.safety_rank=-1"], ["loss.safety_rank=lots"], ["loss.safety_rank_temperature=0"]):
        with pytest.raises(InputError, match="loss.safety_rank"):
            load_config(None, bad_rank)
    assert load_config(None, ["loss.safety_rank=2"])["loss"]["safety_rank"] == 2
    for bad_tol in (["select_tolerance=-0.1"], ["select_tolerance=some"], ["select_tolerance=true"]):
        with pytest.raises(InputError, match="select_tolerance"):
            load_config(None, bad_tol)
    assert load_config(None, ["select_tolerance=0.005"])["select_tolerance"] == 0.005
    for bad_seed in (["seed=-1"], ["seed=x"], ["seed=true"], ["data.split_seed=-2"], ["data.split_seed=0.5"]):
        with pytest.raises(InputError, match=bad_seed[0].split("=")[0]):
            load_config(None, bad_seed)


def test_split_seed_draws_the_data_and_seed_the_model(monkeypatch):
    """data.split_seed (when set) is the seed every data draw gets; the top-level seed is the default for it and
    stays the model's: seed=3 data.split_seed=0 splits the data like seed 0."""
    from hysac.train import data as D

    seen = []
    monkeypatch.setattr("hysac.data.corpus.register_splits", lambda c: seen.append(c["seed"]) or "splits")
    for overrides, want in (([], 0), (["seed=3"], 3), (["seed=3", "data.split_seed=0"], 0),
                            (["data.split_seed=5"], 5)):
        cfg = load_config(None, overrides + ["data.corpus={}"])
        assert D.data_seed(cfg) == want
        assert D.text_splits(cfg) == "splits"
    assert seen == [0, 3, 0, 5]
    assert D.data_seed({"seed": 7, "data": {}}) == 7 and D.data_seed({"data": {"split_seed": None}}) == 0


def test_safeclip_objective_runs_and_saves(tmp_path, clip_folder):
    """The Euclidean Safe-CLIP objective trains on the same backbone and data and exports a loadable model."""
    cfg = _cfg(tmp_path, clip_folder, tmp_path / "sc", objective="safeclip")
    cfg["optim"]["epochs"] = 1
    res = run_training(cfg)
    assert res["objective"] == "safeclip" and res["global_step"] > 0
    log = [json.loads(l) for l in (tmp_path / "sc" / "log.jsonl").read_text().splitlines() if '"loss"' in l]
    assert {"redir_T", "pres_T", "con_TI"} <= set(log[0])
    assert "t2i_R@1" in res["val"] and "auroc_text" not in res["val"]
    m = HySAC.from_pretrained(tmp_path / "sc" / "model")
    assert m.encode_text(["x"], project=False).shape[0] == 1


def test_fast_path_follows_the_fp32_eager_loss_curve(tmp_path, clip_folder):
    """The fast training path (bf16 autocast, SDPA attention, activation checkpointing, compiled towers) follows the
    loss curve of the same trainer run in fp32 with eager attention (and anomaly detection on) within 5 % at each of
    4 steps; same init, batches and (zero) LoRA dropout. Both runs are this trainer: the loss itself is checked
    against the independent reference in ``test_trainer_loss_matches_the_independent_reference``."""
    lora = {**TINY_LORA, "lora_dropout": 0.0}

    def run(out, **over):
        cfg = _cfg(tmp_path, clip_folder, out, max_steps=4, **over)
        cfg["backbone"]["lora"] = lora
        run_training(cfg)
        log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
        return [r["loss"] for r in log if "loss" in r]

    eager = run(tmp_path / "eager", amp="off", **{"perf.attention": "eager", "perf.detect_anomaly": "true"})
    fast = run(tmp_path / "fast", amp="bf16", **{"perf.attention": "sdpa", "perf.grad_checkpointing": "true",
                                                 "perf.compile": "true", "perf.compile_backend": "eager"})
    assert len(eager) == len(fast) == 4
    rel = [abs(a - b) / abs(a) for a, b in zip(eager, fast)]
    assert max(rel) < 0.05, (eager, fast)
    assert eager != fast  # bf16 really ran


def test_trainer_loss_matches_the_independent_reference(tmp_path, clip_folder):
    """The trainer's loss on its first batch equals the spec's seven-term objective computed by the float64 NumPy
    reference (tests/reference_lorentz.py) from the same Euclidean features: lifted with the model's alphas and
    curvature (spec §2.4), the four contrastive and three entailment terms with s = exp(logit_scale) (spec §4.2)."""
    import math

    import numpy as np

    import reference_lorentz as R
    from hysac.losses import PAPER_TERMS
    from hysac.train.data import step_rows
    from hysac.train.trainer import Trainer

    # fp32, the paper's terms only (extension terms off), loss.scale = 1
    cfg = _cfg(tmp_path, clip_folder, tmp_path / "ref", amp="off", device="cpu", **{
        "loss.weights.con_TTs": 0, "loss.weights.ent_T_Ts": 0, "loss.class_order": 0, "loss.category": 0,
        "loss.class_photos": 0, "loss.semantic_anchor": 0, "loss.scale": 1, "loss.aperture_scale": 1.0})
    cfg["backbone"]["lora"] = {**TINY_LORA, "lora_dropout": 0.0}  # _embed and _loss see the same features
    tr = Trainer(cfg, log=lambda *a, **k: None)
    # the first batch, assembled exactly as Trainer.fit does
    lead = next(iter(tr.data.families))
    perm = np.random.default_rng([tr.seed, 0, 999]).permutation(len(tr.data.families[lead].rows))
    batch = tr._assemble(step_rows(tr.data, cfg["data"]["batch"], tr.seed, 0, 0, perm))
    tr.model.train()
    with torch.no_grad():  # distinct scalars (the init has c = 1 and equal alphas), so each one must be read right
        tr.model.curv.fill_(math.log(0.6))
        tr.model.textual_alpha.fill_(math.log(0.2))
        tr.model.visual_alpha.fill_(math.log(0.35))
        tr.model.logit_scale.fill_(math.log(20.0))
        feats, masks = tr._embed(batch["rows"])
        total, logs = tr._loss(batch)

    m = tr.model
    c = math.exp(float(m.curv.detach()))
    s = math.exp(float(m.logit_scale.detach()))
    a_text, a_image = math.exp(float(m.textual_alpha.detach())), math.exp(float(m.visual_alpha.detach()))
    alpha = {"T": a_text, "Ts": a_text, "I": a_image, "Is": a_image}
    points = {k: R.exp_map0(feats[k].double().numpy() * alpha[k], c) for k in alpha}
    present = {k: masks[f"has_{k}"].numpy() for k in alpha}
    assert not all(v.all() for v in present.values())  # rows lacking members: the terms read the masked rows
    # each term on the rows where both of its members are present, as HySACLoss documents (mask == slice)
    ref_terms = R.official_terms(points, c, s, aperture_scale=1.0, masks=present)
    assert all(t is not None for t in ref_terms) and set(logs) == set(PAPER_TERMS)
    for name, want in zip(R.TERM_NAMES, ref_terms):
        assert logs[name] == pytest.approx(want, rel=1e-4, abs=1e-6), name
    assert logs["con_TI"] > 0.1 and logs["ent_T_I"] > 0  # non-trivial terms
    # Weighting conventions: the spec's official total normalises λ by Σλ and then divides by 7 again (each term
    # 1/49); HySACLoss and the trainer divide by Σλ once (each term 1/7). With all seven terms active the trainer's
    # loss at loss.scale = 1 is 7 × the official total, and loss.scale = 1/7 (the parity config) gives it exactly.
    official = R.official_total(ref_terms)
    assert float(total) == pytest.approx(7 * official, rel=1e-4)
    tr.cfg["loss"]["scale"] = 1 / 7
    with torch.no_grad():
        scaled, _ = tr._loss(batch)
    assert float(scaled) == pytest.approx(official, rel=1e-4)


def test_apply_perf_switches_attention_checkpointing_and_compiles(clip_folder):
    from hysac.backbones.clip import ClipBackbone
    from hysac.train.trainer import apply_perf

    bb = ClipBackbone.from_hub_or_folder(clip_folder, lora=TINY_LORA)
    for n, p in bb.named_parameters():
        p.requires_grad_("lora_" in n)
    m = HySAC(bb)
    keys = set(m.checkpoint_state_dict())
    done = apply_perf(m, {"attention": "eager", "grad_checkpointing": True, "compile": True,
                          "compile_backend": "eager"})["applied"]
    assert done["attention"] == ["eager", "eager"]
    assert sorted(done["grad_checkpointing"]) == ["textual", "visual"] == sorted(done["compiled"])
    vis = bb._base(bb.visual)
    assert vis.config._attn_implementation == "eager" and vis.vision_model.encoder.gradient_checkpointing
    assert set(m.checkpoint_state_dict()) == keys  # in-place compile keeps checkpoint keys
    px = torch.randn(2, 3, 28, 28)
    m.lift_image(bb.image_features(px)).sum().backward()  # checkpointed, compiled towers still train
    assert any(p.grad is not None for n, p in bb.named_parameters() if "lora_" in n)


def test_perf_config_errors():
    with pytest.raises(InputError, match="perf.attention"):
        load_config(None, ["perf.attention=fast"])
    with pytest.raises(InputError, match="unknown perf"):
        load_config(None, ["perf.turbo=true"])
    with pytest.raises(InputError, match="perf.compile"):
        load_config(None, ["perf.compile=maybe"])


def test_torchrun_two_processes_stay_in_step(tmp_path, clip_folder):
    """Two CPU processes (gloo) under torchrun: per-process shares of a batch that does not divide evenly,
    negatives gathered from the other process, gradients all-reduced — both end with identical weights and
    rank 0 alone writes the log and checkpoints."""
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "ddp"
    cfg = _cfg(tmp_path, clip_folder, out, max_steps=3)
    cfg["data"]["batch"] = {"unsafe_text": 5, "safe_text": 5, "safe_image": 3, "unsafe_image": 1}  # odd: uneven
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    worker = Path(__file__).with_name("dist_train_worker.py")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker), str(cfg_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2 and {r0["rank"], r1["rank"]} == {0, 1}
    assert r0["steps"] == r1["steps"] == 3
    assert r0["hash"] == r1["hash"], "the processes' weights diverged"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "step" in r] == [1, 2, 3]  # one writer
    assert (out / "checkpoints" / "last").is_dir()


def test_paper_clip_config_trains_on_visu_layout(tmp_path, clip_folder):
    """``configs/hysac-clip-vit-l-14.yaml`` (the paper's recipe on the fast path) is valid and trains end to end
    on ViSU-layout quadruplets — here tiny towers, a few synthetic quadruplets and the compile backend 'eager'."""
    from pathlib import Path

    from PIL import Image

    root = Path(__file__).resolve().parents[1]
    coco, visu = tmp_path / "coco", tmp_path / "visu"
    items = {}
    for i in range(6):
        for folder, name, colour in ((coco / "val2017", f"{i:012d}.jpg", (0, 40 * i, 200)),
                                     (visu / "nsfw", f"{i}.jpg", (200, 40 * i, 0))):
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), colour).save(folder / name)
        items[str(i)] = {"coco_id": i, "nsfw_im_path": f"nsfw/{i}.jpg", "safe": f"a dog number {i} in a park",
                         "nsfw": f"a dog number {i} covered in blood", "tag": "violence"}
    for split in ("train", "val", "test"):
        (tmp_path / f"{split}.json").write_text(json.dumps(items))
    cfg = load_config(root / "configs" / "hysac-clip-vit-l-14.yaml", [
        f"out_dir={tmp_path / 'run'}", f"data.visu_train={tmp_path / 'train.json'}",
        f"data.visu_val={tmp_path / 'val.json'}", f"data.visu_test={tmp_path / 'test.json'}",
        f"data.coco_root={coco}", f"data.visu_root={visu}", f"data.cache_dir={tmp_path / 'cache'}",
        "data.batch.quad=4", "optim.epochs=1", "perf.compile_backend=eager", f"backbone.source={clip_folder}",
        "backbone.lora.r=4"])
    assert cfg["perf"]["compile"] is True and cfg["select_metric"] == "recall_sum"
    res = run_training(cfg)
    assert res["global_step"] == 2 and res["objective"] == "hysac"
    assert "recall_sum" in res["val"] and (tmp_path / "run" / "model" / "model.safetensors").is_file()
    # model selection uses the official six paired terms; the union-gallery figure keeps its own name
    terms = res["val"]["recall_terms"]
    assert list(terms) == ["S→V", "V→S", "S→G", "G→S", "U→V", "V→U"]
    assert res["val"]["recall_sum"] == pytest.approx(sum(terms.values()))
    assert "recall_sum_union" in res["val"]


def test_loader_workers_decode_training_images_in_processes_with_the_same_losses(tmp_path, clip_folder):
    """Towers trained end to end read their images through the loader pool (decoding the next step meanwhile):
    same steps, losses equal to the in-process decoding path to float rounding."""
    lora = {**TINY_LORA, "lora_dropout": 0.0}

    def run(out, workers):
        cfg = _cfg(tmp_path, clip_folder, out, max_steps=4, **{"perf.loader_workers": workers})
        cfg["backbone"]["lora"] = lora
        run_training(cfg)
        return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()
                if '"loss"' in line]

    here = run(tmp_path / "w0", 0)
    pool = run(tmp_path / "w2", 2)
    assert len(here) == len(pool) == 4
    assert pool == pytest.approx(here, rel=1e-4)
    with pytest.raises(InputError, match="loader_workers"):
        load_config(None, ["perf.loader_workers=-1"])


def test_class_photo_term_on_the_mini_conse_backbone(tmp_path):
    """The "a photo of a <object>" ↔ simulated-photo term: logged, it trains the shared head, class-photo
    retrieval is reported, and the image threshold is fitted on the everyday classes; resume stays exact."""
    cfg = load_config(None, [f"out_dir={tmp_path / 'm'}", "data.max_per_source=12", "data.openmoji_size=28",
                             f"data.cache_dir={tmp_path / 'cache'}", f"data.emoji_codepoints={json.dumps(EMOJI)}",
                             "optim.epochs=1", "optim.warmup_steps=1", "name=tiny-mini", "loss.class_photos=1.0",
                             "loss.class_photos_batch=16", "threshold_criterion_image=source_fpr@0.05+classes"])
    cfg["backbone"] = {"kind": "mini", "embed_dim": 32, "head": "mlp", "head_hidden": 32, "image_bridge": "conse",
                       "conse_space": "head", "text_lora": {"r": 2, "alpha": 4, "dropout": 0.0, "layers": 1}}
    cfg["data"]["corpus"] = {}
    cfg["data"]["batch"] = {"unsafe_text": 6, "safe_text": 6, "safe_image": 4, "unsafe_image": 2}
    res = run_training(cfg)
    log = [json.loads(line) for line in (tmp_path / "m" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert steps and all(r["class_photos"] > 0 for r in steps)
    val = res["val"]
    assert 0 <= val["class_photo_R@1"] <= val["class_photo_R@5"] <= 100
    m = HySAC.from_pretrained(tmp_path / "m" / "model")
    assert m.backbone.config()["conse_space"] == "head" and "image" in m.bounds.thresholds


def test_polar_head_with_semantic_anchor_keeps_the_frozen_directions(tmp_path):
    """Polar text head + LoRA-tuned text tower + ``loss.semantic_anchor``: the term is logged, it starts near 0
    (LoRA starts as the identity; only the tower's own training-mode dropout differs), the tuned directions stay
    close to the frozen tower's, and the exported model reloads with its polar head and radius offset."""
    import torch.nn.functional as F

    from hysac.backbones.mini import MiniBackbone

    cfg = load_config(None, [f"out_dir={tmp_path / 'p'}", "data.max_per_source=12", "data.openmoji_size=28",
                             f"data.cache_dir={tmp_path / 'cache'}", f"data.emoji_codepoints={json.dumps(EMOJI)}",
                             "optim.epochs=1", "optim.warmup_steps=1", "name=tiny-polar", "loss.semantic_anchor=10"])
    cfg["backbone"] = {"kind": "mini", "embed_dim": 384, "head": "polar", "head_hidden": 32, "polar_base": 4.0,
                       "image_bridge": "conse", "text_lora": {"r": 2, "alpha": 4, "dropout": 0.0, "layers": 1}}
    cfg["data"]["corpus"] = {}
    cfg["data"]["batch"] = {"unsafe_text": 6, "safe_text": 6, "safe_image": 4, "unsafe_image": 2}
    run_training(cfg)
    log = [json.loads(line) for line in (tmp_path / "p" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert steps and all("semantic_anchor" in r for r in steps)
    assert steps[0]["semantic_anchor"] < 0.05 and max(r["semantic_anchor"] for r in steps) < 0.1
    m = HySAC.from_pretrained(tmp_path / "p" / "model")
    cfg_bb = m.backbone.config()
    assert cfg_bb["head"] == "polar" and cfg_bb["polar_base"] == 4.0
    texts = ["a cat asleep on a sofa", "a man stabbing another man", "how do I bake bread"]
    frozen = MiniBackbone().eval()
    tok = frozen.tokenize(texts)
    with torch.no_grad():
        ref = frozen.text_base_features(tok["input_ids"], tok["attention_mask"])
        tuned = m.encode_text(texts, project=False)
    assert (F.cosine_similarity(tuned, ref, dim=-1) > 0.95).all()
    with pytest.raises(InputError, match="polar"):
        bad = json.loads(json.dumps(cfg))
        bad["backbone"]["head"] = "mlp"
        bad["out_dir"] = str(tmp_path / "bad")
        run_training(bad)


def test_parity_config_has_the_official_settings_and_the_modern_one_says_what_differs():
    """The official training code's settings (spec §4.3), next to the clearly labelled modern recipe."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    par = load_config(root / "hysac-clip-vit-l-14-parity.yaml", [])
    o = par["optim"]
    assert (o["lr"], o["weight_decay"], tuple(o["betas"]), o["eps"]) == (1e-4, 0.2, (0.9, 0.98), 1e-8)
    assert o["warmup_steps"] == 0 and o["schedule"] == "constant" and not o["clip_grad"] and o["epochs"] == 50
    assert par["amp"] == "off" and par["perf"]["attention"] == "eager" and par["perf"]["compile"] is False
    assert par["data"]["batch"]["quad"] == 32 and par["seed"] == 42 and par["patience"] == 5
    assert par["loss"]["scale"] == pytest.approx(1 / 7, rel=1e-5) and par["loss"]["gather_negatives"] is False
    assert par["select_metric"] == "recall_sum" and par["model"]["traversal"]["rule"] == "official"
    assert par["model"]["traversal"]["alpha"] == 0.8
    modern = (root / "hysac-clip-vit-l-14.yaml").read_text()
    assert "MODERN" in modern and "hysac-clip-vit-l-14-parity.yaml" in modern
    with pytest.raises(InputError, match="optim.schedule"):
        load_config(None, ["optim.schedule=linear"])


def test_cached_base_features_record_what_computed_them():
    """Features cached by the trainer name the engine that made them (ONNX Runtime and the torch tower differ in
    the last bits), so a run with engines never reads another run's torch-made features, or the reverse."""
    from hysac.backbones.mini import MiniBackbone
    from hysac.train.trainer import _engine_tag

    bb = MiniBackbone(embed_dim=32).eval()
    assert _engine_tag(bb, "text") == _engine_tag(bb, "image") == "torch"
    bb.set_inference_engines(text=lambda ids, mask: bb.text_base_features(ids, mask))
    assert _engine_tag(bb, "text") != "torch" and _engine_tag(bb, "image") == "torch"


def test_select_epoch_takes_the_latest_epoch_within_the_tolerance_of_the_best():
    """Two runs of the shipped recipe that differed in the sixth digit at step 202 scored (selection metric per
    epoch) as below: strict selection exports epoch 3 from one and epoch 6 from the other; with a tolerance of
    0.005 both export epoch 6. An epoch that falls below best - tolerance is not selected and counts as bad."""
    from hysac.train.trainer import select_epoch

    def run(scores, tol):
        best, chosen = None, -1
        for ep, s in enumerate(scores):
            selected, best = select_epoch(best, s, tol)
            chosen = ep if selected else chosen
        return chosen, best

    shipped = [1.0167, 1.0522, 1.0688, 1.0652, 1.0675, 1.0673]
    rerun = [1.0167, 1.0522, 1.0659, 1.0647, 1.0672, 1.0673]
    assert run(shipped, 0.0) == (2, 1.0688) and run(rerun, 0.0) == (5, 1.0673)
    assert run(shipped, 0.005) == (5, 1.0688) and run(rerun, 0.005) == (5, 1.0673)
    assert run([0.9, 0.95, 0.90, 0.949], 0.005) == (3, 0.95)  # 0.90 is out of the tolerance, 0.949 within it
    assert select_epoch(0.95, 0.90, 0.005) == (False, 0.95)
    assert select_epoch(0.95, 0.95, 0.0) == (False, 0.95)  # strict: a tie keeps the earlier epoch


def test_register_threshold_pools_a_small_styled_register_with_its_group():
    """The FPR bound holds in every register; a styled register too small for its quantile (here 10 texts, one of
    them an outlier) is counted with its source group instead of setting the threshold alone."""
    from hysac.train.trainer import register_threshold

    rng = np.random.default_rng(0)
    base = rng.uniform(0.0, 1.0, 100)
    styled = np.r_[rng.uniform(0.0, 1.0, 9), 5.0]
    scores = np.r_[base, styled]
    labels = np.zeros(110, dtype=int)
    sources = np.array(["moderation"] * 100 + ["moderation+style"] * 10)
    pooled = register_threshold(scores, labels, sources, "moderation=0.1")
    assert pooled == np.quantile(scores, 0.9, method="higher") and pooled < 1.0
    assert register_threshold(scores, labels, sources, "moderation=0.1", min_texts=0) == 5.0
    big = np.array(["moderation"] * 100 + ["moderation+style"] * 10)
    assert register_threshold(scores, labels, big, "moderation=0.1", min_texts=10) == 5.0  # large enough: alone


def test_register_threshold_spread_names_the_register_that_sets_it_and_how_far_it_moves(monkeypatch):
    """The threshold of :func:`register_threshold`, the register whose quantile sets it (here the one with the
    higher safe scores, although its rate is looser), and a bootstrap spread that is seeded, shrinks with more
    texts, and is zero when resampling cannot move any quantile."""
    from hysac.train.trainer import register_threshold, register_threshold_spread

    rng = np.random.default_rng(1)

    def texts(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scores = np.r_[rng.normal(0.0, 1.0, n), rng.normal(1.0, 1.0, n), rng.normal(3.0, 1.0, n)]
        labels = np.r_[np.zeros(2 * n, int), np.ones(n, int)]  # unsafe texts never count
        sources = np.array(["coco"] * n + ["moderation"] * n + ["moderation"] * n)
        return scores, labels, sources

    spec = "captions=0.04,moderation=0.09"
    scores, labels, sources = texts(200)
    small = register_threshold_spread(scores, labels, sources, spec, draws=500)
    assert small["threshold"] == register_threshold(scores, labels, sources, spec)
    assert small["set_by"] == "moderation"
    assert small == register_threshold_spread(scores, labels, sources, spec, draws=500)  # seeded
    assert 0.0 < small["bootstrap_sd"] and small["bootstrap_q05"] < small["threshold"] < small["bootstrap_q95"]
    large = register_threshold_spread(*texts(20_000), spec, draws=200)
    assert large["bootstrap_sd"] < small["bootstrap_sd"] / 4  # s.d. of a quantile ~ 1/sqrt(n): 100x the texts, 1/10 the s.d.
    flat = register_threshold_spread(np.r_[np.zeros(50), np.ones(50)], np.zeros(100, int),
                                     np.array(["coco"] * 50 + ["tweets"] * 50), "0.05", draws=50)
    assert flat["threshold"] == 1.0 and flat["set_by"] == "tweets" and flat["bootstrap_sd"] == 0.0
    with pytest.raises(ValueError, match="draws"):
        register_threshold_spread(scores, labels, sources, spec, draws=1)
    # resampled in chunks when a register is large (memory bounded): the same spread, to sampling error
    monkeypatch.setattr("hysac.train.trainer._BOOTSTRAP_CELLS", 50)
    chunked = register_threshold_spread(scores, labels, sources, spec, draws=500)
    assert chunked["threshold"] == small["threshold"] and chunked["set_by"] == small["set_by"]
    assert chunked["bootstrap_sd"] == pytest.approx(small["bootstrap_sd"], rel=0.3)
