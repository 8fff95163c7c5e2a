"""The implicit volume's fast slice path agrees with its general point evaluation.

:meth:`ImplicitVolume.slices` rotates only the cached in-Nyquist half-plane points,
computes the mirrored features from the same phases and adds each image's latent
to the first layer once; :meth:`ImplicitVolume.evaluate` handles arbitrary points
with one latent per point. Both must give the same transform (and gradients).
"""

from __future__ import annotations

import pytest
import torch

from cryoviz.fourier import frequency_grid_2d
from cryoviz.geometry import random_rotations
from cryoviz.volumes import ImplicitVolume
from cryoviz.volumes.implicit import _ResidualMLP


def _general_slices(model: ImplicitVolume, rot: torch.Tensor, z: torch.Tensor, box: int,
                    apix: float) -> torch.Tensor:
    """Central slices through :meth:`evaluate` on the full half-plane grid."""
    ky, kx = frequency_grid_2d(box, rfft=True, dtype=torch.float64)
    k = torch.stack([kx, ky, torch.zeros_like(kx)], dim=-1) * (model.pixel_size_angstrom / apix)
    q = torch.einsum("bij,hwi->bhwj", rot, k)
    return model.evaluate(q.reshape(rot.shape[0], -1, 3), z).reshape(rot.shape[0], box, -1)


@pytest.mark.parametrize("domain", ["hartley", "fourier"])
def test_fast_slices_equal_general_evaluation(domain):
    torch.manual_seed(0)
    model = ImplicitVolume(12, 4.0, latent_dim=3, width=32, depth=2, pe_dim=16,
                           pe_sigma=0.1, domain=domain).double()
    with torch.no_grad():
        model.output_scale.fill_(2.5)
    rot = random_rotations(5, generator=torch.Generator().manual_seed(1)).double()
    z = torch.randn(5, 3, dtype=torch.float64)
    # the model's box, then a larger box at a finer pixel (another cached lattice), then again
    for box, apix in ((12, 4.0), (16, 3.0), (12, 4.0)):
        fast = model.slices(rot, z, box, apix)
        want = _general_slices(model, rot, z, box, apix)
        assert fast.shape == (5, box, box // 2 + 1)
        # points on the Nyquist circle (|k| = 0.5 in model units) are zero in the fast
        # path; the general one decides on the rotated point, which rounding may put
        # just inside
        ky, kx = frequency_grid_2d(box, rfft=True, dtype=torch.float64)
        radius = (kx**2 + ky**2).sqrt() * (model.pixel_size_angstrom / apix)
        inside = radius < 0.5 - 1e-9
        torch.testing.assert_close(fast[:, inside], want[:, inside])
        assert float(fast[:, ~inside].detach().abs().max()) == 0.0
        assert float(fast.detach().abs().max()) > 0
    # gradients with respect to z and the weights agree too (loss inside Nyquist)
    ky, kx = frequency_grid_2d(12, rfft=True, dtype=torch.float64)
    inside = (kx**2 + ky**2).sqrt() < 0.5 - 1e-9
    z1 = z.clone().requires_grad_(True)
    model.slices(rot, z1, 12, 4.0)[:, inside].abs().pow(2).sum().backward()
    g_fast = (z1.grad.clone(), model.mlp.inp.weight.grad.clone())
    model.zero_grad()
    z2 = z.clone().requires_grad_(True)
    _general_slices(model, rot, z2, 12, 4.0)[:, inside].abs().pow(2).sum().backward()
    torch.testing.assert_close(g_fast[0], z2.grad)
    torch.testing.assert_close(g_fast[1], model.mlp.inp.weight.grad)


def test_slices_need_z_for_a_latent_model():
    model = ImplicitVolume(8, 4.0, latent_dim=2, width=8, depth=1, pe_dim=4)
    with pytest.raises(ValueError, match="needs z of length 2"):
        model.slices(torch.eye(3)[None], None, 8, 4.0)


def test_split_first_layer_equals_concatenation():
    """A per-image latent added once equals the Linear layer on ``[features, z]`` per point."""
    torch.manual_seed(0)
    mlp = _ResidualMLP(10 + 3, 16, 2, 1).double()
    feats = torch.randn(4, 7, 10, dtype=torch.float64)
    z = torch.randn(4, 3, dtype=torch.float64)
    per_image = mlp(feats, z)
    per_point = mlp(feats.reshape(-1, 10), z[:, None, :].expand(4, 7, 3).reshape(-1, 3))
    concat = torch.cat([feats, z[:, None, :].expand(4, 7, 3)], dim=-1)
    h = torch.relu(mlp.inp(concat))
    for block in mlp.blocks:
        h = h + torch.relu(block(h))
    torch.testing.assert_close(per_image, mlp.out(h))
    torch.testing.assert_close(per_point.reshape(4, 7, 1), per_image)


@pytest.mark.parametrize("grad", [True, False])
def test_relu_after_sum_is_cryodrgns_residual_layer(grad):
    """``relu_after_sum``: each hidden layer is ``ReLU(h + W h + b)`` (cryoDRGN's
    ``ResidLinear`` followed by its activation), with and without autograd (the
    in-place path); the default keeps ``h + ReLU(W h + b)``, which differs."""
    torch.manual_seed(1)
    after = _ResidualMLP(6, 16, 3, 2, relu_after_sum=True).double()
    before = _ResidualMLP(6, 16, 3, 2).double()
    before.load_state_dict(after.state_dict())
    x = torch.randn(50, 6, dtype=torch.float64)
    h = torch.relu(after.inp(x))
    for block in after.blocks:
        h = torch.relu(h + h @ block.weight.T + block.bias)
    with torch.set_grad_enabled(grad):
        torch.testing.assert_close(after(x), after.out(h))
        assert not torch.allclose(before(x), after(x))


@pytest.mark.parametrize("after_sum", [True, False])
@pytest.mark.parametrize("with_latent", [True, False])
def test_in_place_layers_have_the_out_of_place_gradients(after_sum, with_latent):
    """The network's in-place element-wise work under autograd gives the gradients
    of the same layers written out of place, and leaves the first layer's
    pre-activations it is given unchanged (a decoder's cache may pass them)."""
    torch.manual_seed(2)
    mlp = _ResidualMLP(6 + 3, 16, 3, 2, relu_after_sum=after_sum).double()
    x = torch.randn(40, 6, dtype=torch.float64)
    z = torch.randn(40, 3, dtype=torch.float64, requires_grad=True) if with_latent else None

    def reference() -> torch.Tensor:
        h = x @ mlp.inp.weight[:, :6].T + mlp.inp.bias
        if z is not None:
            h = h + z @ mlp.inp.weight[:, 6:].T
        h = torch.relu(h)
        for block in mlp.blocks:
            lin = h @ block.weight.T + block.bias
            h = torch.relu(h + lin) if after_sum else h + torch.relu(lin)
        return h @ mlp.out.weight.T + mlp.out.bias

    inputs = list(mlp.parameters()) + ([] if z is None else [z])
    want = torch.autograd.grad(reference().square().sum(), inputs)
    first = mlp.first_layer(x)
    kept = first.detach().clone()
    got = torch.autograd.grad(mlp.from_first_layer(first, z).square().sum(), inputs)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    torch.testing.assert_close(first.detach(), kept, rtol=0, atol=0)


def test_the_residual_relu_setting_is_checked():
    with pytest.raises(ValueError, match="residual_relu"):
        ImplicitVolume(8, 4.0, residual_relu="middle")
    model = ImplicitVolume(8, 4.0, width=8, depth=1, pe_dim=4, residual_relu="after_sum")
    assert model.mlp.relu_after_sum and not ImplicitVolume(8, 4.0).mlp.relu_after_sum
