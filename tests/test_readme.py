"""The README's Python API examples run as written (from a read-only working directory: no file is touched)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
KEYPOINTS = SHARED / "official/examples/body/predictions/01_img.json"


def _python_api_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


BLOCKS = _python_api_blocks()


def test_readme_has_an_example_per_task():
    joined = "\n".join(BLOCKS)
    for name in ("sample(", "complete(", "denoise_motion(", "solve_ik(", "fit(", "optimize("):
        assert name in joined, f"README Python API has no example calling {name}"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path):
    code = BLOCKS[index]
    if "photo_keypoints.json" in code:
        if not KEYPOINTS.is_file():
            pytest.skip(f"needs the shared example keypoints {KEYPOINTS}")
        code = code.replace("photo_keypoints.json", str(KEYPOINTS))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=ro, env=env, capture_output=True, text=True, timeout=300
        )
    finally:
        ro.chmod(0o755)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip(), "the example printed nothing"
    assert list(ro.iterdir()) == []
