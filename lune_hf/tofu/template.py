"""TOFU prompts and tokens exactly as open-unlearning builds them (``src/data/utils.py::preprocess_chat_instance``).

The numbers of a TOFU table depend on which tokens are scored, so the benchmark tokenises every (question,
answer) pair the way open-unlearning does, not the way lune_hf's own rows do:

* ``"chat"`` (instruct models; open-unlearning's ``apply_chat_template: True``): the system prompt
  (``"You are a helpful assistant."``), the question as a user turn and the answer as an assistant turn, rendered
  by the tokenizer's chat template with a fixed ``date_string`` (Llama-3 templates otherwise insert today's date).
  The prompt is the same chat without the answer, with the generation prompt. When the rendered conversation does
  not end with the EOS token, EOS is appended: on ChatML templates (SmolLM2, Qwen) the scored answer is therefore
  ``answer <|im_end|> \\n <|im_end|>``.
* ``"plain"`` (base models; TOFU's original format, open-unlearning's phi-1.5 template): the prompt is
  ``"Question: {q}\\nAnswer: "`` (with the trailing space) and the sequence is the tokenisation of
  ``prompt + answer`` plus EOS. Labels start after as many tokens as the prompt alone has: where the trailing space
  merges with the answer's first word (``": Jane"`` -> ``":", " Jane"``), that first word is not scored, as in
  open-unlearning.

In both formats the labels are ``-100`` on the first ``len(prompt_ids)`` positions and the token ids after them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..objectives import IGNORE_INDEX

__all__ = ["DATE_STRING", "PLAIN_TEMPLATE", "SYSTEM_PROMPT", "TofuTemplate"]

SYSTEM_PROMPT = "You are a helpful assistant."
DATE_STRING = "10 Apr 2025"  # open-unlearning's Llama-3 model configs (`template_args.date_string`)
# open-unlearning's configs/model/phi-1_5.yaml: user_start_tag, user_end_tag, asst_start_tag.
PLAIN_TEMPLATE = ("Question: ", "\n", "Answer: ")
PROMPT_FORMATS = ("chat", "plain")


def _ids(encoded: Any) -> list[int]:
    """Token ids from `apply_chat_template(tokenize=True)`, which returns a list or (transformers 5) a mapping."""
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


@dataclass(frozen=True)
class TofuTemplate:
    """How a TOFU question and answer become tokens (see the module docstring).

    Args:
        prompt_format: ``"chat"`` (the tokenizer's chat template) or ``"plain"`` (``Question: ... Answer: ...``).
        system_prompt: the system turn of the chat format (None: none).
        date_string: passed to the chat template (Llama-3 templates print it); None leaves the template's default.
    """

    prompt_format: str = "chat"
    system_prompt: str | None = SYSTEM_PROMPT
    date_string: str | None = DATE_STRING

    def __post_init__(self) -> None:
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"Unknown prompt_format {self.prompt_format!r}; use one of {PROMPT_FORMATS}.")

    def _chat(self, question: str, answer: str | None) -> list[dict[str, str]]:
        chat = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        chat.append({"role": "user", "content": question})
        if answer is not None:
            chat.append({"role": "assistant", "content": answer})
        return chat

    def _render(self, tokenizer, chat: list[dict[str, str]], generation_prompt: bool) -> list[int]:
        extra = {"date_string": self.date_string} if self.date_string is not None else {}
        return _ids(tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=generation_prompt,
                                                  **extra))

    def plain_prompt(self, question: str) -> str:
        """``"Question: {q}\\nAnswer: "``: the prompt text of the plain format."""
        user_start, user_end, assistant_start = PLAIN_TEMPLATE
        return f"{user_start}{question}{user_end}{assistant_start}"

    def prompt_ids(self, tokenizer, question: str) -> list[int]:
        """Token ids of the prompt alone: what greedy generation starts from."""
        if self.prompt_format == "chat":
            return self._render(tokenizer, self._chat(question, None), generation_prompt=True)
        return list(tokenizer(self.plain_prompt(question), add_special_tokens=True)["input_ids"])

    def encode(self, tokenizer, question: str, answer: str, max_length: int | None = None) -> dict[str, list[int]]:
        """``input_ids`` (prompt and answer, EOS appended when missing) and ``labels`` (-100 over the prompt).

        ``max_length`` cuts the sequence (open-unlearning truncates the plain format the same way). Raises
        ``ValueError`` when no answer token is left to score.
        """
        head = self.prompt_ids(tokenizer, question)
        if self.prompt_format == "chat":
            ids = self._render(tokenizer, self._chat(question, answer), generation_prompt=False)
        else:
            ids = list(tokenizer(self.plain_prompt(question) + answer, add_special_tokens=True)["input_ids"])
        if max_length is not None:
            ids = ids[:max_length]
        if tokenizer.eos_token_id is not None and ids[-1] != tokenizer.eos_token_id:
            ids.append(tokenizer.eos_token_id)
        if len(ids) <= len(head):
            raise ValueError(f"No answer token left to score for question {question[:60]!r} (prompt {len(head)} "
                             f"tokens, sequence {len(ids)}); raise max_length.")
        return {"input_ids": ids, "labels": [IGNORE_INDEX] * len(head) + ids[len(head):]}

    def encode_rows(self, tokenizer, rows: Iterable[Mapping[str, Any]], max_length: int | None = None,
                    answer_column: str = "answer") -> list[dict[str, list[int]]]:
        """:meth:`encode` of every TOFU row (``question`` and ``answer_column``)."""
        return [self.encode(tokenizer, row["question"], row[answer_column], max_length) for row in rows]
