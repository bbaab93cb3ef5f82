"""Cycle-consistency checks on hand-made flows and tracks; query selection and re-balancing."""
import jax.numpy as jnp
import numpy as np

from refine_jax.labels import cycle

RNG = np.random.default_rng(0)


def _smooth_image(h=32, w=40):
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([128 + 60 * np.sin(xx / 5.0), 128 + 60 * np.cos(yy / 6.0), 128 + 40 * np.sin((xx + yy) / 7.0)], -1)
    return img


def test_constant_flow_passes_inside_and_fails_out_of_frame():
    h, w = 32, 40
    f = np.zeros((1, h, w, 2), np.float32)
    f[..., 0] = 3.0
    img1 = _smooth_image(h, w)
    xx = np.arange(w)
    img2 = np.stack([np.interp(xx - 3.0, xx, img1[r, :, c], left=0, right=0) for r in range(h) for c in range(3)])
    img2 = img2.reshape(h, 3, w).transpose(0, 2, 1)
    valid, cyc, col = cycle.flow_cycle_check(jnp.asarray(f), jnp.asarray(-f), jnp.asarray(img1[None]),
                                             jnp.asarray(img2[None]))
    valid = np.asarray(valid[0])
    assert valid[:, : w - 4].all()        # target x + 3 inside the frame
    assert not valid[:, w - 2:].any()     # target outside: backward flow samples zeros -> fails
    assert np.asarray(cyc)[0, :, :w - 4].max() < 1e-4


def test_inconsistent_region_fails():
    h, w = 24, 24
    f = np.full((1, h, w, 2), 1.0, np.float32)
    b = -f.copy()
    b[:, 8:16, 9:17] = 0.5                # backward disagrees here (sampled at x + f)
    img = np.full((1, h, w, 3), 100.0)
    valid, cyc, _ = cycle.flow_cycle_check(jnp.asarray(f), jnp.asarray(b), jnp.asarray(img), jnp.asarray(img))
    valid = np.asarray(valid[0])
    assert not valid[8:15, 8:15].any()    # x + (1, 1) lands in the bad region
    assert valid[:6, :6].all()
    # threshold: |f + b_w| = 1.5 * sqrt(2) vs alpha(|f| + |b|) + beta = 0.002 * (...) + 0.1
    assert np.asarray(cyc)[0, 10, 10] > 10


def test_colour_and_magnitude_checks():
    h, w = 16, 16
    f = np.zeros((1, h, w, 2), np.float32)
    img1 = np.full((1, h, w, 3), 100.0)
    img2 = img1.copy()
    img2[:, :, :8] += 2.0                 # 2 grey levels = 0.0078 on the [-0.5, 0.5] scale > 0.005
    valid, _, col = cycle.flow_cycle_check(jnp.asarray(f), jnp.asarray(f), jnp.asarray(img1), jnp.asarray(img2))
    assert not np.asarray(valid)[0, :, :8].any() and np.asarray(valid)[0, :, 8:].all()
    big = np.full((1, h, w, 2), 300.0, np.float32)
    valid, *_ = cycle.flow_cycle_check(jnp.asarray(big), jnp.asarray(-big), jnp.asarray(img1), jnp.asarray(img1),
                                       cycle.FlowCheck(max_flow=400, color_thresh=10))
    assert not np.asarray(valid).any()   # |f| = 424 > 400 (and out of frame)


def test_track_check_every_frame():
    fwd = RNG.uniform(0, 50, (1, 8, 4, 2)).astype(np.float32)
    bwd = fwd.copy()
    bwd[0, 3, 1] += [1.2, 1.2]            # 1.70 px at one frame
    bwd[0, :, 2] += [0.5, 0.0]            # 0.5 px everywhere
    keep, err = cycle.track_cycle_check(jnp.asarray(fwd), jnp.asarray(bwd), tau=1.5)
    assert np.asarray(keep)[0].tolist() == [True, False, True, True]
    assert abs(float(err[0, 1]) - 1.2 * np.sqrt(2)) < 1e-5
    keep3, _ = cycle.track_cycle_check(jnp.asarray(fwd), jnp.asarray(bwd), tau=3.0)
    assert np.asarray(keep3).all()


def test_densify_dedups_and_clips():
    q = cycle.densify(np.array([[5.7, 5.2], [6.1, 5.9], [0.5, 0.5]]), 4, 10, 10)
    assert len(q) == len(np.unique(q, axis=0))
    assert q.min() >= 0 and q[:, 0].max() <= 9
    assert {(3.0, 3.0), (6.0, 6.0), (7.0, 6.0)} <= set(map(tuple, q))  # [5-2, 5+1] and [6-2, 6+1]
    assert (0.0, 0.0) in set(map(tuple, q)) and not (q < 0).any()
    g = cycle.grid_points(64, 80, 4)
    assert g.shape == (16, 2) and g[:, 0].min() == 8 and g[:, 0].max() == 71


def test_rebalance_caps_bins_and_drops_slow():
    n = 100
    speeds = np.concatenate([np.zeros(20), np.full(50, 2.0), np.full(30, 10.0)])
    tracks = np.zeros((n, 8, 2))
    tracks[:, :, 0] = speeds[:, None] * np.arange(8)
    keep = cycle.rebalance(tracks, bins=[1, 5], cap_per_bin=10, min_speed=0.5, rng=np.random.default_rng(0))
    assert len(keep) == 20 and (speeds[keep] > 0).all()
    assert (speeds[keep] == 2.0).sum() == 10 and (speeds[keep] == 10.0).sum() == 10
    assert cycle.speed_histogram(tracks, [1, 5]) == {"[0,1)": 20, "[1,5)": 50, "[5,inf)": 30}


def test_noise_measured_and_colour_test_adapted_to_it():
    img = np.clip(_smooth_image(64, 80) + RNG.normal(0, 4.0, (64, 80, 3)), 0, 255)[None]
    sigma = float(cycle.noise_sigma(jnp.asarray(img))[0])
    assert 3.6 < sigma < 4.6                          # 4 grey levels of noise on a smooth image
    assert float(cycle.noise_sigma(jnp.asarray(_smooth_image(64, 80)[None]))[0]) < 0.5
    # two noisy views of the same image: the reference colour test (1.3 grey levels) rejects most
    # correct matches, the noise-adapted one keeps almost all of them
    clean = _smooth_image(64, 80)
    a = clean + RNG.normal(0, 4.0, clean.shape)
    b = clean + RNG.normal(0, 4.0, clean.shape)
    f = jnp.zeros((1, 64, 80, 2))
    ref, *_ = cycle.flow_cycle_check(f, f, jnp.asarray(a[None]), jnp.asarray(b[None]))
    adapt, *_ = cycle.flow_cycle_check(f, f, jnp.asarray(a[None]), jnp.asarray(b[None]),
                                       cycle.FlowCheck(color_noise=True))
    assert float(np.asarray(ref).mean()) < 0.2 and float(np.asarray(adapt).mean()) > 0.97
    # a global exposure change: rejected by the reference test, accepted with the gain compensated
    brighter = clean * np.array([1.05, 1.04, 1.06])
    ref, *_ = cycle.flow_cycle_check(f, f, jnp.asarray(clean[None]), jnp.asarray(brighter[None]))
    gain, *_ = cycle.flow_cycle_check(f, f, jnp.asarray(clean[None]), jnp.asarray(brighter[None]),
                                      cycle.FlowCheck(color_gain=True))
    assert float(np.asarray(ref).mean()) < 0.05 and float(np.asarray(gain).mean()) > 0.99
