"""A deterministic fake HySAC model for the index tests (no tests in this file).

Texts: bag of hashed tokens → fixed random projection → direction; radius 0.4 (safe) or 1.2 (a token in
``UNSAFE_WORDS``), plus a small hash jitter. Images: 4×4 RGB thumbnail → fixed random projection → direction;
radius 0.6, or 1.6 for "red" images (mean R > 150, mean G < 100). Points = ``exp_map0(radius · direction)``.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from hysac import lorentz as L
from hysac.errors import InputError
from hysac.policy import SafetyPolicy
from hysac.safety import Bounds, ClassBounds

UNSAFE_WORDS = {"blood", "gore", "weapon", "kill", "drugs", "nude"}
VOCAB = 512


def _h(s: str) -> int:
    return int.from_bytes(hashlib.sha1(s.encode("utf-8")).digest()[:8], "little")


class FakeModel:
    def __init__(self, model_id: str = "fake-hysac-v1", dim: int = 16, curvature: float = 0.5,
                 sleep: float = 0.0, seed: int = 0, refuse: str | None = None):
        self.model_id = model_id
        self.embed_dim = dim
        self.curvature = curvature
        self.sleep = sleep
        self.refuse = refuse
        rng = np.random.default_rng(seed)
        self.text_proj = rng.standard_normal((VOCAB, dim))
        self.img_proj = rng.standard_normal((48, dim))
        self.cat_proj = torch.from_numpy(rng.standard_normal((dim, 7))).float()
        self.calls = 0

    # -- encoders -----------------------------------------------------------------------------------------------
    def _point(self, direction: np.ndarray, radius: float) -> np.ndarray:
        u = direction / (np.linalg.norm(direction) + 1e-12)
        return L.exp_map0(torch.from_numpy(u * radius), self.curvature).numpy()

    def text_point(self, text: str) -> np.ndarray:
        toks = text.lower().split()
        v = np.zeros(VOCAB)
        for t in toks:
            v[_h(t) % VOCAB] += 1.0
        unsafe = any(t in UNSAFE_WORDS for t in toks)
        radius = (1.2 if unsafe else 0.4) + (_h(text) % 1000) / 10000.0
        return self._point(v @ self.text_proj, radius)

    def encode_text(self, texts, batch_size=256):
        self.calls += 1
        if self.sleep:
            time.sleep(self.sleep)
        out = []
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise InputError("empty text")
            if self.refuse is not None and self.refuse in t:
                raise InputError(f"refused text {t!r}")
            out.append(self.text_point(t))
        return torch.from_numpy(np.stack(out)).float()

    def encode_image(self, images, batch_size=32):
        from PIL import Image

        self.calls += 1
        if self.sleep:
            time.sleep(self.sleep)
        out = []
        for im in images:
            if isinstance(im, (str, Path)):
                try:
                    with Image.open(im) as f:
                        f.load()
                        im = f.convert("RGB")
                except Exception:
                    raise InputError(f"cannot read image {im}") from None
            a = np.asarray(im.convert("RGB").resize((4, 4)), dtype=np.float64) / 255.0
            red = a[..., 0].mean() > 150 / 255 and a[..., 1].mean() < 100 / 255
            feat = a.reshape(-1) - 0.5
            radius = (1.6 if red else 0.6) + (_h(a.tobytes().hex()) % 1000) / 10000.0
            out.append(self._point(feat @ self.img_proj + 1e-3, radius))
        return torch.from_numpy(np.stack(out)).float()

    # -- safety head: the real policy over fixed bounds ------------------------------------------------------
    #: redirect radii = the safe classes' up_95 (rule "bound", margin 0): text 0.45, image 0.7; seek-unsafe radii
    #: = the unsafe classes' means: text 1.3, image 1.8; thresholds text 0.8, image 1.1
    bounds = Bounds(classes={"S": ClassBounds(up_95=0.45, low_05=0.3, avg=0.4),
                             "V": ClassBounds(up_95=0.7, low_05=0.5, avg=0.6),
                             "U": ClassBounds(up_95=1.4, low_05=1.1, avg=1.3),
                             "G": ClassBounds(up_95=1.9, low_05=1.5, avg=1.8)},
                    thresholds={"text": 0.8, "image": 1.1})
    traversal = {"rule": "bound", "margin": 0.0}

    @property
    def policy(self):
        return SafetyPolicy(self)

    def score(self, x):
        return L.dist0(torch.as_tensor(x), self.curvature)

    def unsafe_threshold(self, modality):
        return self.policy.threshold(modality)

    def categorize(self, x):
        return torch.softmax(torch.as_tensor(x).float() @ self.cat_proj, dim=-1)

    def redirect_tau(self, target_modality):
        return self.policy.redirect_radius(target_modality)

    def seek_unsafe_tau(self, target_modality):
        return self.policy.seek_unsafe_radius(target_modality)


def random_points(n: int, dim: int, curv: float, seed: int = 0, max_radius: float = 2.0) -> np.ndarray:
    """Random hyperboloid points: uniform directions, radii uniform in [0.05, max_radius]."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n, dim))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    r = rng.uniform(0.05, max_radius, size=(n, 1))
    return L.exp_map0(torch.from_numpy(u * r), curv).float().numpy()


def make_images(folder: Path, n_safe: int = 4, n_red: int = 2, corrupt: int = 1, nested: bool = True) -> list[Path]:
    """Write small PNG/JPEG images (some red = unsafe) and ``corrupt`` garbage .jpg files."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    rng = np.random.default_rng(1)
    for i in range(n_safe):
        sub = folder / "sub" if nested and i % 2 else folder
        sub.mkdir(exist_ok=True)
        arr = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
        arr[..., 0] = np.minimum(arr[..., 0], 120)
        p = sub / f"safe_{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    for i in range(n_red):
        arr = np.zeros((8, 8, 3), dtype=np.uint8)
        arr[..., 0] = 200 + i * 10
        arr[..., 1] = rng.integers(0, 50)
        p = folder / f"red_{i}.jpg"
        Image.fromarray(arr).save(p, quality=95)
        paths.append(p)
    for i in range(corrupt):
        p = folder / f"corrupt_{i}.jpg"
        p.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" + bytes(range(50)))
        paths.append(p)
    (folder / "notes.txt").write_text("not an image")
    return paths
