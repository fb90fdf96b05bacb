"""The token window both transformer backends and the static encoder share (head + tail of a long prompt, with the
tokenizer's special tokens), and the batching, pooling and normalisation steps around it.

Imports only numpy (tokenizers lazily).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from router.encoders.spec import EncoderError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import tokenizers


def window_token_ids(ids: Sequence[int], max_tokens: int, head_tokens: int, n_special: int = 2) -> list[int]:
    """Keep a long prompt's head and tail content tokens so that, with special tokens, it fits ``max_tokens``.

    ``ids`` are content token ids (no [CLS]/[SEP]). When ``len(ids) + n_special <= max_tokens`` they are returned
    unchanged; otherwise the first ``head_tokens`` and the last ``max_tokens - n_special - head_tokens`` ids are
    kept, in order. ``head_tokens`` is clipped to the budget (then the tail is empty).
    """
    budget = max_tokens - n_special
    if budget < 0 or head_tokens < 0:
        raise ValueError(f"invalid window: max_tokens={max_tokens}, head_tokens={head_tokens}, n_special={n_special}")
    ids = list(ids)
    if len(ids) <= budget:
        return ids
    head = min(head_tokens, budget)
    tail = budget - head
    return ids[:head] + (ids[len(ids) - tail :] if tail > 0 else [])


class TokenWindow:
    """Tokenises prompts with a fast tokenizer and applies :func:`window_token_ids` plus the special tokens."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, max_tokens: int, head_tokens: int) -> None:
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.head_tokens = head_tokens
        self.prefix, self.suffix = special_affixes(tokenizer)

    @classmethod
    def from_json(cls, tokenizer_json: str, max_tokens: int, head_tokens: int) -> TokenWindow:
        """Build from the text of a ``tokenizer.json``."""
        import tokenizers

        return cls(tokenizers.Tokenizer.from_str(tokenizer_json), max_tokens, head_tokens)

    @property
    def n_special(self) -> int:
        return len(self.prefix) + len(self.suffix)

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Model input ids per text: prefix specials + windowed content ids + suffix specials."""
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"encoder inputs must be str, got {type(t).__name__}")
        content: list[list[int] | None] = [self._clipped_content_ids(t) for t in texts]
        todo = [i for i, c in enumerate(content) if c is None]
        if todo:
            for i, ids in zip(todo, self._full_content_ids([texts[i] for i in todo]), strict=True):
                content[i] = ids
        return [self.prefix + c + self.suffix for c in content if c is not None]

    def fits(self, text: str) -> bool:
        """Whether the window keeps all of ``text`` (its tokens and the special tokens fit ``max_tokens``)."""
        budget = self.max_tokens - self.n_special
        if len(text) > budget * _CLIP_CHARS_PER_TOKEN * 4:  # far too long to fit: no need to tokenise it
            return False
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids) <= budget

    def encode_inputs(self, texts: Sequence[str], dim: int) -> tuple[np.ndarray, list[list[int]]]:
        """What a transformer backend's ``encode`` starts from: its output array (zeros, float32
        ``[len(texts), dim]``) and the model input ids of each text (:meth:`ids`)."""
        texts = list(texts)
        return np.zeros((len(texts), dim), dtype=np.float32), self.ids(texts)

    def _full_content_ids(self, texts: list[str]) -> list[list[int]]:
        """Reference path: tokenise whole texts, then window."""
        encs = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return [window_token_ids(e.ids, self.max_tokens, self.head_tokens, self.n_special) for e in encs]

    def _clipped_content_ids(self, text: str) -> list[int] | None:
        """Windowed ids of a very long text from tokenising only its two ends (None: use the full path).

        Tokenising a 1 MB prompt takes about half a second, so a long text is cut at whitespace into a head part
        and a tail part, each holding at least ``_CLIP_MARGIN_TOKENS`` more tokens than kept. Tokenisation is
        local to whitespace-separated words, so the kept tokens equal those of the full tokenisation; when a part
        has no whitespace near its cut or too few tokens, the full path is used instead.
        """
        budget = self.max_tokens - self.n_special
        head = min(self.head_tokens, budget)
        tail = budget - head
        head_chars = _CLIP_CHARS_PER_TOKEN * (head + _CLIP_MARGIN_TOKENS)
        tail_chars = _CLIP_CHARS_PER_TOKEN * (tail + _CLIP_MARGIN_TOKENS)
        if len(text) <= 2 * (head_chars + tail_chars):
            return None
        head_end = _whitespace_before(text, head_chars)
        tail_start = _whitespace_after(text, len(text) - tail_chars)
        if head_end is None or tail_start is None:
            return None
        head_ids = self.tokenizer.encode(text[:head_end], add_special_tokens=False).ids
        tail_ids = self.tokenizer.encode(text[tail_start:], add_special_tokens=False).ids
        if len(head_ids) < head + _CLIP_MARGIN_TOKENS or len(tail_ids) < tail + _CLIP_MARGIN_TOKENS:
            return None
        return head_ids[:head] + (tail_ids[len(tail_ids) - tail :] if tail > 0 else [])


_CLIP_CHARS_PER_TOKEN = 8
_CLIP_MARGIN_TOKENS = 16
_CLIP_SEARCH_CHARS = 256


def _whitespace_before(text: str, pos: int) -> int | None:
    """Index of the last whitespace character at or before ``pos`` (searching back a little), else None."""
    for i in range(min(pos, len(text) - 1), max(-1, pos - _CLIP_SEARCH_CHARS), -1):
        if text[i].isspace():
            return i
    return None


def _whitespace_after(text: str, pos: int) -> int | None:
    """Index of the first whitespace character at or after ``pos`` (searching forward a little), else None."""
    for i in range(max(0, pos), min(len(text), pos + _CLIP_SEARCH_CHARS)):
        if text[i].isspace():
            return i
    return None


def special_affixes(tokenizer: tokenizers.Tokenizer) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer's post-processor puts before and after a single text.

    Found by encoding a probe word with and without special tokens (BERT: ``[CLS]`` / ``[SEP]``).
    """
    with_sp = tokenizer.encode("hello", add_special_tokens=True).ids
    without = tokenizer.encode("hello", add_special_tokens=False).ids
    n = len(without)
    for i in range(len(with_sp) - n + 1):
        if with_sp[i : i + n] == without:
            return with_sp[:i], with_sp[i + n :]
    raise EncoderError("cannot locate the special tokens added by this tokenizer's post-processor")


def _pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad id lists to the longest one: (input_ids, attention_mask), both int64 ``[n, L]``."""
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask


def _length_batches(seqs: Sequence[Sequence[int]], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length (sorted, longest first) to minimise padding."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    for start in range(0, len(order), max(1, batch_size)):
        yield order[start : start + batch_size]


def _l2_normalise(v: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def _join_blocks(v: np.ndarray, n_blocks: int) -> np.ndarray:
    """Unit-norm rows made of ``n_blocks`` equal blocks, each L2-normalised and weighted ``1/sqrt(n_blocks)``."""
    if n_blocks == 1:
        return _l2_normalise(v)
    blocks = np.split(v, n_blocks, axis=1)
    return (np.hstack([_l2_normalise(b) for b in blocks]) / np.sqrt(n_blocks)).astype(np.float32, copy=False)


def _mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    return (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
