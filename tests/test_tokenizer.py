"""CLIP tokenizer against the openai-clip 1.0.1 goldens (shared/conformance/tokenizer)."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import conformance_path, load_conformance
from styleclip_lib import tokenizer as tk
from styleclip_lib.tokenizer import bytes_to_unicode, decode, get_tokenizer, tokenize


@pytest.fixture(scope="module")
def golden():
    return load_conformance("tokenizer/tokens.pt")


@pytest.fixture(scope="module")
def golden_json():
    with open(conformance_path("tokenizer/tokens.json"), encoding="ascii") as f:
        return json.load(f)


def test_vocabulary_facts(golden, golden_json):
    t = get_tokenizer()
    meta = golden_json["meta"]
    assert t.vocab_size == golden["vocab_size"] == meta["vocab_size"] == 49408
    assert t.sot_id == golden["sot_id"] == 49406
    assert t.eot_id == golden["eot_id"] == 49407
    assert len(t.merges) == meta["n_merges_used"]
    assert " ".join(t.merges[0]) == meta["first_merge"]
    assert " ".join(t.merges[-1]) == meta["last_merge_used"]
    assert tk.PATTERN == meta["pattern"]
    # ids of the first 512 entries: byte chars (printable first), then the same + </w>
    b2u = bytes_to_unicode()
    assert len(set(b2u.values())) == 256
    assert t.encoder["!"] == 0 and t.encoder["!</w>"] == 256
    assert t.encoder[b2u[ord(" ")]] == 256 - 68 + 32  # space is the 33rd remapped byte
    assert t.encoder["".join(t.merges[0])] == 512


def test_tokenizer_is_cached():
    assert get_tokenizer() is get_tokenizer()


def test_all_prompts_truncated_exact(golden):
    ids = tokenize(golden["prompts"], context_length=77, truncate=True)
    assert ids.dtype == torch.int64 and ids.shape == (80, 77)
    bad = (ids != golden["tokens"]).any(dim=1).nonzero().flatten().tolist()
    assert not bad, f"prompts with wrong ids: {bad}"


def test_intermediate_stages(golden_json):
    t = get_tokenizer()
    for entry in golden_json["prompts"]:
        p = entry["prompt"]
        cleaned = t.clean(p)
        assert cleaned == entry["cleaned"], entry["index"]
        assert t.pre_tokenize(cleaned) == entry["pre_tokens"], entry["index"]
        assert t.bpe_tokens(p) == entry["bpe_tokens"], entry["index"]
        ids = [t.sot_id] + t.encode(p) + [t.eot_id]
        assert ids == entry["ids_untruncated"], entry["index"]
        assert len(ids) == entry["n_tokens_untruncated"]


def test_too_long_raises_exact_message(golden, golden_json):
    n_raise = 0
    for i, entry in enumerate(golden_json["prompts"]):
        p = entry["prompt"]
        assert bool(golden["raises_without_truncate"][i]) == entry["raises_without_truncate"]
        if entry["raises_without_truncate"]:
            n_raise += 1
            with pytest.raises(RuntimeError) as exc:
                tokenize(p)
            assert str(exc.value) == entry["error_message"] == f"Input {p} is too long for context length 77"
        else:
            assert torch.equal(tokenize(p)[0], golden["tokens"][i])
    assert n_raise >= 4


def test_batch_raises_at_first_offender(golden, golden_json):
    with pytest.raises(RuntimeError) as exc:
        tokenize(golden["prompts"])
    assert str(exc.value) == golden_json["meta"]["batch_truncate_false_error"]


def test_boundary_prompts(golden):
    # 74: exactly 77 with SOT/EOT fits; 75: one more raises, truncated equals 74
    p74, p75 = golden["prompts"][74], golden["prompts"][75]
    a = tokenize(p74)
    assert a[0, 76] == 49407
    with pytest.raises(RuntimeError):
        tokenize(p75)
    assert torch.equal(tokenize(p75, truncate=True), a)


def test_str_gives_batch_of_one_and_empty():
    ids = tokenize("purple hair")
    assert ids.shape == (1, 77) and ids.dtype == torch.long
    assert ids[0, :4].tolist() == [49406, 5496, 2225, 49407]
    assert tokenize("")[0, :3].tolist() == [49406, 49407, 0]
    assert tokenize([]).shape == (0, 77)
    assert tokenize("a b", context_length=5).shape == (1, 5)
    with pytest.raises(TypeError):
        tokenize([b"bytes"])


def test_decode(golden):
    row = golden["tokens"][0]  # "purple hair", padded
    assert decode(row) == "purple hair"
    assert decode(row[:4], strip=False) == "<|startoftext|>purple hair <|endoftext|>"
    for text in ["a person with purple hair", "café naïve 紫色的头发 😀 !"]:
        assert decode(tokenize(text)[0]) == text
    # lossy like the reference: every pre-token ends a word, text is cleaned/lowercased
    assert decode(tokenize("2024 Rock'n'Roll")[0]) == "2 0 2 4 rock ' n ' roll"
    assert decode([]) == ""
    with pytest.raises(ValueError):
        decode([49408])
    with pytest.raises(ValueError):
        decode(golden["tokens"][:2])
