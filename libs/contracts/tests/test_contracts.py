"""The generated contracts import, keep their promises, and match proto/."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf.descriptor import FieldDescriptor, FileDescriptor, ServiceDescriptor
from kizuna.common.v1 import options_pb2

ROOT = Path(__file__).resolve().parents[3]
PROTO_ROOT = ROOT / "proto"
SRC = ROOT / "libs" / "contracts" / "src"

PROTOS = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
GENERATED_MODULES = sorted(".".join(p.relative_to(SRC).with_suffix("").parts) for p in SRC.glob("kizuna/**/*.py"))
# RPCs whose names start with these only read; every other RPC changes state.
READ_ONLY_PREFIXES = ("Get", "List", "Preview")


def pb2_module(proto: str) -> ModuleType:
    return importlib.import_module(proto.removesuffix(".proto").replace("/", ".") + "_pb2")


def file_descriptors() -> list[FileDescriptor]:
    return [pb2_module(proto).DESCRIPTOR for proto in PROTOS]


def services() -> dict[str, ServiceDescriptor]:
    return {service.full_name: service for file in file_descriptors() for service in file.services_by_name.values()}


def mutating_rpcs(service: ServiceDescriptor) -> list[str]:
    return [m.name for m in service.methods if not m.name.startswith(READ_ONLY_PREFIXES)]


def test_every_proto_has_generated_modules() -> None:
    assert len(PROTOS) >= 11
    for proto in PROTOS:
        stem = "kizuna." + proto.removeprefix("kizuna/").removesuffix(".proto").replace("/", ".")
        for suffix in ("_pb2", "_pb2_grpc"):
            assert stem + suffix in GENERATED_MODULES, f"{proto}: no {stem + suffix}"


@pytest.mark.parametrize("module", GENERATED_MODULES)
def test_generated_module_imports(module: str) -> None:
    importlib.import_module(module)


def test_packages_are_versioned_by_directory() -> None:
    for file in file_descriptors():
        directory = file.name.rsplit("/", 1)[0]
        assert file.package == directory.replace("/", "."), file.name


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        (
            "kizuna.points.v1.PointsService",
            {"Credit", "Reserve", "Capture", "Void", "Refund", "Clawback", "Earn"},
        ),
        ("kizuna.fintech.v1.PaymentsService", {"Authorize", "Capture", "Void", "Refund"}),
    ],
)
def test_points_and_payments_mutations_are_the_expected_rpcs(service: str, expected: set[str]) -> None:
    assert set(mutating_rpcs(services()[service])) == expected


@pytest.mark.parametrize("service", sorted(services()))
def test_every_mutating_rpc_takes_an_idempotency_key(service: str) -> None:
    descriptor = services()[service]
    for rpc in mutating_rpcs(descriptor):
        request = descriptor.methods_by_name[rpc].input_type
        field = request.fields_by_name.get("idempotency_key")
        assert field is not None, f"{service}.{rpc}: {request.name} has no idempotency_key"
        assert field.type == FieldDescriptor.TYPE_STRING, f"{request.full_name}.idempotency_key"
        assert field.containing_oneof is None, f"{request.full_name}.idempotency_key is in a oneof"


def test_amounts_of_points_are_integers() -> None:
    points = pb2_module("kizuna/points/v1/points.proto").DESCRIPTOR
    for message in points.message_types_by_name.values():
        for field in message.fields:
            if field.name in {"amount", "balance_after", "total", "pending", "debt"}:
                assert field.type == FieldDescriptor.TYPE_INT64, field.full_name


def test_every_event_names_its_subject_once() -> None:
    seen: dict[str, str] = {}
    for file in file_descriptors():
        if not file.name.endswith("/events.proto"):
            continue
        domain = file.package.split(".")[1]
        for message in file.message_types_by_name.values():
            subject = message.GetOptions().Extensions[options_pb2.event_subject]
            assert subject, f"{message.full_name} has no (kizuna.common.v1.event_subject)"
            service, aggregate, event = subject.split(".")
            assert service in {domain, "{service}"}, f"{message.full_name}: {subject}"
            assert aggregate and event, f"{message.full_name}: {subject}"
            assert subject not in seen, f"{subject}: {seen.get(subject)} and {message.full_name}"
            seen[subject] = message.full_name
    assert "points.credit.requested" in seen
    assert "points.spend.requested" in seen


def test_generated_code_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(PROTO_ROOT / "generate.py"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
