"""Cheap structural complexity features of a prompt (pure functions, microseconds per prompt).

They complement the sentence embedding with signals an embedding of a truncated window does not carry well:
how long the prompt is, whether it contains code or math, how many constraints and steps it states, whether it
carries few-shot examples, and which role (single / plan / execute / verify) the call plays in an agent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from router.decision import ROLES

_CODE = re.compile(r"```|\bdef |\bclass |\breturn\b|\bimport |#include|=>|\bfunction\b|;\s*$|\{\s*$", re.M)
_MATH = re.compile(r"\d+\s*[-+*/^=<>]\s*\d+|\\frac|\\sum|\\int|\$[^$]+\$|\bsolve\b|\bequation\b|\bprove\b", re.I)
_CONSTRAINT = re.compile(
    r"\b(must|exactly|at least|at most|no more than|only|never|always|should not|do not|don't|format|json|"
    r"bullet|words?|sentences?|characters?|within)\b",
    re.I,
)
_STEPS = re.compile(
    r"^\s*(\d+[.)]|[-*•])\s+|\b(first|then|next|finally|step \d+|step-by-step|afterwards)\b", re.I | re.M
)
_FEWSHOT = re.compile(r"^\s*(Q|A|Question|Answer|Input|Output|Example)\s*\d*\s*:", re.I | re.M)
_QUESTION = re.compile(r"\?")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_UPPER_WORD = re.compile(r"\b[A-Z]{2,}\b")
_URL = re.compile(r"https?://")

FEATURE_NAMES: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "log_lines",
    "mean_word_len",
    "tail_question",
    "n_questions",
    "code_markers",
    "math_markers",
    "digit_ratio",
    "n_numbers",
    "constraint_words",
    "step_markers",
    "fewshot_markers",
    "upper_words",
    "non_ascii_ratio",
    "urls",
    *(f"role_{r}" for r in ROLES),
)


def _one(text: str, role: str | None) -> list[float]:
    n_chars = len(text)
    words = text.split()
    n_words = len(words)
    tail = text[-300:]
    role = role or "single"
    # counts through C-level iteration (map, str.encode): the same numbers as a generator over the characters
    non_ascii = 0 if text.isascii() else n_chars - len(text.encode("ascii", "ignore"))
    return [
        math.log1p(n_chars),
        math.log1p(n_words),
        math.log1p(text.count("\n") + 1),
        (sum(map(len, words)) / n_words) if n_words else 0.0,
        float("?" in tail),
        math.log1p(len(_QUESTION.findall(text))),
        math.log1p(len(_CODE.findall(text))),
        math.log1p(len(_MATH.findall(text))),
        (sum(map(str.isdigit, text)) / n_chars) if n_chars else 0.0,
        math.log1p(len(_NUMBER.findall(text))),
        math.log1p(len(_CONSTRAINT.findall(text))),
        math.log1p(len(_STEPS.findall(text))),
        math.log1p(len(_FEWSHOT.findall(text))),
        math.log1p(len(_UPPER_WORD.findall(text))),
        (non_ascii / n_chars) if n_chars else 0.0,
        float(len(_URL.findall(text))),
        *(float(role == r) for r in ROLES),
    ]


def structural_features(texts: Sequence[str], roles: Sequence[str | None] | None = None) -> np.ndarray:
    """Feature matrix ``[n, len(FEATURE_NAMES)]`` (float32) for the prompts and their agent roles."""
    if roles is None:
        roles = [None] * len(texts)
    if len(roles) != len(texts):
        raise ValueError(f"got {len(texts)} texts but {len(roles)} roles")
    rows = [_one(t, r) for t, r in zip(texts, roles, strict=True)]
    return np.asarray(rows, dtype=np.float32).reshape(len(texts), len(FEATURE_NAMES))
