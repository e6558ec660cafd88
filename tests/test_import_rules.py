"""Who may import whom (docs/architecture.md), enforced on the source with `ast`.

Every import counts, including those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pww_ldm"

# The text-only modules of models/ (no nn.Module): region/ may use them to align labels with tokens.
TEXT_MODULES = {"pww_ldm.models.tokenizer", "pww_ldm.models.prompt_syntax", "pww_ldm.models.prompt_chunks"}
EDGES = ("pww_ldm.cli", "pww_ldm.webui", "pww_ldm.batch", "pww_ldm.train", "pww_ldm.reference")
RULES = {
    # module prefix -> prefixes it must never import
    "pww_ldm.models": ("pww_ldm.region", "pww_ldm.samplers", "pww_ldm.pipeline", *EDGES,
                       "pytorch_lightning", "lightning", "gradio"),
    "pww_ldm.region": ("pww_ldm.models", "pww_ldm.samplers", "pww_ldm.pipeline", *EDGES,
                       "pytorch_lightning", "gradio"),
    "pww_ldm.samplers": ("pww_ldm.region", "pww_ldm.models", "pww_ldm.pipeline", *EDGES,
                         "pytorch_lightning", "gradio"),
    "pww_ldm.conditioning": ("pww_ldm",),
    "pww_ldm.kernels": ("pww_ldm",),
    "pww_ldm.approx": ("pww_ldm",),  # approximation settings and run state: imported by models/ and samplers/
    "pww_ldm.pipeline": (*EDGES, "pytorch_lightning", "gradio"),
    "pww_ldm.paths": ("pww_ldm.pipeline", "pww_ldm.models", "torch"),
    "pww_ldm.user_errors": ("pww_ldm.pipeline", "pww_ldm.models", *EDGES),
}
INFERENCE = ("pww_ldm.pipeline", "pww_ldm.models", "pww_ldm.region", "pww_ldm.samplers",
             "pww_ldm.cli", "pww_ldm.webui", "pww_ldm.batch", "pww_ldm.loading")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved)."""
    return imports_in(path.read_text(), module_name(path), path.name == "__init__.py")


def imports_in(source: str, name: str, is_package: bool = False) -> set[str]:
    """Absolute names of every module the source of module `name` imports."""
    package = name if is_package else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def forbidden(name: str, imported: set[str]) -> list[str]:
    bad = []
    for prefix, banned in RULES.items():
        if name == prefix or name.startswith(prefix + "."):
            for target in imported:
                text_only = any(target == t or target.startswith(t + ".") for t in TEXT_MODULES)
                if text_only and prefix == "pww_ldm.region":
                    continue
                if any(target == b or target.startswith(b + ".") for b in banned):
                    bad.append(target)
    if name.startswith(INFERENCE):
        bad += [t for t in imported if t == "pww_ldm.train" or t.startswith("pww_ldm.train.")]
    return sorted(set(bad))


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_module_imports_only_what_its_layer_may(path):
    name = module_name(path)
    bad = forbidden(name, imports_of(path))
    assert not bad, f"{name} imports {bad}: see docs/architecture.md for who may import whom"


def test_the_checker_sees_relative_lazy_and_aliased_imports():
    # a stand-in for a module of pww_ldm/models with each kind of import the rules must catch
    source = ("def f():\n    from ..region import context\n    import pww_ldm.samplers as s\n"
              "from ..models import tokenizer\n")
    found = imports_in(source, "pww_ldm.models.probe")
    assert {"pww_ldm.region", "pww_ldm.samplers", "pww_ldm.models.tokenizer"} <= found
    assert forbidden("pww_ldm.models.probe", found) == [
        "pww_ldm.region", "pww_ldm.region.context", "pww_ldm.samplers"]
    assert forbidden("pww_ldm.region.x", {"pww_ldm.models.tokenizer"}) == []
    assert forbidden("pww_ldm.region.x", {"pww_ldm.models.unet"}) == ["pww_ldm.models.unet"]
    assert forbidden("pww_ldm.pipeline", {"pww_ldm.train.shapes"}) == ["pww_ldm.train.shapes"]
