"""How far toward a model that never saw TOFU must unlearning go for forget quality to pass?

    python benchmarks/tofu_path.py --data ../shared/data/tofu [--split forget05]    # 5-15 min on 2 CPU cores

Scores the base model (SmolLM2-135M-Instruct before its TOFU fine-tune) on the split's forget rows with TOFU's
template, then walks the path between the finetuned model's per-row truth ratios F and the base model's B,
row by row ``F^(1-a) * B^a``, and prints the forget quality (KS p-value against the retain model's truth ratios,
as `benchmarks/tofu.py` computes it) along it, and where each cached distillation row sits on it (the `a` whose
median truth ratio equals the row's). Needs the `cpu` setup's cached rows (`benchmarks/tofu.py --setup cpu`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import ks_2samp
from tofu import row_path  # benchmarks/tofu.py: where its stage cache keeps each row

from lune_hf.tofu.data import tofu_sets
from lune_hf.tofu.evaluate import row_truth_ratios, score_logs


def base_truth_ratios(data: str, split: str, model_path: str) -> np.ndarray:
    """The base model's raw truth ratio (perturbed over paraphrased) on every forget row of `split`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = tofu_sets(data, split, retain_authors=range(20)).forget
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    logs = score_logs(model, tokenizer, {"forget": rows})["forget"]
    return np.array(row_truth_ratios(logs, "paraphrased"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="TOFU data folder (or Hub id).")
    parser.add_argument("--split", default="forget05", help="forget01 or forget05 (default forget05).")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "lune_hf" / "tofu" / "cpu",
                        help="benchmarks/tofu.py's stage cache (default: ~/.cache/lune_hf/tofu/cpu).")
    parser.add_argument("--model", default=None, help="Base model folder (default: SmolLM2-135M-Instruct, built "
                                                      "offline by lune_hf.testing.smollm2).")
    args = parser.parse_args()
    if args.model is None:
        from lune_hf.testing.smollm2 import prepare_smollm2
        args.model = str(prepare_smollm2())

    def ratios(name: str) -> np.ndarray:
        return np.array(json.loads(row_path(args.cache_dir, args.split, name).read_text())["forget_truth_ratios"])

    retain, finetuned = ratios("retain"), ratios("finetuned")
    base = base_truth_ratios(args.data, args.split, args.model)
    print(f"base model: forget quality {ks_2samp(base, retain).pvalue:.3g}; raw truth ratio 10/50/90% "
          + " / ".join(f"{q:.2f}" for q in np.quantile(base, [0.1, 0.5, 0.9])))
    print("path F^(1-a) * B^a: a, forget quality")
    for a in np.round(np.arange(0.0, 1.51, 0.1), 1):
        print(f"  {a:.1f}  {ks_2samp(finetuned ** (1 - a) * base ** a, retain).pvalue:.3g}")
    span = np.log(np.median(base) / np.median(finetuned))
    for path in sorted((args.cache_dir / "rows").glob(f"{args.split}__lune_*negative_loss=distill*.json")):
        row = json.loads(path.read_text())
        a = np.log(np.median(row["forget_truth_ratios"]) / np.median(finetuned)) / span
        print(f"{row['variant']}: a = {a:.2f}, forget quality {row['forget_quality']:.3g}")


if __name__ == "__main__":
    main()
