"""Generate the Python code for the Kizuna contracts.

    uv run python proto/generate.py          # regenerate libs/contracts/src/kizuna from proto/
    uv run python proto/generate.py --check  # exit 1 if the committed code is stale

Every ``proto/kizuna/**/*.proto`` goes through grpcio-tools' protoc in one run, which emits
``*_pb2.py`` and ``*_pb2_grpc.py`` plus their typed stubs (``*.pyi``, from mypy-protobuf), and
a ``py.typed`` marker in each domain package.
The output tree ``libs/contracts/src/kizuna`` belongs to this script: files in it that protoc
did not produce are removed (``--check`` reports them as extra). ``kizuna`` stays an implicit
namespace package (no ``__init__.py``), shared with ``kizuna.kit`` from ``libs/kit``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT_ROOT = ROOT / "libs" / "contracts" / "src"
# The one top-level package the protos declare; generate.py owns OUT_ROOT / PACKAGE entirely.
PACKAGE = "kizuna"
PLUGINS = ("protoc-gen-mypy", "protoc-gen-mypy_grpc")
IGNORED_DIRS = frozenset({"__pycache__"})


class GenerationError(Exception):
    """protoc, or a plugin it needs, failed."""


@dataclass(frozen=True)
class Drift:
    """How the committed tree differs from freshly generated code (paths relative to OUT_ROOT)."""

    stale: list[str]
    missing: list[str]
    extra: list[str]

    def __bool__(self) -> bool:
        return bool(self.stale or self.missing or self.extra)


def proto_files() -> list[Path]:
    """Every .proto under proto/, sorted so that protoc always sees the same order."""
    files = sorted(PROTO_ROOT.joinpath(PACKAGE).rglob("*.proto"))
    if not files:
        raise GenerationError(f"no .proto files under {PROTO_ROOT / PACKAGE}")
    return files


def find_plugin(name: str) -> Path:
    """The protoc plugin from this interpreter's environment, else from PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file():
        return beside_python
    found = shutil.which(name)
    if found is None:
        raise GenerationError(f"{name} not found; is mypy-protobuf installed (uv sync)?")
    return Path(found)


def run_protoc(out_dir: Path) -> None:
    """Compile every proto into out_dir."""
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        *(f"--plugin={name}={find_plugin(name)}" for name in PLUGINS),
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out=quiet:{out_dir}",
        f"--mypy_grpc_out=quiet:{out_dir}",
        *(str(path) for path in proto_files()),
    ]
    status = protoc.main(args)
    if status != 0:
        raise GenerationError(f"protoc failed with exit status {status} (see its output above)")
    mark_typed(out_dir)


def mark_typed(out_dir: Path) -> None:
    """Add PEP 561 markers so that type checkers read the .pyi stubs of the installed package.

    ``kizuna`` is a namespace package, so the marker goes one level down, in each domain package
    (where mypy looks for it in namespace packages), never in ``kizuna/`` itself.
    """
    for domain in sorted((out_dir / PACKAGE).iterdir()):
        if domain.is_dir():
            (domain / "py.typed").write_bytes(b"")


def tree(root: Path) -> dict[str, Path]:
    """Files under root/PACKAGE by POSIX path relative to root, skipping bytecode caches."""
    base = root / PACKAGE
    if not base.is_dir():
        return {}
    return {
        path.relative_to(root).as_posix(): path
        for path in sorted(base.rglob("*"))
        if path.is_file() and IGNORED_DIRS.isdisjoint(path.relative_to(base).parts)
    }


def compare(generated_root: Path, committed_root: Path) -> Drift:
    generated = tree(generated_root)
    committed = tree(committed_root)
    return Drift(
        stale=[
            name
            for name in sorted(generated.keys() & committed.keys())
            if generated[name].read_bytes() != committed[name].read_bytes()
        ],
        missing=sorted(generated.keys() - committed.keys()),
        extra=sorted(committed.keys() - generated.keys()),
    )


def sync(generated_root: Path, drift: Drift) -> None:
    """Make OUT_ROOT/PACKAGE identical to the generated tree."""
    for name in drift.stale + drift.missing:
        target = OUT_ROOT / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(generated_root / name, target)
    for name in drift.extra:
        (OUT_ROOT / name).unlink()
    # Directories emptied by removals (deepest first); caches alone do not keep one alive.
    for directory in sorted((OUT_ROOT / PACKAGE).rglob("*"), reverse=True):
        if directory.is_dir() and directory.name not in IGNORED_DIRS:
            if all(child.name in IGNORED_DIRS for child in directory.iterdir()):
                shutil.rmtree(directory)


def describe(drift: Drift) -> str:
    where = OUT_ROOT.relative_to(ROOT).as_posix()
    lines = [f"generated code in {where} is out of date with proto/:"]
    for label, names in vars(drift).items():
        lines.extend(f"  {label:<8}{where}/{name}" for name in names)
    lines.append("run `uv run python proto/generate.py` and commit the result")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "--check",
        action="store_true",
        help="generate into a temporary directory and fail if it differs from the committed code",
    )
    options = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="kizuna-contracts-") as scratch:
        generated_root = Path(scratch)
        try:
            run_protoc(generated_root)
        except GenerationError as error:
            print(f"proto/generate.py: {error}", file=sys.stderr)
            return 2
        drift = compare(generated_root, OUT_ROOT)
        if options.check:
            if drift:
                print(describe(drift), file=sys.stderr)
                return 1
            print(f"generated code is up to date ({len(tree(generated_root))} files)")
            return 0
        sync(generated_root, drift)
    changed = len(drift.stale) + len(drift.missing) + len(drift.extra)
    print(
        f"wrote {OUT_ROOT.relative_to(ROOT).as_posix()}/{PACKAGE}: "
        f"{len(drift.stale)} updated, {len(drift.missing)} added, {len(drift.extra)} removed"
        + ("" if changed else " (already up to date)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
