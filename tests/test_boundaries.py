"""The package's boundaries: what the runtime loads, and no import circle anywhere.

The runtime never imports the training or the compression stage, and the ONNX Runtime path never
imports torch (about 260 MB of resident memory it has no use for). Each check runs in a fresh
interpreter, since this test process has torch and every stage loaded already.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgepanc.backends.devices import nvidia_gpu_present

from runtime_support import make_onnx_bundle, phantom, write_image

PACKAGE = Path(__file__).resolve().parents[1] / "edgepanc"
FORBIDDEN = ("torch", "edgepanc.training", "edgepanc.quantization")
# The runtime side of the package: everything ``edgepanc run`` and the baseline import.
RUNTIME_PACKAGES = ("runtime", "postprocessing", "inferers", "backends", "preprocessing")
RUNTIME_MODULES = ("bundle", "networks/config", "networks/activation", "commands/run")

LOADED = (
    "import json, sys; "
    "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' "
    "or m.startswith(('edgepanc.training', 'edgepanc.quantization')))))"
)


def loaded_after(code: str) -> list[str]:
    """The forbidden modules a fresh interpreter has loaded after running ``code``."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\n{LOADED}"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_modules() -> list[str]:
    """Every torch-free module of the runtime side (the torch backend excepted: it is torch)."""
    paths = [p for package in RUNTIME_PACKAGES for p in sorted((PACKAGE / package).rglob("*.py"))]
    paths += [PACKAGE / f"{name}.py" for name in RUNTIME_MODULES]
    return [module_name(p) for p in paths if p.name != "torch_backend.py"]


def test_importing_the_runtime_loads_neither_training_compression_nor_torch():
    modules = runtime_modules()
    assert "edgepanc.runtime.pipeline" in modules and "edgepanc.commands.run" in modules
    assert "edgepanc.backends.onnxruntime_backend" in modules
    code = "import importlib\n" + "\n".join(f"importlib.import_module({m!r})" for m in modules)
    assert loaded_after(code) == []


def test_importing_the_cli_loads_no_training_stage():
    """``edgepanc run`` goes through the CLI module: it must not load the training stage (the
    train command imports it inside the command)."""
    assert [m for m in loaded_after("import edgepanc.cli") if m.startswith("edgepanc.")] == []


def test_runtime_side_never_imports_training_or_compression_even_lazily():
    """A function-level import would load them on first use, where the subprocess test cannot
    see it: read every import statement of the runtime side instead."""
    offenders = []
    for name in runtime_modules() + ["edgepanc.backends.torch_backend"]:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None
        for imported in imported_modules(Path(spec.origin), name):
            if imported.startswith(("edgepanc.training", "edgepanc.quantization")):
                offenders.append(f"{name} -> {imported}")
    assert offenders == []


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory) -> Path:
    """A tiny bundle whose default artifact is an fp32 ONNX graph (activation footprint stored)."""
    return make_onnx_bundle(tmp_path_factory.mktemp("onnx_bundle") / "bundle")


def test_an_onnx_runtime_run_loads_neither_training_compression_nor_torch(onnx_bundle, tmp_path):
    scan = write_image(phantom(), tmp_path / "ct_0000.nii.gz")
    out = tmp_path / "out"
    args = [str(scan), "--model", str(onnx_bundle), "--out", str(out), "--device", "cpu"]
    code = (
        "from edgepanc.commands.run import run\n"
        f"run.main({args!r}, standalone_mode=False)"
    )
    loaded = loaded_after(code)
    case = json.loads((out / "ct.json").read_text())
    assert (case["backend"], case["artifact"]) == ("onnxruntime", "onnx_fp32")
    assert (out / "ct.nii.gz").is_file()
    # Probing TensorRT asks torch whether CUDA works, but only where torch_tensorrt is installed
    # and NVML finds a GPU; everywhere else the run never loads torch.
    probes_cuda = importlib.util.find_spec("torch_tensorrt") is not None and nvidia_gpu_present()
    assert [m for m in loaded if not m.startswith("torch")] == []
    assert any(m == "torch" for m in loaded) == probes_cuda


# --- the import graph --------------------------------------------------------------------------


def imported_modules(path: Path, name: str) -> set[str]:
    """The ``edgepanc`` modules that ``path`` (module ``name``) imports, at module or function
    level (a lazy import is still a dependency); ``if TYPE_CHECKING:`` blocks never run, so their
    imports for type hints do not count."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    type_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for statement in node.body
        for inner in ast.walk(statement)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] == "edgepanc"}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (a ``from package import name`` names the
    submodule when ``name`` is one)."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        targets = set()
        for imported in imported_modules(path, name):
            while imported and imported not in paths:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_find_cycle_finds_a_circle_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert graph["edgepanc.backends.tensorrt_backend"] >= {"edgepanc.backends.devices"}
    assert "edgepanc.networks.activation" in graph["edgepanc.bundle"]
    assert find_cycle(graph) is None
