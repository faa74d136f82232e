"""`io.hub` on its own: where the source settings come from, and the injected `check` decides what is installed
(against the local fake Hub of tests/_fixtures/fake_hub.py)."""

import pytest

from dposer_cli.core.errors import AssetMismatchError
from dposer_cli.core.parts import Part
from dposer_cli.io import hub
from tests._fixtures.fake_hub import FakeHub, build_repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return build_repo(tmp_path_factory.mktemp("repo"), (Part.hand,))


def test_source_reads_the_environment_when_asked(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.example/")
    monkeypatch.setenv(hub.NORMALIZER_URL_ENV, "file:///srv/dposer/")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = hub.HubSource.from_env()
    assert source == hub.HubSource(
        revision=hub.DEFAULT_REVISION,
        endpoint="http://mirror.example",
        normalizer_url="file:///srv/dposer",
        offline=True,
    )
    assert hub.HubSource.from_env(endpoint="http://x", offline=False, revision="v1").offline is False


def test_check_decides_what_is_installed(repo, tmp_path):
    seen = []

    def check(asset, path):
        seen.append((asset.kind, path.is_file()))
        return "refused by the test" if asset.kind == "normalizer" else None

    assets = hub.plan([Part.hand], tmp_path)
    with FakeHub(*repo) as server:
        source = hub.HubSource(
            endpoint=server.url, normalizer_url=server.raw_url, cache_dir=tmp_path / "hf", timeout=3
        )
        with hub.Fetcher(source, tmp_path, check) as fetcher:
            ckpt = fetcher.fetch(assets[0])
            with pytest.raises(AssetMismatchError, match="not usable: refused by the test; moved it aside"):
                fetcher.fetch(assets[1])
            staging = fetcher.staging
    assert ckpt["status"] == "downloaded" and assets[0].path.is_file()
    assert (
        not assets[1].path.exists() and assets[1].path.with_name(assets[1].path.name + ".invalid").is_file()
    )
    assert seen == [("checkpoint", True), ("normalizer", True)]
    assert staging is not None and not staging.exists()  # the context removes the staging folder


def test_flame_needs_every_file_the_loader_reads(tmp_path):
    from dposer_cli.core.parts import FLAME_FILES

    assert hub.BODY_MODEL_FILES["flame"] == tuple((f"flame/{f}",) for f in FLAME_FILES)
    assert "flame/flame_dynamic_embedding.npy" in {alt for (alt,) in hub.BODY_MODEL_FILES["flame"]}
    (tmp_path / "flame").mkdir()
    for name in FLAME_FILES[:-1]:
        (tmp_path / "flame" / name).write_bytes(b"x")
    flame = hub.body_models([tmp_path])["flame"]
    assert not flame["present"]
    assert "missing flame/flame_dynamic_embedding.npy" in flame["instruction"]
    assert all(
        name in flame["instruction"] for name in FLAME_FILES
    )  # the "download ..." list names all three
    (tmp_path / "flame" / FLAME_FILES[-1]).write_bytes(b"x")
    flame = hub.body_models([tmp_path])["flame"]
    assert flame["present"] and "instruction" not in flame
