"""`services.download` against a local fake Hub + raw-file server (tests/_fixtures/fake_hub.py)."""

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dposer_cli.core.errors import AssetMismatchError, InputError, MissingAssetError, UnavailableError
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.core.paths import demo_checkpoint, official_checkpoint, official_dir, official_normalizer_file
from dposer_cli.engine.checkpoint import read_checkpoint
from dposer_cli.engine.normalize import load_official_normalizer
from dposer_cli.services import download as svc
from tests._fixtures.fake_hub import FakeHub, build_repo, dead_url

BODY_CKPT = PARTS[Part.body].official_ckpt
HAND_CKPT = PARTS[Part.hand].official_ckpt
BODY_NORM = f"{PARTS[Part.body].segments[0].normalizer}/axis_normalize2.pt"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return build_repo(tmp_path_factory.mktemp("repo"))


@pytest.fixture
def hub(repo):
    with FakeHub(*repo) as server:
        yield server


def request(hub: FakeHub, root: Path, **kw) -> svc.DownloadRequest:
    base = {
        "models_dir": root,
        "endpoint": hub.url,
        "normalizer_url": hub.raw_url,
        "offline": False,
        "timeout": 3.0,
        "cache_dir": root.parent / "hf-cache",
    }
    base.update(kw)
    return svc.DownloadRequest(**base)


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


# ---- plan ------------------------------------------------------------------------------------------------
def test_face_pulls_in_face_shape_and_all_means_every_part():
    assert svc.resolve_parts(["face"]) == (Part.face, Part.face_shape)
    assert svc.resolve_parts(["face-shape"]) == (Part.face_shape,)
    assert svc.resolve_parts(["all"]) == tuple(PARTS)
    assert svc.resolve_parts([]) == tuple(PARTS)
    assert svc.resolve_parts(["hand", "body", "hand"]) == (Part.body, Part.hand)


def test_unknown_part_is_an_input_error_with_suggestion():
    with pytest.raises(InputError, match="did you mean 'hand'"):
        svc.resolve_parts(["hnad"])


def test_wholebody_needs_its_checkpoint_and_four_normalisers_but_no_part_checkpoints(tmp_path):
    assets = svc.plan([Part.wholebody], tmp_path)
    assert [a.name for a in assets if a.kind == "checkpoint"] == ["wholebody/mixed/last.ckpt"]
    norms = {a.name: a.dim for a in assets if a.kind == "normalizer"}
    assert norms == {f"{s.normalizer}/axis_normalize2.pt": s.dim for s in PARTS[Part.wholebody].segments}
    assert len(norms) == 4  # both hands share one file
    assert {a.path for a in assets} == {official_checkpoint(Part.wholebody, tmp_path)} | {
        official_normalizer_file(s.normalizer, tmp_path) for s in PARTS[Part.wholebody].segments
    }


# ---- full download ---------------------------------------------------------------------------------------
def test_full_download_installs_files_that_drive_the_engine(hub, repo, tmp_path, monkeypatch):
    root = tmp_path / "models"
    calls = []
    result = svc.run(request(hub, root), progress=lambda done, total: calls.append((done, total)))
    expected = {a.path for a in svc.plan(PARTS, root)}
    assert files_under(root) == expected  # nothing else: no staging folder, no .part, no hf metadata
    assert sorted(result.outputs["files"]) == sorted(expected)
    assert {f["status"] for f in result.info["files"]} == {"downloaded"}
    assert calls and calls[-1][0] == calls[-1][1] == sum(len(v) for v in repo[0].values()) + sum(
        len(repo[1][a.name]) for a in svc.plan(PARTS, root) if a.kind == "normalizer"
    )
    hub_files = repo[0]
    for part in PARTS:
        path = official_checkpoint(part, root)
        assert path.read_bytes() == hub_files[PARTS[part].official_ckpt]
        ckpt = read_checkpoint(path, part)
        assert ckpt.format == "official-lightning" and ckpt.ema is not None
        norm = load_official_normalizer(part, None, official_dir(root))
        served = torch.load(
            official_normalizer_file(PARTS[part].segments[0].normalizer, root), weights_only=True
        )
        assert torch.allclose(
            norm.mean[: PARTS[part].segments[0].dim], torch.as_tensor(served["mean_poses"]).float().flatten()
        )
    # the engine picks the downloaded official prior and samples from it
    from dposer_cli.engine.prior import DPoserPrior

    monkeypatch.setenv("DPOSER_MODELS_DIR", str(root))
    for part in (Part.body, Part.wholebody):
        prior = DPoserPrior.load(part)
        assert prior.source.startswith("official")
        x = prior.sample(3, steps=2, generator=torch.Generator().manual_seed(0))
        assert x.shape == (3, PARTS[part].dim) and torch.isfinite(x).all()


def test_second_run_is_a_no_op_without_any_request(hub, tmp_path):
    svc.run(request(hub, tmp_path / "m", parts=("body",)))
    seen = len(hub.hits())
    result = svc.run(request(hub, tmp_path / "m", parts=("body",)))
    assert len(hub.hits()) == seen
    assert result.outputs == {} and {f["status"] for f in result.info["files"]} == {"present"}
    assert "already present" in result.lines[0]


def test_force_fetches_again_and_replaces_the_file(hub, tmp_path):
    from tests._fixtures.checkpoints import write_official_ckpt

    root = tmp_path / "m"
    svc.run(request(hub, root, parts=("hand",)))
    newer = write_official_ckpt(tmp_path / "newer.ckpt", Part.hand, seed=7).read_bytes()
    hub.hub_files[HAND_CKPT] = newer
    svc.run(request(hub, root, parts=("hand",)))
    assert official_checkpoint(Part.hand, root).read_bytes() != newer  # present: not re-fetched
    seen = len(hub.hits("GET"))
    result = svc.run(request(hub, root, parts=("hand",), force=True))
    assert len(hub.hits("GET")) == seen + 2  # checkpoint + normaliser
    assert official_checkpoint(Part.hand, root).read_bytes() == newer
    assert {f["status"] for f in result.info["files"]} == {"downloaded"}


# ---- interrupted transfers --------------------------------------------------------------------------------
def test_interrupted_normaliser_download_resumes_with_a_range_request(hub, repo, tmp_path):
    hub.drop_once.add(f"/raw/{BODY_NORM}")
    root = tmp_path / "m"
    result = svc.run(request(hub, root, parts=("body",)))
    data = repo[1][BODY_NORM]
    ranges = [h.range for h in hub.hits("GET") if h.path == f"/raw/{BODY_NORM}"]
    assert ranges == [None, f"bytes={len(data) // 2}-"]
    assert official_normalizer_file(PARTS[Part.body].segments[0].normalizer, root).read_bytes() == data
    assert next(f for f in result.info["files"] if f["name"] == BODY_NORM)["status"] == "resumed"
    assert not list(root.rglob("*.part"))


def test_partial_file_left_by_an_earlier_run_is_continued(hub, repo, tmp_path):
    root = tmp_path / "m"
    target = official_normalizer_file(PARTS[Part.body].segments[0].normalizer, root)
    target.parent.mkdir(parents=True)
    data = repo[1][BODY_NORM]
    target.with_name(target.name + ".part").write_bytes(data[:100])
    svc.run(request(hub, root, parts=("body",)))
    assert [h.range for h in hub.hits("GET") if h.path == f"/raw/{BODY_NORM}"] == ["bytes=100-"]
    assert target.read_bytes() == data and not target.with_name(target.name + ".part").exists()


def test_interrupted_checkpoint_download_recovers(hub, repo, tmp_path):
    hub.drop_once.add(HAND_CKPT)
    root = tmp_path / "m"
    svc.run(request(hub, root, parts=("hand",)))
    assert official_checkpoint(Part.hand, root).read_bytes() == repo[0][HAND_CKPT]
    assert len([h for h in hub.hits("GET") if h.path.endswith(HAND_CKPT)]) == 2


# ---- bad files --------------------------------------------------------------------------------------------
def test_wrong_checksum_is_rejected_and_moved_aside(hub, tmp_path):
    hub.bad_etag.add(BODY_CKPT)
    root = tmp_path / "m"
    with pytest.raises(AssetMismatchError) as err:
        svc.run(request(hub, root, parts=("body",)))
    msg = one_line(err.value)
    target = official_checkpoint(Part.body, root)
    assert "sha256" in msg and str(target) + ".invalid" in msg
    assert not target.exists() and target.with_name("last.ckpt.invalid").is_file()
    assert not list(official_dir(root).glob(".download-*"))  # staging removed


def test_corrupt_checkpoint_is_rejected_then_a_good_one_replaces_the_reject(hub, repo, tmp_path):
    root = tmp_path / "m"
    hub.hub_files[HAND_CKPT] = b"not a checkpoint" * 64  # ETag matches: only loading can tell
    with pytest.raises(AssetMismatchError) as err:
        svc.run(request(hub, root, parts=("hand",)))
    msg = one_line(err.value)
    target = official_checkpoint(Part.hand, root)
    assert "does not load as the hand prior" in msg and "moved it aside" in msg
    assert not target.exists() and target.with_name("last.ckpt.invalid").exists()
    hub.hub_files[HAND_CKPT] = repo[0][HAND_CKPT]
    svc.run(request(hub, root, parts=("hand",)))
    assert read_checkpoint(target, Part.hand).part is Part.hand
    assert not target.with_name("last.ckpt.invalid").exists()


def test_checkpoint_of_another_part_is_reported_not_used(hub, repo, tmp_path):
    hub.hub_files[BODY_CKPT] = repo[0][HAND_CKPT]
    root = tmp_path / "m"
    with pytest.raises(AssetMismatchError, match="hand prior"):
        svc.run(request(hub, root, parts=("body",)))
    assert not official_checkpoint(Part.body, root).exists()


def test_corrupt_normaliser_is_rejected(hub, tmp_path):
    hub.raw_files[BODY_NORM] = b"junk" * 50
    root = tmp_path / "m"
    with pytest.raises(AssetMismatchError) as err:
        svc.run(request(hub, root, parts=("body",)))
    one_line(err.value)
    target = official_normalizer_file(PARTS[Part.body].segments[0].normalizer, root)
    assert not target.exists() and not target.with_name(target.name + ".part").exists()
    assert target.with_name(target.name + ".invalid").exists()


def test_normaliser_of_the_wrong_size_is_rejected(hub, repo, tmp_path):
    hand_norm = f"{PARTS[Part.hand].segments[0].normalizer}/axis_normalize2.pt"
    hub.raw_files[BODY_NORM] = repo[1][hand_norm]
    with pytest.raises(AssetMismatchError, match="45 dims, expected 63"):
        svc.run(request(hub, tmp_path / "m", parts=("body",)))


# ---- server answers "no" ------------------------------------------------------------------------------------
def test_missing_file_on_the_hub_is_a_one_line_404(hub, tmp_path):
    name = PARTS[Part.face_shape].official_ckpt
    del hub.hub_files[name]
    root = tmp_path / "m"
    with pytest.raises(MissingAssetError) as err:
        svc.run(request(hub, root, parts=("face-shape",)))
    msg = one_line(err.value)
    assert name in msg and "404" in msg
    assert str(official_checkpoint(Part.face_shape, root)) in err.value.hint
    assert not official_checkpoint(Part.face_shape, root).exists()
    assert not [p for p in files_under(root) if p.suffix != ".pt"]  # no partial or stray files


def test_missing_normaliser_is_a_one_line_404(hub, tmp_path):
    del hub.raw_files[BODY_NORM]
    with pytest.raises(MissingAssetError, match="404") as err:
        svc.run(request(hub, tmp_path / "m", parts=("body",)))
    assert BODY_NORM in one_line(err.value)


def test_unknown_revision_is_an_input_error(hub, tmp_path):
    with pytest.raises(InputError, match="revision 'v9' not found"):
        svc.run(request(hub, tmp_path / "m", parts=("body",), revision="v9"))


def test_server_down_fails_fast_saying_where_to_put_each_file(tmp_path):
    url = dead_url()
    root = tmp_path / "m"
    req = svc.DownloadRequest(
        parts=("body", "hand"),
        models_dir=root,
        endpoint=url,
        normalizer_url=url,
        offline=False,
        cache_dir=tmp_path / "hf",
    )
    t0 = time.perf_counter()
    with pytest.raises(UnavailableError) as err:
        svc.run(req)
    assert time.perf_counter() - t0 < 5
    msg = one_line(err.value)
    assert "connection refused" in msg and "could not fetch 4 file(s)" in msg
    for asset in svc.plan([Part.body, Part.hand], root):
        assert str(asset.path) in msg
    assert files_under(tmp_path) == set()


# ---- offline ----------------------------------------------------------------------------------------------
def test_offline_with_files_present_succeeds_without_network(hub, tmp_path):
    svc.run(request(hub, tmp_path / "m", parts=("hand",)))
    seen = len(hub.hits())
    svc.run(request(hub, tmp_path / "m", parts=("hand",), offline=True))
    assert len(hub.hits()) == seen


def test_offline_without_files_names_what_is_missing_and_where(hub, tmp_path):
    root = tmp_path / "m"
    with pytest.raises(UnavailableError) as err:
        svc.run(request(hub, root, parts=("body",), offline=True))
    msg = one_line(err.value)
    assert "HF_HUB_OFFLINE" in msg and str(official_checkpoint(Part.body, root)) in msg
    assert hub.hits() == []


def test_offline_uses_the_hugging_face_cache_and_a_file_mirror(hub, repo, tmp_path):
    from huggingface_hub import hf_hub_download

    cache = tmp_path / "hf"
    hf_hub_download(svc.HUB_REPO, BODY_CKPT, cache_dir=cache, endpoint=hub.url)  # a user's earlier download
    mirror = tmp_path / "mirror"
    (mirror / BODY_NORM).parent.mkdir(parents=True)
    (mirror / BODY_NORM).write_bytes(repo[1][BODY_NORM])
    seen = len(hub.hits())
    root = tmp_path / "m"
    result = svc.run(
        request(hub, root, parts=("body",), offline=True, cache_dir=cache, normalizer_url=mirror.as_uri())
    )
    assert len(hub.hits()) == seen
    status = {f["name"]: f["status"] for f in result.info["files"]}
    assert status == {BODY_CKPT: "copied", BODY_NORM: "downloaded"}
    assert read_checkpoint(official_checkpoint(Part.body, root), Part.body).part is Part.body


def test_endpoints_are_read_from_the_environment_at_call_time(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("DPOSER_NORMALIZER_URL", hub.raw_url)
    req = replace(request(hub, tmp_path / "m", parts=("hand",)), endpoint=None, normalizer_url=None)
    svc.run(req)
    assert official_checkpoint(Part.hand, tmp_path / "m").is_file()


# ---- inventory --------------------------------------------------------------------------------------------
def test_inventory_reports_files_prior_choice_and_body_models(hub, tmp_path, monkeypatch):
    root = tmp_path / "m"
    svc.run(request(hub, root, parts=("body",)))
    bodies = tmp_path / "bm"
    for rel in (
        "smplx/SMPLX_NEUTRAL.npz",
        "smplx/SMPL-X__FLAME_vertex_ids.npy",
        "smplx/MANO_SMPLX_vertex_ids.pkl",
    ):
        (bodies / rel).parent.mkdir(parents=True, exist_ok=True)
        (bodies / rel).write_bytes(b"x")
    monkeypatch.setenv("DPOSER_BODY_MODELS", str(bodies))
    info = svc.inventory((), root, check=True).info
    body = info["parts"]["body"]
    assert body["official_checkpoint"] == {
        "file": BODY_CKPT,
        "path": official_checkpoint(Part.body, root),
        "present": True,
        "valid": True,
    }
    assert body["prior"] == "official" and body["usable"] and body["normalizers"][0]["valid"]
    hand = info["parts"]["hand"]
    assert not hand["official_checkpoint"]["present"]
    assert hand["prior"] == ("demo" if demo_checkpoint(Part.hand).is_file() else "none")
    assert len(info["parts"]["wholebody"]["normalizers"]) == 4
    assert info["body_models"]["smplx"]["present"]
    mano = info["body_models"]["mano"]
    assert not mano["present"] and "mano.is.tue.mpg.de" in mano["instruction"]
    assert str(bodies) in mano["instruction"] and "mano/MANO_RIGHT.pkl" in mano["instruction"]


def test_check_flags_a_broken_installed_checkpoint(tmp_path):
    target = official_checkpoint(Part.body, tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"broken")
    body = svc.inventory(["body"], tmp_path, check=True).info["parts"]["body"]
    assert body["official_checkpoint"]["valid"] is False and not body["usable"]
    assert "--force" in body["note"]
    assert svc.inventory(["body"], tmp_path).info["parts"]["body"]["official_checkpoint"].get("valid") is None


def test_models_dir_that_is_a_file_is_a_one_line_input_error_before_any_request(hub, tmp_path):
    afile = tmp_path / "afile"
    afile.write_bytes(b"x")
    for call in (
        lambda root: svc.inventory((), root),
        lambda root: svc.inventory(["body"], root, check=True),
        lambda root: svc.run(request(hub, root, parts=("body",))),
    ):
        with pytest.raises(InputError) as err:
            call(afile)
        assert one_line(err.value) == f"models folder {afile} exists and is not a folder"
        with pytest.raises(InputError) as err:
            call(afile / "sub")
        assert one_line(err.value) == f"models folder {afile / 'sub'} cannot be a folder: {afile} is a file"
    assert hub.requests == [] and afile.read_bytes() == b"x"
    assert svc.inventory((), tmp_path / "not-yet" / "made").info["checked"] is False  # absent: fine


def _install_normaliser(root: Path, part: Part, mean: torch.Tensor, std: torch.Tensor) -> Path:
    target = official_normalizer_file(PARTS[part].segments[0].normalizer, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"mean_poses": mean, "std_poses": std}, target)
    return target


@pytest.mark.parametrize(
    "mean,std,why",
    [
        (torch.zeros(5), torch.ones(5), "statistics have 5 dims, expected 63"),
        (
            torch.zeros(63),
            torch.zeros(63),
            "std must be > 0 in every dim",
        ),  # loads, but every command refuses it
    ],
)
def test_check_reports_an_invalid_normaliser_and_exits_1(tmp_path, capsys, mean, std, why):
    from tests.cli._run import run

    root = tmp_path / "m"
    target = _install_normaliser(root, Part.body, mean, std)
    result = svc.inventory(["body"], root, check=True)
    assert result.status == "invalid" and result.info["unusable"] == []
    [bad] = result.info["invalid"]
    assert bad["path"] == target and bad["parts"] == ["body"] and why in bad["error"]
    assert bad["file"] == BODY_NORM
    code, out, err = run(capsys, "download", "--check", "body", "--models-dir", root, "--json")
    summary = json.loads(out)
    assert code == 1 and summary["status"] == "invalid" and summary["invalid"][0]["path"] == str(target)
    code, out, err = run(capsys, "download", "--check", "body", "--models-dir", root)
    assert code == 1 and "invalid" in out and f"invalid: {target}: {why}" in " ".join(err.split())
    assert "Traceback" not in err
    code, _, _ = run(capsys, "download", "--list", "body", "--models-dir", root)  # --list loads nothing
    assert code == 0


def test_check_exits_1_for_an_official_checkpoint_without_its_normaliser_and_0_when_all_is_well(
    tmp_path, capsys
):
    from tests._fixtures.checkpoints import write_official_ckpt
    from tests.cli._run import run

    root = tmp_path / "m"
    code, out, _ = run(capsys, "download", "--check", "body", "--models-dir", root, "--json")
    summary = json.loads(out)
    assert code == 0 and summary["status"] == "ok" and summary["invalid"] == summary["unusable"] == []
    write_official_ckpt(official_checkpoint(Part.body, root), Part.body)
    result = svc.inventory(["body"], root, check=True)
    assert result.status == "invalid" and result.info["unusable"] == ["body"] and result.info["invalid"] == []
    assert run(capsys, "download", "--check", "body", "--models-dir", root)[0] == 1
    _install_normaliser(root, Part.body, torch.zeros(63), torch.ones(63))
    assert svc.inventory(["body"], root, check=True).status == "ok"
    assert run(capsys, "download", "--check", "body", "--models-dir", root)[0] == 0
