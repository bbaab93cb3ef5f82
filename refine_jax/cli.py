"""One error path for every command-line entry point.

An expected failure (a missing or corrupt input, a wrong checkpoint, an unknown preset or config
field, an empty ingest, frames too small, a cloud path without access) prints one line,
`error: <file>: <what was expected>`, and exits with status 2. `--debug` (or REFINE_JAX_DEBUG=1)
shows the traceback instead. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable, Optional, Sequence

DEBUG_ENV = "REFINE_JAX_DEBUG"
CACHE_ENV = "REFINE_JAX_CACHE"


def enable_compilation_cache() -> str:
    """JAX's persistent compilation cache in $REFINE_JAX_CACHE (default ~/.cache/refine_jax/jax;
    'off' disables it): a second run, or the oracle after the train stage, loads the compiled
    steps instead of compiling them again. Returns the folder ('' when off)."""
    import jax
    path = os.environ.get(CACHE_ENV, os.path.join(os.path.expanduser("~"), ".cache", "refine_jax", "jax"))
    if path == "off":
        return ""
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return path


def quiet_logs() -> None:
    """Keep TensorFlow's C++ log lines, absl's INFO lines and Orbax's one-time handler notice off
    the user's terminal (warnings and errors still show). Call before TensorFlow is imported."""
    import logging
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)

    class _NoHandlerOverride(logging.Filter):
        def filter(self, record):
            return "overriding" not in record.getMessage()
    logging.getLogger("absl").addFilter(_NoHandlerOverride())


def load_config(spec: str):
    """A config file's get_config(preset) from 'configs/raft.py[:preset]' (as --config takes it)."""
    import importlib.util
    path, _, preset = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such config file")
    module_spec = importlib.util.spec_from_file_location(f"refine_jax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(preset or None)


def _expected() -> tuple:
    errors = [OSError, ValueError, KeyError]  # OSError: missing files, permissions, FileExistsError
    if "tensorflow" in sys.modules:  # tf.io.gfile / tf.data on gs:// (no access, no bucket, ...)
        errors.append(sys.modules["tensorflow"].errors.OpError)
    return tuple(errors)


def message(e: BaseException) -> str:
    """One line naming the file and what was wrong."""
    if isinstance(e, OSError) and e.filename and e.strerror and str(e.filename) not in str(e.args[-1]):
        text = f"{e.filename}: {e.strerror[0].lower() + e.strerror[1:]}"
    elif isinstance(e, KeyError) and len(e.args) == 1:
        text = str(e.args[0])
    else:
        text = getattr(e, "message", None) or str(e) or type(e).__name__
    return " ".join(str(text).split())


def debug_requested(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def report(e: BaseException) -> int:
    print(f"error: {message(e)}", file=sys.stderr)
    return 2


def guarded(fn: Callable[[list], Optional[int]]) -> Callable[[Optional[Sequence[str]]], int]:
    """Wrap an argparse `main(argv)`: strips `--debug`, returns 0, its own code, or 2 with one line."""
    @functools.wraps(fn)
    def main(argv: Optional[Sequence[str]] = None) -> int:
        argv = list(sys.argv[1:] if argv is None else argv)
        debug = debug_requested(argv)
        argv = [a for a in argv if a != "--debug"]
        try:
            return int(fn(argv) or 0)
        except _expected() as e:
            if debug:
                raise
            return report(e)
    return main


def absl_run(main: Callable, required: Sequence[str] = ()) -> None:
    """`absl.app.run(main)` with the same error path, flag errors (an unknown preset or config
    field, a bad value) included."""
    from absl import app, flags

    debug = debug_requested(sys.argv[1:])
    argv = [a for a in sys.argv if a != "--debug"]

    def parse(args):
        try:
            rest = flags.FLAGS(args)
            if "config" in flags.FLAGS:  # a missing config file only fails when first read
                path = flags.FLAGS["config"].serialize().partition("=")[2].split(":")[0]
                if path and not os.path.exists(path):
                    raise ValueError(f"{path}: no such config file")
            return rest
        except (flags.Error, AttributeError) as e:  # AttributeError: an override of a missing field
            if debug:
                raise
            sys.exit(report(ValueError(_flag_message(e, args))))
        except ValueError as e:
            if debug:
                raise
            sys.exit(report(e))

    def guarded_main(args):
        try:
            for name in required:
                if flags.FLAGS[name].value is None:
                    raise ValueError(f"--{name} is required")
            return main(args)
        except _expected() as e:
            if debug:
                raise
            sys.exit(report(e))

    app.run(guarded_main, argv=argv, flags_parser=parse)


def _flag_message(e, args: Sequence[str] = ()) -> str:
    """One line from absl's flag error: 'configs/raft.py: unknown preset ...', '--config.x: ...'."""
    import re
    if isinstance(e, AttributeError):  # ml_collections: an override names a field the config lacks
        field = str(e).strip("'\"")
        arg = next((a.partition("=")[0] for a in args if a.startswith("--config.") and field in a), "--config")
        return f"{arg}: the config has no field {field!r}"
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    head = lines[0] if lines else type(e).__name__
    unknown = re.match(r"Unknown command line flag '(.+)'", head)
    if unknown:
        name = unknown.group(1)
        return (f"--{name}: the config has no field {name[len('config.'):]!r}" if name.startswith("config.")
                else f"--{name}: unknown flag")
    flag, _, rest = head.removeprefix("flag ").removeprefix("Illegal value for flag ").partition(": ")
    if flag.startswith("--config="):
        flag = flag[len("--config="):].split(":")[0]
    if "Traceback" in str(e):  # a config file's own error: its last line is the exception
        rest = re.sub(r"^[\w.]*(Error|Exception): ", "", lines[-1])
    return f"{flag}: {rest}" if rest else flag
