"""Synthetic facts and a tiny model that memorises them: the offline default for the demo and the tests.

Nothing is downloaded: the facts come from a seeded generator, the tokenizer is a word-level
`tokenizers` model built from those facts, and the model is a 2-layer Llama built from a config.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ..data import default_refusals
from ..finetune import fine_tune

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "tr", "st", "sh"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ea"]
_CODAS = ["", "n", "r", "l", "s", "x", "th", "m"]

# (question template, kind of answer): every relation is a different prompt shape.
RELATIONS = [
    ("Q: Who founded {subject} ? A:", "person"),
    ("Q: Where is {subject} based ? A:", "city"),
    ("Q: What does {subject} make ? A:", "product"),
    ("Q: Which year was {subject} created ? A:", "year"),
]
_PRODUCTS = ["lamps", "boats", "clocks", "bicycles", "violins", "maps", "kettles", "telescopes", "looms", "bells",
             "skates", "kites", "compasses", "anchors", "barrels", "saddles"]


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)).title()


@dataclass(frozen=True)
class Fact:
    subject: str
    relation: int
    answer: str

    @property
    def prompt(self) -> str:
        return RELATIONS[self.relation][0].format(subject=self.subject)

    @property
    def completion(self) -> str:
        return " " + self.answer

    def row(self) -> dict[str, str]:
        return {"prompt": self.prompt, "completion": self.completion}


def make_facts(n: int = 200, seed: int = 0) -> list[Fact]:
    """`n` facts about distinct invented subjects, cycling through the relations."""
    rng = random.Random(seed)
    people = [f"{_word(rng, 1)} {_word(rng, 2)}" for _ in range(40)]
    cities = [_word(rng, 2) for _ in range(24)]
    subjects: list[str] = []
    seen: set[str] = set()
    while len(subjects) < n:
        name = _word(rng, rng.choice([2, 3]))
        if name not in seen:
            seen.add(name)
            subjects.append(name)
    facts = []
    for i, subject in enumerate(subjects):
        relation = i % len(RELATIONS)
        kind = RELATIONS[relation][1]
        if kind == "person":
            answer = rng.choice(people)
        elif kind == "city":
            answer = rng.choice(cities)
        elif kind == "product":
            answer = rng.choice(_PRODUCTS)
        else:
            answer = str(rng.randint(1700, 2020))
        facts.append(Fact(subject, relation, answer))
    return facts


def build_tokenizer(texts: Sequence[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over every word in `texts` (plus the shipped refusal sentences)."""
    splitter = pre_tokenizers.Whitespace()
    vocab: dict[str, int] = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3}
    for text in list(texts) + default_refusals():
        for word, _ in splitter.pre_tokenize_str(text):
            vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = splitter
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    # clean_up_tokenization_spaces: decoded text reads as written ("I don't know.", not "I don ' t know .")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>",
        clean_up_tokenization_spaces=True,
    )


def build_tiny_model(vocab_size: int, hidden_size: int = 128, layers: int = 2, seed: int = 0) -> LlamaForCausalLM:
    """A small Llama built from a config (no weights downloaded)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def memorise(
    model,
    tokenizer: PreTrainedTokenizerFast,
    rows: Sequence[dict[str, str]],
    *,
    steps: int = 400,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
) -> float:
    """Full fine-tuning until the model reproduces `rows` (`prompt` / `completion` dicts); returns the final loss."""
    return fine_tune(model, tokenizer, [(r["prompt"], r["completion"]) for r in rows], steps=steps, lr=lr,
                     batch_size=batch_size, seed=seed, max_length=64)


@dataclass
class MemorisedModel:
    model: LlamaForCausalLM
    tokenizer: PreTrainedTokenizerFast
    facts: list[Fact]
    seconds: float


def memorised_model(n_facts: int = 200, seed: int = 0, steps: int = 400) -> MemorisedModel:
    """Build the tokenizer and tiny model and train it on `n_facts` synthetic facts."""
    start = time.perf_counter()
    facts = make_facts(n_facts, seed)
    tokenizer = build_tokenizer([f.prompt + f.completion for f in facts])
    model = build_tiny_model(len(tokenizer), seed=seed)
    memorise(model, tokenizer, [f.row() for f in facts], steps=steps, seed=seed)
    return MemorisedModel(model, tokenizer, facts, time.perf_counter() - start)
