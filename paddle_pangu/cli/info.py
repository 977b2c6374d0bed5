"""`pangu info`: package versions, Python, available devices, and where the tokenizer files are."""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys

from paddle_pangu.tokenizer.batch import default_num_workers

# label -> distribution names to try (the first installed one wins)
PACKAGES: dict[str, tuple[str, ...]] = {
    "paddle": ("paddlepaddle", "paddlepaddle-gpu"),
    "paddlenlp": ("paddlenlp",),
    "paddle_pangu": ("paddle_pangu", "paddle-pangu"),
    "sentencepiece": ("sentencepiece",),
    "jieba": ("jieba",),
    "pcl-pangu": ("pcl-pangu",),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--vocab", default=None, help="check this vocab.model (or directory) instead of the default")


def package_versions() -> dict[str, str | None]:
    """Installed version of each package in PACKAGES (None when not installed)."""
    versions: dict[str, str | None] = {}
    for label, dists in PACKAGES.items():
        versions[label] = None
        for dist in dists:
            try:
                versions[label] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions


def device_info() -> dict:
    """Devices paddle can use; {"error": ...} when paddle cannot be imported."""
    try:
        import paddle
    except Exception as err:  # noqa: BLE001 - report any import failure, do not crash `info`
        return {"error": f"cannot import paddle: {err}"}
    info = {
        "default_device": paddle.get_device(),
        "device_types": list(paddle.device.get_all_device_type()),
        "custom_device_types": list(paddle.device.get_all_custom_device_type()),
        "compiled_with_cuda": bool(paddle.is_compiled_with_cuda()),
        "cuda_device_count": int(paddle.device.cuda.device_count()) if paddle.is_compiled_with_cuda() else 0,
    }
    info["available"] = ["cpu"] + [d for d in info["device_types"] + info["custom_device_types"] if d != "cpu"]
    info["cpu_count"] = default_num_workers()
    return info


def tokenizer_info(vocab: str | None = None) -> dict:
    """The vocab file found (and its size), or the error explaining what was tried."""
    from paddle_pangu.tokenizer.core import load_sentencepiece

    try:
        path, sp = load_sentencepiece(vocab)
    except (FileNotFoundError, ValueError) as err:
        return {"vocab_file": None, "error": str(err)}
    return {"vocab_file": str(path), "vocab_size": sp.get_piece_size(), "error": None}


def collect_info(vocab: str | None = None) -> dict:
    return {
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": platform.platform(),
        "packages": package_versions(),
        "devices": device_info(),
        "tokenizer": tokenizer_info(vocab),
    }


def format_info(info: dict) -> str:
    lines = [f"python        {info['python']['version']} ({info['python']['executable']})",
             f"platform      {info['platform']}"]
    for name, version in info["packages"].items():
        lines.append(f"{name:<13} {version or 'NOT INSTALLED'}")
    dev = info["devices"]
    if "error" in dev:
        lines.append(f"devices       {dev['error']}")
    else:
        lines.append(f"devices       {', '.join(dev['available'])} (default {dev['default_device']}, "
                     f"{dev['cpu_count']} usable CPU cores, cuda devices {dev['cuda_device_count']}, "
                     f"custom {dev['custom_device_types'] or 'none'})")
    tok = info["tokenizer"]
    if tok["error"]:
        lines.append("tokenizer     NOT FOUND: " + tok["error"].replace("\n", "\n              "))
    else:
        lines.append(f"tokenizer     {tok['vocab_file']} ({tok['vocab_size']} pieces)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    info = collect_info(args.vocab)
    print(json.dumps(info, indent=2, ensure_ascii=False) if args.json else format_info(info))
    return 0 if info["tokenizer"]["error"] is None else 1
