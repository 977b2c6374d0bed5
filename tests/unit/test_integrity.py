"""Integrity under hostile input (issue 29): no silent garbage, no lost run, no hang on a few bytes.

Each test plants one fault a user (or an attacker, or a full disk) can cause and drives the `pangu`
command the user would run: a one-line `pangu <cmd>: error:` naming the file / tensor / field with
exit 2, nothing already written lost, nothing half-written under a final name. Each fails on the
tree before issue 29 (there: exit 0 with garbage, a traceback, or a hang).
"""
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import paddle
import pytest

from paddle_pangu.cli import main
from paddle_pangu.config import get_preset
from paddle_pangu.io.safe_load import load_pdparams
from paddle_pangu.model import PanGuForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_RUN = os.path.join(ROOT, "configs", "pretrain", "tiny_cpu_single.yaml")


def _one_line(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, (code, err[-1500:])
    lines = [l for l in err.splitlines() if l.startswith(f"pangu {argv[0]}: error:")]
    assert len(lines) == 1, err[-1500:]
    return lines[0]


def _pangu(args, timeout=600, **kw):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "PANGU_QUIET_RUNTIME": "1"}
    return subprocess.run([sys.executable, "-m", "paddle_pangu.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT, **kw)


def _cli_error(proc, command):
    lines = [l for l in proc.stderr.splitlines() if l.startswith(f"pangu {command}: error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(lines) == 1, (
        proc.returncode, proc.stderr[-2000:])
    return lines[0]


@pytest.fixture(scope="module")
def sealed_dir(tmp_path_factory):
    """A model directory as `save_pretrained` writes it now: weights + config + MANIFEST.json."""
    path = tmp_path_factory.mktemp("sealed") / "model"
    paddle.seed(0)
    PanGuForCausalLM(get_preset("tiny", num_layers=2, max_position_embeddings=16)).save_pretrained(str(path))
    assert os.path.isfile(path / "MANIFEST.json")
    return str(path)


def _copy(src, dst, skip=()):
    os.makedirs(dst)
    for name in os.listdir(src):
        if name not in skip:
            with open(os.path.join(src, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
                g.write(f.read())
    return str(dst)


GENERATE = ["--prompt", "北京", "--max-new-tokens", "2", "--no-stream"]


# ---------------------------------------------------------------------------- 1. one run per output dir

def test_second_training_into_a_busy_output_dir_is_refused_and_a_dead_holder_is_taken_over(tmp_path, capsys):
    """Two `pangu train` into one directory: the second is refused naming the first's pid; after the first is
    killed (-9) its stale lock is taken over, and resuming from its checkpoint is said on the console."""
    out = tmp_path / "run"
    common = ["train", "--config", TINY_RUN, "--output-dir", str(out), "--set", "checkpoint.save_interval=1",
              "--set", "logging.progress_bar=false"]
    env = {**os.environ, "PYTHONPATH": ROOT, "PANGU_QUIET_RUNTIME": "1"}
    first = subprocess.Popen([sys.executable, "-m", "paddle_pangu.cli", *common, "--max-steps", "100000"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    try:
        lock = out / ".pangu.lock"
        deadline = time.time() + 300
        while not (out / "checkpoints" / "latest").exists():  # holding the lock, one checkpoint sealed
            assert first.poll() is None and time.time() < deadline, "the first run died or never checkpointed"
            time.sleep(0.5)
        assert f"pid {first.pid} " in lock.read_text()
        first.send_signal(signal.SIGSTOP)  # a stopped process still holds its lock (and spends no CPU meanwhile)
        from paddle_pangu.cli import main  # the refused second run in this process: no third start-up

        capsys.readouterr()
        code = main([*common, "--max-steps", "2", "--set", "train.seed=7"])
        err = capsys.readouterr().err
        lines = [l for l in err.splitlines() if l.startswith("pangu train: error:")]
        assert code == 2 and "Traceback" not in err and len(lines) == 1, err[-2000:]
        line = lines[0]
        assert f"pid {first.pid} " in line and str(out) in line and "in use" in line
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["type"] == "train"] == list(range(1, len(rows) + 1))  # no second writer
    # links planted where the next run writes: its log and its final weights must replace them, not follow them
    victim = tmp_path / "victim"
    victim.write_text("not yours")
    os.remove(out / "metrics.jsonl")
    os.symlink(victim, out / "metrics.jsonl")
    (out / "final_model").mkdir(exist_ok=True)
    os.symlink(victim, out / "final_model" / "model_state.pdparams")
    third = _pangu([*common, "--max-steps", "2"])  # the kernel released the dead holder's flock
    assert third.returncode == 0, third.stderr[-2000:]
    assert victim.read_text() == "not yours"
    assert not os.path.islink(out / "metrics.jsonl") and not os.path.islink(out / "final_model" / "model_state.pdparams")
    assert PanGuForCausalLM.from_pretrained(str(out / "final_model")) is not None  # sealed, verifies
    assert "pangu train: resuming from" in third.stdout and "checkpoint.resume=auto" in third.stdout
    assert f"pid {first.pid} " not in (out / ".pangu.lock").read_text()  # the new holder wrote itself


# ---------------------------------------------------------------------------- 2. verified model directories

def _flip(path, offset_from_end=4096, n=48):
    data = bytearray(open(path, "rb").read())
    for i in range(n):
        data[-offset_from_end + i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _drop_tensors(path, names):
    from paddle_pangu.io.weights import save_pdparams

    state = load_pdparams(path)
    for n in names:
        state.pop(n)
    save_pdparams(path, state)


@pytest.mark.parametrize("damage,expected", [
    ("flip", ["model_state.pdparams", "hash differs"]),
    ("truncate", ["model_state.pdparams", "bytes, the manifest says"]),
    ("extra_weights", ["model.safetensors", "does not list"]),
    ("unsealed_missing_embedding", ["model_state.pdparams", "pangu.embeddings.word_embeddings.weight is missing"]),
    ("unsealed_unexpected", ["model_state.pdparams", "unexpected tensor pangu.extra.weight"]),
    ("unsealed_vocab_mismatch", ["word_embeddings.weight has shape [40000, 64]", "[1000, 64]"]),
])
def test_damaged_model_directory_is_refused_by_generate(sealed_dir, tmp_path, capsys, damage, expected):
    d = _copy(sealed_dir, tmp_path / "m", skip=("MANIFEST.json",) if damage.startswith("unsealed") else ())
    weights = os.path.join(d, "model_state.pdparams")
    if damage == "flip":
        _flip(weights)
    elif damage == "truncate":
        open(weights, "r+b").truncate(os.path.getsize(weights) - 1000)
    elif damage == "extra_weights":
        from safetensors.numpy import save_file

        save_file({"pangu.embeddings.word_embeddings.weight": np.zeros((40000, 64), "float32")},
                  os.path.join(d, "model.safetensors"))
    elif damage == "unsealed_missing_embedding":
        _drop_tensors(weights, ["pangu.embeddings.word_embeddings.weight", "pangu.final_layernorm.bias"])
    elif damage == "unsealed_unexpected":
        from paddle_pangu.io.weights import save_pdparams

        save_pdparams(weights, {**load_pdparams(weights), "pangu.extra.weight": np.ones(3, "float32")})
    elif damage == "unsealed_vocab_mismatch":
        cfg = json.load(open(os.path.join(d, "config.json")))
        json.dump({**cfg, "vocab_size": 1000}, open(os.path.join(d, "config.json"), "w"))
    line = _one_line(capsys, ["generate", "--model", d, *GENERATE])
    assert all(e in line for e in expected), line


def test_intact_sealed_and_unsealed_directories_still_load(sealed_dir, tmp_path, capsys):
    """The checks refuse damage, not directories: sealed, and hand-made without a manifest, both generate."""
    unsealed = _copy(sealed_dir, tmp_path / "plain", skip=("MANIFEST.json",))
    for d in (sealed_dir, unsealed):
        assert main(["generate", "--model", d, *GENERATE]) == 0, capsys.readouterr().err[-800:]


def test_merge_lora_without_adapter_weights_fails_and_output_may_not_be_the_base(sealed_dir, tmp_path, capsys):
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "lora_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "target_modules": [".*q_proj"]}))
    line = _one_line(capsys, ["merge-lora", "--base", sealed_dir, "--lora", str(lora), "--output", str(tmp_path / "o")])
    assert "lora_model_state" in line and str(lora) in line and not (tmp_path / "o").exists()
    before = {n: os.path.getmtime(os.path.join(sealed_dir, n)) for n in os.listdir(sealed_dir)}
    line = _one_line(capsys, ["merge-lora", "--base", sealed_dir, "--lora", str(lora), "--output", sealed_dir])
    assert "--base" in line and "choose a separate directory" in line
    assert before == {n: os.path.getmtime(os.path.join(sealed_dir, n)) for n in os.listdir(sealed_dir)}


# ---------------------------------------------------------------------------- 3/4. atomic, symlink-safe writes

def test_convert_to_hf_into_its_own_source_is_refused_and_the_source_kept(sealed_dir, tmp_path, capsys):
    d = _copy(sealed_dir, tmp_path / "m")
    snapshot = {n: open(os.path.join(d, n), "rb").read() for n in os.listdir(d)}
    for out in (d, os.path.join(d, "hf")):
        line = _one_line(capsys, ["convert", "--to", "hf", d, "--output", out])
        assert "is, contains or lies inside the input" in line
    assert {n: open(os.path.join(d, n), "rb").read() for n in os.listdir(d)} == snapshot


def test_export_replaces_planted_symlinks_and_seals_the_directory(sealed_dir, tmp_path, capsys):
    out = tmp_path / "exp"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("do not overwrite")
    os.symlink(victim, out / "config.json")
    os.symlink(victim, out / "prefill.pdiparams")
    assert main(["export", "--model", sealed_dir, "--output", str(out)]) == 0, capsys.readouterr().err[-800:]
    assert victim.read_text() == "do not overwrite"
    assert not os.path.islink(out / "config.json") and not os.path.islink(out / "prefill.pdiparams")
    manifest = json.load(open(out / "MANIFEST.json"))
    assert {"prefill.pdiparams", "decode.pdiparams"} <= set(manifest["files"])
    _flip(str(out / "decode.pdiparams"), offset_from_end=64, n=8)
    line = _predictor_error(str(out))  # what `pangu serve --backend inference` / generate_with_predictor open
    assert "decode.pdiparams" in line and "hash differs" in line


def _predictor_error(export_dir):
    from paddle_pangu.errors import CheckpointError
    from paddle_pangu.inference.export import InferenceStepper

    with pytest.raises(CheckpointError) as exc:
        InferenceStepper(export_dir)
    return str(exc.value)


def _tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    assert proc.returncode == 0, f"this test needs root to mount a small tmpfs (a full disk): {proc.stderr!r}"


def test_export_on_a_full_disk_is_one_line_and_leaves_nothing_half_written(sealed_dir, tmp_path, capsys):
    disk = tmp_path / "disk"
    _tmpfs(disk, "2m")  # the export's weights alone are > 10 MB (the 40000 x 64 embedding, twice)
    try:
        out = disk / "exp"
        line = _one_line(capsys, ["export", "--model", sealed_dir, "--output", str(out)])
        assert "No space left on device" in line and "nothing was written there" in line
        assert os.listdir(disk) == [] or not any(os.listdir(disk / n) for n in os.listdir(disk))
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_checkpoint_save_on_a_full_disk_is_one_line_and_removes_the_partial_dir(tmp_path):
    """README: 'disk full during a save: one-line error; the partial directory is removed'. Before: a
    SafetensorError traceback and step_N.partial/ left behind."""
    disk = tmp_path / "disk"
    _tmpfs(disk, "6m")  # the tiny model's checkpoint (model + 2 Adam moments) is ~31 MB
    try:
        proc = _pangu(["train", "--config", TINY_RUN, "--output-dir", str(disk / "run"), "--max-steps", "1",
                       "--set", "logging.progress_bar=false"])
        line = _cli_error(proc, "train")
        assert "saving the step-1 checkpoint failed: No space left on device" in line
        assert not [n for n in os.listdir(disk / "run" / "checkpoints") if n.startswith("step_")]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# ---------------------------------------------------------------------------- 6. a few bytes, no hang

def _nested_list_bomb(depth):
    x = []
    for _ in range(depth):
        x = [x, x]  # pickled once per level through the memo: 2^depth leaves when walked
    return x


def test_pickle_of_shared_nested_lists_is_refused_at_once(sealed_dir, tmp_path, capsys):
    d = _copy(sealed_dir, tmp_path / "m", skip=("MANIFEST.json",))
    payload = pickle.dumps({"pangu.embeddings.word_embeddings.weight": _nested_list_bomb(30)}, protocol=4)
    assert len(payload) < 400
    open(os.path.join(d, "model_state.pdparams"), "wb").write(payload)
    t0 = time.process_time()
    line = _one_line(capsys, ["generate", "--model", d, *GENERATE])
    assert "nesting deeper than 16 levels" in line and "model_state.pdparams" in line
    assert time.process_time() - t0 < 60  # a bound on a hang, not a speed target: before, 3.9 GB and no end


@pytest.mark.parametrize("config,expected", [
    ({"num_layers": 1000000000}, "num_layers=1000000000: expected an integer in [1, 4096]"),
    ({"hidden_size": -1}, "hidden_size=-1: expected an integer"),
    ({"vocab_size": 0}, "vocab_size=0: expected an integer"),
    ({"num_attention_heads": 0}, "num_attention_heads=0: expected an integer"),
    ({"hidden_size": "64abc"}, "hidden_size='64abc': expected an integer"),
    ({"max_position_embeddings": 10 ** 12}, "max_position_embeddings=1000000000000"),
    ([1, 2], "expected a JSON object of model fields, got a list"),
    ("truncated", "not valid JSON"),
])
def test_bad_config_json_is_one_line(sealed_dir, tmp_path, capsys, config, expected):
    d = _copy(sealed_dir, tmp_path / "m", skip=("MANIFEST.json",))
    path = os.path.join(d, "config.json")
    good = json.load(open(path))
    if config == "truncated":
        text = json.dumps(good)[:40]
    elif isinstance(config, dict):
        text = json.dumps({**good, **config})
    else:
        text = json.dumps(config)
    open(path, "w").write(text)
    line = _one_line(capsys, ["generate", "--model", d, *GENERATE])
    assert expected in line and "config.json" in line, line


def _header(obj):
    blob = json.dumps(obj).encode()
    return blob


@pytest.mark.parametrize("raw,expected", [
    ((1 << 40).to_bytes(8, "little") + b"{}", "header length 1099511627776 exceeds"),
    ((2 ** 64 - 1).to_bytes(8, "little") + b"{}", "header length 18446744073709551615 exceeds"),
    ("missing_dtype", "dtype None is not a safetensors dtype"),
    ("list", "header is a JSON list"),
    ("offsets", "outside the"),
])
def test_crafted_safetensors_header_is_one_line(sealed_dir, tmp_path, capsys, raw, expected):
    d = _copy(sealed_dir, tmp_path / "m", skip=("MANIFEST.json", "model_state.pdparams"))
    if raw == "missing_dtype":
        blob = _header({"pangu.embeddings.word_embeddings.weight": {"shape": [2], "data_offsets": [0, 8]}})
        raw = len(blob).to_bytes(8, "little") + blob + b"\0" * 8
    elif raw == "list":
        blob = _header([1, 2, 3])
        raw = len(blob).to_bytes(8, "little") + blob
    elif raw == "offsets":
        blob = _header({"x": {"dtype": "F32", "shape": [1 << 30], "data_offsets": [0, 1 << 32]}})
        raw = len(blob).to_bytes(8, "little") + blob + b"\0" * 8
    open(os.path.join(d, "model.safetensors"), "wb").write(raw)
    line = _one_line(capsys, ["generate", "--model", d, *GENERATE])
    assert expected in line and "model.safetensors" in line, line


# ---------------------------------------------------------------------------- 7. smaller, same rule

def test_preset_larger_than_memory_is_refused_before_allocating(capsys):
    from paddle_pangu.config.config_file import available_memory_bytes

    need = get_preset("200b").num_parameters() * 4
    assert available_memory_bytes() < need  # 800 GB of fp32 weights: true of any machine running tests
    line = _one_line(capsys, ["generate", "--model", "preset:200b", *GENERATE])
    assert "preset:200b" in line and "GiB available" in line


def test_train_preset_larger_than_memory_is_refused_before_allocating(tmp_path, capsys):
    from paddle_pangu.config.config_file import available_memory_bytes

    assert available_memory_bytes() < get_preset("200b").num_parameters() * 4
    line = _one_line(capsys, ["train", "--config", TINY_RUN, "--output-dir", str(tmp_path / "o"), "--set",
                              "model.preset=200b", "--max-steps", "1"])
    assert "GiB" in line and "available" in line and not (tmp_path / "o").exists()


def test_train_output_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("keep me")
    line = _one_line(capsys, ["train", "--config", TINY_RUN, "--output-dir", str(target), "--max-steps", "1"])
    assert "is a file" in line and str(target) in line and target.read_text() == "keep me"


# ---------------------------------------------------------------------------- 5. rejected checkpoints kept

def test_rejected_checkpoint_is_kept_after_the_next_save(tmp_path):
    from paddle_pangu.training.checkpoint import store

    root = tmp_path / "out" / store.CKPT_SUBDIR
    (root / "step_00000002.rejected").mkdir(parents=True)
    (root / "step_00000002.rejected" / "weights").write_text("intact weights")
    (root / "step_00000001").mkdir()
    store._prune(str(root), 3, keep_last=1)
    assert (root / "step_00000002.rejected" / "weights").read_text() == "intact weights"
    assert not (root / "step_00000001").exists()


# ---------------------------------------------------------------------------- 3. fine-tune resume verifies

def test_finetune_resume_skips_a_checkpoint_cut_short_and_falls_back(tmp_path, capsys, monkeypatch):
    """`kill -9` mid-save leaves checkpoint-N with a 0-byte optimizer file: resume says so, keeps it as
    checkpoint-N.rejected and resumes from checkpoint-(N-1); before, it loaded the damaged one."""
    from paddle_pangu.io.safe_load import TRUST_ENV
    from paddle_pangu.tokenizer import PanGuTokenizer

    # the Trainer's rng_state.pth pickles Paddle GeneratorStates, which the arrays-only unpickler refuses
    # (issue 28 adds an allow-list for them); this test is about choosing the checkpoint
    monkeypatch.setenv(TRUST_ENV, "1")
    base = tmp_path / "base"
    paddle.seed(7)
    PanGuForCausalLM(get_preset("tiny", num_layers=2, max_position_embeddings=32)).save_pretrained(str(base))
    PanGuTokenizer.from_default().save_pretrained(str(base))
    data = tmp_path / "sft.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"评论：{t}", "response": r}, ensure_ascii=False)
                              for t, r in [("很好", "满意"), ("太差", "不满意")] * 4) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    args = ["finetune", "--model", str(base), "--train", str(data), "--output", str(out), "--max_length", "16",
            "--per_device_train_batch_size", "4", "--save_steps", "1", "--logging_steps", "1", "--report_to", "none",
            "--disable_tqdm", "true"]
    assert main([*args, "--max_steps", "2"]) == 0, capsys.readouterr().err[-1500:]
    assert (out / "checkpoint-2" / "MANIFEST.json").is_file() and (out / "MANIFEST.json").is_file()
    capsys.readouterr()
    opt = [p for p in (out / "checkpoint-2").iterdir() if p.name.startswith("optimizer")][0]
    opt.write_bytes(b"")  # what the kill left
    assert main([*args, "--max_steps", "3", "--resume_from_checkpoint", "true"]) == 0, capsys.readouterr().err[-1500:]
    said = capsys.readouterr().out
    assert f"skipping checkpoint-2: {opt}" in said and "kept as checkpoint-2.rejected" in said, said[-1500:]
    assert f"resuming from {out / 'checkpoint-1'}" in said
    assert (out / "checkpoint-2.rejected").is_dir() and (out / "checkpoint-3").is_dir()


@pytest.mark.parametrize("extra,expected", [
    (["--seed", "-1"], "--seed -1: expected an integer in [0, 2^63)"),
    (["--prompt", b"ab\xff".decode("utf-8", "surrogateescape")], "not valid UTF-8 text"),  # invalid bytes in argv
    (["--tokenizer", "JUNK"], "not a loadable SentencePiece model"),
])
def test_generate_argument_faults_are_one_line(sealed_dir, tmp_path, capsys, extra, expected):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 2)
    extra = [str(junk) if a == "JUNK" else a for a in extra]
    line = _one_line(capsys, ["generate", "--model", sealed_dir, *GENERATE, *extra])
    assert expected in line, line


def test_truncated_gzip_in_prepare_data_is_said_on_the_console(tmp_path, capsys):
    import gzip

    text = "北京是中华人民共和国的首都，也是全国的政治和文化中心。\n上海是中国最大的经济中心城市之一。\n" * 50
    path = tmp_path / "corpus.txt.gz"
    path.write_bytes(gzip.compress(text.encode())[:-30])  # cut short: the last lines are lost
    code = main(["prepare-data", "--input", str(path), "--output", str(tmp_path / "out"), "--stages", "clean",
                 "--min-chars", "5", "--workers", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err[-1000:]
    assert f"pangu prepare-data: warning: {path}: unreadable after line" in err and "skipped" in err


@pytest.mark.parametrize("content,expected", [
    (b'{"prompt": "\\ud800", "response": "x"}\n', "lone UTF-16 surrogate"),
    (b'{"prompt": "a", "response": "b"}\n' + bytes(range(128, 256)) + b"\n", "not UTF-8 text"),
])
def test_finetune_file_with_lone_surrogates_or_binary_is_one_line(sealed_dir, tmp_path, capsys, content, expected):
    data = tmp_path / "sft.jsonl"
    data.write_bytes(content)
    line = _one_line(capsys, ["finetune", "--model", sealed_dir, "--train", str(data), "--output",
                              str(tmp_path / "o"), "--max_steps", "1"])
    assert expected in line and f"{data}:" in line, line


@pytest.mark.parametrize("content,expected", [
    (b"", "no examples"),
    (bytes(range(128, 256)) * 4, ":1: not UTF-8 text"),
    (None, "cannot read (No such file or directory)"),
    (b'{"text": "\xe5\xa5\xbd\xe5\x90\x83", "label": 0}\n{"text": "x", "label": 5}\n', ":2: label '5' is not one of --labels"),
    (b'{"text": "x", "label": "\xe4\xb8\xad"}\n', ":1: label"),
])
def test_evaluate_task_file_faults_are_one_line(sealed_dir, tmp_path, capsys, content, expected):
    task = tmp_path / "task.jsonl"
    if content is not None:
        task.write_bytes(content)
    line = _one_line(capsys, ["evaluate", "--model", sealed_dir, "--task", str(task), "--labels", "好,坏",
                              "--template", "{text}。{label}", "--shots", "0"])
    assert expected in line and str(task) in line, line


def test_evaluate_perplexity_on_a_directory_that_is_not_a_dataset_is_one_line(sealed_dir, tmp_path, capsys):
    notdata = tmp_path / "notdata"
    notdata.mkdir()
    (notdata / "readme.txt").write_text("hello")
    line = _one_line(capsys, ["evaluate", "--model", sealed_dir, "--perplexity", str(notdata), "--shots", "0",
                              "--num-eval", "2"])
    assert str(notdata) in line and "not a prepared dataset" in line, line


def test_train_init_from_a_damaged_sealed_directory_is_one_line(tmp_path, capsys):
    d = str(tmp_path / "m")
    paddle.seed(0)
    PanGuForCausalLM(get_preset("tiny")).save_pretrained(d)  # the run config's model: loads when intact
    _flip(os.path.join(d, "model_state.pdparams"))
    line = _one_line(capsys, ["train", "--config", TINY_RUN, "--output-dir", str(tmp_path / "o"), "--max-steps", "1",
                              "--set", f"model.init_from={d}"])
    assert "model_state.pdparams" in line and "hash differs" in line, line


def test_train_on_a_dataset_whose_split_has_no_tokens_is_one_line(tmp_path, capsys):
    from paddle_pangu.data.indexed_dataset import IndexedDatasetBuilder
    from paddle_pangu.data.manifest import sha256_file, write_manifest
    from paddle_pangu.tokenizer.vocab import find_vocab_file

    data = tmp_path / "data"
    data.mkdir()
    with IndexedDatasetBuilder(data / "c") as b:
        for i in range(40):
            b.add_document([100 + i] * 5 + [9])
    vocab = find_vocab_file(None)
    write_manifest(data, {"prefix": "c", "num_documents": 40, "split": [1, 0, 0], "separator_id": 9,
                          "vocab_size": 40000, "vocab_sha256": sha256_file(vocab), "vocab_file": str(vocab),
                          "split_seed": 1234, "files": ["c.bin", "c.idx"]})  # every document in train
    line = _one_line(capsys, ["train", "--config", TINY_RUN, "--output-dir", str(tmp_path / "o"), "--max-steps", "1",
                              "--set", "data.synthetic=null", "--set", f"data.paths=[{data}]"])
    assert "the split has no tokens" in line and str(data) in line, line
