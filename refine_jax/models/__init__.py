"""Model registry: architecture name -> config class and Flax module."""
from __future__ import annotations

from refine_jax.models.raft import RAFT, RAFTConfig

ARCHS = ("raft", "raft_small", "pips")

# Unique parameter counts of the official models (docs/method.md, "Checkpoints"); a converted checkpoint must match.
PARAM_COUNTS = {"raft": 5_257_536, "raft_small": 990_162, "pips": 28_677_713}


def model_config(arch: str, overrides: dict | None = None):
    """The config dataclass of `arch`, optionally from a saved dict."""
    overrides = dict(overrides or {})
    overrides.pop("arch", None)
    if arch in ("raft", "raft_small"):
        overrides.setdefault("small", arch == "raft_small")
        return RAFTConfig(**overrides)
    if arch == "pips":
        from refine_jax.models.pips import PipsConfig
        return PipsConfig(**overrides)
    raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHS)}")


def build_model(cfg, **kwargs):
    """The Flax module for a config dataclass."""
    if isinstance(cfg, RAFTConfig):
        return RAFT(cfg, **kwargs)
    from refine_jax.models.pips import Pips, PipsConfig
    if isinstance(cfg, PipsConfig):
        return Pips(cfg, **kwargs)
    raise TypeError(f"not a model config: {cfg!r}")


def abstract_variables(cfg):
    """Shapes and dtypes of the variables of the model of `cfg`, without computing anything."""
    import jax
    import jax.numpy as jnp
    model = build_model(cfg)
    if isinstance(cfg, RAFTConfig):
        x = jnp.zeros((1, 128, 128, 3), jnp.float32)
        return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, x, iters=1))
    from refine_jax.models.pips import example_inputs
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *example_inputs(cfg), iters=1))
