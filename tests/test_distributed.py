"""Two ranks on CPU over gloo: sharded forget rows, identical ranks, the same result as one process.

One `torchrun` launch of `distributed_script.py` (lune with the evaluation callback, npo and idk_dpo with the
disabled-adapter reference under DDP and inside an FSDP2-sharded model, a rank that diverges alone) is
compared with the same script run in this process with twice the per-device batch: every objective is a
per-example mean and DDP averages the ranks' gradients, so both see the same batches and take the same steps
up to float32 summation order. A second launch runs `lune-hf train` under `accelerate launch` with the
multi-GPU recipe.

Tolerances, 2 ranks vs 1 process (measured on 2 CPU cores; the margins cover other BLAS builds):

* loss terms at every step: rtol 1e-4 (measured at most 4e-6);
* adapter weights (lr 1e-2): each tensor within 1e-3 relative Frobenius norm (measured at most 9e-5) and each
  element within 1e-3 = a tenth of one learning-rate step (measured: lune 2e-7 after 20 steps; npo 3e-5 and
  idk_dpo 5e-5 after 3 steps; the CLI's lune 2e-4 after 6 steps). The two runs differ only in float32
  summation order (padding per rank, all-reduce of two half-batch means). AdamW divides each gradient by its
  own RMS, so for elements whose gradient is tiny (the memorised answers have p ~ 0.995; LoRA B starts at 0)
  a relative rounding difference becomes an absolute one of that size times lr, most of all in the first steps;
* FSDP2-sharded loss and gradients (one step on identical weights): loss rel 1e-6, gradients rtol 1e-5 and
  atol 1e-7 (measured 0);
* callback on identical weights: exact for exact_match / rouge_l / predictions, 1e-6 on token log-probabilities
  and probabilities (measured 0); on each run's own trained weights: 1e-5 on probabilities (measured 4e-7).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import distributed_script
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from lune_hf.demo import split_facts
from lune_hf.report import REPORT_FILE

pytestmark = [pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo"),
              pytest.mark.xdist_group("distributed")]  # its module fixtures run once, on one worker

ROOT = Path(__file__).resolve().parents[1]
BATCH = 2  # forget rows per rank and step; the 1-process runs use 2 * BATCH
OBJECTIVES = ("lune", "npo", "idk_dpo")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """The in-process baselines use one thread, like each launched rank (faster on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def launch(cmd: list[str], tmp: Path, timeout: int = 300, expect_ok: bool = True) -> subprocess.CompletedProcess:
    """Run a launcher command with one thread per rank, offline; fail with the end of its output."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_DATASETS_CACHE": str(tmp / "datasets-cache"),
    }
    if sys.platform == "linux":
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the ranks talk over loopback, whatever the hostname resolves to
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if expect_ok:
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.fixture(scope="module")
def demo_dir(memorised, tmp_path_factory) -> Path:
    """The memorised model and its facts in the layout `lune-hf demo --output-dir` writes."""
    root = tmp_path_factory.mktemp("demo")
    memorised.model.save_pretrained(root / "base_model")
    memorised.tokenizer.save_pretrained(root / "base_model")
    (root / "data").mkdir()
    for name, facts in zip(("forget", "retain"), split_facts(memorised.facts), strict=True):
        lines = "".join(json.dumps(f.row()) + "\n" for f in facts)
        (root / "data" / f"{name}.jsonl").write_text(lines, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def runs(demo_dir, tmp_path_factory):
    """(out dir, the 1-process report, the two ranks' reports)."""
    out = tmp_path_factory.mktemp("ddp")
    with one_thread():
        one = distributed_script.main([str(demo_dir), str(out / "one"), "--batch-size", str(2 * BATCH),
                                       "--eval-adapter", str(out / "one" / "lune-rank0.safetensors")])
    launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(free_port()), str(ROOT / "tests" / "distributed_script.py"), str(demo_dir), str(out / "two"),
            "--batch-size", str(BATCH), "--eval-adapter", str(out / "one" / "lune-rank0.safetensors")], out)
    two = [json.loads((out / "two" / f"rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]
    return out, one, two


def adapter(out: Path, run: str, rank: int, world: str) -> dict[str, torch.Tensor]:
    return load_file(str(out / world / f"{run}-rank{rank}.safetensors"))


def assert_adapters_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    """Every tensor within 1e-3 relative (Frobenius) and every element within a tenth of one step (lr 1e-2)."""
    assert got.keys() == want.keys() and all("lora_" in k for k in want)
    assert any(w.abs().max() > 1e-3 for k, w in want.items() if "lora_B" in k), "the adapter did not move"
    for name, value in want.items():
        diff = got[name].double() - value.double()
        assert diff.norm() <= 1e-3 * value.double().norm() + 1e-12, f"{name}: relative difference too large"
        assert diff.abs().max() <= 1e-3, f"{name}: an element differs by {diff.abs().max():.2e}"


def test_two_ranks_join_over_gloo(runs):
    _, one, two = runs
    assert one["world"]["num_processes"] == 1
    for rank, report in enumerate(two):
        assert report["world"] == {
            "rank": rank, "num_processes": 2, "distributed_type": "DistributedType.MULTI_CPU",
            "torch_world_size": 2, "backend": "gloo", "ddp_wrapped": "DistributedDataParallel",
        }


def test_forget_rows_are_sharded_between_ranks(runs):
    _, one, two = runs
    steps = one["lune"]["global_step"]
    n_forget = len({i for batch in one["lune"]["batches"] for i in batch})
    rank0, rank1 = (r["lune"]["batches"][:steps] for r in two)
    assert all(len(b) == BATCH for b in rank0 + rank1)
    for step, (a, b) in enumerate(zip(rank0, rank1, strict=True)):
        assert not set(a) & set(b), f"step {step}: both ranks trained on rows {set(a) & set(b)}"
        # The 1-process batch of 2B rows is exactly the two ranks' halves, in order.
        assert a + b == one["lune"]["batches"][step]
    per_epoch = n_forget // (2 * BATCH)
    for start in range(0, steps - per_epoch + 1, per_epoch):
        seen0 = {i for b in rank0[start:start + per_epoch] for i in b}
        seen1 = {i for b in rank1[start:start + per_epoch] for i in b}
        assert len(seen0) == len(seen1) == n_forget // 2 and seen0 | seen1 == set(range(n_forget))


@pytest.mark.parametrize("run", OBJECTIVES)
def test_ranks_end_with_identical_adapters(runs, run):
    out, _, two = runs
    first, second = adapter(out, run, 0, "two"), adapter(out, run, 1, "two")
    assert first.keys() == second.keys() and all("lora_" in k for k in first)
    for name in first:
        assert torch.equal(first[name], second[name]), f"{run}: {name} differs between the ranks"
    assert two[0][run]["loss"] == two[1][run]["loss"], "logged losses are gathered: the same on every rank"


@pytest.mark.parametrize("run", OBJECTIVES)
def test_two_ranks_match_one_process(runs, run):
    out, one, two = runs
    assert two[0][run]["global_step"] == one[run]["global_step"]
    for key in ("loss", "loss_forget", "loss_retain"):
        got, want = two[0][run][key], one[run][key]
        assert all(math.isfinite(v) for v in got), f"{run}: non-finite {key}"
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-6)
    assert_adapters_close(adapter(out, run, 0, "two"), adapter(out, run, 0, "one"))


def test_callback_is_gathered_and_equals_one_process(runs):
    _, one, two = runs
    assert two[0]["lune"]["history"] == two[1]["lune"]["history"], "every rank must compute the same metrics"
    assert two[0]["eval"] == two[1]["eval"]
    history, want_history = two[0]["lune"]["history"], one["lune"]["history"]
    assert [h["step"] for h in history] == [h["step"] for h in want_history]
    for got, want in zip(history, want_history, strict=True):
        for key, value in want.items():
            tol = 1e-5 if key.endswith("probability") else 0.0
            assert abs(got[key] - value) <= tol, f"step {want['step']} {key}: {got[key]} vs {value}"
    # The same adapter (the 1-process result) evaluated by 1 and by 2 processes.
    metrics, want_metrics = two[0]["eval"]["metrics"], one["eval"]["metrics"]
    assert metrics.keys() == want_metrics.keys()
    for key, value in want_metrics.items():
        tol = 1e-6 if key.endswith("probability") else 0.0
        assert abs(metrics[key] - value) <= tol, f"{key}: {metrics[key]} vs {value}"
        assert want_history[-1][key] == value, "the last evaluation of training saw the same weights"
    # Per-row results come back once each and in the original order; 13 rows make uneven shards (7 + 6).
    rows, want_rows = two[0]["eval"]["rows"], one["eval"]["rows"]
    assert [len(rows[k]) for k in sorted(rows)] == [12, 108, distributed_script.ODD_ROWS]
    for name, want in want_rows.items():
        got = rows[name]
        assert [r["prediction"] for r in got] == [r["prediction"] for r in want], name
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(torch.tensor(g["token_logprobs"]), torch.tensor(w["token_logprobs"]),
                                       rtol=0, atol=1e-6)


def test_both_reach_the_same_forget_retain_outcome(runs):
    _, one, two = runs
    want, got = one["lune"], two[0]["lune"]
    assert got["stop_reason"] == want["stop_reason"] and "forget/exact_match reached 0.000" in want["stop_reason"]
    first, last = want["history"][0], want["history"][-1]
    assert first["forget/exact_match"] == 1.0 and last["forget/exact_match"] == 0.0
    assert last["retain/exact_match"] >= 0.8
    assert got["history"][-1]["retain/exact_match"] == last["retain/exact_match"]


@pytest.mark.parametrize("objective", ["npo", "idk_dpo"])
def test_reference_inside_an_fsdp2_sharded_model(runs, objective):
    """LuneTrainer's loss, adapter-off reference included, through a fully_shard-ed model equals 1 process."""
    out, one, two = runs
    name = f"fsdp2_{objective}"
    assert all(r[name]["model"].startswith("FSDP") for r in two) and not one[name]["model"].startswith("FSDP")
    assert two[0][name]["loss"] == two[1][name]["loss"]
    assert two[0][name]["loss"] == pytest.approx(one[name]["loss"], rel=1e-6)
    if objective == "idk_dpo":  # the reference is not the policy: the loss is away from (2 / beta) log 2
        assert abs(one[name]["loss"] - 20 * math.log(2)) > 1.0
    want, got = adapter(out, name, 0, "one"), adapter(out, name, 0, "two")
    assert got.keys() == want.keys() and len(want) == 28  # every LoRA A and B of 14 projections
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-7)


def test_one_rank_diverging_stops_every_rank(runs):
    out, one, two = runs
    assert "became nan" in one["nan_guard"]["error"] or "became inf" in one["nan_guard"]["error"]
    errors = [r["nan_guard"]["error"] for r in two]
    assert errors[0] is not None and "non-finite on another process at step 2" in errors[0]
    assert errors[1] is not None and ("became nan" in errors[1] or "became inf" in errors[1])
    saved = load_file(str(out / "two" / "nan_guard" / "adapter_model.safetensors"))
    assert saved and all(torch.isfinite(w).all() for w in saved.values())


def cli_train_args(demo_dir: Path) -> list[str]:
    """`lune-hf train` on the demo recipe for 2 epochs, logging every step, comparable across launches."""
    return [
        "train", "--config", str(ROOT / "recipes" / "demo.yaml"),
        "--model_name_or_path", str(demo_dir / "base_model"),
        "--forget_data", str(demo_dir / "data" / "forget.jsonl"),
        "--retain_data", str(demo_dir / "data" / "retain.jsonl"),
        "--num_train_epochs", "2", "--lora_dropout", "0", "--logging_steps", "1", "--forget_eval_steps", "100",
        "--min_budget_steps", "0",
        "--use_cpu", "true", "--disable_tqdm", "true",
    ]


@pytest.fixture(scope="module")
def cli_one(demo_dir, tmp_path_factory) -> Path:
    """The output folder of `lune-hf train` in one process with twice the per-device batch."""
    from lune_hf import cli

    out = tmp_path_factory.mktemp("cli") / "one"
    with one_thread():
        assert cli.main([*cli_train_args(demo_dir), "--output_dir", str(out), "--per_device_train_batch_size",
                         str(2 * BATCH)]) == 0
    return out


def launch_cli(config: str, demo_dir: Path, out: Path, script: list[str]) -> None:
    """`accelerate launch --config_file recipes/accelerate/<config>` on 2 CPU ranks, fp32."""
    launch([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "recipes" / "accelerate" / config), "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
            *script, *cli_train_args(demo_dir), "--output_dir", str(out),
            "--per_device_train_batch_size", str(BATCH)], out.parent)


def assert_same_run(one: Path, two: Path) -> dict:
    """Same steps, same before/after evaluation, adapters within tolerance; returns the 2-rank report."""
    want, got = (json.loads((d / REPORT_FILE).read_text(encoding="utf-8")) for d in (one, two))
    # 12 forget rows, 2 epochs, 4 rows a step: 6 steps. Two unsharded copies would have taken 12 steps each.
    assert want["global_step"] == got["global_step"] == 6
    for when in ("before", "after"):
        assert got["evaluation"][when].keys() == want["evaluation"][when].keys()
        for key, value in want["evaluation"][when].items():
            tol = 1e-5 if key.endswith("probability") else 0.0
            assert abs(got["evaluation"][when][key] - value) <= tol, f"{when} {key}"
    losses = [h[term] for h in want["train_log"] if "loss/forget" in h for term in ("loss/forget", "loss/retain")]
    assert len(losses) == 12  # both terms at each of the 6 steps
    assert [h[term] for h in got["train_log"] if "loss/forget" in h for term in ("loss/forget", "loss/retain")] == \
        pytest.approx(losses, rel=1e-4)
    assert_adapters_close(*(load_file(str(d / "adapter_model.safetensors")) for d in (two, one)))
    return got


def test_cli_train_under_accelerate_launch(demo_dir, cli_one, tmp_path):
    """`lune-hf train` with the multi-GPU recipe on 2 CPU ranks equals the same recipe in one process."""
    launch_cli("multi_gpu.yaml", demo_dir, tmp_path / "two", ["-m", "lune_hf.cli"])
    assert_same_run(cli_one, tmp_path / "two")


def test_fsdp2_recipe_trains_like_one_process(demo_dir, cli_one, tmp_path):
    """The FSDP2 + LoRA recipe trains for real on 2 CPU ranks (sharded decoder layers, full-state-dict save)."""
    launch_cli("fsdp2_lora.yaml", demo_dir, tmp_path / "fsdp", [str(ROOT / "tests" / "fsdp_cpu_cli.py")])
    got = assert_same_run(cli_one, tmp_path / "fsdp")
    assert got["hyperparameters"]["distributed_type"] == "FSDP" and got["hyperparameters"]["world_size"] == 2


def test_a_refused_output_dir_stops_every_rank(demo_dir, tmp_path):
    """The main process refuses a folder holding another run's results; the other rank stops too (no hang)."""
    out = tmp_path / "taken"
    out.mkdir()
    (out / REPORT_FILE).write_text("{}")
    proc = launch([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(ROOT / "recipes" / "accelerate" / "multi_gpu.yaml"), "--num_processes", "2", "--num_machines",
                   "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
                   "-m", "lune_hf.cli", "train", "--config", str(ROOT / "recipes" / "demo.yaml"),
                   "--model_name_or_path", str(demo_dir / "base_model"),
                   "--forget_data", str(demo_dir / "data" / "forget.jsonl"),
                   "--retain_data", str(demo_dir / "data" / "retain.jsonl"), "--output_dir", str(out),
                   "--use_cpu", "true", "--disable_tqdm", "true"], tmp_path, timeout=240, expect_ok=False)
    assert proc.returncode != 0
    assert proc.stderr.count("holds the results of another run") >= 2, proc.stderr[-3000:]  # both ranks say why
    assert (out / REPORT_FILE).read_text() == "{}"
