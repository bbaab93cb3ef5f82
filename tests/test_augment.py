"""Augmentations keep frames and labels consistent."""
import jax
import jax.numpy as jnp
import numpy as np

from refine_jax import settings
from refine_jax.train import augment
from refine_jax.demo import synthetic
from scipy.ndimage import map_coordinates


def _warp_err(frames, flow, valid):
    h, w = flow.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    tx, ty = xx + flow[..., 0], yy + flow[..., 1]
    valid = valid & (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)  # target inside the crop
    warped = np.stack([map_coordinates(frames[1][..., k].astype(float), [yy + flow[..., 1], xx + flow[..., 0]],
                                       order=1) for k in range(3)], -1)
    return np.abs(warped - frames[0]).mean(-1)[valid].mean()


def test_geometric_augmentation_keeps_flow_consistent():
    clip = synthetic.render_video(synthetic.PRESETS["source"], 3, 2, 96, 128, num_tracks=30)
    batch = {"frames": jnp.asarray(clip.frames[None]), "flow": jnp.asarray(clip.flow[None]),
             "flow_valid": jnp.asarray(clip.flow_valid[None])}
    ac = settings.AugmentConfig(brightness=0, contrast=0, saturation=0, hue=0, crop=(64, 96), hflip=0.5,
                               vflip=0.5)
    base = _warp_err(clip.frames, clip.flow[0], clip.flow_valid[0])
    flips = set()
    for seed in range(6):
        out = jax.device_get(augment.augment_batch(jax.random.PRNGKey(seed), batch, ac))
        assert out["frames"].shape == (1, 2, 64, 96, 3) and out["flow"].shape == (1, 1, 64, 96, 2)
        err = _warp_err(out["frames"][0], out["flow"][0, 0], out["flow_valid"][0, 0])
        assert err < base + 0.5, (seed, err, base)   # the label still warps frame 2 onto frame 1
        flips.add(bool(out["flow"][0, 0, ..., 0].mean() * clip.flow[0, ..., 0].mean() < 0))
    assert flips == {True, False}


def test_tracks_follow_crop_and_flip_and_leave_visibility():
    clip = synthetic.render_video(synthetic.PRESETS["source"], 4, 3, 96, 128, num_tracks=40)
    batch = {"frames": jnp.asarray(clip.frames[None]), "tracks": jnp.asarray(clip.tracks[None]),
             "visible": jnp.asarray(clip.visible[None]), "track_valid": jnp.ones((1, 40), bool)}
    ac = settings.AugmentConfig(brightness=0, contrast=0, saturation=0, hue=0, crop=(64, 64), hflip=1.0, vflip=0.0)
    out = jax.device_get(augment.augment_batch(jax.random.PRNGKey(0), batch, ac))
    tr, vis, fr = out["tracks"][0], out["visible"][0], out["frames"][0]
    for t in range(3):
        ok = vis[:, t]
        col = np.stack([map_coordinates(fr[t][..., k].astype(float), [tr[ok, t, 1], tr[ok, t, 0]], order=1)
                        for k in range(3)], -1)
        orig = np.stack([map_coordinates(clip.frames[t][..., k].astype(float),
                                         [clip.tracks[ok, t, 1], clip.tracks[ok, t, 0]], order=1) for k in range(3)], -1)
        assert np.abs(col - orig).mean() < 2.0  # the same surface point after crop + flip
    outside = (tr[..., 0] < 0) | (tr[..., 0] > 63) | (tr[..., 1] < 0) | (tr[..., 1] > 63)
    assert not vis[outside].any() and outside.any()
    # a track whose query (frame 0) the crop cut away is no longer a training target
    np.testing.assert_array_equal(out["track_valid"][0], ~outside[:, 0])
    assert 0 < out["track_valid"][0].sum() < 40


def test_colour_jitter_ranges_and_asymmetry():
    img = jnp.asarray(np.random.default_rng(0).uniform(0.2, 0.8, (8, 8, 3)), jnp.float32)
    same = augment.colour_jitter(img, jnp.array([1.0, 1.0, 1.0, 0.0]))
    np.testing.assert_allclose(same, img, atol=1e-5)  # identity factors (hue round trip included)
    frames = jnp.asarray(np.random.default_rng(1).integers(0, 255, (1, 2, 16, 16, 3)), jnp.uint8)
    frames = frames.at[:, 1].set(frames[:, 0])
    asym_seen = sym_seen = False
    for s in range(20):
        out = augment.augment_batch(jax.random.PRNGKey(s), {"frames": frames},
                                    settings.AugmentConfig(hflip=0, vflip=0))["frames"][0]
        same = bool(jnp.all(out[0] == out[1]))
        asym_seen |= not same
        sym_seen |= same
    assert asym_seen and sym_seen
    assert augment.augment_batch(jax.random.PRNGKey(0), {"frames": frames},
                                 settings.AugmentConfig(enabled=False))["frames"] is frames
