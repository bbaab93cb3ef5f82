"""`python -m refine_jax.convert`: an official PyTorch checkpoint -> a refine_jax model folder, and back.

  python -m refine_jax.convert --arch=raft|raft_small|pips --src=FILE.pth --out=DIR
  python -m refine_jax.convert --export --src=DIR --out=FILE.pth

The key map, the strict checks and the export are in refine_jax/pth.py.
"""
from __future__ import annotations

from refine_jax import checkpoints, cli, models, pth


@cli.guarded
def main(argv) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m refine_jax.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=models.ARCHS, help="architecture of --src (checked)")
    p.add_argument("--src", required=True, help=".pth to convert, or with --export a checkpoint")
    p.add_argument("--out", required=True, help="output checkpoint folder, or with --export a .pth")
    p.add_argument("--export", action="store_true", help="write our checkpoint back as a .pth")
    args = p.parse_args(argv)
    if args.export:
        loaded = checkpoints.load_model(args.src)
        pth.export_pth(loaded.variables, loaded.cfg, args.out)
        print(f"wrote {args.out} ({loaded.cfg.arch})")
        return 0
    if args.arch is None:
        p.error("--arch is required to convert")
    cfg, variables, provenance = pth.convert_file(args.src, args.arch)
    checkpoints.save_model(args.out, cfg, variables, provenance)
    print(f"wrote {args.out}: {cfg.arch}, {pth.count_params(variables):,} parameters, "
          f"source sha256 {provenance['source_sha256'][:16]}")
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
