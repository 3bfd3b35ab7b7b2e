"""Imports run one way (GUIDE.md): cli -> train -> tasks -> data / decode / pretrained -> models ->
layers and attention. Every import of every module, at module level or inside a function, is read
with `ast`; one that reaches a higher layer fails, so no cycle can be closed by a lazy import."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "transformer_jax"
LAYERS = {  # top-level module or package -> layer; the package's own __init__ is the public facade
    "cli": 5, "__main__": 5, "__init__": 5, "attention_view": 5, "train": 4, "tasks": 3,
    "data": 2, "decode": 2, "pretrained": 2, "quantization": 2,  # quantization.generate composes decode
    "model": 1, "vit": 1, "lora": 1, "checkpoint": 1, "nnx": 1,
    "config": 0, "compilation_cache": 0, "layers": 0, "attention": 0, "moe": 0, "scan": 0, "sharding": 0,
}


def _layer(dotted: str) -> int:
    parts = dotted.split(".")
    return LAYERS["__init__"] if len(parts) == 1 else LAYERS[parts[1]]


def _imports(path: pathlib.Path):
    package = ".".join(("transformer_jax", *path.relative_to(ROOT).with_suffix("").parts))
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "transformer_jax")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                base = ".".join([*package.split(".")[: -node.level], *([base] if base else [])])
            if base.split(".")[0] == "transformer_jax":
                yield from ((f"{base}.{a.name}" if base == "transformer_jax" and a.name in LAYERS else base)
                            for a in node.names)


def test_no_module_imports_a_higher_layer():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        module = ".".join(("transformer_jax", *path.relative_to(ROOT).with_suffix("").parts))
        here = _layer(module) if path.name != "__init__.py" or path.parent != ROOT else LAYERS["__init__"]
        upward += [f"{module} (layer {here}) imports {name} (layer {_layer(name)})"
                   for name in _imports(path) if _layer(name) > here]
    assert not upward, "\n".join(upward)
