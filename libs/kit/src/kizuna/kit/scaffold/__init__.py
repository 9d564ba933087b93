"""`make new-service name=<x>`: a new service from one declaration and the kit.

    python -m kizuna.kit.scaffold bookstore --label "Book Store"

writes `services/<x>/` (declaration, wiring, a small domain that sells items paid with points
and card and earns through the common earning contract, REST, pages, gRPC, privacy, its first
migration, README and tests against the real points and fintech services) and
`proto/kizuna/<x>/v1/`, then regenerates the contracts. Nothing outside those folders changes but
`libs/contracts/src/kizuna/<x>/` (generated) and `uv.lock` (the new workspace member), which
`make new-service` updates with `uv sync`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from kizuna.kit import declaration

TEMPLATE = Path(__file__).parent / "template"
SUFFIX = ".tmpl"
PLACEHOLDER = "__name__"
# Names a new service may not take: they would shadow a package the workspace imports.
RESERVED = frozenset({"kizuna", "common", "test", "tests", "proto", "deploy", "bench", "libs", "services"})


class ScaffoldError(Exception):
    """The service cannot be created as asked; the message says why."""


@dataclass(frozen=True)
class Plan:
    name: str
    label: str
    slot: int
    root: Path

    @property
    def tokens(self) -> dict[str, str]:
        camel = "".join(part.capitalize() for part in self.name.split("_"))
        return {
            "{{name}}": self.name,
            "{{Name}}": camel,
            "{{NAME}}": self.name.upper(),
            "{{label}}": self.label,
            "{{slot}}": str(self.slot),
            "{{http_port}}": str(declaration.HTTP_BASE_PORT + self.slot),
            "{{grpc_port}}": str(declaration.GRPC_BASE_PORT + self.slot),
        }

    def render(self, text: str) -> str:
        for token, value in self.tokens.items():
            text = text.replace(token, value)
        return text


def plan(name: str, label: str | None, root: Path) -> Plan:
    """Check the name against the declared services and pick the lowest free port slot."""
    if not declaration._NAME.match(name) or name in RESERVED:
        raise ScaffoldError(
            f"{name!r} cannot name a service: use 2-30 lower-case letters and digits, starting with a letter"
        )
    existing = declaration.discover(root)
    if any(d.name == name for d in existing) or (root / "services" / name).exists():
        raise ScaffoldError(f"services/{name} exists already")
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise ScaffoldError(f"{name!r} is already an importable package here; pick another name")
    chosen = (label or name.replace("_", " ").title()).strip()
    if not 0 < len(chosen) <= 40 or any(c in chosen for c in '"\\\n'):
        raise ScaffoldError("the label must be 1-40 characters without quotes or backslashes")
    return Plan(name, chosen, declaration.free_slot(existing), root)


def write(p: Plan) -> list[Path]:
    """Render the template tree into the workspace; returns the files written."""
    written = []
    for source in sorted(TEMPLATE.rglob(f"*{SUFFIX}")):
        relative = source.relative_to(TEMPLATE).as_posix().replace(PLACEHOLDER, p.name).removesuffix(SUFFIX)
        target = p.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(p.render(source.read_text()))
        written.append(target)
    declaration.load(p.root / "services" / p.name / "src" / p.name / declaration.FILE_NAME)
    return written


def format_code(root: Path, written: list[Path]) -> None:
    """ruff's formatting (the workspace's style) over the new Python files, whatever the name's length."""
    python = [str(path) for path in written if path.suffix == ".py"]
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--quiet", *python], cwd=root, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise ScaffoldError(f"formatting the new service failed:\n{result.stdout}{result.stderr}")
    # Import order depends on the name (kizuna.<name> sorts before or after kizuna.kit).
    subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--quiet", "--fix", "--select", "I", *python],
        cwd=root,
        capture_output=True,
        text=True,
    )


def generate_contracts(root: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(root / "proto" / "generate.py")], cwd=root, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise ScaffoldError(f"generating the contracts failed:\n{result.stdout}{result.stderr}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make new-service name=<x>", description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the service's name: lower-case letters and digits, e.g. bookstore")
    parser.add_argument("--label", help="what members read in the header (default: the name, capitalized)")
    parser.add_argument("--root", type=Path, default=None, help="the workspace (default: found from here)")
    args = parser.parse_args(argv)
    try:
        root = declaration.repo_root(args.root)
        p = plan(args.name, args.label, root)
        written = write(p)
        format_code(root, written)
        generate_contracts(root)
    except (ScaffoldError, declaration.DeclarationError, FileNotFoundError) as exc:
        print(f"make new-service: {exc}", file=sys.stderr)
        return 2
    print(
        f"Created {p.name} (slot {p.slot}: HTTP {declaration.HTTP_BASE_PORT + p.slot}, gRPC "
        f"{declaration.GRPC_BASE_PORT + p.slot}) in {len(written)} files:"
    )
    for path in written:
        print(f"  {path.relative_to(root)}")
    print(f"Next: .venv/bin/python -m pytest services/{p.name} -q   then   make up")
    return 0
