"""Regenerate the synthetic fit-image example (run from the repository root; needs ../shared/data).

Three people with real poses (shared/data/poses/body_reference_train.npz) are posed on the built-in
mannequin, rendered over a grey background with a known camera (focal = image diagonal, centre = image
centre) and their OpenPose BODY_25 keypoints written with 2 px noise and a few missed points:

    PYTHONPATH=. .venv/bin/python examples/fit/make_example.py
    dposer fit-image examples/fit/three_people.png --out fits/     # finds three_people.json beside it
"""

from pathlib import Path

import numpy as np
import torch

from dposer_cli.io.media import save_image
from dposer_cli.render.draw import overlay_mesh
from tests.services.test_fit_image import _model, reference_poses, synthetic_scene, write_keypoints

HERE = Path(__file__).resolve().parent


def main() -> None:
    scene = synthetic_scene(reference_poses()[[120, 2900, 6100]], seed=21, width=960, height=540, noise_px=2.0,
                            drop=2, yaw_deg=35, spacing=0.55)
    model = _model("body")
    with torch.no_grad():
        out = model(**{k: torch.as_tensor(v, dtype=torch.float32) for k, v in scene.params.items()})
    background = np.full((scene.height, scene.width, 3), 200, np.uint8)
    background[scene.height * 2 // 3:] = 150  # a floor, so the picture is not flat grey
    image = overlay_mesh(background, list(out.vertices.numpy()), model.faces.numpy(), focal=scene.focal,
                         center=(scene.width / 2, scene.height / 2), alpha=1.0, renderer="soft")
    save_image(HERE / "three_people.png", image)
    write_keypoints(HERE / "three_people.json", scene.keypoints.round(2), "openpose")
    np.savez(HERE / "three_people_truth.npz", joints=scene.joints, **scene.params)


if __name__ == "__main__":
    main()
