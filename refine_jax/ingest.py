"""`python -m refine_jax.ingest`: see refine_jax.data.ingest."""
import sys

from refine_jax.data.ingest import main

if __name__ == "__main__":
    sys.exit(main())
