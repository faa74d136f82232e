"""No user-supplied file ever runs code, and hostile sizes are one-line errors (issue #14, class 1).

Every place dposer deserialises a file a user can hand it — body models (`--body-model FILE|DIR`,
`$DPOSER_BODY_MODELS`, the models folder), checkpoints, normalisers, VPoser folders, benchmark
vertex-id files, pose/motion/target/init/reference npz files, keypoint JSON and images — gets a
file whose payload would write a marker file when unpickled. The marker must never appear, the
command must fail with one `error:` line that says why, and no output folder may be left behind.
Model and weight files are refused with exit 4 (`UnsafeFileError`); so are user data files (poses,
motions, IK targets, fit-image `--init` files, benchmark references and statistics: "holds pickled Python
objects").
"""

import io
import json
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from dposer_cli.cli.app import main
from dposer_cli.core.errors import ExitCode, UnsafeFileError
from dposer_cli.core.parts import Part
from tests._fixtures.body_models import flame_arrays, mano_arrays, smplx_arrays, write_flame
from tests._fixtures.checkpoints import write_official_ckpt
from tests._fixtures.priors import write_tiny_prior


class Payload:
    """Unpickling this runs `exec`, which writes `marker` — what an attacker's model file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def evil_array(marker: Path) -> np.ndarray:
    arr = np.empty(1, dtype=object)
    arr[0] = Payload(marker)
    return arr


def run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def assert_refused(
    code, err, marker: Path, out: Path, *, exit_code: int = 4, why: tuple[str, ...] = ("could run code",)
):
    assert not marker.exists(), "the payload ran"
    assert code == exit_code, err
    assert any(w in err for w in why) and "Traceback" not in err, err
    assert sum(line.startswith("error:") for line in err.splitlines()) == 1, err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.partial-*")), (
        "outputs were left behind"
    )


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Hostile files, written once: each payload writes `root/MARKER`."""
    root = tmp_path_factory.mktemp("hostile")
    marker = root / "MARKER"
    arrays = smplx_arrays()
    # SMPL-X .npz: the payload in a key smplx never uses (it still ran, with exit 0, before the fix) ...
    (root / "smplx_unused" / "smplx").mkdir(parents=True)
    np.savez(root / "smplx_unused" / "smplx" / "SMPLX_NEUTRAL.npz", **arrays, notes=evil_array(marker))
    # ... and in a required one
    (root / "smplx_required" / "smplx").mkdir(parents=True)
    np.savez(
        root / "smplx_required" / "smplx" / "SMPLX_NEUTRAL.npz",
        **{**arrays, "v_template": evil_array(marker)},
    )
    # MANO as the official pickle and as an npz
    (root / "mano_pkl" / "mano").mkdir(parents=True)
    (root / "mano_pkl" / "mano" / "MANO_RIGHT.pkl").write_bytes(
        pickle.dumps({**mano_arrays(), "hands_mean": Payload(marker)}, protocol=2)
    )
    (root / "mano_npz" / "mano").mkdir(parents=True)
    mano = {k: v for k, v in mano_arrays().items() if isinstance(v, np.ndarray)}
    np.savez(root / "mano_npz" / "mano" / "MANO_RIGHT.npz", **mano, extra=evil_array(marker))
    # FLAME: the model pickle, and each landmark embedding
    for case in ("flame_model", "flame_static", "flame_dynamic"):
        write_flame(root / case / "flame")
    (root / "flame_model" / "flame" / "FLAME_NEUTRAL.pkl").write_bytes(
        pickle.dumps({**flame_arrays(), "weights": Payload(marker)}, protocol=2)
    )
    (root / "flame_static" / "flame" / "flame_static_embedding.pkl").write_bytes(
        pickle.dumps({"lmk_face_idx": Payload(marker), "lmk_b_coords": np.zeros((51, 3))}, protocol=2)
    )
    dyn = np.empty((), dtype=object)
    dyn[()] = {"lmk_face_idx": Payload(marker), "lmk_b_coords": np.zeros((79, 17, 3))}
    np.save(root / "flame_dynamic" / "flame" / "flame_dynamic_embedding.npy", dyn, allow_pickle=True)
    # priors: tiny real ones, an evil checkpoint of ours, an evil official one, an evil normaliser
    write_tiny_prior(root / "body.pt", Part.body)
    write_tiny_prior(root / "hand.pt", Part.hand)
    write_tiny_prior(root / "face.pt", Part.face)
    write_tiny_prior(root / "shape.pt", Part.face_shape)
    write_official_ckpt(root / "official_hand.ckpt", Part.hand)
    torch.save(
        {"format": "dposer/1", "part": "body", "config": {}, "model": {"w": Payload(marker)}},
        root / "evil.pt",
    )
    buf = io.BytesIO()
    torch.save(
        {"state_dict": {"model.pre_dense.weight": torch.zeros(2)}, "hyper_parameters": Payload(marker)}, buf
    )
    (root / "evil_official.ckpt").write_bytes(buf.getvalue())
    torch.save({"mean_poses": Payload(marker), "std_poses": torch.ones(45)}, root / "evil_norm.pt")
    (root / "vposer" / "snapshots").mkdir(parents=True)
    torch.save(
        {"state_dict": {"vp_model.encoder_net.2.weight": Payload(marker)}},
        root / "vposer" / "snapshots" / "V02_05_epoch=08_val_loss=0.03.ckpt",
    )
    # user data files whose arrays are pickled objects
    rng = np.random.default_rng(0)
    np.savez(root / "poses.npz", pose_body=evil_array(marker))
    np.savez(root / "motion.npz", pose_body=rng.normal(0, 0.1, (6, 63)), root_orient=evil_array(marker))
    np.savez(root / "targets.npz", joints=evil_array(marker))
    np.savez(root / "init.npz", body_pose=evil_array(marker))
    np.savez(root / "reference.npz", poses=evil_array(marker))
    np.savez(root / "statistics.npz", mu=evil_array(marker), sigma=np.eye(63))
    np.savez(root / "seq.npz", pose_body=rng.normal(0, 0.1, (6, 63)), root_orient=np.zeros((6, 3)))
    np.savez(root / "hand_gt.npz", hand_pose=(0.3 * rng.standard_normal((2, 45))).astype(np.float32))
    np.savez(root / "clean_poses.npz", pose_body=rng.normal(0, 0.2, (2, 63)).astype(np.float32))
    # a photo with OpenPose keypoints (one person) for fit-image
    from PIL import Image

    Image.new("RGB", (64, 48), (128, 128, 128)).save(root / "photo.png")
    kp = np.concatenate([rng.uniform(10, 40, (25, 2)), np.ones((25, 1))], 1)
    (root / "photo.json").write_text(json.dumps({"people": [{"pose_keypoints_2d": kp.reshape(-1).tolist()}]}))
    return root


@pytest.fixture
def marker(root):
    path = root / "MARKER"
    path.unlink(missing_ok=True)
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture
def no_models(tmp_path, monkeypatch):
    """No body models anywhere unless a case puts them there."""
    monkeypatch.setenv("DPOSER_MODELS_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DPOSER_BODY_MODELS", raising=False)


# ------------------------------------------------------------------------- body models, every search route
BODY_COMMANDS = {  # commands that load the SMPL-X body (args after the command name; OUT is replaced)
    "generate": lambda r: [
        "generate",
        "-n",
        "2",
        "--steps",
        "2",
        "--checkpoint",
        r / "body.pt",
        "--renderer",
        "soft",
    ],
    "complete": lambda r: [
        "complete",
        r / "clean_poses.npz",
        "--mask",
        "legs",
        "--steps",
        "2",
        "--checkpoint",
        r / "body.pt",
        "--render",
        "--renderer",
        "soft",
    ],
    "denoise-motion": lambda r: [
        "denoise-motion",
        r / "seq.npz",
        "--checkpoint",
        r / "body.pt",
        "--no-render",
        "--temporal",
        "joints",
    ],
    "fit-image": lambda r: [
        "fit-image",
        r / "photo.png",
        "--keypoints",
        r / "photo.json",
        "--steps",
        "2",
        "--prior",
        "none",
        "--no-overlay",
    ],
}


def _route(route: str, folder: Path, monkeypatch, tmp_path) -> list[str]:
    """Point dposer at `folder` (holding smplx/, mano/ or flame/) the way a user would."""
    if route == "--body-model FILE":
        (file,) = [p for p in folder.rglob("*") if p.suffix in (".npz", ".pkl") and "embedding" not in p.name]
        return ["--body-model", str(file)]
    if route == "--body-model DIR":
        return ["--body-model", str(folder)]
    if route == "DPOSER_BODY_MODELS":
        monkeypatch.setenv("DPOSER_BODY_MODELS", str(folder))
        return []
    # auto-discovery: the models folder's body_models/
    cache = tmp_path / "models"
    cache.mkdir()
    (cache / "body_models").symlink_to(folder, target_is_directory=True)
    monkeypatch.setenv("DPOSER_MODELS_DIR", str(cache))
    return []


ROUTES = ("--body-model FILE", "--body-model DIR", "DPOSER_BODY_MODELS", "models folder")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", ["smplx_unused", "smplx_required"])
def test_smplx_npz_payload_never_runs_on_any_route(
    capsys, tmp_path, monkeypatch, root, marker, no_models, route, case
):
    extra = _route(route, root / case, monkeypatch, tmp_path)
    out = tmp_path / "o"
    code, _, err = run(capsys, *BODY_COMMANDS["generate"](root), "--out", out, "--device", "cpu", *extra)
    assert_refused(code, err, marker, out)
    assert "SMPLX_NEUTRAL.npz" in err and "pickled Python objects" in err


@pytest.mark.parametrize("command", ["complete", "denoise-motion", "fit-image"])
def test_smplx_npz_payload_never_runs_in_any_command(capsys, tmp_path, root, marker, no_models, command):
    out = tmp_path / "o"
    code, _, err = run(
        capsys,
        *BODY_COMMANDS[command](root),
        "--out",
        out,
        "--device",
        "cpu",
        "--body-model",
        root / "smplx_unused",
    )
    assert_refused(code, err, marker, out)


@pytest.mark.parametrize(
    "case,part,what",
    [
        ("mano_pkl", "hand", "MANO_RIGHT.pkl"),
        ("mano_npz", "hand", "MANO_RIGHT.npz"),
        ("flame_model", "face", "FLAME_NEUTRAL.pkl"),
        ("flame_static", "face", "flame_static_embedding.pkl"),
        ("flame_dynamic", "face", "flame_dynamic_embedding.npy"),
    ],
)
def test_mano_and_flame_payloads_never_run(capsys, tmp_path, root, marker, no_models, case, part, what):
    out = tmp_path / "o"
    targets = root / "hand_gt.npz" if part == "hand" else _face_targets(tmp_path)
    priors = (
        ["--checkpoint", root / "hand.pt"]
        if part == "hand"
        else ["--checkpoint", root / "face.pt", "--shape-checkpoint", root / "shape.pt"]
    )
    code, _, err = run(
        capsys,
        "ik",
        "--part",
        part,
        "--targets",
        targets,
        *priors,
        "--steps",
        "2",
        "--out",
        out,
        "--device",
        "cpu",
        "--body-model",
        root / case,
    )
    assert_refused(code, err, marker, out)
    assert what in err


def _face_targets(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    np.savez(
        tmp_path / "face_gt.npz",
        jaw_pose=0.1 * rng.standard_normal((2, 3)),
        expression=rng.standard_normal((2, 100)),
        betas=rng.standard_normal((2, 50)),
    )
    return tmp_path / "face_gt.npz"


# -------------------------------------------------------------------------------- weights and normalisers
@pytest.mark.parametrize(
    "args,what",
    [
        (lambda r: ["generate", "--checkpoint", r / "evil.pt"], "evil.pt"),
        (
            lambda r: ["generate", "--part", "hand", "--checkpoint", r / "evil_official.ckpt"],
            "evil_official.ckpt",
        ),
        (
            lambda r: [
                "generate",
                "--part",
                "hand",
                "--checkpoint",
                r / "official_hand.ckpt",
                "--normalizer",
                r / "evil_norm.pt",
            ],
            "evil_norm.pt",
        ),
        (
            lambda r: ["complete", r / "clean_poses.npz", "--mask", "legs", "--checkpoint", r / "evil.pt"],
            "evil.pt",
        ),
        (
            lambda r: [
                "benchmark",
                "generation",
                "--prior",
                "vposer",
                "--checkpoint",
                r / "vposer",
                "-n",
                "4",
                "--reference",
                r / "clean_poses.npz",
            ],
            "V02_05",
        ),
    ],
    ids=["ours", "official", "normaliser", "complete", "vposer-folder"],
)
def test_weight_file_payloads_never_run(capsys, tmp_path, root, marker, no_models, args, what):
    out = tmp_path / "o" if args(root)[0] != "benchmark" else tmp_path / "o" / "report.json"
    code, _, err = run(capsys, *args(root), "-q", "--out", out, "--device", "cpu")
    assert_refused(code, err, marker, out)
    assert what in err


# ---------------------------------------------------------------------------------------------- user data
PICKLED = ("holds pickled Python objects",)


@pytest.mark.parametrize(
    "args,exit_code,why",
    [
        (
            lambda r: ["complete", r / "poses.npz", "--mask", "legs", "--checkpoint", r / "body.pt"],
            4,
            PICKLED,
        ),
        (
            lambda r: ["denoise-motion", r / "motion.npz", "--checkpoint", r / "body.pt", "--no-render"],
            4,
            PICKLED,
        ),
        (
            lambda r: ["ik", "--part", "hand", "--targets", r / "targets.npz", "--checkpoint", r / "hand.pt"],
            4,
            PICKLED,
        ),
        (
            lambda r: [
                "fit-image",
                r / "photo.png",
                "--keypoints",
                r / "photo.json",
                "--init",
                r / "init.npz",
                "--prior",
                "none",
                "--steps",
                "2",
            ],
            4,
            PICKLED,
        ),
        (
            lambda r: [
                "benchmark",
                "generation",
                "--checkpoint",
                r / "body.pt",
                "-n",
                "4",
                "--steps",
                "2",
                "--reference",
                r / "reference.npz",
            ],
            4,
            PICKLED,
        ),
        (
            lambda r: [
                "benchmark",
                "generation",
                "--checkpoint",
                r / "body.pt",
                "-n",
                "4",
                "--steps",
                "2",
                "--reference",
                r / "clean_poses.npz",
                "--statistics",
                r / "statistics.npz",
            ],
            4,
            PICKLED,
        ),
    ],
    ids=["complete-input", "denoise-input", "ik-targets", "fit-init", "bench-reference", "bench-statistics"],
)
def test_pickled_objects_in_user_data_never_run(
    capsys, tmp_path, root, marker, no_models, args, exit_code, why
):
    a = args(root)
    out = tmp_path / "o" / "report.json" if a[0] == "benchmark" else tmp_path / "o"
    code, _, err = run(capsys, *a, "-q", "--out", out, "--device", "cpu")
    assert_refused(code, err, marker, out, exit_code=exit_code, why=why)


# ------------------------------------------------------------------------ every loader, called directly
def _loaders(root: Path):
    from dposer_cli.bodies import pickle_compat
    from dposer_cli.engine.checkpoint import load_pickled, read_checkpoint
    from dposer_cli.engine.normalize import load_official_normalizer
    from dposer_cli.engine.vposer import VPoserPrior

    return {
        "pickle_compat.load_pickle (benchmark vertex ids, MANO/FLAME)": lambda: pickle_compat.load_pickle(
            root / "mano_pkl" / "mano" / "MANO_RIGHT.pkl"
        ),
        "pickle_compat.load_npy_object (FLAME embedding, ARCTIC vertices)": lambda: (
            pickle_compat.load_npy_object(root / "flame_dynamic" / "flame" / "flame_dynamic_embedding.npy")
        ),
        "pickle_compat.read_npz_plain": lambda: pickle_compat.read_npz_plain(root / "poses.npz"),
        "checkpoint.read_checkpoint": lambda: read_checkpoint(root / "evil.pt"),
        "checkpoint.load_pickled": lambda: load_pickled(root / "evil_official.ckpt"),
        "normalize.load_official_normalizer": lambda: load_official_normalizer(
            Part.hand, root / "evil_norm.pt", root
        ),
        "VPoserPrior.load (folder)": lambda: VPoserPrior.load(root / "vposer"),
    }


@pytest.mark.parametrize("name", list(_loaders(Path("."))))
def test_every_loader_refuses_code_with_exit_4(root, marker, name):
    with pytest.raises(UnsafeFileError) as err:
        _loaders(root)[name]()
    assert not marker.exists()
    assert err.value.exit_code == ExitCode.ASSET_MISMATCH == 4
    assert "could run code" in str(err.value) and "\n" not in str(err.value)


def test_os_system_payload_is_named_in_the_message(tmp_path, marker):
    from dposer_cli.bodies import pickle_compat

    class Shell:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(pickle.dumps({"x": Shell()}, protocol=2))
    with pytest.raises(UnsafeFileError, match=r"references (posix|os)\.system, which could run code"):
        pickle_compat.load_pickle(path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------ hostile sizes
def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares `width`×`height` (only a few bytes of data: a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "case,pattern",
    [
        ("huge image", "megapixels"),
        ("eps image", "not a recognised image format"),
        ("deep json", "nested too deeply"),
    ],
)
def test_hostile_fit_image_inputs_are_one_line_exit_1(capsys, tmp_path, root, no_models, case, pattern):
    img, kp = root / "photo.png", root / "photo.json"
    if case == "huge image":
        img = tmp_path / "huge.png"
        img.write_bytes(_png_header(60_000, 60_000))
    elif case == "eps image":
        img = tmp_path / "photo.eps"  # Pillow would start Ghostscript to decode it
        img.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    else:
        kp = tmp_path / "deep.json"
        kp.write_text("[" * 200_000 + "]" * 200_000)
    out = tmp_path / "o"
    code, _, err = run(
        capsys,
        "fit-image",
        img,
        "--keypoints",
        kp,
        "--prior",
        "none",
        "--steps",
        "2",
        "--out",
        out,
        "--device",
        "cpu",
    )
    assert code == 1 and pattern in err and "Traceback" not in err, err
    assert not out.exists()
