"""A commitment to the forget set that reveals nothing about it.

For row *i* of the forget set the run derives a salt ``s_i = HMAC-SHA256(key, "row:<i>")`` from a random 32-byte
key that stays in the local output folder (``.forget_commitment_key``, never published) and commits to the row
with ``h_i = SHA256(s_i || canonical(row))``, where ``canonical`` is the row's content columns (``prompt`` /
``completion``, ``messages``, ``text`` or ``input_ids``) as compact, key-sorted JSON. The report (and so the
Hub) carries only the sorted hashes.

What it proves: whoever holds the key can later show that a given row was in the forget set by revealing that
row and its salt (:func:`reveal`); anyone can check the pair against the published hashes
(:func:`check_proof`, ``lune-hf verify ADAPTER --prove proof.json``). One revealed salt says nothing about the
other rows. What it does not prove: that the adapter forgot that row (that is what ``lune-hf verify`` measures),
that the forget set was complete, or that the publisher trained on exactly these rows (the report's forget-set
fingerprint and row count tie the hashes to the data the run saw, nothing more).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

SCHEME = "lune-hf/forget-commitment/1"
KEY_FILE = ".forget_commitment_key"
CONTENT_COLUMNS = ("prompt", "completion", "messages", "text", "input_ids")


def content(row: Mapping[str, Any]) -> dict[str, Any]:
    """The columns that say what the row teaches (`CONTENT_COLUMNS`); replacement and other columns do not count."""
    found = {k: row[k] for k in CONTENT_COLUMNS if k in row}
    if not found:
        raise ValueError(f"A forget row needs one of the columns {CONTENT_COLUMNS}; it has {sorted(row)}.")
    return found


def canonical_row(row: Mapping[str, Any]) -> bytes:
    """The row's content as compact, key-sorted UTF-8 JSON."""
    return json.dumps(content(row), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def row_salt(key: bytes, index: int) -> bytes:
    return hmac.new(key, f"row:{index}".encode(), hashlib.sha256).digest()


def row_hash(salt: bytes, row: Mapping[str, Any]) -> str:
    return hashlib.sha256(salt + canonical_row(row)).hexdigest()


def commit_rows(rows: Iterable[Mapping[str, Any]], key: bytes) -> dict[str, Any]:
    """The public commitment: scheme, row count and the sorted salted hashes (no text, no order)."""
    hashes = sorted(row_hash(row_salt(key, i), row) for i, row in enumerate(rows))
    return {"scheme": SCHEME, "rows": len(hashes), "hashes": hashes}


def load_or_create_key(folder: str | Path) -> bytes:
    """The run's secret key in `folder` (created, readable by the owner only, on first use)."""
    path = Path(folder) / KEY_FILE
    if path.is_file():
        return load_key(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key.hex() + "\n")
    return key


def load_key(folder: str | Path) -> bytes:
    """The secret key a run left in its output folder."""
    path = Path(folder) / KEY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no forget-set key here; reveal needs the run's own local output folder.")
    return bytes.fromhex(path.read_text(encoding="utf-8").strip())


def reveal(rows: Iterable[Mapping[str, Any]], key: bytes, row: Mapping[str, Any] | int) -> dict[str, Any]:
    """A proof that `row` (a row, or its index) is in the committed forget set: the row and its salt."""
    listed = [dict(r) for r in rows]
    if isinstance(row, int):
        if not 0 <= row < len(listed):
            raise IndexError(f"row {row} is outside the forget set (0..{len(listed) - 1}).")
        index = row
    else:
        wanted = canonical_row(row)
        index = next((i for i, r in enumerate(listed) if canonical_row(r) == wanted), None)
        if index is None:
            raise ValueError("That row is not in the forget set (compared by prompt and answer).")
    return {"scheme": SCHEME, "row": content(listed[index]), "salt": row_salt(key, index).hex()}


def check_proof(commitment: Mapping[str, Any], proof: Mapping[str, Any]) -> bool:
    """True when the proof's row and salt hash to one of the committed hashes."""
    if commitment.get("scheme") != SCHEME or proof.get("scheme", SCHEME) != SCHEME:
        raise ValueError(f"Unknown commitment scheme {commitment.get('scheme')!r} / {proof.get('scheme')!r}.")
    try:
        salt = bytes.fromhex(str(proof["salt"]))
    except (KeyError, ValueError) as err:
        raise ValueError("The proof needs a `salt` (hex) and a `row`.") from err
    return row_hash(salt, proof["row"]) in set(commitment.get("hashes", []))
