"""Per-layer numerics against PyTorch's own functions (torch is a dev dependency)."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest
import torch
import torch.nn.functional as F

from refine_jax.models import corr, layers
from refine_jax.models import raft as raft_lib

RNG = np.random.default_rng(0)


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def test_sample_zeros_matches_grid_sample_including_out_of_bounds():
    img = RNG.normal(size=(1, 6, 7, 3)).astype(np.float32)
    xy = RNG.uniform(-2.5, 8.5, size=(50, 2)).astype(np.float32)
    ours = corr.sample_zeros(jnp.asarray(img[0]), jnp.asarray(xy))
    h, w = 6, 7
    grid = np.stack([2 * xy[:, 0] / (w - 1) - 1, 2 * xy[:, 1] / (h - 1) - 1], -1)[None, None]
    ref = F.grid_sample(_nchw(img), torch.from_numpy(grid), mode="bilinear", padding_mode="zeros",
                        align_corners=True)[0, :, 0].T.numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_zero_padding_on_ones_map():
    """Spec 1.3: x=-0.5 gives 0.5, x=-1 gives 0, x=W-0.5 gives 0.5 on an all-ones map."""
    ones = jnp.ones((4, 5, 1))
    xy = jnp.array([[-0.5, 1.0], [-1.0, 1.0], [4.5, 1.0], [2.0, 2.0]])
    np.testing.assert_allclose(corr.sample_zeros(ones, xy)[:, 0], [0.5, 0.0, 0.5, 1.0], atol=1e-7)


def test_sample_clamped_replicates_border():
    """Spec 2.3: on a ramp, x=-3 reads pixel 0 and x=4.5 on width 5 reads pixel 4."""
    ramp = jnp.arange(5, dtype=jnp.float32)[None, :, None] * jnp.ones((3, 1, 1))
    xy = jnp.array([[-3.0, 1.0], [4.5, 1.0], [1.25, 1.0], [2.0, -7.0]])
    np.testing.assert_allclose(corr.sample_clamped(ramp, xy)[:, 0], [0.0, 4.0, 1.25, 2.0], atol=1e-6)


@pytest.mark.parametrize("out_hw", [(4, 5), (11, 13), (23, 31), (6, 7)])
def test_resize_align_corners_matches_interpolate(out_hw):
    x = RNG.normal(size=(2, 6, 7, 3)).astype(np.float32)
    ours = corr.resize_align_corners(jnp.asarray(x), out_hw)
    ref = F.interpolate(_nchw(x), size=out_hw, mode="bilinear", align_corners=True)
    np.testing.assert_allclose(ours, ref.numpy().transpose(0, 2, 3, 1), atol=1e-5)


def test_avg_pool_floor_mode():
    x = RNG.normal(size=(3, 7, 9, 1)).astype(np.float32)
    ref = F.avg_pool2d(_nchw(x), 2, stride=2).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(corr.avg_pool2(jnp.asarray(x)), ref, atol=1e-6)


def test_window_lookup_channel_order_is_x_major():
    """Channel a*(2r+1)+b samples (x + a - r, y + b - r)."""
    h, w, r = 9, 11, 2
    vol = jnp.asarray(RNG.normal(size=(1, h, w)).astype(np.float32))
    xy = jnp.array([[4.3, 3.6]])
    win = corr.lookup_volume(vol, xy, r)[0]
    for a in range(2 * r + 1):
        for b in range(2 * r + 1):
            want = corr.sample_zeros(vol[0][..., None], xy[0] + jnp.array([a - r, b - r]))[0]
            np.testing.assert_allclose(win[a * (2 * r + 1) + b], want, atol=1e-5)


def test_convex_upsample_matches_unfold_formula():
    n, h, w = 1, 3, 4
    flow = RNG.normal(size=(n, h, w, 2)).astype(np.float32)
    mask = RNG.normal(size=(n, h, w, 576)).astype(np.float32)
    ours = raft_lib.convex_upsample(jnp.asarray(flow), jnp.asarray(mask))
    m = torch.softmax(_nchw(mask).view(n, 1, 9, 8, 8, h, w), dim=2)
    up = F.unfold(8 * _nchw(flow), [3, 3], padding=1).view(n, 2, 9, 1, 1, h, w)
    ref = torch.sum(m * up, dim=2).permute(0, 1, 4, 2, 5, 3).reshape(n, 2, 8 * h, 8 * w)
    np.testing.assert_allclose(ours, ref.numpy().transpose(0, 2, 3, 1), atol=1e-5)


def test_upflow8_matches_interpolate():
    flow = RNG.normal(size=(1, 3, 5, 2)).astype(np.float32)
    ref = 8 * F.interpolate(_nchw(flow), size=(24, 40), mode="bilinear", align_corners=True)
    np.testing.assert_allclose(raft_lib.upflow8(jnp.asarray(flow)), ref.numpy().transpose(0, 2, 3, 1),
                               atol=1e-5)


def test_instance_norm_matches_torch():
    x = (RNG.normal(size=(2, 5, 6, 3)) * 3 + 1).astype(np.float32)
    ref = torch.nn.InstanceNorm2d(3)(_nchw(x)).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(layers.instance_norm(jnp.asarray(x)), ref, atol=1e-5)


def test_batch_norm_train_and_eval_match_torch():
    x = (RNG.normal(size=(4, 5, 6, 3)) * 2 + 0.5).astype(np.float32)
    tbn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        tbn.weight.copy_(torch.tensor([1.1, 0.9, 1.3]))
        tbn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    variables = {"params": {"scale": jnp.array([1.1, 0.9, 1.3]), "bias": jnp.array([0.1, -0.2, 0.3])},
                 "batch_stats": {"mean": jnp.zeros(3), "var": jnp.ones(3),
                                 "num_batches_tracked": jnp.array(0, jnp.int32)}}
    tbn.train()
    ref_train = tbn(_nchw(x)).detach().numpy().transpose(0, 2, 3, 1)
    ours, upd = layers.BatchNorm(use_running_average=False).apply(variables, jnp.asarray(x),
                                                                  mutable=["batch_stats"])
    np.testing.assert_allclose(ours, ref_train, atol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["mean"], tbn.running_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(upd["batch_stats"]["var"], tbn.running_var.numpy(), atol=1e-6)  # unbiased
    assert int(upd["batch_stats"]["num_batches_tracked"]) == int(tbn.num_batches_tracked) == 1
    tbn.eval()
    variables["batch_stats"] = upd["batch_stats"]
    ref_eval = tbn(_nchw(x)).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(layers.BatchNorm(True).apply(variables, jnp.asarray(x)), ref_eval, atol=1e-5)


def test_explicit_padding_matches_torch_stride2_conv():
    """Trap T2: a 7x7/2 conv pads (3, 3) like PyTorch, not 'SAME' (2, 3)."""
    x = RNG.normal(size=(1, 16, 18, 3)).astype(np.float32)
    w = RNG.normal(size=(4, 3, 7, 7)).astype(np.float32)
    b = RNG.normal(size=(4,)).astype(np.float32)
    ref = F.conv2d(_nchw(x), torch.from_numpy(w), torch.from_numpy(b), stride=2, padding=3)
    m = layers.conv(4, 7, 2, 3)
    ours = m.apply({"params": {"kernel": w.transpose(2, 3, 1, 0), "bias": b}}, jnp.asarray(x))
    np.testing.assert_allclose(ours, ref.numpy().transpose(0, 2, 3, 1), atol=1e-4)


def _torch_gru_half(h, x, wz, wr, wq, pad):
    """The ConvGRU equations of RAFT written with torch convs, [h, x] channel order."""
    hx = torch.cat([h, x], 1)
    z = torch.sigmoid(F.conv2d(hx, *wz, padding=pad))
    r = torch.sigmoid(F.conv2d(hx, *wr, padding=pad))
    q = torch.tanh(F.conv2d(torch.cat([r * h, x], 1), *wq, padding=pad))
    return (1 - z) * h + z * q


def test_sep_conv_gru_matches_equations():
    hd, xd = 4, 6
    h = RNG.normal(size=(1, 5, 7, hd)).astype(np.float32)
    x = RNG.normal(size=(1, 5, 7, xd)).astype(np.float32)
    gru = raft_lib.SepConvGRU(hidden_dim=hd)
    variables = gru.init(jax.random.PRNGKey(1), jnp.asarray(h), jnp.asarray(x))
    ours = gru.apply(variables, jnp.asarray(h), jnp.asarray(x))
    p = jax.tree_util.tree_map(np.array, variables["params"])  # writable copies for torch
    tw = lambda name: (torch.from_numpy(p[name]["kernel"].transpose(3, 2, 0, 1).copy()),
                       torch.from_numpy(p[name]["bias"]))
    th = _torch_gru_half(_nchw(h), _nchw(x), tw("convz1"), tw("convr1"), tw("convq1"), (0, 2))
    th = _torch_gru_half(th, _nchw(x), tw("convz2"), tw("convr2"), tw("convq2"), (2, 0))
    np.testing.assert_allclose(ours, th.numpy().transpose(0, 2, 3, 1), atol=1e-5)


def test_size_checks():
    with pytest.raises(ValueError, match="120x200"):
        raft_lib.check_image_size(120, 200)
    raft_lib.check_image_size(121, 200)  # pads to 128


def test_pad_amounts_examples():
    """RAFT's InputPadder: Sintel 436x1024 -> 2 rows top and bottom; KITTI 375x1242 -> (3, 3, 0, 1)."""
    assert raft_lib.pad_amounts(436, 1024) == (0, 0, 2, 2)
    assert raft_lib.pad_amounts(375, 1242, "kitti") == (3, 3, 0, 1)
    assert raft_lib.pad_amounts(368, 496) == (0, 0, 0, 0)
    x = jnp.arange(2 * 3 * 5 * 1, dtype=jnp.float32).reshape(2, 3, 5, 1)
    padded, lrtb = raft_lib.pad_images(x)
    assert padded.shape == (2, 8, 8, 1)
    np.testing.assert_array_equal(raft_lib.unpad(padded, lrtb), x)
