"""The committed protobuf code is what scripts/gen_proto.py makes from proto/agent.proto today."""

from __future__ import annotations

import difflib
import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
GEN_PROTO = ROOT / "scripts" / "gen_proto.py"
COMMITTED = ROOT / "der_actors" / "transport" / "pb"


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    spec = importlib.util.spec_from_file_location("der_scripts_gen_proto", GEN_PROTO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return module.render()
    finally:
        sys.modules.pop("der_scripts_gen_proto", None)


def test_render_covers_the_committed_files(rendered: dict[str, str]) -> None:
    assert set(rendered) == {"agent_pb2.py", "agent_pb2.pyi"}


@pytest.mark.parametrize("name", ["agent_pb2.py", "agent_pb2.pyi"])
def test_generated_code_is_current(rendered: dict[str, str], name: str) -> None:
    path = COMMITTED / name
    assert path.exists(), f"{path.relative_to(ROOT)} is missing: run ./dev proto"
    committed = path.read_text()
    if committed != rendered[name]:
        diff = "".join(
            list(difflib.unified_diff(
                committed.splitlines(keepends=True), rendered[name].splitlines(keepends=True),
                f"committed/{name}", f"generated/{name}",
            ))[:40]
        )
        pytest.fail(
            f"{path.relative_to(ROOT)} is stale: it differs from what proto/agent.proto generates.\n"
            f"Run ./dev proto (or .venv/bin/python scripts/gen_proto.py) and commit the result.\n{diff}",
            pytrace=False,
        )
