"""File operations on local paths and on URLs such as gs://bucket/dir.

Local paths use `os`; a path with a scheme (gs://, s3://, ram://, ...) goes through TensorFlow's
`tf.io.gfile`, which TPU VMs use for Cloud Storage. Orbax and tf.data take such URLs themselves.
"""
from __future__ import annotations

import os
import shutil
from typing import IO, Iterator, List, Tuple


def is_remote(path) -> bool:
    return "://" in os.fspath(path)


def tf():
    """TensorFlow, imported on first use with its GPUs hidden (it never takes an accelerator from JAX)."""
    import tensorflow  # noqa: PLC0415
    try:
        tensorflow.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass
    return tensorflow


def _gfile():
    return tf().io.gfile


def abspath(path) -> str:
    """An absolute local path, or the URL unchanged."""
    path = os.fspath(path)
    return path if is_remote(path) else os.path.abspath(path)


def exists(path) -> bool:
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path) -> bool:
    return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def isfile(path) -> bool:
    return exists(path) and not isdir(path)


def makedirs(path) -> None:
    if is_remote(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def open_file(path, mode: str = "r") -> IO:
    return _gfile().GFile(path, mode) if is_remote(path) else open(path, mode)


def replace(src, dst) -> None:
    """Rename src to dst, overwriting dst (atomic on local disks; copy + delete on object stores)."""
    if is_remote(src):
        _gfile().rename(src, dst, overwrite=True)
    else:
        os.replace(src, dst)


def size(path) -> int:
    return _gfile().stat(path).length if is_remote(path) else os.path.getsize(path)


def remove(path) -> None:
    _gfile().remove(path) if is_remote(path) else os.remove(path)


def rmtree(path) -> None:
    _gfile().rmtree(path) if is_remote(path) else shutil.rmtree(path)


def listdir(path) -> List[str]:
    return sorted(n.rstrip("/") for n in _gfile().listdir(path)) if is_remote(path) else sorted(os.listdir(path))


def glob(pattern) -> List[str]:
    """Sorted matches of a glob pattern (local, or a URL through tf.io.gfile)."""
    import glob as glob_lib
    return sorted(_gfile().glob(pattern)) if is_remote(pattern) else sorted(glob_lib.glob(pattern))


def walk(path) -> Iterator[Tuple[str, List[str], List[str]]]:
    return _gfile().walk(path) if is_remote(path) else os.walk(path)


def write_bytes_atomic(path, data: bytes) -> None:
    """Write to a temporary name beside `path`, then rename over it (never a half-written file)."""
    path = os.fspath(path)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    if exists(tmp):  # a leftover of a killed run; some filesystems (ram://) append on "wb"
        remove(tmp)
    with open_file(tmp, "wb") as f:
        f.write(data)
    replace(tmp, path)


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path, obj) -> None:
    import json
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True))


def read_json(path):
    import json
    with open_file(path) as f:
        return json.load(f)
