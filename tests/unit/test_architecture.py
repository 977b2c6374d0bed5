"""The import rule of docs/ARCHITECTURE.md, checked on every module's imports (parsed, not executed).

Packages are layers; a module may import its own package and lower layers only. The commands (the
`cli/` package, one module per `pangu` command) and the `entry/` scripts of launched processes sit on
top: they may import anything and nothing in the library imports them. Private Paddle names stay behind
`parallel/fleet_compat.py` and `parallel/cpu_backend/`.
"""
import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "paddle_pangu"

LAYERS = [  # lowest first; same as docs/ARCHITECTURE.md
    {"errors"},
    {"utils", "runtime", "kernels", "devices"},
    {"config", "io"},
    {"parallel", "tokenizer"},
    {"model"},
    {"data", "convert"},
    {"training", "inference"},
    {"evaluation", "planner"},
    {"finetune"},
    {"bench"},
    {"cli"},  # every `pangu` command: the top floor
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}

# (importing module, imported package): the known exceptions, each with its reason
ALLOWED = {
    ("runtime.py", "devices"): "PANGU_TEST_NPU loads the device plugin before paddle is imported",
    ("devices/sim_npu/__init__.py", "kernels"): "the native-build helpers (cache, lock, failure line) kernels/ owns",
    ("__init__.py", "model"): "registers PanGu with PaddleNLP's Auto classes once paddlenlp is imported (lazily)",
}
# (module, module it imports back) inside one package: the known import cycles, each with its reason
CYCLES_ALLOWED = {
    ("tokenizer/fastseg.py", "tokenizer/core.py"): "the compiled segmenter loads jieba's dictionary lazily",
}
CPU_BACKEND_IMPORTERS = {"parallel/topology.py": "fleet set-up", "finetune/arguments.py": "PaddleNLP's fleet set-up"}
PRIVATE_NAMES = ("_run_custom_op", "_c_identity", "_c_concat", "_global_norm", "_set_pipeline_name_mapping",
                 "_pp_to_single_mapping", "shared_comm", "is_firstly_shared", "_is_collective", "_HYBRID_PARALLEL_GROUP",
                 "_sharding_param_grad_view", "_comm_buffer_list")
FENCE = ("parallel/fleet_compat.py", "parallel/cpu_backend/", "kernels/")


def _modules():
    return sorted(p for p in ROOT.rglob("*.py"))


@functools.lru_cache(maxsize=None)
def _tree(path: Path) -> ast.AST:
    return ast.parse(path.read_text(encoding="utf-8"))


def _package(rel: Path) -> str:
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _is_command(rel: Path) -> bool:
    """The top floor: the `cli/` package (every command) and the `entry/` scripts launched processes run."""
    return _package(rel) == "cli" or "entry" in rel.parts[:-1]


def _imported(path: Path) -> list[tuple[str, int]]:
    """(absolute paddle_pangu.* module, line) for every import statement of `path`."""
    rel = path.relative_to(ROOT)
    here = ["paddle_pangu", *rel.with_suffix("").parts]
    pkg = here[:-1]  # the package a relative import starts from (for __init__.py: its own package)
    out = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg[:len(pkg) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names = [f"{base}.{a.name}" for a in node.names] if not node.module else [base]
            out += [(n, node.lineno) for n in names]
    return [(n, line) for n, line in out if n == "paddle_pangu" or n.startswith("paddle_pangu.")]


def _violations():
    found = []
    for path in _modules():
        rel = path.relative_to(ROOT)
        src = _package(rel)
        for name, line in _imported(path):
            parts = name.split(".")
            target = parts[1] if len(parts) > 1 else ""
            if not target or target == src:
                continue
            if target not in RANK:  # a new top-level package or module must be placed in LAYERS
                found.append(f"{rel}:{line} imports {name}: {target!r} is in no layer of docs/ARCHITECTURE.md")
                continue
            imports_command = len(parts) > 2 and parts[2] == "entry" or target == "cli"
            if imports_command and not _is_command(rel):
                found.append(f"{rel}:{line} imports the command module {name}")
            if _is_command(rel) or (str(rel), target) in ALLOWED:
                continue
            if RANK[target] >= RANK.get(src, -1):
                found.append(f"{rel}:{line} imports {name}: {src!r} (layer {RANK.get(src)}) may only import "
                             f"lower layers, {target!r} is layer {RANK[target]}")
    return found


def _package_graph() -> dict[str, set[str]]:
    """module -> the modules of its own top-level package it imports (at any depth: lazy imports count)."""
    files = {p.relative_to(ROOT): p for p in _modules()}
    by_name = {".".join(rel.parent.parts if rel.name == "__init__.py" else rel.with_suffix("").parts): rel
               for rel in files}
    graph = {}
    for rel, path in files.items():
        for name, _ in _imported(path):
            parts = name.split(".")[1:]
            while parts and ".".join(parts) not in by_name:  # `from .mod import name` -> mod
                parts = parts[:-1]
            target = by_name.get(".".join(parts)) if parts else None
            if target is not None and target != rel and len(rel.parts) > 1 and _package(target) == _package(rel):
                graph.setdefault(str(rel), set()).add(str(target))
    return graph


def _cycles() -> list[list[str]]:
    """Every import cycle between modules of one package, as found by a depth-first walk."""
    graph = {a: {b for b in targets if (a, b) not in CYCLES_ALLOWED} for a, targets in _package_graph().items()}
    found, state = [], {}

    def walk(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            walk(node, [])
    return found


def test_every_package_has_a_layer():
    packages = {_package(p.relative_to(ROOT)) for p in _modules()} - {"__init__"}
    assert packages <= set(RANK), f"place {sorted(packages - set(RANK))} in LAYERS and docs/ARCHITECTURE.md"


def test_imports_point_down():
    assert _violations() == []


def test_the_rule_catches_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a model module importing training is reported."""
    fake = ROOT / "model" / "_architecture_probe.py"
    monkeypatch.setattr(__import__(__name__), "_modules", lambda: [fake])
    original = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: "from ..training import trainer\n"
                        if self == fake else original(self, *a, **k))
    (found,) = _violations()
    assert "model/_architecture_probe.py:1 imports paddle_pangu.training" in found and f"layer {RANK['training']}" in found


def test_no_import_cycle_inside_a_package():
    assert _cycles() == []


def test_the_cycle_check_catches_a_cycle(monkeypatch):
    """The checker itself: two inference modules importing each other (one lazily, inside a function)."""
    a, b = ROOT / "inference" / "_cycle_probe_a.py", ROOT / "inference" / "_cycle_probe_b.py"
    monkeypatch.setattr(__import__(__name__), "_modules", lambda: [a, b])
    text = {a: "from ._cycle_probe_b import x\n", b: "def f():\n    from . import _cycle_probe_a\n"}
    original = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *args, **k: text[self] if self in text
                        else original(self, *args, **k))
    assert _cycles() == [["inference/_cycle_probe_a.py", "inference/_cycle_probe_b.py", "inference/_cycle_probe_a.py"]]


def _model_kernel_importers(paths) -> list[str]:
    """model/ modules other than model/ops.py that import paddle_pangu.kernels."""
    return [str(p.relative_to(ROOT)) for p in paths if p.relative_to(ROOT).parts[0] == "model"
            and p.name != "ops.py" and any(n.split(".")[:2] == ["paddle_pangu", "kernels"] for n, _ in _imported(p))]


def test_the_model_reaches_the_kernels_only_through_model_ops(monkeypatch):
    """Where each model op runs (fused kernel / Paddle op / NPU op) is decided in model/ops.py alone."""
    assert _model_kernel_importers(_modules()) == []
    fake = ROOT / "model" / "_kernels_probe.py"  # the checker itself: a second dispatch point is reported
    original = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: "from .. import kernels\n"
                        if self == fake else original(self, *a, **k))
    assert _model_kernel_importers([fake]) == ["model/_kernels_probe.py"]


def test_cpu_backend_is_imported_in_one_place():
    importers = {str(p.relative_to(ROOT)) for p in _modules() if not str(p.relative_to(ROOT)).startswith(FENCE[1])
                 and any(n.startswith("paddle_pangu.parallel.cpu_backend") for n, _ in _imported(p))}
    assert importers <= set(CPU_BACKEND_IMPORTERS), importers


@pytest.mark.parametrize("name", PRIVATE_NAMES)
def test_private_paddle_names_stay_behind_the_fence(name):
    users = [str(p.relative_to(ROOT)) for p in _modules() if not str(p.relative_to(ROOT)).startswith(FENCE)
             and any(isinstance(n, ast.Attribute) and n.attr == name
                     for n in ast.walk(_tree(p)))]
    assert users == [], f"{name} used outside parallel/fleet_compat.py: {users}"


EXTERNAL = ("paddle", "paddlenlp")
# Every private Paddle / PaddleNLP name used outside the FENCE, as found by the rule of _private_uses, with its
# reason. A new use fails test_private_names_outside_the_fence_are_found_by_rule_and_each_has_a_reason
# until it moves behind the fence or is listed here; an entry that is no longer used fails it too.
PRIVATE_USES = {
    "finetune/arguments.py": ({"_parse_dataclass_field"},
                              "PdArgumentParser's own field -> argparse rule, so `pangu finetune` flags parse as "
                              "PaddleNLP's do (plus the project's aliases)"),
    "finetune/trainer.py": ({"_get_train_sampler", "_save_checkpoint", "_rotate_checkpoints"},
                            "the Trainer's documented override points for a one-process sampler and rotating "
                            "checkpoints the Trainer itself skips outside hybrid parallel runs"),
    "io/safe_load.py": ({"_pack_loaded_dict"}, "re-joins the >4 GB parameters paddle.save splits, after the "
                                               "arrays-only unpickler (Paddle's public load would unpickle anything)"),
    "model/auto.py": ({"_BaseAutoModelClass", "_get_model_class_from_config"},
                      "PaddleNLP 3.0.0b4's Auto classes have no register() for models: PanGu is found by its "
                      "architectures field"),
    "model/modeling.py": ({"_get_tensor_parallel_mappings", "_init_weights"},
                          "PretrainedModel's documented hooks: the weight table's split actions, the init"),
    "tokenizer/tokenization.py": ({"_convert_id_to_token", "_convert_token_to_id", "_decode", "_tokenize"},
                                  "PretrainedTokenizer's documented subclass methods"),
    "training/optim.py": ({"_amsgrad", "_append_optimize_op", "_apply_decay_param_fun", "_beta1", "_beta1_pow_acc_str",
                           "_beta2", "_beta2_pow_acc_str", "_create_param_lr", "_dygraph_clip", "_epsilon",
                           "_get_accumulator_master", "_is_dtype_fp16_or_bf16", "_lazy_mode", "_lr_ratio",
                           "_moment1_acc_str", "_moment2_acc_str", "_multi_precision", "_weight_decay"},
                          "the fused CPU AdamW updates Paddle's own accumulators in Paddle's order, and the clip "
                          "records the norm it computes (fleet_compat.check_version pins paddle 3.3.1)"),
}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _root(node):
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _private_uses(path: Path, module_name: str | None = None) -> set[str]:
    """Private Paddle / PaddleNLP names `path` uses, by rule: a private name imported from paddle / paddlenlp
    (or through a private module), a private attribute of a name imported from them, and in a class with such
    a base: private attributes it reads from `self` / `cls` without defining them, and private methods that
    override one its Paddle / PaddleNLP bases define (all its private methods when the class is built inside
    a function and cannot be looked up)."""
    import importlib

    tree = _tree(path)
    aliases = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            aliases |= {a.asname or a.name.split(".")[0] for a in n.names if a.name.split(".")[0] in EXTERNAL}
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and (n.module or "").split(".")[0] in EXTERNAL:
            aliases |= {a.asname or a.name for a in n.names}
    found = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.level == 0 and (n.module or "").split(".")[0] in EXTERNAL:
            found |= {a.name for a in n.names if _private(a.name)} | {p for p in n.module.split(".") if _private(p)}
        elif isinstance(n, ast.Attribute) and _private(n.attr) and _root(n) in aliases:
            found.add(n.attr)
        elif isinstance(n, ast.ClassDef) and any(_root(b) in aliases for b in n.bases):
            methods = {f.name for f in n.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
            assigned = {t.attr for m in ast.walk(n) for t in getattr(m, "targets", [getattr(m, "target", None)])
                        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}
            found |= {m.attr for m in ast.walk(n) if isinstance(m, ast.Attribute) and isinstance(m.value, ast.Name)
                      and m.value.id in ("self", "cls") and _private(m.attr)} - methods - assigned
            module = importlib.import_module(
                module_name or ".".join(["paddle_pangu", *path.relative_to(ROOT).with_suffix("").parts]))
            cls = getattr(module, n.name, None)
            bases = [b for b in cls.__mro__[1:] if b.__module__.split(".")[0] in EXTERNAL] if cls else None
            found |= {f for f in methods if _private(f) and (bases is None or any(f in vars(b) for b in bases))}
    return found


def test_private_names_outside_the_fence_are_found_by_rule_and_each_has_a_reason():
    found = {}
    for p in _modules():
        rel = str(p.relative_to(ROOT))
        if not rel.startswith(FENCE) and (names := _private_uses(p)):
            found[rel] = names
    assert found == {rel: names for rel, (names, _) in PRIVATE_USES.items()}


def test_the_private_name_rule_finds_each_kind_of_use(tmp_path, monkeypatch):
    """The rule itself, on a probe module: an import, an attribute, an override and an inherited attribute."""
    probe = tmp_path / "pangu_private_probe.py"
    probe.write_text("import paddle\nfrom paddle.framework.io import _pack_loaded_dict\n"
                     "x = paddle.base.core._cuda_synchronize\n"
                     "class O(paddle.optimizer.AdamW):\n"
                     "    def _append_optimize_op(self, block, pg):\n        return self._beta1\n"
                     "    def _mine(self):\n        self._own = 1\n        return self._own\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _private_uses(probe, "pangu_private_probe") == {"_pack_loaded_dict", "_cuda_synchronize",
                                                          "_append_optimize_op", "_beta1"}


def test_every_command_lives_in_the_cli_package():
    """One home for the top floor: each `pangu` subcommand is a module of `cli/`, and no command module
    (`cli.py`, `*_cli.py`, a `commands/` or nested `cli/` directory) is left in a library package."""
    from paddle_pangu.cli import COMMANDS

    assert [m for m, _ in COMMANDS.values() if not m.startswith("paddle_pangu.cli.")] == []
    assert all((ROOT / "cli" / (m.rsplit(".", 1)[1] + ".py")).is_file() for m, _ in COMMANDS.values())
    stray = [str(p.relative_to(ROOT)) for p in _modules() if _package(p.relative_to(ROOT)) != "cli"
             and (p.stem == "cli" or p.stem.endswith("_cli") or {"cli", "commands"} & set(p.relative_to(ROOT).parts[:-1]))]
    assert stray == []


# Library modules that define command-line arguments outside cli/ and entry/, with the reason.
PARSERS_OUTSIDE_CLI = {
    "finetune/arguments.py": "the fine-tune argument model: PaddleNLP's PdArgumentParser builds it from the "
                             "Trainer's dataclasses, used by `pangu finetune` (cli/finetune.py) and in-process by "
                             "parse_finetune_args for config files",
}


def test_command_lines_are_parsed_only_in_cli_and_entry():
    """Every argparse parser and argument lives in the top floor (a `pangu` command or a launched entry
    script); a library module that builds one is a second command line for the same job."""
    found = set()
    for path in _modules():
        rel = path.relative_to(ROOT)
        if _is_command(rel):
            continue
        for node in ast.walk(_tree(path)):
            name = (node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")) \
                if isinstance(node, ast.Call) else node.name if isinstance(node, ast.FunctionDef) else ""
            if name in ("ArgumentParser", "add_argument", "add_arguments", "add_parser", "parse_args"):
                found.add(rel.as_posix())
    assert sorted(found - set(PARSERS_OUTSIDE_CLI)) == []
    assert sorted(set(PARSERS_OUTSIDE_CLI) - found) == []  # a listed exception that no longer is one


def test_every_document_the_code_cites_exists():
    """A document named in the package, tools/ or tests/ (`docs/<name>.md`, or a bare `<name>.md`) is a file
    of the repository: docs/<name>.md, or <name>.md at the top (README.md)."""
    import re

    repo = ROOT.parent
    missing = set()
    for path in [*repo.joinpath("paddle_pangu").rglob("*"), *repo.joinpath("tools").rglob("*"),
                 *repo.joinpath("tests").rglob("*.py")]:
        if path.suffix not in (".py", ".cc", ".h", ".sh") or not path.is_file():
            continue
        for cited in re.findall(r"(?<![\w/.-])((?:docs/)?[A-Za-z_]+\.md)\b", path.read_text(encoding="utf-8")):
            name = cited.split("/")[-1]
            exists = (repo / cited).is_file() if cited.startswith("docs/") else \
                (repo / "docs" / name).is_file() or (repo / name).is_file()
            if not exists:
                missing.add(f"{path.relative_to(repo)}: {cited}")
    assert sorted(missing) == []


def test_every_ref_citation_names_a_fact_in_docs_reference():
    import re

    reference = " ".join((ROOT.parent / "docs" / "REFERENCE.md").read_text(encoding="utf-8").lower().split())
    cited = {" ".join(m.replace("#", " ").split()) for p in _modules()
             for m in re.findall(r'REF "([^"]+)"', p.read_text(encoding="utf-8"))}
    assert len(cited) > 20
    assert sorted(c for c in cited if c.lower() not in reference) == []


def test_fleet_compat_refuses_an_unchecked_paddle(monkeypatch):
    from paddle_pangu.errors import PanGuError
    from paddle_pangu.parallel import fleet_compat

    fleet_compat.check_version()  # the installed paddle is the checked one
    monkeypatch.delenv(fleet_compat.ALLOW_ENV, raising=False)
    with pytest.raises(PanGuError, match=r"checked against paddlepaddle 3\.3\.1, but paddle 9\.9\.9"):
        fleet_compat.check_version("9.9.9")
    monkeypatch.setenv(fleet_compat.ALLOW_ENV, "1")
    monkeypatch.setattr(fleet_compat, "_checked", [])
    fleet_compat.check_version("9.9.9")  # allowed: a warning, once
    assert fleet_compat._checked == ["9.9.9"]
