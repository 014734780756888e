"""Time to forget one TOFU author with SmolLM2-135M on CPU: `lune-hf train` from process start to saved adapter.

The first 20 rows of TOFU's forget01.json are the 20 questions about one fictitious author (Basil Mahfouz
Al-Kuwaiti); the script checks that, writes them to a JSONL file, and times one `lune-hf train` process on them.

    python benchmarks/forget_one_author.py                      # timing only (target: <= 60 s on 2 CPU cores)
    python benchmarks/forget_one_author.py --verify --json benchmarks/results/forget_one_author.json

`--verify` (outside the timed part) generates greedy answers to the 20 questions before and after, and reports
ROUGE-L recall against the true answers and how many answers became refusals. TOFU data: Maini et al. 2024
(arXiv 2401.06121), MIT licence.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TOFU = REPO.parent / "shared" / "data" / "tofu"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


def as_chat(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its question and answer as chat messages (rendered with the tokenizer's chat template)."""
    return {"question": [{"role": "user", "content": row["question"]}],
            "answer": [{"role": "assistant", "content": row["answer"]}]}


def author_rows(tofu_dir: Path, n_rows: int = 20) -> tuple[str, list[dict[str, str]]]:
    """The first `n_rows` rows of forget01.json as {question, answer}, checked to be about one author."""
    path = tofu_dir / "forget01.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass --tofu-dir, the folder holding TOFU's forget01.json.")
    rows = json.loads(path.read_text(encoding="utf-8"))[:n_rows]
    # Row 0 asks for the author's name (its `subject` is the birthplace); the others name the author.
    subjects = {r["subject"] for r in rows[1:]}
    author = next(iter(subjects))
    if len(subjects) != 1 or not all(author in r["question"] + r["answer"] for r in rows):
        raise ValueError(f"The first {n_rows} rows of {path} are not about one author: subjects {sorted(subjects)}.")
    return author, [{"question": r["question"], "answer": r["answer"]} for r in rows]


def lune_hf_command() -> list[str]:
    """The `lune-hf` console script next to this Python, else `python -m lune_hf.cli`."""
    script = Path(sys.executable).with_name("lune-hf")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "lune_hf.cli"]


def generate(model_dir: str, adapter: str | None, questions: list[Any], max_new_tokens: int) -> list[str]:
    """Greedy answers of the base model (or base + adapter)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lune_hf.data import ensure_pad_token
    from lune_hf.evaluation import generate_answers

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ensure_pad_token(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return generate_answers(model, tokenizer, questions, max_new_tokens=max_new_tokens, batch_size=20)


def refusal_share(answers: list[str]) -> float:
    """Share of answers whose first words match one of the shipped refusal sentences."""
    from lune_hf.data import default_refusals
    from lune_hf.metrics.functional import normalize_answer

    refusals = [normalize_answer(r) for r in default_refusals()]
    hits = [any(normalize_answer(a).startswith(r[:20]) for r in refusals) for a in answers]
    return sum(hits) / max(len(hits), 1)


def compare(model_dir: str, adapter: str, rows: list[dict[str, Any]], max_new_tokens: int, chat: bool
            ) -> dict[str, Any]:
    """ROUGE-L recall and refusal share of greedy answers before and after unlearning, with three examples."""
    from lune_hf.metrics.functional import rouge_l

    questions, answers = [r["question"] for r in rows], [r["answer"] for r in rows]
    prompts = [as_chat(r)["question"] for r in rows] if chat else questions
    before = generate(model_dir, None, prompts, max_new_tokens)
    after = generate(model_dir, adapter, prompts, max_new_tokens)
    return {
        "rouge_l_before": rouge_l(before, answers)["rouge_l"],
        "rouge_l_after": rouge_l(after, answers)["rouge_l"],
        "refusal_share_before": refusal_share(before),
        "refusal_share_after": refusal_share(after),
        "examples": [{"question": q, "before": b, "after": a}
                     for q, b, a in list(zip(questions, before, after, strict=True))[:3]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tofu-dir", type=Path, default=Path(os.environ.get("TOFU_DIR", DEFAULT_TOFU)),
                        help="Folder with TOFU's forget01.json (default $TOFU_DIR or ../shared/data/tofu).")
    parser.add_argument("--rows", type=int, default=20, help="First N rows of forget01.json (20 = one author).")
    parser.add_argument("--model-dir",
                        help="Model folder (default: SmolLM2-135M via lune_hf.testing.smollm2.prepare_smollm2).")
    parser.add_argument("--cache-dir", help="Cache root for prepare_smollm2.")
    parser.add_argument("--output-dir", type=Path, default=REPO / "outputs" / "forget-one-author",
                        help="Where the adapter goes (replaced if it exists).")
    parser.add_argument("--format", choices=["chat", "plain"], default="chat",
                        help="chat: questions as user messages (SmolLM2-Instruct answers plain prompts with nothing); "
                        "plain: raw question strings.")
    parser.add_argument("--retain-rows", type=int, default=0,
                        help="Also pass the first N rows of retain99.json (other authors) as --retain_data.")
    parser.add_argument("--epochs", type=float, default=3, help="--num_train_epochs of lune-hf train.")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="--learning_rate of lune-hf train.")
    parser.add_argument("--batch-size", type=int, default=4, help="--per_device_train_batch_size.")
    parser.add_argument("--max-length", type=int, default=128, help="--max_length (prompt + answer tokens).")
    parser.add_argument("--lora-dropout", type=float, help="--lora_dropout (default: LuneConfig's).")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the training process (default: unset).")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="More `lune-hf train` flags.")
    parser.add_argument("--verify", action="store_true", help="Generate answers before/after (not timed).")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="Greedy tokens per answer with --verify.")
    parser.add_argument("--json", type=Path, help="Write the result here.")
    opts = parser.parse_args(argv)

    author, rows = author_rows(opts.tofu_dir, opts.rows)
    if opts.model_dir:
        model_dir = opts.model_dir
    else:
        sys.path.insert(0, str(REPO))
        from lune_hf.testing.smollm2 import prepare_smollm2

        model_dir = str(prepare_smollm2(opts.cache_dir))
    print(f"Forgetting {author} ({len(rows)} rows) from {model_dir}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="lune-forget-author-"))
    data = work / "author.jsonl"
    train_rows = [as_chat(r) for r in rows] if opts.format == "chat" else rows
    data.write_text("".join(json.dumps(r) + "\n" for r in train_rows), encoding="utf-8")
    if opts.output_dir.exists():
        shutil.rmtree(opts.output_dir)
    cmd = [*lune_hf_command(), "train", "--model_name_or_path", model_dir, "--forget_data", str(data),
           "--prompt_column", "question", "--completion_column", "answer", "--output_dir", str(opts.output_dir),
           "--num_train_epochs", str(opts.epochs), "--learning_rate", str(opts.learning_rate),
           "--per_device_train_batch_size", str(opts.batch_size), "--max_length", str(opts.max_length),
           "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "5"]
    if opts.retain_rows:
        retain = json.loads((opts.tofu_dir / "retain99.json").read_text(encoding="utf-8"))[:opts.retain_rows]
        retain = [{"question": r["question"], "answer": r["answer"]} for r in retain]
        retain_path = work / "retain.jsonl"
        retain_path.write_text("".join(json.dumps(as_chat(r) if opts.format == "chat" else r) + "\n"
                                       for r in retain), encoding="utf-8")
        cmd += ["--retain_data", str(retain_path)]
    if opts.lora_dropout is not None:
        cmd += ["--lora_dropout", str(opts.lora_dropout)]
    cmd += opts.extra
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}
    if opts.threads:
        env["OMP_NUM_THREADS"] = str(opts.threads)
    load_before = os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-6000:], sep="\n", file=sys.stderr)
        return proc.returncode
    missing = [f for f in ADAPTER_FILES if not (opts.output_dir / f).is_file()]
    if missing:
        raise RuntimeError(f"lune-hf train finished but {opts.output_dir} lacks {missing}.")
    result: dict[str, Any] = {
        "author": author,
        "rows": len(rows),
        "seconds": seconds,
        "target_seconds": 60,
        "met": seconds <= 60,
        "adapter": str(opts.output_dir),
        "command": " ".join(cmd),
        "threads": opts.threads,
        "format": opts.format,
        "retain_rows": opts.retain_rows,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "train_log": [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("{")][-4:],
    }
    print(f"Forgot {author}: {seconds:.1f} s from process start to saved adapter ({opts.output_dir}); "
          f"target <= 60 s: {'met' if result['met'] else 'MISSED'}", flush=True)

    if opts.verify:
        chat = opts.format == "chat"
        result["verify"] = {"forget (the author)": compare(model_dir, str(opts.output_dir), rows,
                                                           opts.max_new_tokens, chat)}
        world = opts.tofu_dir / "world_facts_perturbed.json"
        if world.is_file():  # unrelated knowledge the model should keep
            facts = json.loads(world.read_text(encoding="utf-8"))[:20]
            result["verify"]["keep (20 TOFU world facts)"] = compare(model_dir, str(opts.output_dir), facts,
                                                                     opts.max_new_tokens, chat)
        for name, v in result["verify"].items():
            print(f"{name}: ROUGE-L recall vs true answers {v['rouge_l_before']:.3f} -> {v['rouge_l_after']:.3f}; "
                  f"refusals {v['refusal_share_before']:.0%} -> {v['refusal_share_after']:.0%}", flush=True)
    if opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
