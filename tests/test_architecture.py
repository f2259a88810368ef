"""The house's rules, read from the code: no import cycles (lazy imports included), layers that import downward
only, and a registered model that carries exactly the package files it runs."""
import pytest

from components.codebase import closure_files
from import_graph import graph

# components/ in layers; a module may import its own layer's modules and lower layers' only. search and model sit
# side by side and do not import each other, and so do reports and finetune. Modules at the package's top level are
# the base.
LAYERS = {"components": 0, "components.data": 1, "components.features": 2, "components.search": 3,
          "components.audit": 3, "components.model": 3, "components.reports": 4, "components.finetune": 4,
          "components.stages": 5, "flows": 6, "ffx": 7, "bench": 7}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "components":
        return parts[0]
    return ".".join(parts[:2]) if len(parts) > 2 else "components"


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, colours white/grey/black)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(edges):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_find_cycle_names_a_cycle_and_passes_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles_in_components_flows_ffx_and_bench():
    # A package's __init__ is imported with each of its modules; an edge to it is no cycle of the code.
    edges = {module: {t for t in targets if not module.startswith(t + ".")} for module, targets in graph().items()}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_import_goes_down_the_layers():
    wrong = []
    for module, targets in graph().items():
        mine = layer_of(module)
        for target in targets:
            theirs = layer_of(target)
            if theirs == mine or module.startswith(target + "."):
                continue
            if LAYERS[theirs] > LAYERS[mine] or (LAYERS[theirs] == LAYERS[mine]):  # up, or sideways (search/model)
                wrong.append(f"{module} ({mine}) imports {target} ({theirs})")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


@pytest.mark.parametrize("stage, forbidden", [
    ("components.stages.extract", ("components.search", "components.model", "components.reports")),
    ("components.stages.audit", ("components.search", "components.model", "components.reports")),
    ("components.stages.tune", ("components.model.classifier", "components.model.registry",
                                "components.reports.model_card", "components.reports.evaluation_plots")),
    ("components.stages.finetune", ("components.search", "components.reports", "components.model.classifier",
                                    "components.model.registry")),
])
def test_a_stage_entry_module_imports_only_its_own_stage_code(stage, forbidden):
    files = set(closure_files([stage]))
    leaked = sorted(f for f in files for prefix in forbidden if f.startswith(prefix.replace(".", "/")))
    assert not leaked, f"{stage} imports code of other stages: {leaked}"


def test_the_registered_model_carries_its_code_and_not_the_pipeline(tmp_path):
    from components.model.registry import copy_model_code

    carried = {p.relative_to(tmp_path).as_posix() for p in copy_model_code(tmp_path).rglob("*") if p.is_file()}
    assert {"components/model/pyfunc_entry.py", "components/defaults.yaml", "components/model/classifier.py"} <= carried
    assert not [name for name in carried if name.startswith(("components/stages", "components/search",
                                                            "components/audit", "components/reports"))], carried
