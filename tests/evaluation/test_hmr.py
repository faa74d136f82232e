"""`evaluation.hmr` (EHF, FreiHAND, ARCTIC): the fits on tensors equal `dposer fit-image` on the same files
(same inputs and seed), and every metric equals a numpy evaluator on the fitted meshes."""

import json

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from dposer_cli import evaluation
from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import Part
from tests.evaluation._helpers import np_procrustes, req
from tests.io.test_datasets import (
    _arctic_poses,
    _rodrigues,
    write_arctic,
    write_ehf,
    write_freihand,
    write_smplx_eval_files,
)

EHF_ROT = (-2.98747896, 0.01172457, -0.05704687)


@pytest.mark.slow
def test_ehf_pa_mpjpe_equals_numpy_on_the_fitted_meshes(tmp_path, shared_data, body_tree):
    from dposer_cli.bodies import load_body
    from dposer_cli.services import fit_image

    poses = np.load(shared_data / "poses/body_reference_train.npz")["poses"][:2] * 0.3
    root = write_ehf(tmp_path / "EHF", body_tree, poses)
    report = evaluation.run(req(tmp_path, "ehf", data_dir=root, prior="none", steps=2, body_model=body_tree))
    m = report.metrics["ehf"]
    # the same fit (same inputs and seed) run directly, scored with numpy
    imgs = [root / f"0{i}_img.jpg" for i in (1, 2)]
    kps = [root / "vitpose_keypoints/predictions" / f"0{i}_img.json" for i in (1, 2)]
    fit_image.run(
        fit_image.FitImageRequest(
            images=tuple(imgs),
            keypoints=tuple(kps),
            out=tmp_path / "fit",
            part=Part.body,
            person="0",
            steps=2,
            prior="none",
            body_model=body_tree,
            overlay=False,
            device="cpu",
            seed=0,
        )
    )
    body = load_body("body", body_tree)
    reg = body.model.J_regressor.numpy()
    rot = _rodrigues(EHF_ROT)
    pa, root_err = [], []
    for i, img in enumerate(imgs):
        f = np.load(tmp_path / "fit" / f"{img.stem}.npz")
        with torch.no_grad():
            v = (
                body(**{k: torch.as_tensor(f[k]) for k in ("global_orient", "body_pose", "betas", "transl")})
                .vertices[0]
                .numpy()
            )
        from dposer_cli.io.datasets import read_ply_vertices

        gv = read_ply_vertices(root / f"0{i + 1}_align.ply") @ rot.T
        pj, gj = (reg @ v)[:22], (reg @ gv)[:22]
        pa.append(np.linalg.norm(np_procrustes(pj, gj) - gj, axis=-1).mean() * 1000)
        root_err.append(np.linalg.norm((pj - pj[:1]) - (gj - gj[:1]), axis=-1).mean() * 1000)
    assert m["pa_mpjpe_mm"] == pytest.approx(np.mean(pa), rel=1e-4)
    assert m["mpjpe_mm"] == pytest.approx(np.mean(root_err), rel=1e-4)


def test_freihand_metrics_equal_numpy_on_the_fitted_hands(tmp_path, shared_data, body_tree):
    from dposer_cli.bodies import load_body
    from dposer_cli.services import fit_image

    hands = np.load(shared_data / "poses/hand_reference_train.npz")["poses"][:2]
    root = write_freihand(tmp_path / "fh", body_tree, hands)
    report = evaluation.run(
        req(tmp_path, "freihand", data_dir=root, prior="l2", steps=2, body_model=body_tree)
    )
    m = report.metrics["freihand"]
    # re-fit with the keypoint files the benchmark would write (GT joints projected with K), score with numpy
    xyz = np.array(json.loads((root / "evaluation_xyz.json").read_text()))
    verts = np.array(json.loads((root / "evaluation_verts.json").read_text()))
    k = np.array(json.loads((root / "evaluation_K.json").read_text()))
    imgs = sorted((root / "evaluation/rgb").glob("*.jpg"))
    kps = []
    for i, img in enumerate(imgs):
        uvw = xyz[i] @ k[i].T
        uv = uvw[:, :2] / uvw[:, 2:]
        path = tmp_path / f"{img.stem}.json"
        path.write_text(json.dumps([{"keypoints": uv.tolist(), "keypoint_scores": [1.0] * 21}]))
        kps.append(path)
    fit_image.run(
        fit_image.FitImageRequest(
            images=tuple(imgs),
            keypoints=tuple(kps),
            out=tmp_path / "fit",
            part=Part.hand,
            person="0",
            steps=2,
            prior="l2",
            focal=480.0,
            body_model=body_tree,
            overlay=False,
            device="cpu",
            seed=0,
        )
    )
    body = load_body("hand", body_tree)
    pa_j, pa_v, f5 = [], [], []
    for i, img in enumerate(imgs):
        f = np.load(tmp_path / "fit" / f"{img.stem}.npz")
        with torch.no_grad():
            out = body(
                **{key: torch.as_tensor(f[key]) for key in ("hand_pose", "global_orient", "betas", "transl")}
            )
        pj = out.joints[0, body.joint_set("hand21")].numpy()
        v = np_procrustes(out.vertices[0].numpy(), verts[i])
        pa_j.append(np.linalg.norm(np_procrustes(pj, xyz[i]) - xyz[i], axis=-1).mean() * 1000)
        pa_v.append(np.linalg.norm(v - verts[i], axis=-1).mean() * 1000)
        p = (cKDTree(verts[i]).query(v)[0] < 0.005).mean()
        r = (cKDTree(v).query(verts[i])[0] < 0.005).mean()
        f5.append(0.0 if p + r == 0 else 2 * p * r / (p + r))
    assert m["pa_mpjpe_mm"] == pytest.approx(np.mean(pa_j), rel=1e-4)
    assert m["pa_mpvpe_mm"] == pytest.approx(np.mean(pa_v), rel=1e-4)
    assert m["f_at_5mm"] == pytest.approx(np.mean(f5), abs=3 / 778)  # float32 vs float64 at the threshold


def test_freihand_with_the_gmm_baseline_equals_fit_image_with_the_same_gmm(tmp_path, shared_data, body_tree):
    """`--prior gmm` fits the GMM once (on --train-poses) and hands it to every batch's fit."""
    from dposer_cli.engine.priors import build_prior
    from dposer_cli.services import fit_image

    hands = np.load(shared_data / "poses/hand_reference_train.npz")["poses"]
    train = tmp_path / "train.npz"
    np.savez(train, poses=hands[:400])
    root = write_freihand(tmp_path / "fh", body_tree, hands[500:502])
    report = evaluation.run(
        req(
            tmp_path,
            "freihand",
            data_dir=root,
            prior="gmm",
            train_poses=train,
            gmm_components=2,
            steps=3,
            body_model=body_tree,
        )
    )
    assert report.info["paper_row"] == "GMM"
    gmm = build_prior(
        "gmm", Part.hand, train=torch.as_tensor(hands[:400], dtype=torch.float64), n_components=2
    )
    xyz = np.array(json.loads((root / "evaluation_xyz.json").read_text()))
    k = np.array(json.loads((root / "evaluation_K.json").read_text()))
    imgs = sorted((root / "evaluation/rgb").glob("*.jpg"))
    kps = []
    for i, img in enumerate(imgs):
        uvw = xyz[i] @ k[i].T
        path = tmp_path / f"{img.stem}.json"
        path.write_text(
            json.dumps([{"keypoints": (uvw[:, :2] / uvw[:, 2:]).tolist(), "keypoint_scores": [1.0] * 21}])
        )
        kps.append(path)
    common = {
        "images": tuple(imgs),
        "keypoints": tuple(kps),
        "part": Part.hand,
        "person": "0",
        "steps": 3,
        "focal": 480.0,
        "body_model": body_tree,
        "overlay": False,
        "device": "cpu",
        "seed": 0,
    }
    fit_image.run(fit_image.FitImageRequest(out=tmp_path / "gmm", prior="gmm", prior_model=gmm, **common))
    fit_image.run(fit_image.FitImageRequest(out=tmp_path / "none", prior="none", **common))
    from dposer_cli.bodies import load_body

    body = load_body("hand", body_tree)
    errs = {}
    for name in ("gmm", "none"):
        fits = [np.load(tmp_path / name / f"{img.stem}.npz") for img in imgs]
        with torch.no_grad():
            out = body(
                **{
                    key: torch.as_tensor(np.concatenate([f[key] for f in fits]))
                    for key in ("hand_pose", "global_orient", "betas", "transl")
                }
            )
        pj = out.joints[:, body.joint_set("hand21")].numpy()
        errs[name] = np.mean(
            [
                np.linalg.norm(np_procrustes(pj[i], xyz[i]) - xyz[i], axis=-1).mean() * 1000
                for i in range(len(imgs))
            ]
        )
    assert report.metrics["freihand"]["pa_mpjpe_mm"] == pytest.approx(errs["gmm"], rel=1e-4)
    assert errs["gmm"] != pytest.approx(errs["none"], rel=1e-3)  # the GMM term did change the fit


def _np_arctic(pred: np.ndarray, gt: np.ndarray, reg: np.ndarray, ids: dict, j14: np.ndarray) -> dict:
    """eval_arctic_wholebody (spec §8.2) for one mesh pair, in numpy, mm."""

    def err(a, b):
        return np.linalg.norm(a - b, axis=-1).mean() * 1000

    def tips_reg(rows, tips):
        out = [reg[rows[0]]]
        for finger, tip in zip(rows[1:], tips, strict=True):
            out += [reg[list(finger)], np.eye(10475)[tip][None]]
        return np.concatenate([np.atleast_2d(r) for r in out])

    jp, jg = reg @ pred, reg @ gt
    res = {"pa_mpvpe_all_mm": err(np_procrustes(pred, gt), gt), "mpvpe_all_mm": err(pred - jp[0] + jg[0], gt)}
    lh, rh = ids["left_hand"], ids["right_hand"]
    res["pa_mpvpe_hand_mm"] = (
        err(np_procrustes(pred[lh], gt[lh]), gt[lh]) + err(np_procrustes(pred[rh], gt[rh]), gt[rh])
    ) / 2
    res["mpvpe_hand_mm"] = (
        err(pred[lh] - jp[20] + jg[20], gt[lh]) + err(pred[rh] - jp[21] + jg[21], gt[rh])
    ) / 2
    f = ids["face"]
    res["pa_mpvpe_face_mm"] = err(np_procrustes(pred[f], gt[f]), gt[f])
    res["mpvpe_face_mm"] = err(pred[f] - jp[12] + jg[12], gt[f])
    res["pa_mpjpe_body_mm"] = err(np_procrustes(j14 @ pred, j14 @ gt), j14 @ gt)
    left = tips_reg(
        [20, (37, 38, 39), (25, 26, 27), (28, 29, 30), (34, 35, 36), (31, 32, 33)],
        [5361, 4933, 5058, 5169, 5286],
    )
    right = tips_reg(
        [21, (52, 53, 54), (40, 41, 42), (43, 44, 45), (49, 50, 51), (46, 47, 48)],
        [8079, 7669, 7794, 7905, 8022],
    )
    res["pa_mpjpe_hand_mm"] = (
        err(np_procrustes(left @ pred, left @ gt), left @ gt)
        + err(np_procrustes(right @ pred, right @ gt), right @ gt)
    ) / 2
    return res


@pytest.mark.slow
def test_arctic_metrics_equal_numpy_on_the_fitted_meshes(tmp_path, shared_data, body_tree):
    """Two actions whose evaluated frames share image numbers (00021) are fitted in one batch and scored
    against the processed vertices of the right rows; every metric equals a numpy evaluator."""
    import pickle

    from dposer_cli.bodies import load_body
    from dposer_cli.services import fit_image

    root = tmp_path / "ARCTIC"
    rows = write_arctic(
        root, body_tree, _arctic_poses(shared_data, 3), {"box_grab_01": 41, "laptop_use_02": 21}
    )
    write_smplx_eval_files(root)  # beside the data (searched after the SMPL-X folder)
    report = evaluation.run(
        req(tmp_path, "arctic", data_dir=root, prior="none", steps=2, body_model=body_tree)
    )
    m = report.metrics["arctic"]
    assert report.info["items"] == 3 and report.info["paper_row"] == "w/o prior"
    # the same fit run directly on copies (unique names, same order and seed), scored with numpy
    items = [("box_grab_01", "00021"), ("box_grab_01", "00041"), ("laptop_use_02", "00021")]
    imgs, kps = [], []
    for action, stem in items:
        img = tmp_path / "copy" / f"{action}_{stem}.jpg"
        img.parent.mkdir(exist_ok=True)
        img.write_bytes((root / "images/s05" / action / "4" / f"{stem}.jpg").read_bytes())
        kp = img.with_suffix(".json")
        kp.write_bytes((root / "keypoints/mmpose_keypoints/s05" / action / "4" / f"{stem}.json").read_bytes())
        imgs.append(img)
        kps.append(kp)
    fit_image.run(
        fit_image.FitImageRequest(
            images=tuple(imgs),
            keypoints=tuple(kps),
            out=tmp_path / "fit",
            part=Part.wholebody,
            person="0",
            steps=2,
            prior="none",
            body_model=body_tree,
            overlay=False,
            device="cpu",
            seed=0,
        )
    )
    body = load_body("body", body_tree)
    reg = body.model.J_regressor.numpy().astype(np.float64)
    with open(root / "MANO_SMPLX_vertex_ids.pkl", "rb") as fh:
        ids = dict(pickle.load(fh))
    ids["face"] = np.load(root / "SMPL-X__FLAME_vertex_ids.npy")
    with open(root / "SMPLX_to_J14.pkl", "rb") as fh:
        j14 = pickle.load(fh)
    expected = []
    frames = [f for action in ("box_grab_01", "laptop_use_02") for f in rows[action]]
    for img, (action, _), frame in zip(imgs, items, frames, strict=True):
        f = np.load(tmp_path / "fit" / f"{img.stem}.npz")
        keys = (
            "global_orient",
            "body_pose",
            "left_hand_pose",
            "right_hand_pose",
            "jaw_pose",
            "expression",
            "betas",
            "transl",
        )
        with torch.no_grad():
            v = (
                body(**{k: torch.as_tensor(f[k]) for k in keys if k in f.files})
                .vertices[0]
                .numpy()
                .astype(np.float64)
            )
        gt = np.load(root / "processed_verts/seqs/s05" / f"{action}.npy", allow_pickle=True)[()]
        expected.append(
            _np_arctic(v, gt["cam_coord"]["verts.smplx"][frame, 4].astype(np.float64), reg, ids, j14)
        )
    for key in expected[0]:
        assert m[key] == pytest.approx(np.mean([e[key] for e in expected]), rel=2e-3, abs=0.05), key
    assert 0 < m["pa_mpvpe_hand_mm"] < m["mpvpe_hand_mm"]  # a similarity alignment can only lower the error


def test_arctic_reports_what_is_missing(tmp_path, shared_data, body_tree):
    """Missing evaluation files and a non-SMPL-X body are one-line errors; without the J14 regressor the body
    PA-MPJPE is left out with a note (here through `dposer benchmark`'s service, which writes the report)."""
    from dposer_cli.core.errors import MissingAssetError
    from dposer_cli.services import benchmark as svc

    root = tmp_path / "ARCTIC"
    write_arctic(root, body_tree, _arctic_poses(shared_data, 1), {"box_grab_01": 21})
    with pytest.raises(
        MissingAssetError, match="needs MANO_SMPLX_vertex_ids.pkl and SMPL-X__FLAME_vertex_ids.npy"
    ):
        evaluation.run(req(tmp_path, "arctic", data_dir=root, prior="none", steps=1, body_model=body_tree))
    with pytest.raises(InputError, match="needs an SMPL-X model"):  # the mannequin has no SMPL-X mesh
        evaluation.run(req(tmp_path, "arctic", data_dir=root, prior="none", steps=1))
    write_smplx_eval_files(root, j14=False)
    result = svc.run(
        req(
            tmp_path,
            "arctic",
            data_dir=root,
            prior="none",
            steps=1,
            body_model=body_tree,
            settings=("gt-intrinsic",),
        )
    )
    m = result.metrics["arctic"]
    assert "pa_mpjpe_body_mm" not in m and np.isfinite(m["pa_mpvpe_all_mm"])
    assert any("SMPLX_to_J14.pkl not found" in note for note in result.info["notes"])
    assert result.info["settings"]["focal"].startswith("misc.json camera 4: 517.5 px")
    report = json.loads((tmp_path / "arctic.json").read_text())
    assert report["metrics"]["arctic"]["pa_mpvpe_face_mm"] == pytest.approx(m["pa_mpvpe_face_mm"])
