"""hysac.lorentz against the independent float64 NumPy reference written from the spec's formulas
(tests/reference_lorentz.py), on random inputs and several curvatures.

Inputs are fp32 (what the library sees in training) and the reference gets the same values in fp64, so the
differences measure the library's fp32 arithmetic; fp64 inputs check the formulas themselves to ~1e-10.
"""

import math

import numpy as np
import pytest
import torch

import reference_lorentz as R
from hysac import lorentz as L

CURVS = [0.1, 1.0, 3.7]


def _points(rng, n, d, c, scale=0.5):
    """(n, d) fp32 points, lifted with the reference exp map (tangent norms ≈ scale·sqrt(d))."""
    v = rng.standard_normal((n, d)) * scale
    return torch.from_numpy(R.exp_map0(v, c)).float()


def _np(t):
    return t.double().numpy()


@pytest.mark.parametrize("c", CURVS)
def test_distances_match_reference(c):
    rng = np.random.default_rng(1)
    x, y = _points(rng, 40, 16, c), _points(rng, 30, 16, c)
    ref = R.pairwise_dist(_np(x), _np(y), c)
    got = L.pairwise_dist(x, y, c)
    assert got.dtype == torch.float32 and got.shape == (40, 30)
    np.testing.assert_allclose(_np(got), ref, rtol=1e-5, atol=1e-5)
    ye = y[:1].expand(40, -1)
    np.testing.assert_allclose(_np(L.elementwise_dist(x, ye, c)), R.elementwise_dist(_np(x), _np(ye), c),
                               rtol=1e-5, atol=1e-5)
    # fp64 in, fp64 out: the formulas themselves agree
    np.testing.assert_allclose(_np(L.pairwise_dist(x.double(), y.double(), c)), ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_np(L.dist0(x, c)), R.dist0(_np(x), c), rtol=1e-6, atol=1e-7)
    # the distance from the origin is the pairwise distance from the zero vector (away from the acosh clamp)
    np.testing.assert_allclose(R.pairwise_dist(np.zeros((1, 16)), _np(x), c)[0], R.dist0(_np(x), c), rtol=1e-9)


@pytest.mark.parametrize("c", CURVS)
def test_exp_and_log_maps_match_reference(c):
    rng = np.random.default_rng(2)
    v = rng.standard_normal((50, 12)) * 0.6
    v[0] = 0.0  # the origin
    v[1] *= 1e4 / np.linalg.norm(v[1])  # beyond the asinh(2**15) clamp
    v32 = torch.from_numpy(v).float()
    ref = R.exp_map0(_np(v32), c)
    got = L.exp_map0(v32, c)
    np.testing.assert_allclose(_np(got), ref, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(_np(L.exp_map0(v32.double(), c)), ref, rtol=1e-12, atol=1e-14)

    # log map: the reference's eps clamp (acosh(max(·, 1+1e-5))) is inexact within sqrt(c)·||x|| ≲ 4.5e-3 of the
    # origin, where the library uses the exact series instead; compare outside that region
    x = _points(rng, 50, 12, c, scale=0.6)
    x = x[math.sqrt(c) * x.norm(dim=-1) > 1e-2]
    assert len(x) == 50
    np.testing.assert_allclose(_np(L.log_map0(x, c)), R.log_map0(_np(x), c), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(L.log_map0(x.double(), c)), R.log_map0(_np(x), c), rtol=1e-10, atol=1e-12)
    # ||log_map0(x)|| is the distance from the origin, in the reference too
    np.testing.assert_allclose(np.linalg.norm(R.log_map0(_np(x), c), axis=-1), R.dist0(_np(x), c), rtol=1e-10)


@pytest.mark.parametrize("c", CURVS)
def test_half_aperture_matches_reference_including_the_saturated_region(c):
    rng = np.random.default_rng(3)
    # space norms from 1e-3 to ~30: inside and outside sqrt(c)·||x|| <= 2K = 0.2, where asin saturates at 1 − eps
    radii = np.geomspace(1e-3, 30.0, 64) / math.sqrt(c)
    dirs = rng.standard_normal((64, 8))
    x = torch.from_numpy(dirs / np.linalg.norm(dirs, axis=-1, keepdims=True) * radii[:, None]).float()
    ref = R.half_aperture(_np(x), c)
    assert np.isclose(ref, math.asin(1 - 1e-5), rtol=0, atol=1e-9).sum() > 5 and ref.min() < 0.01  # both regions
    got = _np(L.half_aperture(x, c))
    sat = ref > 1.5
    np.testing.assert_allclose(got[~sat], ref[~sat], rtol=1e-6, atol=1e-6)
    # saturated: the clamp bound 1 − 1e-5 is itself rounded to fp32 (spacing 6e-8) and asin' ≈ 224 there
    np.testing.assert_allclose(got[sat], ref[sat], rtol=0, atol=1e-5)
    np.testing.assert_allclose(_np(L.half_aperture(x.double(), c)), ref, rtol=1e-12, atol=1e-12)
    ref3 = R.half_aperture(_np(x), c, min_radius=0.3)
    np.testing.assert_allclose(_np(L.half_aperture(x.double(), c, min_radius=0.3)), ref3, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("c", CURVS)
def test_oxy_angle_matches_reference(c):
    rng = np.random.default_rng(4)
    x = _points(rng, 120, 10, c, scale=0.4)
    y = _points(rng, 120, 10, c, scale=0.4)
    y[:20] = x[:20] * 1.7  # the same ray, farther out: angle ~0 (the eps terms keep it a little above)
    y[20:30] = -x[20:30]  # opposite side of the origin
    ref = R.oxy_angle(_np(x), _np(y), c)
    got = L.oxy_angle(x, y, c)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(_np(got), ref, rtol=0, atol=1e-6)
    # fp64 in: the same formula, up to summation order (num and den cancel for nearly collinear points)
    np.testing.assert_allclose(_np(L.oxy_angle(x.double(), y.double(), c)), ref, rtol=0, atol=1e-8)
    assert ref[:20].max() < 0.05 and ref[20:30].min() > math.pi / 2
    # the cone test of the library agrees with the reference's angle ≤ η·aperture
    inside = ref <= 0.9 * R.half_aperture(_np(x), c)
    assert 0 < inside.sum() < len(inside)
    assert np.array_equal(L.entails(x, y, c, aperture_scale=0.9).numpy(), inside)


def test_reference_exterior_angle_obeys_the_law_of_cosines():
    """The reference itself against the hyperbolic law of cosines (interior angle A at x of O-x-y, sides scaled by
    sqrt(c): cos A = (cosh a cosh b − cosh e)/(sinh a sinh b); exterior = π − A)."""
    rng = np.random.default_rng(5)
    c = 1.9
    x = R.exp_map0(rng.standard_normal((200, 6)) * 0.8, c)
    y = R.exp_map0(rng.standard_normal((200, 6)) * 0.8, c)
    sc = math.sqrt(c)
    a, e, b = sc * R.dist0(x, c), sc * R.dist0(y, c), sc * R.elementwise_dist(x, y, c)
    expected = math.pi - np.arccos(np.clip((np.cosh(a) * np.cosh(b) - np.cosh(e)) / (np.sinh(a) * np.sinh(b)), -1, 1))
    inside = (expected > 0.01) & (expected < math.pi - 0.01)  # away from the eps clamp at 0 and π
    assert inside.sum() > 100
    np.testing.assert_allclose(R.oxy_angle(x, y, c)[inside], expected[inside], atol=1e-4)
