"""`core.rotations`: matrix → axis-angle inverts Rodrigues at every angle (0, small, near π); the 6D
representation gives proper rotations equal to Gram–Schmidt of its 3×2 columns."""

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from dposer_cli.core.rotations import compose_axis_angle, matrix_to_axis_angle, rot6d_to_matrix


def _rodrigues(aa: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(Rotation.from_rotvec(aa.double().numpy()).as_matrix())


def test_matrix_to_axis_angle_inverts_rodrigues_including_near_zero_and_pi():
    g = torch.Generator().manual_seed(3)
    axis = torch.nn.functional.normalize(torch.randn(64, 3, generator=g), dim=-1)
    angle = torch.cat([torch.rand(60, generator=g) * 3.1, torch.tensor([0.0, 1e-6, 3.14159, 3.1415926])])
    aa = axis * angle[:, None]
    back = matrix_to_axis_angle(_rodrigues(aa)).float()
    assert torch.allclose(_rodrigues(back).float(), _rodrigues(aa).float(), atol=1e-5)
    assert torch.allclose(back[:60], aa[:60], atol=1e-4)
    # float32 input, many random rotations
    aa = torch.randn(500, 3, generator=torch.Generator().manual_seed(1))
    aa = (
        aa
        / aa.norm(dim=-1, keepdim=True)
        * torch.rand(500, 1, generator=torch.Generator().manual_seed(2))
        * 3.0
    )
    back = matrix_to_axis_angle(_rodrigues(aa).float())
    torch.testing.assert_close(_rodrigues(back).float(), _rodrigues(aa).float(), atol=1e-4, rtol=0)


def test_compose_axis_angle_is_the_matrix_product():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(20, 3, generator=g), torch.randn(20, 3, generator=g)
    np.testing.assert_allclose(
        _rodrigues(compose_axis_angle(a, b)).numpy(), (_rodrigues(a) @ _rodrigues(b)).numpy(), atol=1e-5
    )


def test_rot6d_gives_gram_schmidt_rotations():
    x = torch.randn(30, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    r = rot6d_to_matrix(x)
    torch.testing.assert_close(r @ r.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(30, 3, 3))
    assert torch.allclose(torch.linalg.det(r), torch.ones(30, dtype=torch.float64))
    m = x.reshape(30, 3, 2).numpy()
    b1 = m[:, :, 0] / np.linalg.norm(m[:, :, 0], axis=1, keepdims=True)
    np.testing.assert_allclose(r[..., 0].numpy(), b1, atol=1e-12)
