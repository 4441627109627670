"""Tests of the Haar transform, pixel losses, re-blur operators and the EFCR regulariser."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_mpt_deblur.train.losses import (
    EFCRLoss,
    efcr_loss,
    efcr_terms,
    haar_dwt,
    haar_idwt,
    pixel_loss,
)
from napari_mpt_deblur.train.reblur import (
    PhotometricJitter,
    ReblurBank,
    make_negatives,
    make_reblurred_set,
)


def _disc_kernels(radii=(1.0, 2.0, 3.0), size=9) -> np.ndarray:
    yy, xx = np.mgrid[: size, : size] - size // 2
    return np.stack([(yy**2 + xx**2 <= r * r).astype(np.float32) for r in radii])


def _bank() -> ReblurBank:
    return ReblurBank(_disc_kernels())


# -------------------------------------------------------------------------------- Haar


@pytest.mark.parametrize("shape", [(2, 1, 16, 16), (1, 3, 8, 12)])
def test_haar_perfect_reconstruction_and_energy(shape):
    x = torch.randn(shape, dtype=torch.float64)
    ll, hf = haar_dwt(x)
    assert ll.shape == (shape[0], shape[1], shape[2] // 2, shape[3] // 2)
    assert hf.shape == (shape[0], shape[1], 3, shape[2] // 2, shape[3] // 2)
    torch.testing.assert_close(haar_idwt(ll, hf), x)
    energy = (x**2).sum()
    torch.testing.assert_close((ll**2).sum() + (hf**2).sum(), energy)


def test_haar_constant_image_has_no_detail_and_odd_sizes_pad():
    x = torch.full((1, 1, 7, 9), 3.0)
    ll, hf = haar_dwt(x)
    assert ll.shape == (1, 1, 4, 5) and hf.shape == (1, 1, 3, 4, 5)
    assert torch.allclose(hf, torch.zeros_like(hf))
    assert torch.allclose(ll, torch.full_like(ll, 6.0))  # 2x the mean for orthonormal Haar


def test_haar_separates_orientations():
    x = torch.zeros(1, 1, 8, 8)
    x[..., 1::2, :] = 1.0  # alternating rows: only vertical change
    _, hf = haar_dwt(x)
    assert hf[:, :, 0].abs().sum() > 0  # LH
    assert hf[:, :, 1].abs().sum() == 0 and hf[:, :, 2].abs().sum() == 0


def test_haar_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        haar_dwt(torch.zeros(8, 8))


# -------------------------------------------------------------------------------- pixel


def test_pixel_losses():
    a = torch.zeros(1, 1, 4, 4)
    b = torch.full((1, 1, 4, 4), 0.5)
    assert pixel_loss(a, b, "l1").item() == pytest.approx(0.5)
    assert pixel_loss(a, b, "mse").item() == pytest.approx(0.25)
    assert pixel_loss(a, b, "charbonnier").item() == pytest.approx(np.sqrt(0.25 + 1e-6))
    with pytest.raises(ValueError, match="kind must be one of"):
        pixel_loss(a, b, "huber")


def test_psnr_loss_is_minus_mean_psnr_and_weighs_small_errors():
    target = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    # sample 0: a near-focus patch with a tiny error; sample 1: a blurred one, a large error
    pred = target.clone()
    pred[0] += 0.001
    pred[1] += 0.1
    loss = pixel_loss(pred, target, "psnr")
    mse = [float(((pred[i] - target[i]) ** 2).mean()) for i in range(2)]
    # minus the PSNR at data range 1 (the loss adds 1e-8 to the MSE: PSNR capped at 80 dB)
    expected = np.mean([10 * np.log10(m + 1e-8) for m in mse])
    assert loss.item() == pytest.approx(expected, abs=1e-3)
    # Unlike L1, halving the *small* error lowers the loss as much as halving the large one.
    small, large = pred.clone(), pred.clone()
    small[0] = target[0] + 0.0005
    large[1] = target[1] + 0.05
    drop_small = loss - pixel_loss(small, target, "psnr")
    drop_large = loss - pixel_loss(large, target, "psnr")
    assert drop_small.item() == pytest.approx(drop_large.item(), rel=0.05)
    l1_small = pixel_loss(pred, target, "l1") - pixel_loss(small, target, "l1")
    l1_large = pixel_loss(pred, target, "l1") - pixel_loss(large, target, "l1")
    assert l1_large > 50 * l1_small
    # a perfect prediction is finite (capped at 80 dB) and has finite gradients
    exact = target.clone().requires_grad_(True)
    value = pixel_loss(exact, target, "psnr")
    value.backward()
    assert value.item() == pytest.approx(-80.0, abs=1e-3) and torch.isfinite(exact.grad).all()


# -------------------------------------------------------------------------------- re-blur


def test_reblur_bank_preserves_mean_and_smooths():
    bank = _bank()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 32, 32, generator=g)
    y = bank.apply(x, [0, 1, 2])
    assert y.shape == x.shape
    torch.testing.assert_close(y.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=0.02, rtol=0)
    detail = [haar_dwt(t)[1].abs().mean().item() for t in (x, y[2:3])]
    assert detail[1] < 0.5 * detail[0]
    # Each image gets its own kernel: the strongest blur removes the most detail.
    d = [haar_dwt(y[i : i + 1])[1].abs().mean().item() for i in range(3)]
    assert d[0] > d[1] > d[2]


def test_reblur_bank_validates_kernels():
    with pytest.raises(ValueError, match="odd k"):
        ReblurBank(np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match="non-negative"):
        ReblurBank(-np.ones((1, 3, 3)))


def test_photometric_jitter_changes_intensity_not_structure():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 1, 16, 16, generator=g)
    y = PhotometricJitter(noise_std=(0.0, 0.0))(x, g)
    assert not torch.allclose(x, y)
    for i in range(4):
        r = np.corrcoef(x[i].flatten().numpy(), y[i].flatten().numpy())[0, 1]
        assert r > 0.95


def test_negative_and_reblurred_sets_are_detached():
    x = torch.rand(2, 1, 16, 16, requires_grad=True)
    negs = make_negatives(x, _bank(), generator=torch.Generator().manual_seed(0))
    assert len(negs) == 2 and all(not n.requires_grad for n in negs)
    first, members = make_reblurred_set(x, _bank(), generator=torch.Generator().manual_seed(0))
    assert not first.requires_grad and len(members) == 2


# -------------------------------------------------------------------------------- EFCR


def _efcr_batch(tiny_net, seed=0):
    g = torch.Generator().manual_seed(seed)
    bank = _bank()
    sharp = (torch.rand(2, 1, 32, 32, generator=g) > 0.8).float()
    blurred = bank.apply(sharp, [2, 2])
    unlabeled = bank.apply((torch.rand(2, 1, 32, 32, generator=g) > 0.8).float(), [1, 1])
    negs = make_negatives(blurred, bank, generator=g)
    _, reblurred = make_reblurred_set(unlabeled, bank, generator=g)
    return sharp, blurred, negs, unlabeled, reblurred


def test_efcr_terms_definition_matches_formula():
    g = torch.Generator().manual_seed(3)
    out, sharp, blurred, neg1 = (torch.rand(2, 1, 8, 8, generator=g) for _ in range(4))
    e, fe, r1 = (torch.rand(2, 1, 8, 8, generator=g) for _ in range(3))
    terms = efcr_terms(
        out, sharp, blurred, negatives=[neg1], unlabeled_restored=fe, unlabeled=e,
        unlabeled_reblurred=[r1],
    )
    ll_o, hf_o = haar_dwt(out)
    ll_s, hf_s = haar_dwt(sharp)
    pos = (ll_o - ll_s).abs().mean() + (hf_o - hf_s).abs().mean()
    neg = 0.5 * ((hf_o - haar_dwt(blurred)[1]).abs().mean()
                 + (hf_o - haar_dwt(neg1)[1]).abs().mean())
    hf_fe, hf_e, hf_r = haar_dwt(fe)[1], haar_dwt(e)[1], haar_dwt(r1)[1]
    rel = 0.1 * torch.stack([
        (hf_fe[i] - hf_r[i]).abs().mean() / (hf_r[i] - hf_e[i]).abs().mean() for i in range(2)
    ]).mean()
    torch.testing.assert_close(terms.pos, pos)
    torch.testing.assert_close(terms.neg, neg)
    torch.testing.assert_close(terms.rel, rel)
    torch.testing.assert_close(terms.cr, pos / (neg + rel + 1e-7))


def test_efcr_is_small_for_perfect_output_and_large_for_identity(tiny_net):
    sharp, blurred, negs, _, _ = _efcr_batch(tiny_net)
    perfect = efcr_loss(sharp, sharp, blurred, negatives=negs)
    identity = efcr_loss(blurred, sharp, blurred, negatives=negs)
    assert perfect.item() < 1e-6
    assert identity.item() > 1.0


def test_efcr_term_alone_gives_gradients_to_every_parameter(tiny_net):
    """The released code ran EFCR under no_grad; here it must train the network by itself."""
    sharp, blurred, negs, unlabeled, reblurred = _efcr_batch(tiny_net)
    loss = EFCRLoss(weight=1.0)(
        tiny_net(blurred), sharp, blurred, negatives=negs,
        unlabeled_restored=tiny_net(unlabeled), unlabeled=unlabeled,
        unlabeled_reblurred=reblurred,
    )
    loss.backward()
    for name, p in tiny_net.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
    # Positives and negatives carry no graph.
    assert all(not n.requires_grad for n in negs)


def test_efcr_relative_term_alone_gives_gradients(tiny_net):
    _, _, _, unlabeled, reblurred = _efcr_batch(tiny_net)
    cr = efcr_loss(None, None, None, unlabeled_restored=tiny_net(unlabeled),
                   unlabeled=unlabeled, unlabeled_reblurred=reblurred)
    cr.backward()
    grads = [p.grad for p in tiny_net.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_optimising_efcr_alone_reduces_it(tiny_net):
    sharp, blurred, negs, unlabeled, reblurred = _efcr_batch(tiny_net)
    loss_fn = EFCRLoss(weight=1.0)
    opt = torch.optim.Adam(tiny_net.parameters(), lr=3e-3)

    def value():
        return loss_fn(tiny_net(blurred), sharp, blurred, negatives=negs,
                       unlabeled_restored=tiny_net(unlabeled), unlabeled=unlabeled,
                       unlabeled_reblurred=reblurred)

    start = value().item()
    for _ in range(15):
        opt.zero_grad()
        value().backward()
        opt.step()
    end = value().item()
    assert end < 0.9 * start
    assert set(loss_fn.last_terms.to_dict()) == {"cr", "pos", "neg", "rel"}


def test_efcr_validates_inputs():
    x = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="sharp and blurred"):
        efcr_terms(x, None, x)
    with pytest.raises(ValueError, match="shape of restored"):
        efcr_terms(x, torch.zeros(1, 1, 4, 4), x)
    with pytest.raises(ValueError, match="labeled pairs"):
        efcr_terms(None, None, None)
    with pytest.raises(ValueError, match="weight"):
        EFCRLoss(weight=-1.0)
