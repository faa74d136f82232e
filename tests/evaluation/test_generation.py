"""`evaluation.generation`: FID, PRDC, APD and dNN of the sampled poses against independent computations."""

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial import cKDTree

from dposer_cli import evaluation
from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import Part
from tests._fixtures.priors import write_tiny_prior
from tests.evaluation._helpers import req


@pytest.mark.slow
def test_generation_fid_equals_direct_scipy_computation(tmp_path, shared_data):
    ckpt = write_tiny_prior(tmp_path / "body.pt", Part.body)
    stats = shared_data / "official/data/body_data/version1/statistics.npz"
    ref_path = shared_data / "poses/body_reference_train.npz"
    report = evaluation.run(
        req(tmp_path, "generation", checkpoint=ckpt, n=100, steps=3, statistics=stats, reference=ref_path)
    )
    m = report.metrics["body"]
    samples = report.arrays["samples"].astype(np.float64)
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
    info = report.info
    assert info["settings"]["sampler"] == "dpm2m-sde" and info["settings"]["steps"] == 3
    assert (
        info["paper"]["body"]["rows"]["DPoser"][1] == 0.07 and info["versions"]["torch"] == torch.__version__
    )


def test_generation_rows_compare_only_what_the_body_model_does_not_change(tmp_path, shared_data):
    """On the default body (the mannequin) the APD row names its model and has no paper value; FID, precision,
    recall and dNN do not depend on a body model and keep the paper's."""
    report = evaluation.run(
        req(
            tmp_path,
            "generation",
            checkpoint=write_tiny_prior(tmp_path / "b.pt", Part.body),
            n=20,
            steps=2,
            reference=shared_data / "poses/body_reference_train.npz",
        )
    )
    rows = {r["metric"]: r for r in report.info["rows"]}
    assert rows["apd_cm"]["body_model"] == "mannequin" and rows["apd_cm"]["paper"] is None
    assert "not comparable" in rows["apd_cm"]["paper_note"] and "smplx" in rows["apd_cm"]["paper_note"]
    assert rows["dnn"]["body_model"] is None and rows["dnn"]["paper"] == 2.63
    assert any("paper column left empty in 1 row" in note for note in report.info["notes"])


def test_generation_with_gmm_baseline_and_errors(tmp_path, shared_data):
    train = tmp_path / "train.npz"
    np.savez(train, poses=np.load(shared_data / "poses/hand_reference_train.npz")["poses"][:300])
    report = evaluation.run(
        req(
            tmp_path,
            "generation",
            part=Part.hand,
            prior="gmm",
            train_poses=train,
            gmm_components=2,
            n=60,
            reference=shared_data / "poses/hand_reference_train.npz",
        )
    )
    m = report.metrics["hand"]
    assert {"fid_reference", "precision", "recall", "density", "coverage", "dnn", "apd_cm"} <= set(m)
    assert report.info["paper_row"] == "GMM" and "gmm" in report.info["settings"]["source"]
    with pytest.raises(InputError, match="generation needs FID statistics or reference poses"):
        evaluation.run(req(tmp_path, "generation", part=Part.face_shape, n=4))
    with pytest.raises(InputError, match="compares --prior dposer, gmm"):
        evaluation.run(req(tmp_path, "generation", prior="l2", n=4))


@pytest.mark.slow
def test_vposer_baseline_generates_from_the_users_weights(tmp_path, shared_data, body_tree):
    """`--prior vposer --checkpoint V02_05/`: samples are the decoder's (same seeds → same poses) and rows are
    labelled VPoser; on SMPL-X the APD sits next to Table 1's VPoser value."""
    from dposer_cli.engine.vposer import VPoserPrior
    from dposer_cli.metrics import fid_from_stats, gaussian_stats
    from tests._fixtures.vposer import write_vposer

    weights = write_vposer(tmp_path)
    report = evaluation.run(
        req(
            tmp_path,
            "generation",
            prior="vposer",
            checkpoint=weights,
            n=40,
            body_model=body_tree,
            reference=shared_data / "poses/body_reference_train.npz",
        )
    )
    assert report.info["paper_row"] == "VPoser" and "vposer" in report.info["settings"]["source"]
    assert any(
        r["metric"] == "apd_cm" and r["paper"] == 10.75 for r in report.info["rows"]
    )  # Table 1, VPoser
    # the same samples drawn directly (batch 0 is seeded `seed + 0`) give the reported FID against the reference
    samples = (
        VPoserPrior.load(weights).sample(40, generator=torch.Generator().manual_seed(0)).double().numpy()
    )
    reference = np.load(shared_data / "poses/body_reference_train.npz")["poses"].astype(np.float64)
    expected = fid_from_stats(*gaussian_stats(samples), *gaussian_stats(reference))
    assert report.metrics["body"]["fid_reference"] == pytest.approx(expected, rel=1e-3)


def test_fid_statistics_with_nan_or_wrong_shapes_are_refused(tmp_path):
    """Garbage statistics must not give a garbage FID with exit 0 (issue #14)."""
    from dposer_cli.core.errors import InputError
    from dposer_cli.evaluation.generation import read_statistics

    good = tmp_path / "good.npz"
    np.savez(good, mu=np.zeros(4), sigma=np.eye(4))
    mu, sigma = read_statistics(good)
    assert mu.shape == (4,) and sigma.shape == (4, 4)
    nan = tmp_path / "nan.npz"
    np.savez(nan, mu=np.array([0.0, np.nan, 0.0, 0.0]), sigma=np.eye(4))
    with pytest.raises(InputError, match="NaN or infinite"):
        read_statistics(nan)
    shape = tmp_path / "shape.npz"
    np.savez(shape, mu=np.zeros(4), sigma=np.eye(3))
    with pytest.raises(InputError, match=r"expected \(D,\) and \(D, D\)"):
        read_statistics(shape)
