"""The model-family registry is the only place that knows a family.

Checked here: code outside a family's own model/table files never imports or names
a family's classes (so new families need no edits elsewhere), and each registered
family's declared facts (dims, layer stack, default targets, sizes) agree with the
models it builds.
"""

import ast
import importlib
import sys
from pathlib import Path

import pytest
from flax import nnx

from jaxkernel.models.registry import FAMILY_MODULES, families, family_for, family_of
from jaxkernel.models.sizes import abstract_model, count_params
from jaxkernel.peft.targets import module_paths, path_matches

PACKAGE = Path(__file__).resolve().parents[1] / "jaxkernel"


def _family_files() -> set[Path]:
    files = set()
    for family in families().values():
        for module in {family.config_class.__module__, *(cls.__module__ for cls, _ in family.tasks.values())}:
            files.add(Path(sys.modules[module].__file__).resolve())
    for module in FAMILY_MODULES:
        files.add(Path(importlib.import_module(module).__file__).resolve())
    return files


def _family_names() -> set[str]:
    names = set()
    for family in families().values():
        names.add(family.config_class.__name__)
        names.update(cls.__name__ for cls, _ in family.tasks.values())
    return names


def test_no_module_outside_a_family_names_its_classes():
    family_files = _family_files()
    family_modules = {family.config_class.__module__ for family in families().values()} | set(FAMILY_MODULES)
    names = _family_names()
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.resolve() in family_files or path.name == "__init__.py":  # __init__: public re-exports
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in family_modules:
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports {node.module}")
            elif isinstance(node, ast.Import):
                offenders += [f"{path.relative_to(PACKAGE)}:{node.lineno} imports {a.name}"
                              for a in node.names if a.name in family_modules]
            elif isinstance(node, ast.Name) and node.id in names:
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} names {node.id}")
    assert not offenders, "ask jaxkernel.models.registry instead:\n" + "\n".join(offenders)


def test_models_import_nothing_from_sharding_or_above():
    for path in sorted((PACKAGE / "models").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxkernel."):
                top = node.module.split(".")[1]
                assert top == "models", f"{path.name}:{node.lineno} imports {node.module} (models import only models)"


FAMILY_TYPES = sorted(families())


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_declared_facts_agree_with_the_built_model(model_type):
    family = family_for(model_type, "test")
    name, _ = next(iter(family.known_sizes.items()))
    task = "causal-lm" if family.causal else "token-classification"
    model = abstract_model(name, task)
    assert family_of(model) is family
    dims = family.dims(model.config)
    layers = family.layers(model)
    assert len(layers) == dims.layers
    assert dims.heads % dims.kv_heads == 0
    assert count_params(model) > 0
    paths = module_paths(model)
    lora = [p for p in paths if path_matches(p, list(family.lora_targets))]
    assert lora and len(lora) % dims.layers == 0, f"{model_type}: LoRA defaults {family.lora_targets} match {lora}"
    int8 = [p for p in paths if path_matches(p, family.int8_targets)]
    prefix = family.base_prefix + "." + family.layers_path + "."
    assert int8 and all(p.startswith(prefix) for p in int8)
    assert family.task_for_architecture([family.tasks[task][1]]) == task


def test_unknown_model_type_names_the_supported_ones():
    with pytest.raises(ValueError, match=r"config.json: model_type 't5' is not supported; jaxkernel supports \[.*'bert'"):
        family_for("t5", "config.json")
    with pytest.raises(TypeError, match="Linear is not a jaxkernel model"):
        family_of(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
