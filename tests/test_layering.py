"""The stages import downwards only (docs/design.md §10), read from every module's import statements,
the ones inside functions included."""

import ast
from pathlib import Path

import sdmcunet

PACKAGE = Path(sdmcunet.__file__).parent

# The most specific prefix decides a module's level (docs/design.md §10).
LEVELS = {
    "sdmcunet": 0, "sdmcunet.utils": 0, "sdmcunet.labels": 0, "sdmcunet.paths": 0, "sdmcunet.imageio": 0,
    "sdmcunet.raw_dataset": 1, "sdmcunet.experiment_planning.plans": 1, "sdmcunet.experiment_planning.plans_manager": 1,
    "sdmcunet.experiment_planning.presets": 1, "sdmcunet.experiment_planning.memory": 1, "sdmcunet.results": 1,
    "sdmcunet.networks": 1,
    "sdmcunet.dataset_conversion": 2, "sdmcunet.weights": 2,
    "sdmcunet.experiment_planning": 3, "sdmcunet.preprocessing": 3,
    "sdmcunet.training": 4, "sdmcunet.inference": 4, "sdmcunet.evaluation.metrics": 4, "sdmcunet.ensembling": 4,
    "sdmcunet.postprocessing": 4, "sdmcunet.model_sharing": 4,
    "sdmcunet.evaluation": 5, "sdmcunet.reporting": 5, "sdmcunet.weights.import_reference": 5,
}
TRAINER_REGISTRY = "sdmcunet.training.trainers"  # trainer classes by name: the one door into training
REGISTRY_ONLY = ("sdmcunet.inference", "sdmcunet.evaluation", "sdmcunet.ensembling", "sdmcunet.reporting",
                 "sdmcunet.postprocessing")


def level(module: str) -> int:
    prefixes = [prefix for prefix in LEVELS if module == prefix or module.startswith(prefix + ".")]
    return LEVELS[max(prefixes, key=len)]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The sdmcunet modules `path` imports (`from sdmcunet import paths` is sdmcunet.paths)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names}
            found |= {name for name in submodules if _is_module(name)} or {node.module}
    return {name for name in found if name == "sdmcunet" or name.startswith("sdmcunet.")}


def _is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_level():
    for module in import_graph():
        level(module)


def test_no_stage_imports_a_higher_one():
    upward = [f"{module} (level {level(module)}) imports {target} (level {level(target)})"
              for module, targets in import_graph().items() for target in targets if level(target) > level(module)]
    assert not upward, "\n".join(upward)


def test_prediction_evaluation_and_reporting_reach_training_only_through_the_trainer_registry():
    reaching = [f"{module} imports {target}" for module, targets in import_graph().items()
                if module.startswith(REGISTRY_ONLY)
                for target in targets if target.startswith("sdmcunet.training") and target != TRAINER_REGISTRY]
    assert not reaching, "\n".join(reaching)


def test_the_checks_see_imports_inside_functions():
    graph = import_graph()
    assert "sdmcunet.weights.download" in graph["sdmcunet.reporting.reconstruction"]  # imported inside a function
    assert level("sdmcunet.experiment_planning.plans_manager") == 1 and level("sdmcunet.experiment_planning.splits") == 3
