"""Leaf: the splitmix64 hash, elementwise on numpy arrays and pandas / cuDF / Dask Series.

Used where a row must land in a group by a stable key alone (feature folds, the calibration
hold-out), never by row order, partitioning or worker count.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def splitmix64(x: Any) -> Any:
    """The splitmix64 finaliser of uint64 values, elementwise.

    Works on anything with numpy-style uint64 arithmetic that wraps modulo 2**64: numpy arrays,
    pandas/cuDF Series and Dask Series. Right shifts are written as floor divisions by powers of
    two because pandas Series have no ``>>`` operator.
    """
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z // np.uint64(1 << 30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z // np.uint64(1 << 27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z // np.uint64(1 << 31))
