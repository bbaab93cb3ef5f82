"""Every entry point: one bad input gives one line 'error: <file>: <what>' and exit status 2;
--debug shows the traceback. The main job's default workdir and its workdir lock."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from refine_jax import cli, convert, infer, lock
from refine_jax.data import benchmarks, ingest
from refine_jax.demo import synthetic
from refine_jax.stages import label as generate
from refine_jax.stages import train as train_stage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_error_line(capsys, rc, *fragments):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) >= 1 and err[-1].startswith("error: "), err
    assert "Traceback" not in "\n".join(err)
    for f in fragments:
        assert f in err[-1], (f, err[-1])
    return err[-1]


def test_argparse_entry_points(tmp_path, capsys):
    missing = str(tmp_path / "nope.pth")
    one_error_line(capsys, convert.main(["--arch=raft", f"--src={missing}", f"--out={tmp_path / 'o'}"]),
                   f"error: {missing}: checkpoint file not found")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    one_error_line(capsys, convert.main(["--arch=raft", f"--src={bad}", f"--out={tmp_path / 'o'}"]),
                   f"error: {bad}: cannot be read as a PyTorch checkpoint")
    one_error_line(capsys, infer.main(["flow", f"--weights={missing}", f"--frames={tmp_path}", f"--out={tmp_path}"]),
                   f"error: {missing}: no such checkpoint file or folder")
    (tmp_path / "empty").mkdir()
    one_error_line(capsys, ingest.main([f"--videos={tmp_path / 'empty'}", f"--out={tmp_path / 's1'}"]),
                   f"error: {tmp_path / 'empty'}: holds no video files")
    one_error_line(capsys, ingest.main([f"--videos={tmp_path / 'x*.mp4'}", f"--out={tmp_path / 's1'}"]),
                   "matches no video file or frame folder")
    (tmp_path / "broken").mkdir()
    for n in ("a.mp4", "b.mp4"):
        (tmp_path / "broken" / n).write_bytes(b"\x00" * 64)
    one_error_line(capsys, ingest.main([f"--videos={tmp_path / 'broken'}", f"--out={tmp_path / 's2'}"]),
                   f"error: {tmp_path / 'broken'}: none of its 2 sources could be ingested")
    assert not (tmp_path / "s2" / "manifest.json").exists()
    one_error_line(capsys, synthetic.main(["--preset=target", f"--out={tmp_path / 's3'}", "--videos=1",
                                           "--shifts=rain:1"]), "error: unknown shift 'rain'")
    one_error_line(capsys, benchmarks.main(["sintel", f"--root={tmp_path}", f"--out={tmp_path / 's4'}"]),
                   f"error: {tmp_path / 'training' / 'flow'}: not found; expected an MPI-Sintel root")
    one_error_line(capsys, generate.main([f"--init={missing}", f"--videos={tmp_path / 'empty'}",
                                          f"--workdir={tmp_path / 'w'}"]), f"{missing}: no such checkpoint")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"init": missing, "train": {"steps": 1}}))
    one_error_line(capsys, train_stage.main([f"--config_json={cfg}", f"--workdir={tmp_path / 'w'}"]),
                   f"error: {missing}: no such checkpoint")
    with pytest.raises(FileNotFoundError):  # --debug: the exception itself
        convert.main(["--arch=raft", f"--src={missing}", f"--out={tmp_path / 'o'}", "--debug"])


def test_error_messages_are_one_line():
    assert cli.message(FileNotFoundError(2, "No such file or directory", "a/b")) == "a/b: no such file or directory"
    assert cli.message(ValueError("x.pth: bad\n  second line")) == "x.pth: bad second line"
    assert cli.message(KeyError("k: missing")) == "k: missing"


def _main(args, cwd, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "refine_jax.main", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def test_main_job_errors_default_workdir_and_lock(tmp_path):
    for args, fragment in (
            (["--config=configs/raft.py:nope"], "error: configs/raft.py: unknown preset 'nope'; expected"),
            (["--config=configs/raft.py", "--config.train.nofield=1"],
             "error: --config.train.nofield: the config has no field 'nofield'"),
            (["--config=configs/missing.py"], "error: configs/missing.py: no such config file"),
            (["--config=configs/raft.py", "--config.stages=label,", f"--config.init={tmp_path}/nope",
              f"--workdir={tmp_path}/w1"], f"error: {tmp_path}/nope: no such checkpoint file or folder"),
    ):
        p = _main(args, ROOT)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and lines and lines[-1].startswith(fragment), (args, p.stderr[-2000:])
        assert "Traceback" not in p.stderr
    # a label stage on a folder that is not a shard folder names it; the default workdir is
    # runs/<config>[_<preset>] under the current directory, and the command says so
    env = {**os.environ, "PYTHONPATH": ROOT}
    p = _main([f"--config={ROOT}/configs/raft.py:sintel", "--config.stages=label,",
               f"--config.init={tmp_path}", f"--config.data.videos={tmp_path}/none"], str(tmp_path), env=env)
    assert p.returncode == 2 and "workdir: runs/raft_sintel" in p.stdout, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1].startswith("error: "), p.stderr[-2000:]
    assert (tmp_path / "runs" / "raft_sintel").is_dir() and not (tmp_path / "runs" / "raft_sintel" / ".lock").exists()
    # a live holder (this test's own pid on this host) makes a second run refuse at once
    wd = tmp_path / "held"
    wd.mkdir()
    (wd / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                                          "heartbeat": time.time()}))
    p = _main(["--config=configs/raft.py:runlocal", f"--workdir={wd}"], ROOT)
    assert p.returncode == 2 and f"in use by pid {os.getpid()} on host {socket.gethostname()}" in p.stderr


def test_stale_lock_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0,
                                                "heartbeat": 0}))
    with lock.WorkdirLock(str(tmp_path)) as held:
        assert held.took_over["pid"] == dead.pid
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()  # released
    live = {"pid": os.getppid(), "host": socket.gethostname(), "started": 0, "heartbeat": 0}
    (tmp_path / ".lock").write_text(json.dumps(live))
    with pytest.raises(lock.WorkdirLocked, match=f"in use by pid {os.getppid()}"):
        lock.WorkdirLock(str(tmp_path)).acquire()
    # a holder on another host: live while its heartbeat is fresh, stale after STALE_S
    far = {"pid": 1, "host": "elsewhere", "started": 0, "heartbeat": time.time() - lock.STALE_S - 1}
    assert not lock.holder_is_live(far) and lock.holder_is_live({**far, "heartbeat": time.time()})
