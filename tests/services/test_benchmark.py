"""`services.benchmark`: every registered evaluation end to end on synthetic data in the published layouts, with
the reported metrics checked against independent computations (numpy / scipy, or the task service's own
evaluator on the same inputs and seeds)."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial import cKDTree

from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import Part, mask_dims
from dposer_cli.services import benchmark as svc
from tests._fixtures.priors import write_tiny_prior
from tests.io.test_datasets import (
    _arctic_poses,
    _rodrigues,
    write_arctic,
    write_ehf,
    write_freihand,
    write_smplx_eval_files,
)

EHF_ROT = (-2.98747896, 0.01172457, -0.05704687)


def _req(tmp_path, name, **kw):
    return svc.BenchmarkRequest(name=name, device="cpu", out=tmp_path / f"{name}.json", **kw)


def _np_procrustes(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    mp, mg = p.mean(0), g.mean(0)
    x, y = p - mp, g - mg
    u, s, vt = np.linalg.svd(x.T @ y)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rot = vt.T @ np.diag([1, 1, d]) @ u.T
    scale = (s * np.array([1, 1, d])).sum() / (x**2).sum()
    return scale * x @ rot.T + mg


@pytest.fixture(scope="module")
def body_tree(tmp_path_factory):
    from tests._fixtures.body_models import write_body_models_tree

    return write_body_models_tree(tmp_path_factory.mktemp("models"))


@pytest.fixture
def shared(shared_data):
    return shared_data


# ---------------------------------------------------------------------------------------------- generation
def test_generation_fid_equals_direct_scipy_computation(tmp_path, shared):
    ckpt = write_tiny_prior(tmp_path / "body.pt", Part.body)
    stats = shared / "official/data/body_data/version1/statistics.npz"
    ref_path = shared / "poses/body_reference_train.npz"
    result = svc.run(_req(tmp_path, "generation", checkpoint=ckpt, n=100, steps=3, statistics=stats,
                          reference=ref_path))
    m = result.metrics["body"]
    samples = np.load(result.outputs["samples"])["body_pose"].astype(np.float64)
    assert samples.shape == (100, 63)
    # FID against the official statistics (spec §8.1), written out independently
    st = np.load(stats)
    mu, sigma = samples.mean(0), np.cov(samples, rowvar=False)
    covmean = scipy.linalg.sqrtm(sigma @ st["sigma"]).real
    expected = ((mu - st["mu"]) ** 2).sum() + np.trace(sigma) + np.trace(st["sigma"]) - 2 * np.trace(covmean)
    assert m["fid"] == pytest.approx(expected, rel=1e-6)
    # precision / recall / coverage with k = 3 by brute force
    ref = np.load(ref_path)["poses"].astype(np.float64)
    d_rr, d_ff = cKDTree(ref), cKDTree(samples)
    r_rad = d_rr.query(ref, k=4)[0][:, 3]
    f_rad = d_ff.query(samples, k=4)[0][:, 3]
    d = np.sqrt(((ref[:, None] - samples[None]) ** 2).sum(-1))  # (8000, 100)
    assert m["precision"] == pytest.approx((d < r_rad[:, None]).any(0).mean())
    assert m["recall"] == pytest.approx((d < f_rad[None]).any(1).mean())
    assert m["coverage"] == pytest.approx((d.min(1) < r_rad).mean())
    assert 0 < m["apd_cm"] and m["dnn"] > 0
    report = json.loads(result.outputs["report"].read_text())
    assert report["metrics"]["body"]["fid"] == pytest.approx(expected, rel=1e-6)
    assert report["settings"]["sampler"] == "dpm2m" and report["settings"]["steps"] == 3
    assert report["paper"]["body"]["rows"]["DPoser"][1] == 0.07 and report["versions"]["torch"] == torch.__version__


def test_generation_with_gmm_baseline_and_errors(tmp_path, shared):
    train = tmp_path / "train.npz"
    np.savez(train, poses=np.load(shared / "poses/hand_reference_train.npz")["poses"][:300])
    result = svc.run(_req(tmp_path, "generation", part=Part.hand, prior="gmm", train_poses=train, gmm_components=2,
                          n=60, reference=shared / "poses/hand_reference_train.npz"))
    m = result.metrics["hand"]
    assert {"fid_reference", "precision", "recall", "density", "coverage", "dnn", "apd_cm"} <= set(m)
    assert result.info["paper_row"] == "GMM" and "gmm" in result.info["settings"]["source"]
    with pytest.raises(InputError, match="generation needs FID statistics or reference poses"):
        svc.run(_req(tmp_path, "generation", part=Part.face_shape, n=4))
    with pytest.raises(InputError, match="compares --prior dposer, gmm"):
        svc.run(_req(tmp_path, "generation", prior="l2", n=4))


def test_unknown_benchmark_name_suggests_and_lists():
    with pytest.raises(InputError) as exc:
        svc.run(svc.BenchmarkRequest(name="generaton"))
    assert "did you mean 'generation'" in exc.value.message
    assert "speed" in exc.value.hint and "completion" in exc.value.hint
    with pytest.raises(InputError, match="needs --data-dir"):
        svc.run(svc.BenchmarkRequest(name="completion"))
    with pytest.raises(InputError, match="unknown --setting 'leg'"):
        svc.run(svc.BenchmarkRequest(name="completion", data_dir=".", settings=("leg",)))


# ---------------------------------------------------------------------------------------------- completion
def test_completion_l2_matches_closed_form(tmp_path, shared):
    from dposer_cli.bodies.base import load_body

    poses = np.load(shared / "poses/body_reference_train.npz")["poses"][:5]
    (tmp_path / "amass").mkdir()
    np.savez(tmp_path / "amass" / "x.npz", pose_body=poses)
    result = svc.run(_req(tmp_path, "completion", data_dir=tmp_path / "amass", prior="l2", hypo=2,
                          settings=("legs",), batch_size=2))
    m = result.metrics["legs"]
    body = load_body("body")  # the mannequin: the same default the benchmark used
    filled = poses.copy()
    filled[:, list(mask_dims(Part.body, ["legs"]))] = 0  # the L2 minimiser
    with torch.no_grad():
        pj = body(body_pose=torch.as_tensor(filled)).joints.numpy()
        gj = body(body_pose=torch.as_tensor(poses)).joints.numpy()
    legs = [j + 1 for j in (0, 1, 3, 4, 6, 7, 9, 10)]  # body22 = pelvis + body joints
    expected = np.linalg.norm(pj[:, legs] - gj[:, legs], axis=-1).mean(-1).mean() * 1000
    assert m["mpjpe_min_mm"] == pytest.approx(expected, rel=1e-5)
    assert m["mpjpe_mean_mm"] == pytest.approx(expected, rel=1e-5)
    assert m["mpjpe_std_mm"] == pytest.approx(0, abs=1e-6) and m["apd_cm"] == pytest.approx(0, abs=1e-6)
    assert result.info["items"] == 5 and result.info["settings"]["masks"] == ["legs"]


def test_completion_dposer_reports_min_below_mean(tmp_path, shared):
    ckpt = write_tiny_prior(tmp_path / "body.pt", Part.body)
    (tmp_path / "amass").mkdir()
    np.savez(tmp_path / "amass" / "x.npz",
             poses=np.concatenate([np.zeros((4, 3)), np.load(shared / "poses/body_reference_train.npz")["poses"][:4],
                                   np.zeros((4, 90))], 1), mocap_framerate=60.0)
    result = svc.run(_req(tmp_path, "completion", data_dir=tmp_path / "amass", checkpoint=ckpt, hypo=3, steps=4,
                          settings=("left_leg", "torso")))
    for s in ("left_leg", "torso"):
        m = result.metrics[s]
        assert m["mpjpe_min_mm"] <= m["mpjpe_mean_mm"] and m["apd_cm"] > 0 and m["mpvpe_min_mm"] > 0
    assert result.info["nfe"] == 2 * 4  # one network evaluation per step, per mask
    assert result.info["paper"]["left_leg"]["rows"]["DPoser"][0] == 38.79


def test_wholebody_completion_l2_matches_closed_form(tmp_path, shared):
    from dposer_cli.bodies.base import load_body

    toy = np.load(shared / "official/examples/toy_wholebody_data.npz")
    (tmp_path / "wb").mkdir()
    np.savez(tmp_path / "wb" / "x.npz", **{k: toy[k][:4] for k in toy.files})
    result = svc.run(_req(tmp_path, "wholebody-completion", data_dir=tmp_path / "wb", prior="l2", hypo=2,
                          settings=("lhand",)))
    body = load_body("body")
    lhand = body.joint_set("lhand21")
    keys = ("body_pose", "left_hand_pose", "right_hand_pose")
    truth = {k: torch.as_tensor(toy[k][:4], dtype=torch.float32) for k in keys}
    filled = dict(truth, left_hand_pose=torch.zeros(4, 45))
    filled["body_pose"] = truth["body_pose"].clone()
    filled["body_pose"][:, 57:60] = 0  # the left wrist belongs to the hand mask (spec §7.3)
    with torch.no_grad():
        err = (body(**filled).joints[:, lhand] - body(**truth).joints[:, lhand]).norm(dim=-1).mean(-1)
    m = result.metrics["lhand"]
    assert m["mpjpe_min_mm"] == pytest.approx(float(err.mean()) * 1000, rel=1e-5)
    assert m["mpjpe_std_mm"] == pytest.approx(0, abs=1e-6)
    with pytest.raises(InputError, match="needs a body model with a face"):
        svc.run(_req(tmp_path, "wholebody-completion", data_dir=tmp_path / "wb", prior="l2", settings=("face",)))


# ---------------------------------------------------------------------------------------------- denoise
def test_denoise_matches_the_service_optimiser_on_the_same_clip(tmp_path, shared):
    from dposer_cli.bodies.base import load_body
    from dposer_cli.core.device import make_generator
    from dposer_cli.engine.baselines import NoPrior
    from dposer_cli.services import denoise_motion as dm

    motion = np.load(shared / "official/examples/Gestures_3_poses_batch005.npz")
    (tmp_path / "he").mkdir()
    np.savez(tmp_path / "he" / "a.npz", pose_body=motion["pose_body"][:70], root_orient=motion["root_orient"][:70])
    result = svc.run(_req(tmp_path, "denoise", data_dir=tmp_path / "he", prior="none", steps=3))
    m = result.metrics["40mm"]
    # the same clip, seed and schedule through denoise_motion directly; metrics by numpy
    body = load_body("body")
    b22 = body.joint_set("body22")
    pose = torch.as_tensor(motion["pose_body"][:60], dtype=torch.float32)
    with torch.no_grad():
        gt = body(body_pose=pose, return_vertices=False).joints[:, b22]
    gen = make_generator(0, torch.device("cpu"))
    obs = gt + 0.04 * torch.randn(gt.shape, generator=gen)
    sched = svc._bench_denoise.scaled_schedule(dm.SCHEDULES[0.04], 3)
    fit = dm.denoise(NoPrior(Part.body), body, obs, torch.ones(60, 22, dtype=torch.bool), schedule=sched,
                     use_vertices=True, generator=gen)
    with torch.no_grad():
        pred = body(body_pose=fit["body_pose"], return_vertices=False).joints[:, b22].numpy()
    expected = np.linalg.norm(pred - gt.numpy(), axis=-1).mean() * 1000
    assert result.info["items"] == 1 and sched.steps == 3
    assert m["mpjpe_mm"] == pytest.approx(expected, rel=1e-5)
    assert m["mpjpe_input_mm"] == pytest.approx(np.linalg.norm((obs - gt).numpy(), axis=-1).mean() * 1000, rel=1e-5)


# ---------------------------------------------------------------------------------------------- IK
def _ik_reference(part, params, body, setting, prior_kind, priors, steps):
    from dposer_cli.core.device import make_generator
    from dposer_cli.services import ik
    from dposer_cli.services._bench_ik import parse_setting

    kind, noise = parse_setting(setting)
    gen = make_generator(0, torch.device("cpu"))
    problem = ik.apply_type(ik.problem_from_params(part, body, params), kind, noise_std=noise, generator=gen)
    result = ik.solve(problem, body, ik.prior_term(prior_kind, part, priors, gen),
                      ik.make_schedule(part, kind, noise_std=noise, steps=steps), generator=gen)
    return ik.evaluate(problem, body, result)


def test_hand_ik_matches_the_ik_service_evaluator(tmp_path, shared):
    from dposer_cli.bodies.base import load_body
    from dposer_cli.engine.prior import DPoserPrior

    ckpt = write_tiny_prior(tmp_path / "hand.pt", Part.hand)
    hands = np.load(shared / "poses/hand_reference_train.npz")["poses"][:6]
    (tmp_path / "hands").mkdir()
    np.savez(tmp_path / "hands" / "h.npz", hand_pose=hands)
    result = svc.run(_req(tmp_path, "hand-ik", data_dir=tmp_path / "hands", checkpoint=ckpt, steps=4,
                          settings=("sparse",)))
    body = load_body("hand")
    prior = DPoserPrior.load(Part.hand, ckpt)
    ref = _ik_reference(Part.hand, {"hand_pose": torch.as_tensor(hands)}, body, "sparse", "dposer",
                        {Part.hand: prior}, 4)
    m = result.metrics["sparse"]
    for key in ("mpjpe_visible_mm", "mpjpe_occluded_mm", "mpjpe_all_mm", "mpvpe_mm"):
        assert m[key] == pytest.approx(ref[key], rel=1e-5), key
    assert result.info["nfe"] == 4


def test_face_ik_with_flame_matches_the_ik_service_evaluator(tmp_path, shared, body_tree):
    from dposer_cli.bodies.base import load_body

    face = np.load(shared / "poses/face_expression_reference_train.npz")["poses"][:4]
    betas = np.load(shared / "poses/face_shape_reference_train.npz")["poses"][:4]
    (tmp_path / "faces").mkdir()
    np.savez(tmp_path / "faces" / "f.npz", jaw_pose=face[:, :3], expression=face[:, 3:], betas=betas)
    result = svc.run(_req(tmp_path, "face-ik", data_dir=tmp_path / "faces", prior="l2", steps=3,
                          settings=("noisy-2mm",), body_model=body_tree))
    body = load_body("face", body_tree)
    params = {"jaw_pose": torch.as_tensor(face[:, :3]), "expression": torch.as_tensor(face[:, 3:]),
              "betas": torch.as_tensor(betas)}
    ref = _ik_reference(Part.face, params, body, "noisy-2mm", "l2", {}, 3)
    m = result.metrics["noisy-2mm"]
    assert m["mpjpe_all_mm"] == pytest.approx(ref["mpjpe_all_mm"], rel=1e-5)
    assert m["mpvpe_mm"] == pytest.approx(ref["mpvpe_mm"], rel=1e-5)
    row = next(r for r in result.info["rows"] if r["metric"] == "mpvpe_mm")
    assert result.info["paper_row"] == "L2 prior" and row["paper"] == 1.626 and row["table"].startswith("Table S-13")


# ---------------------------------------------------------------------------------------------- mesh recovery
def test_ehf_pa_mpjpe_equals_numpy_on_the_fitted_meshes(tmp_path, shared, body_tree):
    from dposer_cli.bodies.base import load_body
    from dposer_cli.services import fit_image

    poses = np.load(shared / "poses/body_reference_train.npz")["poses"][:2] * 0.3
    root = write_ehf(tmp_path / "EHF", body_tree, poses)
    result = svc.run(_req(tmp_path, "ehf", data_dir=root, prior="none", steps=2, body_model=body_tree))
    m = result.metrics["ehf"]
    # the same fit (same inputs and seed) run directly, scored with numpy
    imgs = [root / f"0{i}_img.jpg" for i in (1, 2)]
    kps = [root / "vitpose_keypoints/predictions" / f"0{i}_img.json" for i in (1, 2)]
    fit_image.run(fit_image.FitImageRequest(images=tuple(imgs), keypoints=tuple(kps), out=tmp_path / "fit",
                                            part=Part.body, person="0", steps=2, prior="none", body_model=body_tree,
                                            overlay=False, device="cpu", seed=0))
    body = load_body("body", body_tree)
    reg = body.model.J_regressor.numpy()
    rot = _rodrigues(EHF_ROT)
    pa, root_err = [], []
    for i, img in enumerate(imgs):
        f = np.load(tmp_path / "fit" / f"{img.stem}.npz")
        with torch.no_grad():
            v = body(**{k: torch.as_tensor(f[k]) for k in ("global_orient", "body_pose", "betas", "transl")}
                     ).vertices[0].numpy()
        from dposer_cli.io.datasets import read_ply_vertices

        gv = read_ply_vertices(root / f"0{i + 1}_align.ply") @ rot.T
        pj, gj = (reg @ v)[:22], (reg @ gv)[:22]
        pa.append(np.linalg.norm(_np_procrustes(pj, gj) - gj, axis=-1).mean() * 1000)
        root_err.append(np.linalg.norm((pj - pj[:1]) - (gj - gj[:1]), axis=-1).mean() * 1000)
    assert m["pa_mpjpe_mm"] == pytest.approx(np.mean(pa), rel=1e-4)
    assert m["mpjpe_mm"] == pytest.approx(np.mean(root_err), rel=1e-4)


def test_freihand_metrics_equal_numpy_on_the_fitted_hands(tmp_path, shared, body_tree):
    from dposer_cli.bodies.base import load_body
    from dposer_cli.services import fit_image

    hands = np.load(shared / "poses/hand_reference_train.npz")["poses"][:2]
    root = write_freihand(tmp_path / "fh", body_tree, hands)
    result = svc.run(_req(tmp_path, "freihand", data_dir=root, prior="l2", steps=2, body_model=body_tree))
    m = result.metrics["freihand"]
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
    fit_image.run(fit_image.FitImageRequest(images=tuple(imgs), keypoints=tuple(kps), out=tmp_path / "fit",
                                            part=Part.hand, person="0", steps=2, prior="l2", focal=480.0,
                                            body_model=body_tree, overlay=False, device="cpu", seed=0))
    body = load_body("hand", body_tree)
    pa_j, pa_v, f5 = [], [], []
    for i, img in enumerate(imgs):
        f = np.load(tmp_path / "fit" / f"{img.stem}.npz")
        with torch.no_grad():
            out = body(**{key: torch.as_tensor(f[key]) for key in ("hand_pose", "global_orient", "betas", "transl")})
        pj = out.joints[0, body.joint_set("hand21")].numpy()
        v = _np_procrustes(out.vertices[0].numpy(), verts[i])
        pa_j.append(np.linalg.norm(_np_procrustes(pj, xyz[i]) - xyz[i], axis=-1).mean() * 1000)
        pa_v.append(np.linalg.norm(v - verts[i], axis=-1).mean() * 1000)
        p = (cKDTree(verts[i]).query(v)[0] < 0.005).mean()
        r = (cKDTree(v).query(verts[i])[0] < 0.005).mean()
        f5.append(0.0 if p + r == 0 else 2 * p * r / (p + r))
    assert m["pa_mpjpe_mm"] == pytest.approx(np.mean(pa_j), rel=1e-4)
    assert m["pa_mpvpe_mm"] == pytest.approx(np.mean(pa_v), rel=1e-4)
    assert m["f_at_5mm"] == pytest.approx(np.mean(f5), abs=3 / 778)  # float32 vs float64 at the threshold


def test_freihand_with_the_gmm_baseline_equals_fit_image_with_the_same_gmm(tmp_path, shared, body_tree):
    """`--prior gmm` fits the GMM once (on --train-poses) and hands it to every batch's fit."""
    from dposer_cli.engine.priors import build_prior
    from dposer_cli.services import fit_image

    hands = np.load(shared / "poses/hand_reference_train.npz")["poses"]
    train = tmp_path / "train.npz"
    np.savez(train, poses=hands[:400])
    root = write_freihand(tmp_path / "fh", body_tree, hands[500:502])
    result = svc.run(_req(tmp_path, "freihand", data_dir=root, prior="gmm", train_poses=train, gmm_components=2,
                          steps=3, body_model=body_tree))
    assert result.info["paper_row"] == "GMM"
    gmm = build_prior("gmm", Part.hand, train=torch.as_tensor(hands[:400], dtype=torch.float64), n_components=2)
    xyz = np.array(json.loads((root / "evaluation_xyz.json").read_text()))
    k = np.array(json.loads((root / "evaluation_K.json").read_text()))
    imgs = sorted((root / "evaluation/rgb").glob("*.jpg"))
    kps = []
    for i, img in enumerate(imgs):
        uvw = xyz[i] @ k[i].T
        path = tmp_path / f"{img.stem}.json"
        path.write_text(json.dumps([{"keypoints": (uvw[:, :2] / uvw[:, 2:]).tolist(), "keypoint_scores": [1.0] * 21}]))
        kps.append(path)
    common = {"images": tuple(imgs), "keypoints": tuple(kps), "part": Part.hand, "person": "0", "steps": 3,
              "focal": 480.0, "body_model": body_tree, "overlay": False, "device": "cpu", "seed": 0}
    fit_image.run(fit_image.FitImageRequest(out=tmp_path / "gmm", prior="gmm", prior_model=gmm, **common))
    fit_image.run(fit_image.FitImageRequest(out=tmp_path / "none", prior="none", **common))
    from dposer_cli.bodies.base import load_body

    body = load_body("hand", body_tree)
    errs = {}
    for name in ("gmm", "none"):
        fits = [np.load(tmp_path / name / f"{img.stem}.npz") for img in imgs]
        with torch.no_grad():
            out = body(**{key: torch.as_tensor(np.concatenate([f[key] for f in fits]))
                          for key in ("hand_pose", "global_orient", "betas", "transl")})
        pj = out.joints[:, body.joint_set("hand21")].numpy()
        errs[name] = np.mean([np.linalg.norm(_np_procrustes(pj[i], xyz[i]) - xyz[i], axis=-1).mean() * 1000
                              for i in range(len(imgs))])
    assert result.metrics["freihand"]["pa_mpjpe_mm"] == pytest.approx(errs["gmm"], rel=1e-4)
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
    res = {"pa_mpvpe_all_mm": err(_np_procrustes(pred, gt), gt), "mpvpe_all_mm": err(pred - jp[0] + jg[0], gt)}
    lh, rh = ids["left_hand"], ids["right_hand"]
    res["pa_mpvpe_hand_mm"] = (err(_np_procrustes(pred[lh], gt[lh]), gt[lh]) + err(_np_procrustes(pred[rh], gt[rh]), gt[rh])) / 2
    res["mpvpe_hand_mm"] = (err(pred[lh] - jp[20] + jg[20], gt[lh]) + err(pred[rh] - jp[21] + jg[21], gt[rh])) / 2
    f = ids["face"]
    res["pa_mpvpe_face_mm"] = err(_np_procrustes(pred[f], gt[f]), gt[f])
    res["mpvpe_face_mm"] = err(pred[f] - jp[12] + jg[12], gt[f])
    res["pa_mpjpe_body_mm"] = err(_np_procrustes(j14 @ pred, j14 @ gt), j14 @ gt)
    left = tips_reg([20, (37, 38, 39), (25, 26, 27), (28, 29, 30), (34, 35, 36), (31, 32, 33)], [5361, 4933, 5058, 5169, 5286])
    right = tips_reg([21, (52, 53, 54), (40, 41, 42), (43, 44, 45), (49, 50, 51), (46, 47, 48)], [8079, 7669, 7794, 7905, 8022])
    res["pa_mpjpe_hand_mm"] = (err(_np_procrustes(left @ pred, left @ gt), left @ gt)
                               + err(_np_procrustes(right @ pred, right @ gt), right @ gt)) / 2
    return res


def test_arctic_metrics_equal_numpy_on_the_fitted_meshes(tmp_path, shared, body_tree):
    """Two actions whose evaluated frames share image numbers (00021) are fitted in one batch and scored
    against the processed vertices of the right rows; every metric equals a numpy evaluator."""
    import pickle

    from dposer_cli.bodies.base import load_body
    from dposer_cli.services import fit_image

    root = tmp_path / "ARCTIC"
    rows = write_arctic(root, body_tree, _arctic_poses(shared, 3), {"box_grab_01": 41, "laptop_use_02": 21})
    write_smplx_eval_files(root)  # beside the data (searched after the SMPL-X folder)
    result = svc.run(_req(tmp_path, "arctic", data_dir=root, prior="none", steps=2, body_model=body_tree))
    m = result.metrics["arctic"]
    assert result.info["items"] == 3 and result.info["paper_row"] == "w/o prior"
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
    fit_image.run(fit_image.FitImageRequest(images=tuple(imgs), keypoints=tuple(kps), out=tmp_path / "fit",
                                            part=Part.wholebody, person="0", steps=2, prior="none",
                                            body_model=body_tree, overlay=False, device="cpu", seed=0))
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
        keys = ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "jaw_pose", "expression",
                "betas", "transl")
        with torch.no_grad():
            v = body(**{k: torch.as_tensor(f[k]) for k in keys if k in f.files}).vertices[0].numpy().astype(np.float64)
        gt = np.load(root / "processed_verts/seqs/s05" / f"{action}.npy", allow_pickle=True)[()]
        expected.append(_np_arctic(v, gt["cam_coord"]["verts.smplx"][frame, 4].astype(np.float64), reg, ids, j14))
    for key in expected[0]:
        assert m[key] == pytest.approx(np.mean([e[key] for e in expected]), rel=2e-3, abs=0.05), key
    assert 0 < m["pa_mpvpe_hand_mm"] < m["mpvpe_hand_mm"]  # a similarity alignment can only lower the error


def test_arctic_reports_what_is_missing(tmp_path, shared, body_tree):
    from dposer_cli.core.errors import MissingAssetError

    root = tmp_path / "ARCTIC"
    write_arctic(root, body_tree, _arctic_poses(shared, 1), {"box_grab_01": 21})
    with pytest.raises(MissingAssetError, match="needs MANO_SMPLX_vertex_ids.pkl and SMPL-X__FLAME_vertex_ids.npy"):
        svc.run(_req(tmp_path, "arctic", data_dir=root, prior="none", steps=1, body_model=body_tree))
    with pytest.raises(InputError, match="needs an SMPL-X model"):  # the mannequin has no SMPL-X mesh
        svc.run(_req(tmp_path, "arctic", data_dir=root, prior="none", steps=1))
    write_smplx_eval_files(root, j14=False)
    result = svc.run(_req(tmp_path, "arctic", data_dir=root, prior="none", steps=1, body_model=body_tree,
                          settings=("gt-intrinsic",)))
    m = result.metrics["arctic"]
    assert "pa_mpjpe_body_mm" not in m and np.isfinite(m["pa_mpvpe_all_mm"])
    assert any("SMPLX_to_J14.pkl not found" in note for note in result.info["notes"])
    assert result.info["settings"]["focal"].startswith("misc.json camera 4: 517.5 px")
    report = json.loads((tmp_path / "arctic.json").read_text())
    assert report["metrics"]["arctic"]["pa_mpvpe_face_mm"] == pytest.approx(m["pa_mpvpe_face_mm"])


def test_vposer_baseline_generates_and_completes_from_the_users_weights(tmp_path, shared):
    """`--prior vposer --checkpoint V02_05/`: samples are the decoder's (same seeds → same poses), completion
    keeps the observed joints, rows are labelled VPoser; other parts refuse it."""
    from dposer_cli.engine.vposer import VPoserPrior
    from tests._fixtures.vposer import write_vposer

    weights = write_vposer(tmp_path)
    result = svc.run(_req(tmp_path, "generation", prior="vposer", checkpoint=weights, n=40,
                          reference=shared / "poses/body_reference_train.npz"))
    assert result.info["paper_row"] == "VPoser" and "vposer" in result.info["settings"]["source"]
    assert any(r["metric"] == "apd_cm" and r["paper"] == 10.75 for r in result.info["rows"])  # Table 1, VPoser
    # the same samples drawn directly (batch 0 is seeded `seed + 0`) give the reported FID against the reference
    from dposer_cli.metrics import fid_from_stats, gaussian_stats

    samples = VPoserPrior.load(weights).sample(40, generator=torch.Generator().manual_seed(0)).double().numpy()
    reference = np.load(shared / "poses/body_reference_train.npz")["poses"].astype(np.float64)
    expected = fid_from_stats(*gaussian_stats(samples), *gaussian_stats(reference))
    assert result.metrics["body"]["fid_reference"] == pytest.approx(expected, rel=1e-3)
    (tmp_path / "amass").mkdir()
    np.savez(tmp_path / "amass" / "x.npz", pose_body=np.load(shared / "poses/body_reference_train.npz")["poses"][:3])
    comp = svc.run(_req(tmp_path, "completion", data_dir=tmp_path / "amass", prior="vposer", checkpoint=weights,
                        hypo=2, settings=("left_arm",)))
    m = comp.metrics["left_arm"]
    assert 0 < m["mpjpe_min_mm"] <= m["mpjpe_mean_mm"]
    with pytest.raises(InputError, match="compares --prior dposer, none, l2, gmm, not 'vposer'"):
        svc.run(_req(tmp_path, "hand-ik", prior="vposer", checkpoint=weights, data_dir=tmp_path))


def test_completion_uses_the_official_vertex_sets_when_given(tmp_path, shared, body_tree):
    """With smplx_vert_segmentation.json in --data-dir, MPVPE of `legs` is over its leg segments (numpy check);
    a vertex count that differs from the official evaluator's is noted. With MANO_SMPLX_vertex_ids.pkl the
    whole-body hand masks use its hand vertices."""
    import pickle

    from dposer_cli.bodies.base import load_body

    poses = np.load(shared / "poses/body_reference_train.npz")["poses"][:3]
    data = tmp_path / "amass"
    data.mkdir()
    np.savez(data / "x.npz", pose_body=poses)
    rng = np.random.default_rng(0)
    names = ["leftLeg", "leftUpLeg", "leftFoot", "leftToeBase", "rightLeg", "rightUpLeg", "rightFoot", "rightToeBase"]
    seg = {name: rng.choice(10475, 40, replace=False).tolist() for name in names}
    (data / "smplx_vert_segmentation.json").write_text(json.dumps(seg))
    result = svc.run(_req(tmp_path, "completion", data_dir=data, prior="l2", hypo=2, settings=("legs",),
                          body_model=body_tree))
    body = load_body("body", body_tree)
    ids = sorted({i for v in seg.values() for i in v})
    filled = poses.copy()
    filled[:, list(mask_dims(Part.body, ["legs"]))] = 0
    with torch.no_grad():
        pv = body(body_pose=torch.as_tensor(filled)).vertices.numpy()[:, ids]
        gv = body(body_pose=torch.as_tensor(poses)).vertices.numpy()[:, ids]
    expected = np.linalg.norm(pv - gv, axis=-1).mean(-1).mean() * 1000
    assert result.metrics["legs"]["mpvpe_min_mm"] == pytest.approx(expected, rel=1e-4)
    assert "official sets from smplx_vert_segmentation.json for legs" in result.info["settings"]["vertex_set"]
    assert any(f"mask legs has {len(ids)} vertices" in note for note in result.info["notes"])

    toy = np.load(shared / "official/examples/toy_wholebody_data.npz")
    (tmp_path / "wb").mkdir()
    np.savez(tmp_path / "wb" / "x.npz", **{k: toy[k][:2] for k in toy.files})
    write_smplx_eval_files(tmp_path / "wb", j14=False)
    wb = svc.run(_req(tmp_path, "wholebody-completion", data_dir=tmp_path / "wb", prior="l2", hypo=1,
                      settings=("rhand",), body_model=body_tree))
    with open(tmp_path / "wb" / "MANO_SMPLX_vertex_ids.pkl", "rb") as fh:
        rh = pickle.load(fh)["right_hand"]
    keys = ("body_pose", "left_hand_pose", "right_hand_pose")
    truth = {k: torch.as_tensor(toy[k][:2], dtype=torch.float32) for k in keys}
    filled = dict(truth, right_hand_pose=torch.zeros(2, 45))
    filled["body_pose"] = truth["body_pose"].clone()
    filled["body_pose"][:, 60:63] = 0  # the right wrist belongs to the hand mask
    with torch.no_grad():
        err = np.linalg.norm(body(**filled).vertices.numpy()[:, rh] - body(**truth).vertices.numpy()[:, rh], axis=-1)
    assert wb.metrics["rhand"]["mpvpe_min_mm"] == pytest.approx(err.mean(-1).mean() * 1000, rel=1e-4)
    assert "MANO_SMPLX_vertex_ids.pkl" in wb.info["settings"]["vertex_set"]
