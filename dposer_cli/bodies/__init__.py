"""Body models: one interface (`BodyModel`), the built-in mannequin, SMPL-X/MANO/FLAME via `smplx`.

from dposer_cli.bodies import load_body
body = load_body("body")            # SMPL-X if found, else the built-in mannequin
out = body(body_pose=poses)         # out.joints (…, J, 3), out.vertices (…, V, 3)
"""

from dposer_cli.bodies.base import BodyModel, BodyOutput
from dposer_cli.bodies.loader import load_body

__all__ = ["BodyModel", "BodyOutput", "load_body"]
