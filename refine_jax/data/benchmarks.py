"""Standard benchmarks -> video shards with ground truth (formats: docs/method.md, "Benchmark formats").

- MPI-Sintel: `training/{clean,final}/SCENE/frame_%04d.png`, `training/flow/SCENE/frame_%04d.flo`
  (flow from frame i to i+1), optional `training/occlusions/SCENE/frame_%04d.png` (255 = occluded).
  One record per scene and pass, with every pair's flow.
- Middlebury stereo (2014 / MiddEval3 layout): SCENE/im0.png, im1.png, disp0.pfm (or disp0GT.pfm;
  inf = unknown). One 2-frame record per scene, left to right, flow (-disparity, 0): real frames with
  exact motion, for checking a flow model outside synthetic data.
- KITTI flow 2015 / 2012 (`training/{image_2,colored_0}/ID_10.png, ID_11.png`,
  `training/flow_{occ,noc}/ID_10.png`, 16-bit PNG: data/flow_png.py): one 2-frame record per scene,
  flow known where the lidar saw it (real footage with exact motion). `kitti_video`: the multiview
  package's frames ID_00 ... ID_20 of each scene, one record per scene without ground truth: the
  unlabelled video to refine on, with `kitti` as `eval.data`.
- TAP-Vid (DAVIS, RGB-Stacking) pickles: {name: {'video' uint8 (T,H,W,3), 'points' (N,T,2) (x,y)
  normalised to [0,1], 'occluded' bool (N,T)}}. Points are scaled by (W, H) as tapnet does. The
  pickle is read with an unpickler that only admits numpy arrays and builtins (no code runs).
- CroHD (HT21): `HT21/train/HT21-0x/img1/%06d.jpg` and `HT21Labels/train/HT21-0x/gt/gt.txt`
  (frame, id, left, top, width, height, conf, class, visibility; 1-indexed). Points are box centres;
  a record is `clip_len` frames every `stride` frames, with the heads present in all of them.
- Horse-10: COCO-style keypoint json (images with `file_name` = `labeled-data/HORSE/NNNN.png`,
  annotations with 22 `keypoints` as x, y, v triples); one record per horse, frames sorted by path.

Tracks are (N, T, 2) pixels (x, y), visible (N, T), query points (N, 3) rows (t, x, y) at each
track's first visible frame.

  python -m refine_jax.data.benchmarks sintel --root=MPI-Sintel --out=DIR [--passes=clean,final] [--scenes=a,b]
  python -m refine_jax.data.benchmarks middlebury --root=MIDDLEBURY --out=DIR [--scale=0.25] [--scenes=a,b]
  python -m refine_jax.data.benchmarks kitti --root=data_scene_flow/training --out=DIR [--gt=noc] [--scenes=000000]
  python -m refine_jax.data.benchmarks kitti_video --root=data_scene_flow_multiview/training --out=DIR
  python -m refine_jax.data.benchmarks tapvid --root=tapvid_davis.pkl --out=DIR
  python -m refine_jax.data.benchmarks crohd --root=CroHD --out=DIR [--clip_len=8] [--stride=3] [--videos=HT21-01]
  python -m refine_jax.data.benchmarks horse10 --root=Horse10 --out=DIR [--json=FILE,...]
      (default: every annotations/*.json under the root)
"""
from __future__ import annotations

import collections
import csv
import json
import os
import pickle
from typing import Dict, Iterator, Optional, Sequence

import numpy as np

from refine_jax import cli, fs
from refine_jax.data import flo, frames as frames_lib, pfm
from refine_jax.data.shards import Clip, ShardWriter


def first_visible_queries(tracks: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """(N, 3) rows (t, x, y) at each track's first visible frame (frame 0 if never visible)."""
    t = np.argmax(visible, axis=1)
    xy = tracks[np.arange(len(tracks)), t]
    return np.concatenate([t[:, None].astype(np.float32), xy], -1).astype(np.float32)


# ----------------------------------------------------------------------------------------------- Sintel

def sintel_clips(root: str, passes: Sequence[str] = ("clean", "final"),
                 scenes: Optional[Sequence[str]] = None) -> Iterator[Clip]:
    train = os.path.join(root, "training")
    flow_root = os.path.join(train, "flow")
    if not os.path.isdir(flow_root):
        raise FileNotFoundError(f"{flow_root}: not found; expected an MPI-Sintel root with training/flow")
    for pas in passes:
        for scene in sorted(scenes or os.listdir(flow_root)):
            files = frames_lib.list_images(os.path.join(train, pas, scene))
            video = np.stack([frames_lib.read_image(f) for f in files])
            flows, valid = [], []
            for f in files[:-1]:
                stem = os.path.splitext(os.path.basename(f))[0]
                flows.append(flo.read_flo(os.path.join(flow_root, scene, stem + ".flo")))
                occ = os.path.join(train, "occlusions", scene, stem + ".png")
                valid.append(frames_lib.read_image(occ)[..., 0] < 128 if os.path.exists(occ)
                             else np.ones(flows[-1].shape[:2], bool))
            yield Clip(f"{pas}/{scene}", video, flow=np.stack(flows), flow_valid=np.stack(valid))


# ----------------------------------------------------------------------------------------------- Middlebury stereo

MIDDLEBURY_DISPARITY = ("disp0.pfm", "disp0GT.pfm")


def middlebury_scenes(root: str) -> list:
    """The scene folders under `root` (or `root` itself): folders with im0.png, im1.png and a left
    disparity map (disp0.pfm, or disp0GT.pfm as in MiddEval3)."""
    def is_scene(d):
        return fs.exists(os.path.join(d, "im0.png")) and fs.exists(os.path.join(d, "im1.png"))
    if is_scene(root):
        return [root]
    if not fs.isdir(root):
        raise FileNotFoundError(f"{root}: not found; expected a Middlebury scene folder or a folder of them")
    scenes = [os.path.join(root, n) for n in sorted(fs.listdir(root)) if is_scene(os.path.join(root, n))]
    if not scenes:
        raise FileNotFoundError(f"{root}: no Middlebury scene (a folder with im0.png and im1.png) in it")
    return scenes


def middlebury_clips(root: str, scenes: Optional[Sequence[str]] = None, scale: float = 1.0) -> Iterator[Clip]:
    """Rectified stereo pairs as 2-frame clips: frame 0 the left view, frame 1 the right, and the
    flow from left to right (-disparity, 0), valid where the disparity is known (finite). `scale`
    resizes both (the flow scales with the image): Middlebury 2014 scenes are ~3000 px wide, so a
    model trained at a few hundred pixels sees them at 1/4 to 1/8."""
    from PIL import Image
    folders = middlebury_scenes(root)
    if scenes:
        folders = [f for f in folders if os.path.basename(f.rstrip("/")) in scenes]
    for folder in folders:
        disp_path = next((os.path.join(folder, n) for n in MIDDLEBURY_DISPARITY
                          if fs.exists(os.path.join(folder, n))), None)
        if disp_path is None:
            raise FileNotFoundError(f"{folder}: no {' or '.join(MIDDLEBURY_DISPARITY)} (the left view's disparity)")
        views = [frames_lib.read_image(os.path.join(folder, n)) for n in ("im0.png", "im1.png")]
        disp = pfm.read_pfm(disp_path)
        if disp.ndim != 2 or disp.shape != views[0].shape[:2] or views[1].shape != views[0].shape:
            raise ValueError(f"{folder}: im0.png {views[0].shape[:2]}, im1.png {views[1].shape[:2]} and "
                             f"{os.path.basename(disp_path)} {disp.shape} must be the same size")
        if scale != 1.0:
            h, w = (max(int(round(n * scale)), 1) for n in disp.shape)
            views = [np.asarray(Image.fromarray(v).resize((w, h), Image.BILINEAR)) for v in views]
            # nearest disparity at each new pixel's centre (no mixing of known and unknown values)
            rows = np.minimum(((np.arange(h) + 0.5) * disp.shape[0] / h).astype(int), disp.shape[0] - 1)
            cols = np.minimum(((np.arange(w) + 0.5) * disp.shape[1] / w).astype(int), disp.shape[1] - 1)
            disp = disp[rows][:, cols] * (w / disp.shape[1])
        valid = np.isfinite(disp)
        flow = np.stack([-np.where(valid, disp, 0.0), np.zeros_like(disp)], -1).astype(np.float32)
        yield Clip(os.path.basename(folder.rstrip("/")), np.stack(views), flow=flow[None],
                   flow_valid=valid[None], flow_gt_known=valid[None])


# ----------------------------------------------------------------------------------------------- KITTI flow

KITTI_IMAGE_DIRS = ("image_2", "colored_0")  # KITTI 2015, KITTI 2012: the left colour camera


def _kitti_image_dir(root: str) -> str:
    for name in KITTI_IMAGE_DIRS:
        if fs.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    raise FileNotFoundError(f"{root}: no {' or '.join(KITTI_IMAGE_DIRS)} folder; expected a KITTI 2015 or 2012 "
                            f"flow folder (data_scene_flow/training or data_stereo_flow/training, or their multiview)")


def _kitti_frames(names, root: str, scenes: Optional[Sequence[str]]) -> Dict[str, list]:
    """{scene id: its frame file names, in frame order} of KITTI's ID_NN.png files."""
    out = collections.defaultdict(list)
    for n in sorted(names):
        stem, ext = os.path.splitext(n)
        scene, _, index = stem.partition("_")
        if ext.lower() == ".png" and index.isdigit() and (not scenes or scene in scenes):
            out[scene].append(n)
    if not out:
        raise FileNotFoundError(f"{root}: no KITTI frame (ID_NN.png){' of the scenes ' + ','.join(scenes) if scenes else ''}")
    return dict(out)


def kitti_clips(root: str, scenes: Optional[Sequence[str]] = None, gt: str = "occ") -> Iterator[Clip]:
    """KITTI 2015 / 2012 flow training pairs: one 2-frame clip per scene (frames ID_10 and ID_11)
    with its ground truth from flow_occ (all pixels) or flow_noc (`gt`), known only where the lidar
    saw the scene (flow_gt_known: evaluation counts those pixels, ~20-40 % of each frame). Real
    frames with exact motion; the scene's other frames (the multiview package, `kitti_videos`) are
    the unlabelled video to refine on."""
    from refine_jax.data import flow_png
    if gt not in ("occ", "noc"):
        raise ValueError(f"gt={gt!r}: expected 'occ' (all pixels) or 'noc' (not occluded)")
    image_dir, flow_dir = _kitti_image_dir(root), os.path.join(root, f"flow_{gt}")
    if not fs.isdir(flow_dir):
        raise FileNotFoundError(f"{flow_dir}: not found; expected a KITTI flow training folder with flow_{gt}")
    for scene, names in sorted(_kitti_frames(fs.listdir(flow_dir), flow_dir, scenes).items()):
        if f"{scene}_10.png" not in names:
            continue
        flow, known = flow_png.read_flow_png(os.path.join(flow_dir, f"{scene}_10.png"))
        views = [frames_lib.read_image(os.path.join(image_dir, f"{scene}_{t}.png")) for t in (10, 11)]
        if views[0].shape[:2] != flow.shape[:2] or views[1].shape != views[0].shape:
            raise ValueError(f"{image_dir}: {scene}_10.png {views[0].shape[:2]}, {scene}_11.png {views[1].shape[:2]} "
                             f"and flow_{gt}/{scene}_10.png {flow.shape[:2]} must be the same size")
        yield Clip(scene, np.stack(views), flow=flow[None], flow_valid=known[None], flow_gt_known=known[None])


def kitti_videos(root: str, scenes: Optional[Sequence[str]] = None) -> Iterator[Clip]:
    """KITTI multiview folders (data_scene_flow_multiview/{training,testing}): one clip per scene of
    its frames ID_00 ... ID_20, without ground truth."""
    image_dir = _kitti_image_dir(root)
    for scene, names in sorted(_kitti_frames(fs.listdir(image_dir), image_dir, scenes).items()):
        video = [frames_lib.read_image(os.path.join(image_dir, n)) for n in names]
        if any(v.shape != video[0].shape for v in video):
            raise ValueError(f"{image_dir}: the frames of scene {scene} differ in size "
                             f"({sorted({v.shape[:2] for v in video})})")
        yield Clip(scene, np.stack(video))


# ----------------------------------------------------------------------------------------------- TAP-Vid

class _SafeUnpickler(pickle.Unpickler):
    """Admits only what TAP-Vid pickles hold: numpy arrays, dtypes and builtin containers."""
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("builtins", "bytes"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a TAP-Vid pickle")


def load_tapvid_pickle(path: str) -> Dict[str, dict]:
    try:
        with open(path, "rb") as f:
            data = _SafeUnpickler(f).load()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: TAP-Vid pickle not found") from None
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: not a TAP-Vid pickle of numpy arrays ({e})") from None
    if isinstance(data, list):  # the Kinetics/RGB-Stacking lists
        data = {f"{i:05d}": v for i, v in enumerate(data)}
    return data


def tapvid_clips(path: str) -> Iterator[Clip]:
    for name, item in load_tapvid_pickle(path).items():
        video = item["video"]
        if isinstance(video, (list, tuple)) or video.dtype.kind in "SO":  # JPEG bytes per frame
            import io
            from PIL import Image
            video = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in video])
        t, h, w = video.shape[:3]
        tracks = (np.asarray(item["points"], np.float32) * np.array([w, h], np.float32))
        visible = ~np.asarray(item["occluded"], bool)
        yield Clip(str(name), np.asarray(video, np.uint8), tracks=tracks, visible=visible,
                   query_points=first_visible_queries(tracks, visible))


# ----------------------------------------------------------------------------------------------- CroHD

def read_mot_gt(path: str) -> Dict[int, Dict[int, tuple]]:
    """gt.txt -> {frame (1-indexed): {id: (cx, cy, visibility)}}."""
    out: Dict[int, Dict[int, tuple]] = collections.defaultdict(dict)
    with open(path) as f:
        for row in csv.reader(f):
            if not row:
                continue
            try:
                fr, tid = int(float(row[0])), int(float(row[1]))
                left, top, bw, bh = (float(v) for v in row[2:6])
                vis = float(row[8]) if len(row) > 8 else 1.0
            except (ValueError, IndexError):
                raise ValueError(f"{path}: malformed MOT line {','.join(row)!r}; expected frame, id, "
                                 f"left, top, width, height, conf, class, visibility") from None
            out[fr][tid] = (left + bw / 2, top + bh / 2, vis)
    return out


def crohd_clips(root: str, clip_len: int = 8, stride: int = 3, videos: Optional[Sequence[str]] = None,
                block: Optional[int] = None) -> Iterator[Clip]:
    """Records of `clip_len` frames every `stride` frames, starting every `block` frames
    (default clip_len*stride, the paper's 24-frame blocks)."""
    block = block or clip_len * stride
    img_root = os.path.join(root, "HT21", "train")
    if not os.path.isdir(img_root):
        raise FileNotFoundError(f"{img_root}: not found; expected a CroHD root with HT21/train")
    for vid in sorted(videos or os.listdir(img_root)):
        files = frames_lib.list_images(os.path.join(img_root, vid, "img1"))
        gt = read_mot_gt(os.path.join(root, "HT21Labels", "train", vid, "gt", "gt.txt"))
        for start in range(0, len(files) - (clip_len - 1) * stride, block):
            idx = [start + k * stride for k in range(clip_len)]
            ids = sorted(set.intersection(*[set(gt.get(i + 1, {})) for i in idx]))
            if not ids:
                continue
            tracks = np.array([[gt[i + 1][h][:2] for i in idx] for h in ids], np.float32)
            visible = np.array([[gt[i + 1][h][2] > 0 for i in idx] for h in ids])
            video = np.stack([frames_lib.read_image(files[i]) for i in idx])
            yield Clip(vid, video, clip_start=start, frame_stride=stride, tracks=tracks, visible=visible,
                       query_points=first_visible_queries(tracks, visible))


# ----------------------------------------------------------------------------------------------- Horse-10

def horse10_clips(root: str, json_files: Sequence[str]) -> Iterator[Clip]:
    """One record per horse: its labelled frames sorted by path and the 22 keypoint tracks."""
    images, kps = {}, {}
    for jf in json_files:
        with open(jf) as f:
            data = json.load(f)
        for im in data["images"]:
            images[im["id"]] = im["file_name"]
        for ann in data["annotations"]:
            kps[ann["image_id"]] = np.asarray(ann["keypoints"], np.float32).reshape(-1, 3)
    by_horse = collections.defaultdict(list)
    for iid, name in images.items():
        if iid in kps:
            by_horse[os.path.basename(os.path.dirname(name))].append((name, kps[iid]))
    for horse, items in sorted(by_horse.items()):
        items.sort(key=lambda x: x[0])
        video = np.stack([frames_lib.read_image(os.path.join(root, n)) for n, _ in items])
        k = np.stack([kp for _, kp in items], 1)  # (22, T, 3)
        tracks, visible = k[..., :2], k[..., 2] > 0
        yield Clip(horse, video, tracks=tracks.astype(np.float32), visible=visible,
                   query_points=first_visible_queries(tracks, visible))


READERS = {"sintel": sintel_clips, "middlebury": middlebury_clips, "kitti": kitti_clips, "kitti_video": kitti_videos,
           "tapvid": tapvid_clips, "crohd": crohd_clips, "horse10": horse10_clips}


def write_benchmark(kind: str, out: str, *args, fmt: str = "png", progress: bool = False, **kwargs) -> dict:
    """Convert a benchmark into a shard folder; returns its manifest."""
    from tqdm import tqdm
    if kind not in READERS:
        raise ValueError(f"unknown benchmark {kind!r}; expected one of {', '.join(READERS)}")
    with ShardWriter(out, kind, extra={"benchmark": kind}) as writer:
        for clip in tqdm(READERS[kind](*args, **kwargs), desc=kind, unit="clip", disable=not progress):
            writer.write_clip(clip, fmt, source_frames=len(clip.frames))
        if not writer.frames_per_video:
            raise ValueError(f"{args[0] if args else kind}: the {kind} reader found no clip to write")
    return writer.manifest


def reader_args(kind: str, root: str, passes: str = "", scenes: str = "", clip_len: int = 8, stride: int = 3,
                videos: str = "", json_files: str = "", scale: float = 1.0, gt: str = "occ"):
    """(args, kwargs) of READERS[kind] from command-line strings."""
    split = lambda text: [v for v in text.split(",") if v] or None
    if kind == "sintel":
        return (root,), {"passes": tuple(split(passes) or ("clean", "final")), "scenes": split(scenes)}
    if kind == "middlebury":
        return (root,), {"scenes": split(scenes), "scale": scale}
    if kind == "kitti":
        return (root,), {"scenes": split(scenes), "gt": gt}
    if kind == "kitti_video":
        return (root,), {"scenes": split(scenes)}
    if kind == "tapvid":
        return (root,), {}
    if kind == "crohd":
        return (root,), {"clip_len": clip_len, "stride": stride, "videos": split(videos)}
    if kind == "horse10":
        files = split(json_files) or sorted(
            os.path.join(root, "annotations", n) for n in (os.listdir(os.path.join(root, "annotations"))
                                                            if os.path.isdir(os.path.join(root, "annotations")) else [])
            if n.endswith(".json"))
        if not files:
            raise FileNotFoundError(f"{root}: no annotations/*.json; pass --json=FILE,...")
        return (root, files), {}
    raise ValueError(f"unknown benchmark {kind!r}; expected one of {', '.join(READERS)}")


@cli.guarded
def main(argv) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m refine_jax.data.benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=sorted(READERS))
    p.add_argument("--root", required=True, help="dataset root (TAP-Vid: the .pkl file)")
    p.add_argument("--out", required=True, help="shard folder to write")
    p.add_argument("--passes", default="", help="Sintel passes (default clean,final)")
    p.add_argument("--scenes", default="", help="Sintel, Middlebury or KITTI scenes (default all)")
    p.add_argument("--gt", default="occ", choices=("occ", "noc"), help="KITTI: flow_occ (all) or flow_noc")
    p.add_argument("--scale", type=float, default=1.0, help="Middlebury: resize factor (flow scales with it)")
    p.add_argument("--clip_len", type=int, default=8, help="CroHD frames per record")
    p.add_argument("--stride", type=int, default=3, help="CroHD frame stride")
    p.add_argument("--videos", default="", help="CroHD videos (default all)")
    p.add_argument("--json", default="", help="Horse-10 annotation files")
    p.add_argument("--format", default="png", choices=("png", "jpeg"))
    a = p.parse_args(argv)
    args, kwargs = reader_args(a.kind, a.root, a.passes, a.scenes, a.clip_len, a.stride, a.videos, a.json, a.scale, a.gt)
    m = write_benchmark(a.kind, a.out, *args, fmt=a.format, progress=True, **kwargs)
    size = sum(f["bytes"] for f in m["files"])
    print(f"wrote {m['records']} records of {len(m['videos'])} videos ({m['frames']} frames) in "
          f"{len(m['files'])} shards, {size / 1e6:.1f} MB, to {a.out}")
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
