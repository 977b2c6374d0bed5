"""PanGu-alpha on PaddlePaddle.

`import paddle_pangu` registers PanGu with PaddleNLP's Auto classes (`AutoConfig`,
`AutoModelForCausalLM`, `AutoTokenizer`; see `model/auto.py`) without importing paddle or
paddlenlp itself: if paddlenlp is already imported, registration happens now; otherwise an import
hook runs it right after `paddlenlp` finishes importing. So both orders work:

    import paddle_pangu
    from paddlenlp.transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained("runs/x/final_model")
"""
from __future__ import annotations

import sys

_HOOKED = "paddlenlp"  # the whole package: its __init__ imports transformers, trainer, peft, ...


def _initializing(name: str) -> bool:
    module = sys.modules.get(name)
    return module is None or bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _maybe_register() -> None:
    """Register once paddlenlp is fully imported and none of our own modules is half-imported
    (registration imports paddle_pangu.model, which needs paddle_pangu.config etc. complete)."""
    if _initializing(_HOOKED) or any(_initializing(n) for n in list(sys.modules) if n.startswith("paddle_pangu.")):
        return
    _remove_hook()
    try:
        from .model import auto  # importing paddle_pangu.model registers; register() is idempotent

        auto.register()
    except Exception as exc:  # never break the user's paddlenlp import over our registration
        import warnings

        warnings.warn(f"paddle_pangu: could not register PanGu with PaddleNLP's Auto classes: {exc}")


class _RegisterAfterImport:
    """A meta-path finder that wraps the loaders of `paddlenlp` and of our own modules, so that
    registration runs right after the import that completes the last of them."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _HOOKED and not fullname.startswith("paddle_pangu."):
            return None
        for finder in sys.meta_path:
            if isinstance(finder, _RegisterAfterImport) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


class _Loader:
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        module.__spec__._initializing = False  # importlib clears it only after we return
        if _HOOKED in sys.modules:
            _maybe_register()

    def __getattr__(self, name):  # get_resource_reader, is_package, ... of the real loader
        return getattr(self.inner, name)


def _remove_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _RegisterAfterImport)]


if _HOOKED in sys.modules and not _initializing(_HOOKED):
    _maybe_register()
elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterImport())
