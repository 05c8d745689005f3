"""Benchmarks of the pipeline's own cost, run by hand (``python -m bench.pipeline``); never part of CI."""

import os

# The workers run with one BLAS thread (``atelier worker`` sets it); the direct measurement in this
# process must too, or the comparison charges thread spinning to one side only. Set before numpy loads.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
