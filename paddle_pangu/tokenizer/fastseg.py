"""The exact compiled jieba segmenter (`jieba_exact.cc`): built on first use, python jieba as the fallback.

`segment(text)` returns what the PanGu tokenizer hands to SentencePiece (REF "Tokenizer"):
`" ".join(seg.translate({" ": U+2582, "\\n": U+2583}) for seg in jieba.cut(text, cut_all=False))`,
computed by a C++ re-implementation of jieba 0.42.1's `cut(HMM=True)` that reads the dictionary and the HMM
tables jieba itself loaded (`jieba.dt.FREQ`, `jieba.finalseg.*_P`, from the installed package; nothing is
copied into this repository). Its output is checked string for string against python jieba
(tests/unit/test_fastseg.py, `pangu bench data`; docs/DATA.md "Segmenter").

Build: `g++` on first use, like `paddle_pangu/kernels/`: the shared object is cached under
`$PANGU_KERNEL_CACHE` (default `~/.cache/paddle_pangu/kernels`) in a directory keyed by the source, the
flags and the Python version, built once under a file lock (the workers of one run wait for one build),
written to a temporary name and renamed, so a build cut short is never loaded. A machine without a compiler
(or any other build failure) uses python jieba with one logged line. `PANGU_JIEBA=python` forces python
jieba. The compiled path is used only while jieba's dictionary is the one it copied (same dict object,
size and total: `jieba.add_word` / `load_userdict` / `set_dictionary` after start-up switch back to
python jieba) and jieba's `Force_Split_Words` is empty.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import math
import os
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path

from ..io.durable import atomic_write
from ..kernels.native_build import cache_root

logger = logging.getLogger(__name__)

ENV = "PANGU_JIEBA"  # "python": always python jieba
SOURCE = Path(__file__).with_name("jieba_exact.cc")
MODULE_NAME = "_pangu_jieba"
# -O2 without -ffast-math and without FMA contraction: the route and Viterbi sums must round exactly as
# CPython's float additions do (x86-64: SSE2 doubles, no extended precision)
CFLAGS = ["-O2", "-std=c++17", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math"]

_lock = threading.Lock()
_STATE: dict = {"module": None, "tried": False, "reason": None, "dict": None}

_SPACE_PIECE, _NEWLINE_PIECE = "\u2582", "\u2583"
_TRANSLATE = str.maketrans({" ": _SPACE_PIECE, "\n": _NEWLINE_PIECE})


def _tag() -> str:
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(" ".join(CFLAGS + [sys.version, sysconfig.get_config_var("EXT_SUFFIX") or ""]).encode())
    return h.hexdigest()[:12]


def build_dir() -> Path:
    return cache_root("kernels") / f"jieba_{_tag()}"


def _import(path: Path):
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build():
    where = build_dir()
    where.mkdir(parents=True, exist_ok=True)
    library = where / (MODULE_NAME + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))
    with open(where / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other processes of a run wait for the one build
        if library.exists():
            try:
                return _import(library)
            except ImportError as exc:  # damaged: build again
                print(f"pangu jieba: the cached build {library} does not load ({exc}); rebuilding it",
                      file=sys.stderr)
                library.unlink()
        cxx = os.environ.get("CXX", "g++")
        fd, tmp = tempfile.mkstemp(dir=where, suffix=".so.tmp")
        os.close(fd)
        cmd = [cxx, *CFLAGS, f"-I{sysconfig.get_paths()['include']}", str(SOURCE), "-o", tmp]
        with open(where / "build.log", "ab") as log:
            log.write((" ".join(cmd) + "\n").encode())
            log.flush()
            try:
                proc = subprocess.run(cmd, stdout=log, stderr=log, timeout=600)
            except BaseException:
                os.unlink(tmp)
                raise
        if proc.returncode != 0:
            os.unlink(tmp)
            raise RuntimeError(f"{cxx} exited with {proc.returncode}")
        os.replace(tmp, library)  # never a half-written library under the final name
        return _import(library)


# ---- the tables cache: a worker restores the initialised tables instead of loading jieba's dictionary ----
_CACHE_MAGIC = b"PGJIEBA-TABLES1 "


def _jieba_files() -> list[Path]:
    """The installed jieba files the tables come from (found without importing jieba)."""
    spec = importlib.util.find_spec("jieba")
    root = Path(spec.origin).parent
    return [root / "__init__.py", root / "dict.txt", root / "finalseg" / "__init__.py",
            *(root / "finalseg" / f"prob_{n}.py" for n in ("start", "trans", "emit"))]


def tables_cache_path() -> Path:
    """The cache file of the initialised tables, keyed by the extension's tag (its source, flags, Python)
    and the sha256 of jieba's dictionary, HMM tables and code."""
    h = hashlib.sha256(_tag().encode())
    for f in _jieba_files():
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return build_dir() / f"tables_{h.hexdigest()[:20]}.bin"


def _pristine_jieba() -> bool:
    """jieba's dictionary has not been loaded, set or changed in this process (so the cache, built from the
    default dictionary, is what jieba would load)."""
    jieba = sys.modules.get("jieba")
    if jieba is None:
        return True
    finalseg = sys.modules.get("jieba.finalseg")
    return (not jieba.dt.initialized and jieba.dt.dictionary is None
            and not (finalseg is not None and finalseg.Force_Split_Words))


def _restore_cached(module):
    """(dictionary size, total) after restoring the cached tables into `module`, or None (no cache, or one
    that does not verify: then a line says so and the tables are built from jieba and cached again)."""
    path = tables_cache_path()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        end = data.find(b"\n", 0, 256)  # the header line (a view of the rest, not a 55 MB copy of it)
        head = data[:end] if end > 0 else b""
        if not head.startswith(_CACHE_MAGIC):
            raise ValueError("not a tables cache")
        size, total, digest = head[len(_CACHE_MAGIC):].split(b" ")
        payload = memoryview(data)[end + 1:]
        h = hashlib.sha256(size + b" " + total)
        h.update(payload)
        if h.hexdigest().encode() != digest:
            raise ValueError("sha256 mismatch")
        module.restore(payload)
        return int(size), int(total)
    except (ValueError, TypeError) as exc:
        print(f"pangu jieba: the tables cache {path} is damaged ({exc}); building it again", file=sys.stderr)
        return None


def _write_cache(module, size: int, total: int) -> None:
    """The initialised tables to the cache, written to a temporary name and renamed (never seen half-written);
    a cache that cannot be written only costs the next process the dictionary load."""
    path = tables_cache_path()
    payload = module.dump()
    h = hashlib.sha256(f"{size} {total}".encode())
    h.update(payload)
    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(_CACHE_MAGIC + f"{size} {total} {h.hexdigest()}\n".encode())
            fh.write(payload)

    try:
        atomic_write(str(path), write)
    except OSError as exc:
        logger.debug("pangu jieba: tables cache not written (%s)", exc)


def _jieba_tables():
    """(dict object, its size, total) of jieba's loaded dictionary, after `init_jieba()`."""
    import jieba

    return jieba.dt.FREQ, len(jieba.dt.FREQ), jieba.dt.total


def extension():
    """The compiled module, built or loaded once per process (not initialised: `load()` does that; the
    MinHash of `data/dedup.py` needs no dictionary), or None after one logged line when the build fails."""
    if "ext" not in _STATE:
        with _lock:
            if "ext" not in _STATE:
                try:
                    _STATE["ext"] = _build()
                except Exception as exc:  # no compiler, no Python headers, read-only cache
                    first = str(exc).splitlines()[0] if str(exc) else ""
                    _STATE["build_error"] = f"build failed ({type(exc).__name__}: {first}; log {build_dir() / 'build.log'})"
                    print(f"pangu jieba: {_STATE['build_error']}; using python jieba", file=sys.stderr)
                    _STATE["ext"] = None
    return _STATE["ext"]


def load():
    """The initialised compiled module, or None (then `reason()` says why). Once per process."""
    if _STATE["tried"]:
        return _STATE["module"]
    if os.environ.get(ENV) != "python":
        extension()  # outside _lock: it takes the lock itself
    with _lock:
        if _STATE["tried"]:
            return _STATE["module"]
        if os.environ.get(ENV) == "python":
            _STATE["reason"] = f"{ENV}=python"
        elif _STATE.get("ext") is None:
            _STATE["reason"] = _STATE["build_error"]
        else:
            try:
                module = _STATE["ext"]
                cached = _restore_cached(module) if _pristine_jieba() else None
                if cached is not None:  # jieba's dictionary is not loaded in this process (1 s saved)
                    _STATE["dict"] = (None, *cached)
                else:
                    from jieba import finalseg

                    from .core import init_jieba

                    fresh = _pristine_jieba()  # the tables about to load are the default dictionary's
                    init_jieba()
                    freq, size, total = _jieba_tables()
                    module.init(freq, math.log(total), finalseg.start_P, finalseg.trans_P, finalseg.emit_P,
                                float(finalseg.MIN_FLOAT))
                    _STATE["dict"] = (freq, size, total)
                    if fresh:
                        _write_cache(module, size, total)
                _STATE["module"] = module
            except Exception as exc:  # jieba's tables not as expected: python jieba then
                first = str(exc).splitlines()[0] if str(exc) else ""
                _STATE["reason"] = f"init failed ({type(exc).__name__}: {first})"
                print(f"pangu jieba: {_STATE['reason']}; using python jieba", file=sys.stderr)
        _STATE["tried"] = True
    return _STATE["module"]


def reason() -> str | None:
    return _STATE["reason"]


def _usable():
    """The module while jieba's dictionary is still the one it copied, else None."""
    module = load()
    if module is None:
        return None
    freq, size, total = _STATE["dict"]
    if freq is None:  # restored from the cache: jieba untouched, or loaded since with the same dictionary
        jieba = sys.modules.get("jieba")
        if jieba is None:
            return module
        finalseg = sys.modules.get("jieba.finalseg")
        if (jieba.dt.dictionary is not None or finalseg is not None and finalseg.Force_Split_Words
                or jieba.dt.initialized and (len(jieba.dt.FREQ) != size or jieba.dt.total != total)):
            return None
        return module
    import jieba
    from jieba import finalseg

    if jieba.dt.FREQ is not freq or len(freq) != size or jieba.dt.total != total or finalseg.Force_Split_Words:
        return None
    return module


def python_segment(text: str) -> str:
    """The reference: python jieba, exactly as REF "Tokenizer" writes it."""
    import jieba

    from .core import init_jieba

    init_jieba()  # quiet, once (the compiled path may have left jieba's dictionary unloaded)

    return " ".join(seg.translate(_TRANSLATE) for seg in jieba.cut(text, cut_all=False))


def segment(text: str) -> str:
    """The PanGu pre-SentencePiece string of `text` (compiled when available, identical to `python_segment`)."""
    module = _usable()
    if module is None:
        return python_segment(text)
    return module.segment(text)


def cut(text: str) -> list[str]:
    """`list(jieba.cut(text, cut_all=False))`, compiled when available."""
    module = _usable()
    if module is None:
        import jieba

        from .core import init_jieba

        init_jieba()
        return list(jieba.cut(text, cut_all=False))
    return module.cut(text)


def backend() -> str:
    """"compiled" or "python": what `segment` uses in this process now."""
    return "compiled" if _usable() is not None else "python"


def verify(texts, progress_every: int = 5000) -> dict:
    """Compare the compiled segmenter with python jieba on every string of `texts` (development check)."""
    import time

    import jieba

    from .core import init_jieba

    module = load()
    init_jieba()
    if module is None:
        raise RuntimeError(f"the compiled segmenter is not available: {reason()}")
    n = chars = differing = 0
    python_s = compiled_s = 0.0
    first: list = []
    for text in texts:
        t0 = time.perf_counter()
        ref = list(jieba.cut(text, cut_all=False))
        t1 = time.perf_counter()
        got = module.cut(text)
        compiled_s += time.perf_counter() - t1
        python_s += t1 - t0
        n, chars = n + 1, chars + len(text)
        if got != ref:
            differing += 1
            if len(first) < 5:
                first.append(text[:80])
        if progress_every and n % progress_every == 0:
            print(f"verify: {n} strings, {differing} differing", file=sys.stderr)
    return {"strings": n, "chars": chars, "differing": differing, "first_differing": first,
            "python_jieba_s": round(python_s, 2), "compiled_s": round(compiled_s, 2),
            "speedup": round(python_s / compiled_s, 1) if compiled_s else None}
