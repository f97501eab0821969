"""CLIP's byte-level BPE tokenizer, written from the spec of OpenAI's ``SimpleTokenizer``.

The text pipeline (exactly what openai-clip 1.0.1 does, see
``shared/conformance/tokenizer/README.md``):

1. ``ftfy.fix_text`` (defaults), ``html.unescape`` twice, ``strip``;
2. collapse every run of Unicode whitespace to one space, ``strip``;
3. ``str.lower()``;
4. split into pre-tokens with the ``regex`` module pattern :data:`PATTERN`;
5. for each pre-token: UTF-8 bytes -> printable unicode chars (GPT-2's
   byte-to-unicode table), ``</w>`` on the last symbol, then greedily merge the
   adjacent pair with the lowest merge rank until no ranked pair is left;
6. map BPE symbols to ids.  The vocabulary is the 256 byte chars, the same
   chars + ``</w>``, the 48,894 merges in file order, then ``<|startoftext|>``
   (49406) and ``<|endoftext|>`` (49407).

:func:`tokenize` wraps each text as ``[SOT] + ids + [EOT]`` and zero-pads to the
context length (id 0 is also the real token ``!``: padding is only recognised by
its position after the first EOT).

The vocabulary file is read lazily, once per process (:func:`get_tokenizer`).
"""
from __future__ import annotations

import functools
import gzip
import html
from pathlib import Path
from typing import Iterable, Sequence

import ftfy
import regex
import torch

__all__ = [
    "SimpleTokenizer",
    "get_tokenizer",
    "tokenize",
    "decode",
    "basic_clean",
    "whitespace_clean",
    "bytes_to_unicode",
    "DEFAULT_BPE_PATH",
    "SOT_TOKEN",
    "EOT_TOKEN",
    "PATTERN",
]

DEFAULT_BPE_PATH = Path(__file__).resolve().parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# Merges actually used by CLIP: 49152 BPE vocabulary entries minus the 256 byte
# chars and the 2 special tokens (the file holds ~262k merge lines in total).
N_MERGES = 49152 - 256 - 2
END_OF_WORD = "</w>"


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map byte -> printable unicode char.

    Printable latin-1 bytes map to themselves; the other 68 bytes (controls,
    space, ...) map to code points 256, 257, ... in byte order, so no BPE symbol
    ever contains whitespace or a control character.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    # Insertion order matters: the first 256 vocabulary ids follow it
    # (printable bytes in the order above, then the remapped ones by byte value).
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def basic_clean(text: str) -> str:
    """ftfy repair, double HTML unescape, strip (reference ``basic_clean``)."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


_WHITESPACE = regex.compile(r"\s+")


def whitespace_clean(text: str) -> str:
    """Collapse runs of Unicode whitespace to one space, strip."""
    return _WHITESPACE.sub(" ", text).strip()


class SimpleTokenizer:
    """Byte-level BPE tokenizer equal to OpenAI CLIP's ``SimpleTokenizer``."""

    def __init__(self, bpe_path: str | Path = DEFAULT_BPE_PATH):
        with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        # line 0 is the "#version" header; merges are "left right" pairs
        merges = [tuple(line.split()) for line in lines[1 : 1 + N_MERGES]]
        self.merges: list[tuple[str, str]] = merges

        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        byte_chars = list(self.byte_encoder.values())
        vocab = byte_chars + [c + END_OF_WORD for c in byte_chars]
        vocab += ["".join(pair) for pair in merges]
        vocab += [SOT_TOKEN, EOT_TOKEN]
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.decoder: dict[int, str] = dict(enumerate(vocab))
        self.bpe_ranks: dict[tuple[str, str], int] = {pair: i for i, pair in enumerate(merges)}
        self.sot_id = self.encoder[SOT_TOKEN]
        self.eot_id = self.encoder[EOT_TOKEN]
        self.vocab_size = len(vocab)
        self.pattern = regex.compile(PATTERN, regex.IGNORECASE)
        # special tokens bypass BPE
        self._cache: dict[str, tuple[str, ...]] = {SOT_TOKEN: (SOT_TOKEN,), EOT_TOKEN: (EOT_TOKEN,)}

    # ------------------------------------------------------------------ stages
    def clean(self, text: str) -> str:
        """Steps 1-3: ftfy/HTML clean, whitespace collapse, lowercase."""
        return whitespace_clean(basic_clean(text)).lower()

    def pre_tokenize(self, cleaned: str) -> list[str]:
        """Step 4: regex pre-tokens of already-cleaned text."""
        return self.pattern.findall(cleaned)

    def bpe(self, token: str) -> tuple[str, ...]:
        """Step 5: BPE symbols of one pre-token (given as byte-to-unicode chars)."""
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        word = list(token[:-1]) + [token[-1] + END_OF_WORD]
        ranks = self.bpe_ranks
        while len(word) > 1:
            # lowest-ranked adjacent pair present in the word
            best, best_rank = None, None
            for pair in zip(word, word[1:]):
                r = ranks.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = pair, r
            if best is None:
                break
            # merge every non-overlapping occurrence, left to right
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        result = tuple(word)
        self._cache[token] = result
        return result

    def bpe_tokens(self, text: str) -> list[str]:
        """BPE symbols of ``text`` (after cleaning), in byte-to-unicode form."""
        out: list[str] = []
        for pre in self.pre_tokenize(self.clean(text)):
            encoded = "".join(self.byte_encoder[b] for b in pre.encode("utf-8"))
            out.extend(self.bpe(encoded))
        return out

    # -------------------------------------------------------------- public API
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without SOT/EOT."""
        return [self.encoder[sym] for sym in self.bpe_tokens(text)]

    def decode(self, ids: Iterable[int] | torch.Tensor, *, strip: bool = True) -> str:
        """Text of a sequence of ids.

        ``strip=True`` (default) drops a leading SOT, everything from the first
        EOT on (so a padded row of :func:`tokenize` decodes to its text) and the
        trailing space.  ``strip=False`` is the literal reference decode: every id,
        special tokens and padding (``!``) included, ``</w>`` -> space.
        """
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"decode expects a 1-D sequence of ids, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        if strip:
            if ids and ids[0] == self.sot_id:
                ids = ids[1:]
            if self.eot_id in ids:
                ids = ids[: ids.index(self.eot_id)]
        try:
            chars = "".join(self.decoder[i] for i in ids)
        except KeyError as e:
            raise ValueError(f"token id {e.args[0]} is outside the vocabulary (0..{self.vocab_size - 1})") from None
        # specials are ASCII, hence their own byte chars, so this round-trips them
        text = bytearray(self.byte_decoder[c] for c in chars).decode("utf-8", errors="replace")
        text = text.replace(END_OF_WORD, " ")
        return text.strip() if strip else text

    def tokenize(
        self, texts: str | Sequence[str], context_length: int = 77, truncate: bool = False
    ) -> torch.LongTensor:
        """``[SOT] + encode(text) + [EOT]``, zero padded to ``context_length``.

        Returns int64 ``[N, context_length]`` (``N=1`` for a single string).  A
        text that does not fit raises ``RuntimeError("Input {text} is too long for
        context length {context_length}")`` (the whole call fails at the first
        such text) unless ``truncate=True``, which keeps the first
        ``context_length`` ids and puts EOT in the last slot.
        """
        if isinstance(texts, str):
            texts = [texts]
        rows = []
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"tokenize expects str or a sequence of str, got an item of type {type(text).__name__}")
            ids = [self.sot_id] + self.encode(text) + [self.eot_id]
            if len(ids) > context_length:
                if not truncate:
                    raise RuntimeError(f"Input {text} is too long for context length {context_length}")
                ids = ids[:context_length]
                ids[-1] = self.eot_id
            rows.append(ids)
        out = torch.zeros(len(rows), context_length, dtype=torch.long)
        for i, ids in enumerate(rows):
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> SimpleTokenizer:
    """The process-wide tokenizer over the bundled vocabulary (loaded on first use)."""
    return SimpleTokenizer(DEFAULT_BPE_PATH)


def tokenize(texts: str | Sequence[str], context_length: int = 77, truncate: bool = False) -> torch.LongTensor:
    """``clip.tokenize`` equivalent, returning int64 ``[N, context_length]``."""
    return get_tokenizer().tokenize(texts, context_length=context_length, truncate=truncate)


def decode(ids: Iterable[int] | torch.Tensor, *, strip: bool = True) -> str:
    """Text of a 1-D id sequence; see :meth:`SimpleTokenizer.decode`."""
    return get_tokenizer().decode(ids, strip=strip)
