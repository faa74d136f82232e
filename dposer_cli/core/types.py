"""Shared axis vocabulary for jaxtyping annotations.

| name | meaning |
|---|---|
| B | batch |
| T | frames |
| J | joints |
| D | flattened pose features |
| V | vertices |
| F | faces |
| K | 2D keypoints |
| *batch | any leading dims |

Units go in names: `pose_aa` (axis-angle, radians), `joints_m` (metres), `mpjpe_mm`.
"""

from jaxtyping import Bool, Float, Int  # noqa: F401  (re-exported vocabulary)
from torch import Tensor  # noqa: F401
