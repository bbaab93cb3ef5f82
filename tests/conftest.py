"""Test set-up: 8 fake CPU devices, the persistent compilation cache, shared compiled fixtures."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# pytest-xdist workers (and any other JAX process on the machine) each load libtpu to compile for
# TPU topologies; by default only the first may
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
_CACHE = os.environ.get("REFINE_JAX_TEST_CACHE",
                        os.path.join(os.path.dirname(os.path.dirname(__file__)), ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
# the same cache for the runs the tests start as subprocesses (kill -9, SIGTERM, multi-process):
# JAX reads these at import
os.environ.update({"JAX_COMPILATION_CACHE_DIR": _CACHE, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1",
                   "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})

import pytest  # noqa: E402

from refine_jax import pth  # noqa: E402

import golden  # noqa: E402  (tests/ is on sys.path under pytest's rootdir conftest)


@pytest.fixture(scope="session")
def recipe_pth(tmp_path_factory):
    """Official-layout .pth files of the seed-recipe weights, one per architecture."""
    d = tmp_path_factory.mktemp("pth")
    return lambda arch: golden.write_pth(arch, str(d / f"{arch}.pth")) \
        if not (d / f"{arch}.pth").exists() else str(d / f"{arch}.pth")


@pytest.fixture(scope="session")
def converted(recipe_pth):
    """(cfg, variables) converted through refine_jax.convert from the recipe .pth (cached)."""
    cache = {}

    def get(arch):
        if arch not in cache:
            cfg, variables, _ = pth.convert_file(recipe_pth(arch), arch)
            cache[arch] = (cfg, variables)
        return cache[arch]
    return get


# Test files by the seconds they took with two workers (cold compilation cache, 2026-12-06, 2-core
# AMD EPYC), heaviest first. pytest-xdist hands whole files to its workers in collection order (with
# --no-loadscope-reorder; by default it sorts files by their number of tests, which left the
# one-test multi-process file for last): starting with the longest lets both workers end together.
HEAVIEST_FIRST = ("test_trainer.py", "test_main_e2e.py", "test_multiprocess.py", "test_tfds.py",
                  "test_lookup.py", "test_refine.py", "test_labels.py", "test_compile_report_pips.py",
                  "test_recipes.py", "test_compile_report.py", "test_stream.py", "test_fs.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept
