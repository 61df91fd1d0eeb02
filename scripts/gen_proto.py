"""Regenerate der_actors/transport/pb/agent_pb2.py from proto/agent.proto.

Run `./dev proto` (or `.venv/bin/python scripts/gen_proto.py`). tests/test_proto_current.py fails
when the committed code is stale.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto" / "agent.proto"
OUT = ROOT / "der_actors" / "transport" / "pb"
GENERATED = ("agent_pb2.py", "agent_pb2.pyi")


def generate(out_dir: pathlib.Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO.parent}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        str(PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def render() -> dict[str, str]:
    """The generated files' text, produced in a scratch directory."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(pathlib.Path(tmp))
        return {name: (pathlib.Path(tmp) / name).read_text() for name in GENERATED}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
    print(f"wrote {', '.join(GENERATED)} to {OUT.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
