"""Write dvc.yaml from the stages' declarations (components/contract.py) and the code each `ffx` command runs.

    python -m ffx.dvc_yaml           # rewrites dvc.yaml
    python -m ffx.dvc_yaml --check   # exits 1 when dvc.yaml differs from what the declarations make
"""
from __future__ import annotations

import sys

from components.codebase import ROOT, closure_files
from components.contract import STAGES, Output, Stage
from ffx.cli import command_module

DVC_YAML = ROOT / "dvc.yaml"
HEADER = """\
# Made by `python -m ffx.dvc_yaml` from components/contract.py, where each stage declares the params it reads and
# the files it reads and writes (the Prefect flow's cache keys come from the same declarations), and from the code
# each `ffx` command runs: edit those, not this file. tests/test_contract.py checks that the two agree.
"""


def code_files(name: str) -> list[str]:
    """What `ffx NAME` runs as code: the command line's entry and the command's module, with every file they
    import."""
    return closure_files(["ffx.cli", command_module(name)])


def _line(text: str, why: str, indent: int) -> str:
    return " " * indent + text + (f"  # {why}" if why else "")


def _output_lines(output: Output) -> list[str]:
    options = {**output.plot, **({} if output.cache else {"cache": "false"})}
    if not options:
        return [_line(f"- {output.path}", output.why, 6)]
    return [_line(f"- {output.path}:", output.why, 6)] + [f"          {key}: {value}" for key, value in options.items()]


def stage_lines(declared: Stage) -> list[str]:
    command = f"ffx {declared.name}" + (" --quiet" if declared.quiet else "")
    lines = [_line(f"{declared.name}:", declared.why, 2), f"    cmd: {command}", "    deps:"]
    lines += [_line(f"- {item.name}", item.why, 6) for item in declared.deps]
    lines += [f"      - {path}" for path in code_files(declared.name)]
    lines += ["    params:"] + [_line(f"- {item.name}", item.why, 6) for item in declared.params]
    for kind in ("outs", "metrics", "plots"):
        outputs = [o for o in declared.outs if o.kind == kind]
        if outputs:
            lines += [f"    {kind}:"] + [line for output in outputs for line in _output_lines(output)]
    return lines


def render() -> str:
    return HEADER + "stages:\n" + "".join(line + "\n" for s in STAGES for line in stage_lines(s))


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if DVC_YAML.read_text() != text:
            print("dvc.yaml differs from the stages' declarations: run `python -m ffx.dvc_yaml`", file=sys.stderr)
            return 1
        return 0
    DVC_YAML.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
