"""Tiny benchmark datasets in their real on-disk formats, for the reader and TFDS tests."""
import json
import os
import pickle

import numpy as np
from PIL import Image

from refine_jax.data import flo


def image(path, rng, h=12, w=16):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(im).save(path)
    return im


def sintel(root, frames, flows, scene="alley_1", pas="clean", occluded_rows=0):
    """training/<pas>/<scene>/frame_%04d.png (1-indexed), training/flow/<scene>/frame_%04d.flo and,
    with occluded_rows, an occlusion mask of the first pair whose top rows are occluded."""
    for i, f in enumerate(frames):
        p = os.path.join(root, "training", pas, scene)
        os.makedirs(p, exist_ok=True)
        Image.fromarray(f).save(os.path.join(p, f"frame_{i + 1:04d}.png"))
    os.makedirs(os.path.join(root, "training", "flow", scene), exist_ok=True)
    for i, f in enumerate(flows):
        flo.write_flo(os.path.join(root, "training", "flow", scene, f"frame_{i + 1:04d}.flo"), f)
    if occluded_rows:
        occ = np.zeros(flows[0].shape[:2], np.uint8)
        occ[:occluded_rows] = 255
        os.makedirs(os.path.join(root, "training", "occlusions", scene), exist_ok=True)
        Image.fromarray(occ).save(os.path.join(root, "training", "occlusions", scene, "frame_0001.png"))


def tapvid(path, rng, name="bear", t=5, h=10, w=20, n=3):
    """A TAP-Vid pickle {name: {video, points (normalised), occluded}}; returns that dict."""
    d = {"video": rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8),
         "points": rng.uniform(0, 1, (n, t, 2)).astype(np.float32), "occluded": np.zeros((n, t), bool)}
    d["occluded"][1, :2] = True
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({name: d}, f)
    return d


def crohd(root, rng, frames=9):
    """HT21-01 with two heads: head 1 in every frame moving right, head 2 in frames 1..5, hidden at 3."""
    for i in range(1, frames + 1):
        image(os.path.join(root, "HT21/train/HT21-01/img1", f"{i:06d}.jpg"), rng)
    rows = []
    for fr in range(1, frames + 1):
        rows.append(f"{fr},1,{fr},2,4,6,1,1,1")
        if fr <= 5:
            rows.append(f"{fr},2,10,5,2,2,1,1,{int(fr != 3)}")
    gt = os.path.join(root, "HT21Labels/train/HT21-01/gt")
    os.makedirs(gt, exist_ok=True)
    with open(os.path.join(gt, "gt.txt"), "w") as f:
        f.write("\n".join(rows) + "\n")


def horse10(root, rng, json_path=None):
    """Two horses (Brownhorse with two frames listed out of order, Greyhorse with one), 22 keypoints,
    keypoint 5 invisible; the COCO json at `json_path` (default root/annotations/horse10-train-split1.json)."""
    images, anns = [], []
    for i, name in enumerate(["labeled-data/Brownhorse/0002.png", "labeled-data/Brownhorse/0001.png",
                              "labeled-data/Greyhorse/0001.png"]):
        image(os.path.join(root, name), rng)
        images.append({"id": i, "file_name": name})
        kp = np.zeros((22, 3))
        kp[:, 0], kp[:, 1], kp[:, 2] = i + 1, 2 * i, 2
        kp[5, 2] = 0
        anns.append({"image_id": i, "keypoints": kp.ravel().tolist()})
    json_path = json_path or os.path.join(root, "annotations", "horse10-train-split1.json")
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump({"images": images, "annotations": anns}, f)
    return json_path


def middlebury(root, rng, scene="Motorcycle", h=6, w=8):
    """SCENE/im0.png, im1.png and disp0.pfm written by hand as big-endian PFM (positive scale, rows
    bottom to top), with two unknown (inf) disparities. Returns (im0, im1, disparity)."""
    d = os.path.join(root, scene)
    im0, im1 = image(os.path.join(d, "im0.png"), rng, h, w), image(os.path.join(d, "im1.png"), rng, h, w)
    disp = rng.uniform(1, 5, (h, w)).astype(np.float32)
    disp[0, 0] = disp[-1, 2] = np.inf
    with open(os.path.join(d, "disp0.pfm"), "wb") as f:
        f.write(f"Pf\n{w} {h}\n1.0\n".encode() + disp[::-1].astype(">f4").tobytes())
    return im0, im1, disp


def kitti(root, rng, scenes=("000000", "000001"), h=10, w=24, images="image_2", frames=(10, 11)):
    """training/<images>/ID_NN.png for NN in `frames` and training/flow_occ/ID_10.png, the 16-bit
    PNG the KITTI devkit writes (R = 64 u + 2^15, G = 64 v + 2^15, B = 1 where known), encoded
    here by hand with TF's PNG encoder. Returns {scene: (frames dict, flow, known)}."""
    import tensorflow as tf
    out = {}
    for scene in scenes:
        ims = {t: image(os.path.join(root, images, f"{scene}_{t:02d}.png"), rng, h, w) for t in frames}
        flow = np.round(rng.uniform(-40, 40, (h, w, 2)) * 64) / 64
        known = rng.random((h, w)) < 0.4
        png = np.concatenate([flow * 64 + 2 ** 15, known[..., None]], -1).astype(np.uint16)
        os.makedirs(os.path.join(root, "flow_occ"), exist_ok=True)
        with open(os.path.join(root, "flow_occ", f"{scene}_10.png"), "wb") as f:
            f.write(tf.io.encode_png(png).numpy())
        out[scene] = (ims, flow.astype(np.float32), known)
    return out
