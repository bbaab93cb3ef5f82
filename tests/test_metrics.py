"""Metrics against hand-computed cases."""
import numpy as np
import pytest

from refine_jax.evaluation import flow as flow_eval, metrics


def test_flow_metrics():
    gt = np.zeros((2, 2, 2))
    pred = gt.copy()
    pred[0, 0] = [3, 4]   # 5
    pred[0, 1] = [0, 2]   # 2
    pred[1, 0] = [0.5, 0]  # 0.5
    m = flow_eval.flow_metrics([flow_eval.flow_row(pred, gt)], "")
    assert m["epe"] == pytest.approx(7.5 / 4) and m["1px"] == 0.5 and m["3px"] == 0.75 and m["5px"] == 0.75
    m2 = flow_eval.flow_metrics([flow_eval.flow_row(pred, gt, np.array([[True, True], [False, False]]))], "")
    assert m2["epe"] == pytest.approx(3.5)


def test_tapvid_metrics_with_occlusions():
    # one track, 5 frames, query at t=1; GT occluded at t=3
    q = np.array([[1, 0, 0]], float)
    gt = np.zeros((1, 5, 2))
    gt_occ = np.array([[False, False, False, True, False]])
    pred = np.zeros((1, 5, 2))
    pred[0, 0] = [3, 0]      # 3 px off, visible both
    pred[0, 2] = [0, 1.5]    # 1.5 px off
    pred[0, 4] = [0, 20]     # 20 px off
    pred_occ = np.array([[False, False, True, False, False]])  # wrong at t=2 and t=3
    s = metrics.tapvid_metrics(q, gt, gt_occ, pred, pred_occ, "strided")
    # evaluation frames: 0, 2, 3, 4; visible among them: 0, 2, 4
    assert s["occlusion_accuracy"] == pytest.approx(2 / 4)
    assert s["delta_1"] == 0 and s["delta_2"] == pytest.approx(1 / 3) and s["delta_4"] == pytest.approx(2 / 3)
    assert s["delta_16"] == pytest.approx(2 / 3)
    # Jaccard at 4 px: TP = visible, within, predicted visible: t=0 only (t=2 predicted occluded) -> 1
    # FP: t=3 (pred visible, GT occluded) and t=4 (visible, not within) -> 2; GT visible = 3
    assert s["jaccard_4"] == pytest.approx(1 / 5)
    assert s["average_jaccard"] == pytest.approx(np.mean([0 / 5, 0 / 5, 1 / 5, 1 / 5, 1 / 5]))
    f = metrics.tapvid_metrics(q, gt, gt_occ, pred, pred_occ, "first")
    # 'first': frames 2, 3, 4 only
    assert f["occlusion_accuracy"] == pytest.approx(1 / 3) and f["delta_4"] == pytest.approx(1 / 2)
    with pytest.raises(ValueError):
        metrics.tapvid_metrics(q, gt, gt_occ, pred, pred_occ, "all")


def test_ate_mte_survival_and_rescale():
    gt = np.zeros((3, 4, 2))
    pred = gt.copy()
    pred[0, :, 0] = [0, 1, 2, 3]
    pred[1, :, 0] = [0, 10, 10, 10]
    pred[2, :, 0] = [0, 0, 60, 0]
    q = np.zeros((3, 3))
    m = metrics.ate_mte(gt, pred, q)
    per = [2.0, 10.0, 20.0]
    assert m["ate"] == pytest.approx(np.mean(per)) and m["mte"] == pytest.approx(10.0)
    assert metrics.ate_mte(gt, pred, q, include_query_frame=True)["ate"] == pytest.approx(np.mean([1.5, 7.5, 15]))
    assert metrics.survival(gt, pred, q, threshold=50) == pytest.approx((1 + 1 + 1 / 3) / 3)
    np.testing.assert_allclose(metrics.rescale_tracks(np.array([[100.0, 50.0]]), (512, 1024)), [[25.0, 25.0]])
