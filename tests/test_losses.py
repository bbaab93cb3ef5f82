"""Losses against hand-computed cases."""
import jax.numpy as jnp
import numpy as np
import pytest

from refine_jax.train import losses


def test_raft_sequence_loss_weights_and_masks():
    label = np.zeros((2, 1, 2, 2), np.float32)
    label[1, 0, 1] = [500.0, 0.0]                    # over max_flow: masked
    preds = np.stack([np.full((2, 1, 2, 2), 1.0), np.full((2, 1, 2, 2), 2.0)]).astype(np.float32)
    valid = np.array([[[1, 0]], [[1, 1]]], np.float32)
    got = losses.raft_sequence_loss(jnp.asarray(preds), jnp.asarray(label), jnp.asarray(valid), gamma=0.5)
    # per-sample weights: sample0 [1,0], sample1 [1,0 (>=400)]; |err| = 1 then 2 in both channels
    # mean over b,c,x of w*|e|: it0 = (1+1)*2 / 8 = 0.5; it1 = 1.0 -> 0.5*0.5 + 1*1.0 = 1.25
    assert float(got) == pytest.approx(1.25)
    got_bm = losses.raft_sequence_loss(jnp.asarray(preds), jnp.asarray(label), jnp.asarray(valid), gamma=0.5,
                                       mask_mode="batch_mean")
    # batch-mean weights per pixel: x0 -> (1+1)/2 = 1, x1 -> (0+0)/2 = 0: same here
    assert float(got_bm) == pytest.approx(1.25)
    valid2 = np.array([[[1, 1]], [[0, 0]]], np.float32)
    label2 = np.zeros((2, 1, 2, 2), np.float32)
    per = losses.raft_sequence_loss(jnp.asarray(preds[:1]), jnp.asarray(label2), jnp.asarray(valid2))
    bm = losses.raft_sequence_loss(jnp.asarray(preds[:1]), jnp.asarray(label2), jnp.asarray(valid2),
                                   mask_mode="batch_mean")
    assert float(per) == pytest.approx(0.5) and float(bm) == pytest.approx(0.5)  # (4*1)/8 vs (8*0.5)/8
    with pytest.raises(ValueError, match="mask_mode"):
        losses.raft_sequence_loss(jnp.asarray(preds), jnp.asarray(label), jnp.asarray(valid), mask_mode="x")


def test_pips_sequence_loss():
    tracks = np.zeros((1, 2, 2, 2), np.float32)
    preds = np.zeros((2, 1, 2, 2, 2), np.float32)
    preds[0] += [2.0, 0.0]                           # mean over x,y: 1.0
    preds[1] += [1.0, 1.0]                           # 1.0
    preds[1, 0, 1, 1] = [3.0, 3.0]                   # 3.0 for one (s, n), masked out below
    valid = np.array([[[1, 1], [1, 0]]], np.float32)
    got = losses.pips_sequence_loss(jnp.asarray(preds), jnp.asarray(tracks), jnp.asarray(valid), gamma=0.5)
    assert float(got) == pytest.approx((0.5 * 1.0 + 1.0 * 1.0) / 2, rel=1e-5)


def test_score_map_and_visibility_losses():
    logits = np.full((1, 1, 1, 1, 3, 4), -2.0, np.float32)
    logits[..., 1, 2] = 3.0
    tracks = np.array([[[[8.2, 3.9]]]], np.float32)   # /4 -> (2.05, 0.975) -> cell (x=2, y=1)
    one = np.ones((1, 1, 1), np.float32)
    got = losses.score_map_loss(jnp.asarray(logits), jnp.asarray(tracks), one, one, stride=4)
    want = np.log1p(np.exp(-3.0)) + np.log1p(np.exp(-2.0))
    assert float(got) == pytest.approx(want, rel=1e-5)
    # over several iterations the official loss is the mean over all of them (it was once their
    # sum: the positives' and negatives' counts were taken from one iteration's mask)
    three = np.concatenate([logits, logits, logits + 1.0])
    want3 = (2 * want + np.log1p(np.exp(-4.0)) + np.log1p(np.exp(-1.0))) / 3
    got3 = losses.score_map_loss(jnp.asarray(three), jnp.asarray(tracks), one, one, stride=4)
    assert float(got3) == pytest.approx(want3, rel=1e-5)
    off = losses.score_map_loss(jnp.asarray(logits), jnp.asarray(tracks * 10), one, one, stride=4)
    assert float(off) == 0.0                          # out of the map: dropped
    vis = losses.visibility_loss(jnp.array([[[2.0, -1.0]]]), jnp.array([[[1, 0]]]), jnp.ones((1, 1, 2)))
    assert float(vis) == pytest.approx(np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0)), rel=1e-5)
