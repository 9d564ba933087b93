"""The service images, as far as this machine can check them without a Docker engine: each
Dockerfile's build steps are replayed (its COPY sources into a fresh context, its `uv sync`
commands into a fresh venv), and the resulting venv migrates and starts the service from a
directory that holds no source, as the image's entry point does."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_support import REPO, SERVICES, run


def dockerfile(service: str) -> str:
    return (REPO / "services" / service / "Dockerfile").read_text()


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_shape(service: str) -> None:
    text = dockerfile(service)
    http, grpc = SERVICES[service]
    assert len(re.findall(r"^FROM ", text, re.M)) == 2, "multi-stage: build + runtime"
    assert f"uv sync --frozen --no-dev --no-editable --package {service}" in text
    assert re.search(r"^USER 10001:10001$", text, re.M), "runs as the manifests' non-root uid"
    assert re.search(rf"^EXPOSE {http} {grpc}$", text, re.M)
    assert f'ENTRYPOINT ["python", "-m", "{service}"]' in text
    assert 'CMD ["serve"]' in text
    assert "KIZUNA_DATA_DIR=/tmp/" in text, "the only writable path is /tmp"


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    for pattern in ("**/.venv", "**/.git", "**/node_modules", "**/__pycache__"):
        assert pattern in ignored


# The image's user: not root, and owning nothing but /tmp (the emptyDir).
IMAGE_UID = 10001


@pytest.fixture
def image_root() -> Iterator[Path]:
    """A root-owned tree the image user can read but not write (pytest's tmp_path is root-only)."""
    if os.geteuid() != 0:
        pytest.fail("running the image's steps as its user (setpriv, chown) needs root", pytrace=False)
    root = Path(tempfile.mkdtemp(prefix="kizuna-image-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("service", SERVICES)
def test_image_build_steps_produce_a_runnable_service(service: str, tmp_path: Path, image_root: Path) -> None:
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("uv not found on PATH: `make install` installs it", pytrace=False)
    context, venv, workdir = tmp_path / "src", image_root / "venv", image_root / "app"
    context.mkdir()
    workdir.mkdir()
    build_stage = dockerfile(service).split("\nFROM ")[1]
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv), "UV_COMPILE_BYTECODE": "1",
           "UV_LINK_MODE": "copy", "UV_PYTHON_DOWNLOADS": "never", "UV_PYTHON": sys.executable}
    env.pop("VIRTUAL_ENV", None)
    steps = 0
    for line in re.sub(r"\\\n\s*", " ", build_stage).splitlines():
        line = line.strip()
        if line.startswith("COPY "):
            *sources, dest = shlex.split(line[5:])
            for source in sources:
                src = REPO / source
                into_dir = dest.endswith("/") or dest == "."
                target = context / dest / src.name if into_dir and src.is_file() else context / dest
                target.parent.mkdir(parents=True, exist_ok=True)
                if src.is_dir():
                    shutil.copytree(src, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
                        "__pycache__", "tests", ".venv", ".data"))
                else:
                    shutil.copy2(src, target)
        elif line.startswith("RUN ") and "uv sync" in line:
            command = line[line.index("uv sync"):]
            result = subprocess.run([uv, *shlex.split(command)[1:]], cwd=context, env=env,
                                    capture_output=True, text=True)
            assert result.returncode == 0, f"{command}:\n{result.stderr[-3000:]}"
            steps += 1
    assert steps == 2, "dependencies layer, then the service"

    python = venv / "bin" / "python"
    installed = run([python, "-c", f"import {service}, kizuna.kit; print({service}.__file__)"], cwd=workdir)
    assert installed.returncode == 0, installed.stderr
    assert str(venv) in installed.stdout, "installed into the venv, not from the source tree"
    writable = image_root / "tmp"
    writable.mkdir()
    os.chown(writable, IMAGE_UID, IMAGE_UID)
    # As the image runs it: its user, its environment, nothing writable but the data dir.
    as_image_user = ["setpriv", f"--reuid={IMAGE_UID}", f"--regid={IMAGE_UID}", "--clear-groups"]
    migrate = run([*as_image_user, python, "-m", service, "migrate"], cwd=workdir, env={
        "PATH": os.environ["PATH"], "HOME": "/nonexistent", "NATS_URL": "nats://127.0.0.1:1",
        "KIZUNA_ISSUER": "http://127.0.0.1:1", "KIZUNA_DATA_DIR": str(writable / "kizuna"),
        "FINTECH_SANDBOX": "true", "PYTHONDONTWRITEBYTECODE": "1"}, timeout=120)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    assert (writable / "kizuna" / f"{service}.db").exists()

