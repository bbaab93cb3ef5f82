"""bench.time_call times jitted functions and functions that call them (the labelers' `fn`)."""
import jax
import jax.numpy as jnp

from refine_jax import bench


def test_time_call_takes_jitted_and_plain_functions():
    jitted = jax.jit(lambda x: x * 2)
    for fn in (jitted, lambda x: jitted(x) + 1):
        compile_s, median, times = bench.time_call(fn, jnp.ones(4), repeats=2)
        assert compile_s > 0 and len(times) == 2 and min(times) <= median <= max(times)
