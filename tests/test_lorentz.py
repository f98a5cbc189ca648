"""Geometry identities on random inputs, fp32 and bf16 autocast, against fp64 references."""

import math

import pytest
import torch

from hysac import lorentz as L

CURVS = [0.1, 1.0, 3.7]


def ref_dist(x, y, c):
    """fp64 reference distance from the textbook formula."""
    x, y = x.double(), y.double()
    xt = torch.sqrt(1 / c + (x * x).sum(-1))
    yt = torch.sqrt(1 / c + (y * y).sum(-1))
    inner = (x * y).sum(-1) - xt * yt
    return torch.acosh(torch.clamp(-c * inner, min=1.0)) / math.sqrt(c)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("c", CURVS)
def test_exp_log_inverse_and_radius(gen, c):
    v = torch.randn(512, 64, generator=gen, dtype=torch.float64) * 0.2
    x = L.exp_map0(v, c)
    assert torch.allclose(L.log_map0(x, c), v, atol=1e-9, rtol=1e-9)
    assert torch.allclose(L.dist0(x, c), v.norm(dim=-1), atol=1e-9, rtol=1e-9)
    # fp32
    v32 = v.float()
    assert torch.allclose(L.log_map0(L.exp_map0(v32, c), c), v32, atol=1e-5, rtol=1e-5)
    assert torch.allclose(L.dist0(L.exp_map0(v32, c), c), v32.norm(dim=-1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("c", CURVS)
def test_dist_matches_reference_symmetric_triangle(gen, c):
    x = L.exp_map0(torch.randn(64, 16, generator=gen), c)
    y = L.exp_map0(torch.randn(48, 16, generator=gen), c)
    z = L.exp_map0(torch.randn(64, 16, generator=gen), c)
    d = L.pairwise_dist(x, y, c)
    ref = ref_dist(x[:, None], y[None], c)
    assert d.dtype == torch.float32
    assert torch.allclose(d.double(), ref, atol=2e-3, rtol=1e-4)
    assert torch.allclose(L.pairwise_dist(y, x, c), d.T, atol=1e-5)
    dxz, dxy, dyz = L.elementwise_dist(x, z, c), L.elementwise_dist(x, y[:1].expand_as(x), c), L.elementwise_dist(
        y[:1].expand_as(z), z, c)
    assert bool((dxz <= dxy + dyz + 1e-4).all())
    # distance to the origin agrees with pairwise distance from the zero vector
    assert torch.allclose(L.pairwise_dist(torch.zeros(1, 16), x, c)[0], L.dist0(x, c), atol=2e-3)


def test_bf16_autocast_geometry_in_fp32(gen):
    c = 0.5
    x = L.exp_map0(torch.randn(32, 16, generator=gen), c)
    y = L.exp_map0(torch.randn(32, 16, generator=gen), c)
    ref = ref_dist(x[:, None], y[None], c)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = L.pairwise_dist(x.bfloat16(), y.bfloat16(), c)
        d0 = L.dist0(x.bfloat16(), c)
        e = L.exp_map0(torch.randn(8, 16, generator=gen).bfloat16(), c)
    assert d.dtype == torch.float32 and d0.dtype == torch.float32 and e.dtype == torch.float32
    # inputs were rounded to bf16 (3 significant digits), the computation itself is fp32
    ref_b = ref_dist(x.bfloat16().double()[:, None], y.bfloat16().double()[None], c)
    assert torch.allclose(d.double(), ref_b, atol=2e-3, rtol=1e-3)
    assert torch.allclose(d.double(), ref, atol=0.05, rtol=0.02)
    assert torch.isfinite(d0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_gradients_at_coincident_points(gen, dtype):
    c = torch.tensor(1.0, requires_grad=True)
    x = L.exp_map0(torch.randn(8, 16, generator=gen), 1.0).to(dtype).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        loss = (L.pairwise_dist(x, x, c).sum() + L.elementwise_dist(x, x, c).sum() + L.oxy_angle(x, x, c).sum()
                + L.half_aperture(x, c).sum() + L.dist0(torch.zeros(2, 16, requires_grad=True), c).sum())
    loss.backward()
    assert torch.isfinite(x.grad.float()).all() and torch.isfinite(c.grad).all()
    v = torch.zeros(4, 16, requires_grad=True)
    L.exp_map0(v, 1.0).sum().backward()
    assert torch.allclose(v.grad, torch.ones_like(v.grad))  # exp/log are the identity to first order at 0
    v.grad = None
    L.log_map0(v, 1.0).sum().backward()
    assert torch.allclose(v.grad, torch.ones_like(v.grad))


def test_exp_map_clamp_no_overflow():
    v = torch.full((2, 4), 1e4)
    x = L.exp_map0(v, 1.0)
    assert torch.isfinite(x).all()
    assert torch.allclose(L.dist0(x, 1.0), torch.full((2,), L.MAX_TANGENT_NORM), atol=1e-3)


def test_cone_and_angles(gen):
    c = 1.0
    x = L.exp_map0(torch.randn(100, 8, generator=gen) * 0.5, c)
    # the same ray further out is inside the cone (angle ~ 0); the opposite ray is outside
    outward = x * 2.0
    assert L.entails(x, outward, c).all()
    assert not L.entails(x, -x, c).any()
    ang = L.oxy_angle(x, -x, c)
    assert torch.all((ang > 0) & (ang < math.pi))
    # aperture saturates near the origin at about pi/2 and shrinks with the radius
    ha = L.half_aperture(torch.tensor([[0.01, 0.0], [1.0, 0.0], [10.0, 0.0]]), c)
    assert ha[0] == pytest.approx(math.asin(1 - 1e-5), abs=1e-5)  # the official saturation 1.56632
    assert ha[0] > ha[1] > ha[2]
    assert ha[2] == pytest.approx(math.asin(0.2 / 10.0), rel=1e-4)


@pytest.mark.parametrize("c", [0.3, 1.0, 2.5])
def test_oxy_angle_matches_the_hyperbolic_law_of_cosines(gen, c):
    """Independent formula: in the triangle O-x-y with sides scaled by sqrt(c), the interior angle A at x has
    cos A = (cosh a cosh b - cosh e) / (sinh a sinh b), a = |Ox|, b = |xy|, e = |Oy|; the exterior angle is π - A."""
    x = L.exp_map0(torch.randn(200, 6, generator=gen, dtype=torch.float64) * 0.8, c)
    y = L.exp_map0(torch.randn(200, 6, generator=gen, dtype=torch.float64) * 0.8, c)
    sc = math.sqrt(c)
    a, e = sc * L.dist0(x, c), sc * L.dist0(y, c)
    b = sc * L.elementwise_dist(x, y, c)
    cos_a = (torch.cosh(a) * torch.cosh(b) - torch.cosh(e)) / (torch.sinh(a) * torch.sinh(b))
    expected = math.pi - torch.acos(cos_a.clamp(-1, 1))
    got = L.oxy_angle(x, y, c)
    # the eps clamp keeps the angle within [acos(1-eps), acos(-1+eps)] = ±0.0045 of 0 and π: compare inside it
    inside = (expected > 0.01) & (expected < math.pi - 0.01)
    assert inside.sum() > 100
    assert torch.allclose(got.double()[inside], expected[inside], atol=2e-4)
    assert torch.all(got.double() >= math.acos(1 - 1e-5) - 1e-6) and torch.all(got.double() <= math.pi)


def test_entailment_gradients_stay_bounded_for_near_coincident_points(gen):
    """The official eps (1e-5) in the acos / asin clamps: gradients of the angle and the aperture of a point and a
    copy moved by 1e-6 stay below ~1/sqrt(2·eps) instead of reaching ~1e6."""
    c = 1.0
    base = L.exp_map0(torch.randn(64, 8, generator=gen) * 0.7, c)
    x = base.clone().requires_grad_(True)
    y = (base * (1 + 1e-6)).clone().requires_grad_(True)  # the same ray, a hair further out
    (L.oxy_angle(x, y, c).sum() + L.half_aperture(x, c).sum()).backward()
    worst = max(x.grad.abs().max().item(), y.grad.abs().max().item())
    assert math.isfinite(worst) and worst < 1e3


def test_set_dist0_and_toward_origin(gen):
    c = 0.7
    x = L.exp_map0(torch.randn(50, 8, generator=gen), c)
    y = L.set_dist0(x, 0.3, c)
    assert torch.allclose(L.dist0(y, c), torch.full((50,), 0.3), atol=1e-5)
    cos = torch.nn.functional.cosine_similarity(x, y)
    assert torch.allclose(cos, torch.ones(50), atol=1e-5)
    h = L.toward_origin(x, 0.25, c)
    assert torch.allclose(L.dist0(h, c), 0.75 * L.dist0(x, c), atol=1e-5)
    assert torch.allclose(L.toward_origin(x, 1.0, c), torch.zeros_like(x), atol=1e-6)


def test_check_finite():
    with pytest.raises(ValueError, match="NaN"):
        L.check_finite(torch.tensor([1.0, float("nan")]), "query")


def test_fp32_guard_reads_every_tensor_argument(gen):
    """Keyword tensors and a fp64 second argument decide the compute dtype too (not only the first positional)."""
    x = L.exp_map0(torch.randn(5, 4, generator=gen), 1.0)
    y64 = L.exp_map0(torch.randn(5, 4, generator=gen, dtype=torch.float64), 1.0)
    assert L.pairwise_dist(x, y64, 1.0).dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        by_kw = L.pairwise_dist(x_hyp=x.bfloat16(), y_hyp=x.bfloat16(), curv=1.0)
    assert by_kw.dtype == torch.float32
    assert torch.allclose(by_kw, L.pairwise_dist(x.bfloat16().float(), x.bfloat16().float(), 1.0), atol=1e-6)
