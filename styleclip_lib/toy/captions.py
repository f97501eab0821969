"""The toy world's caption / prompt language.

Every attribute value of :mod:`styleclip_lib.toy.render` has synonym phrases
in three grammatical forms:

* ``with``: a noun phrase that follows "with" ("violet hair", "a smile");
* ``adj``: an adjective before the noun ("smiling", "bald", "blue-eyed");
* ``post``: a phrase after the noun ("wearing glasses", "on a pink background").

:func:`caption` builds true captions of a face from random subsets of its
*observable* attributes (see :func:`styleclip_lib.toy.render.observable`: the
hair colour of a bald face is only ever mentioned through its beard, "a bald
person with a red beard").  :func:`parse_prompt` maps free text back to
``(attr, value)`` pairs (case-insensitive, leftmost-longest phrase matching, so
"violet hair" -> hair_color=purple and "without glasses" -> glasses=no).
:func:`prompt_for`, :func:`neutral_prompt_for` and :data:`EDIT_PROMPTS` give
the canonical edit texts for the evaluator and for global directions.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Mapping, Sequence, Union

import numpy as np

from .render import ATTRIBUTES, DEFAULT_VALUES, FaceParams, observable

__all__ = [
    "FORMS", "SYNONYMS", "NOUNS", "EDIT_PROMPTS", "EDIT_PROMPT_SYNONYMS",
    "caption", "captions", "prompt_for", "neutral_prompt_for", "parse_prompt",
    "true_attributes", "is_true_of",
]

AttrValue = tuple[str, str]

# --------------------------------------------------------------------------
# vocabulary
# --------------------------------------------------------------------------

#: colour words for hair (used in "X hair", "long X hair", "a X mohawk", "a X beard")
HAIR_WORDS: dict[str, tuple[str, ...]] = {
    "black": ("black", "jet-black", "dark"),
    "brown": ("brown", "brunette", "chestnut"),
    "blonde": ("blonde", "blond", "golden"),
    "red": ("red", "ginger", "orange"),
    "grey": ("grey", "gray", "silver"),
    "purple": ("purple", "violet"),
    "blue": ("blue", "bright blue"),
}
_HAIR_ADJ: dict[str, tuple[str, ...]] = {
    "black": ("black-haired", "dark-haired"),
    "brown": ("brown-haired", "brunette"),
    "blonde": ("blonde", "blond", "blonde-haired"),
    "red": ("red-haired", "ginger", "redheaded"),
    "grey": ("grey-haired", "gray-haired", "silver-haired"),
    "purple": ("purple-haired", "violet-haired"),
    "blue": ("blue-haired",),
}
BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "white": ("white", "plain white"),
    "yellow": ("yellow", "pale yellow"),
    "green": ("green", "light green"),
    "pink": ("pink", "pastel pink"),
}
_SKIN = {
    "light": (("light skin", "fair skin", "pale skin"), ("light-skinned", "fair-skinned")),
    "tan": (("tan skin", "tanned skin", "olive skin"), ("tanned", "tan-skinned")),
    "brown": (("brown skin",), ("brown-skinned",)),
    "dark": (("dark skin", "deep brown skin"), ("dark-skinned",)),
}


def _forms() -> dict[AttrValue, dict[str, tuple[str, ...]]]:
    F: dict[AttrValue, dict[str, tuple[str, ...]]] = {}
    for v, words in HAIR_WORDS.items():
        F[("hair_color", v)] = {"with": tuple(f"{w} hair" for w in words), "adj": _HAIR_ADJ[v], "post": ()}
    F[("hair_style", "short")] = {"with": ("short hair", "a short haircut"), "adj": ("short-haired",), "post": ()}
    F[("hair_style", "long")] = {"with": ("long hair", "shoulder-length hair", "long flowing hair"),
                                 "adj": ("long-haired",), "post": ()}
    F[("hair_style", "bald")] = {"with": ("a bald head", "a shaved head", "no hair"),
                                 "adj": ("bald", "hairless"), "post": ()}
    F[("hair_style", "mohawk")] = {"with": ("a mohawk", "a mohawk hairstyle", "a mohican"), "adj": (), "post": ()}
    for v, (w, adj) in _SKIN.items():
        F[("skin_tone", v)] = {"with": w, "adj": adj, "post": ()}
    for v in ATTRIBUTES["eye_color"]:
        F[("eye_color", v)] = {"with": (f"{v} eyes",), "adj": (f"{v}-eyed",), "post": ()}
    F[("mouth", "neutral")] = {"with": ("a neutral expression", "a closed mouth", "a straight face"),
                               "adj": ("serious", "expressionless"), "post": ()}
    F[("mouth", "smile")] = {"with": ("a smile", "a big smile", "a grin"),
                             "adj": ("smiling", "happy", "grinning"), "post": ()}
    F[("mouth", "open")] = {"with": ("an open mouth", "a surprised expression", "a shocked expression"),
                            "adj": ("surprised", "shocked", "astonished"), "post": ()}
    F[("glasses", "no")] = {"with": ("no glasses",), "adj": (),
                            "post": ("without glasses", "not wearing glasses", "without eyeglasses")}
    F[("glasses", "yes")] = {"with": ("glasses", "eyeglasses", "spectacles", "round glasses"),
                             "adj": ("bespectacled",), "post": ("wearing glasses", "in glasses", "wearing spectacles")}
    F[("beard", "no")] = {"with": ("no beard",), "adj": ("clean-shaven", "beardless"), "post": ("without a beard",)}
    F[("beard", "yes")] = {"with": ("a beard", "a full beard", "facial hair"), "adj": ("bearded",), "post": ()}
    for v, words in BACKGROUND_WORDS.items():
        F[("background", v)] = {
            "with": tuple(f"a {w} background" for w in words),
            "adj": (),
            "post": tuple(f"{p} a {w} background" for w in words for p in ("on", "against", "in front of")),
        }
    assert set(F) == {(a, v) for a, vs in ATTRIBUTES.items() for v in vs}
    return F


#: (attr, value) -> {"with" | "adj" | "post": synonym phrases}
FORMS: dict[AttrValue, dict[str, tuple[str, ...]]] = _forms()

#: (attr, value) -> all synonym phrases, the canonical one first
SYNONYMS: dict[AttrValue, tuple[str, ...]] = {
    k: f["with"] + f["adj"] + f["post"] for k, f in FORMS.items()
}

#: (prefix, head noun): "a portrait of a smiling person", "a cartoon face with ..."
NOUNS: tuple[tuple[str, str], ...] = (
    ("", "face"), ("", "person"), ("", "cartoon face"), ("", "cartoon person"),
    ("", "cartoon character"), ("a portrait of ", "person"), ("a drawing of ", "face"),
    ("a picture of ", "person"),
)

# phrases recognised by the parser only (never generated)
_PARSE_ONLY: dict[str, tuple[AttrValue, ...]] = {
    "white hair": (("hair_color", "grey"),),
    "yellow hair": (("hair_color", "blonde"),),
    "redhead": (("hair_color", "red"),),
    "brunette": (("hair_color", "brown"),),
    "blond": (("hair_color", "blonde"),),
    "smiles": (("mouth", "smile"),),
    "smile": (("mouth", "smile"),),
    "grin": (("mouth", "smile"),),
    "open mouth": (("mouth", "open"),),
    "mouth open": (("mouth", "open"),),
    "open-mouthed": (("mouth", "open"),),
    "neutral": (("mouth", "neutral"),),
    "not smiling": (("mouth", "neutral"),),
    "who is not smiling": (("mouth", "neutral"),),
    "who is smiling": (("mouth", "smile"),),
    "sunglasses": (("glasses", "yes"),),
    "no eyeglasses": (("glasses", "no"),),
    "no spectacles": (("glasses", "no"),),
    "without any glasses": (("glasses", "no"),),
    "beard": (("beard", "yes"),),
    "without any beard": (("beard", "no"),),
    "no facial hair": (("beard", "no"),),
    "shaved head": (("hair_style", "bald"),),
    "bald head": (("hair_style", "bald"),),
    "mohawk": (("hair_style", "mohawk"),),
    "mohican": (("hair_style", "mohawk"),),
    "glasses": (("glasses", "yes"),),
}


# --------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------

_ARTICLES = re.compile(r"(?<![\w-])(a|an|the)(?![\w-])")


def _norm(text: str) -> str:
    t = text.lower().replace("’", "'")
    t = re.sub(r"[^a-z0-9\-' ]+", " ", t)
    t = _ARTICLES.sub(" ", t)
    return " ".join(t.split())


@lru_cache(maxsize=1)
def _phrase_table() -> tuple[dict[str, tuple[AttrValue, ...]], "re.Pattern[str]"]:
    table: dict[str, set[AttrValue]] = {}

    def add(phrase: str, *pairs: AttrValue) -> None:
        table.setdefault(_norm(phrase), set()).update(pairs)

    for key, forms in FORMS.items():
        for kind in ("with", "adj", "post"):
            for p in forms[kind]:
                add(p, key)
    for phrase, pairs in _PARSE_ONLY.items():
        add(phrase, *pairs)
    for v, words in BACKGROUND_WORDS.items():
        for w in words:
            add(f"{w} backdrop", ("background", v))
    # hair colour combined with a style or a beard
    for v, words in HAIR_WORDS.items():
        for w in words:
            c = ("hair_color", v)
            for style in ("short", "long"):
                add(f"{style} {w} hair", c, ("hair_style", style))
                add(f"{w} {style} hair", c, ("hair_style", style))
            add(f"long flowing {w} hair", c, ("hair_style", "long"))
            add(f"shoulder-length {w} hair", c, ("hair_style", "long"))
            add(f"{w} mohawk", c, ("hair_style", "mohawk"))
            add(f"{w} mohican", c, ("hair_style", "mohawk"))
            add(f"{w} beard", c, ("beard", "yes"))
            add(f"full {w} beard", c, ("beard", "yes"))
    # a phrase must never be claimed by two values of one attribute
    for phrase, pairs in table.items():
        attrs = [a for a, _ in pairs]
        assert len(attrs) == len(set(attrs)), (phrase, pairs)
    frozen = {k: tuple(sorted(v, key=lambda av: list(ATTRIBUTES).index(av[0]))) for k, v in table.items()}
    alts = sorted(frozen, key=len, reverse=True)        # longest first = leftmost-longest
    pattern = re.compile(r"(?<![\w'-])(" + "|".join(re.escape(a) for a in alts) + r")(?![\w'-])")
    return frozen, pattern


def parse_prompt(text: str) -> list[AttrValue]:
    """``(attr, value)`` pairs that ``text`` asks for, in order of appearance,
    without duplicates.  Case-insensitive; articles are ignored; at each
    position the longest known phrase wins ("violet hair" -> purple,
    "without glasses" -> glasses=no, "a red beard" -> red + beard).  Text that
    names no attribute ("a face", "hair") gives ``[]``."""
    table, pattern = _phrase_table()
    out: list[AttrValue] = []
    for m in pattern.finditer(_norm(text)):
        for pair in table[m.group(1)]:
            if pair not in out:
                out.append(pair)
    return out


# --------------------------------------------------------------------------
# truth
# --------------------------------------------------------------------------

def _as_params(params: Union[FaceParams, Mapping]) -> FaceParams:
    return params if isinstance(params, FaceParams) else FaceParams.from_dict(params)


def true_attributes(params: Union[FaceParams, Mapping]) -> set[AttrValue]:
    """The observable ``(attr, value)`` pairs of a face."""
    p = _as_params(params)
    return {(a, p.value(a)) for a in ATTRIBUTES if observable(a, p)}


def is_true_of(text: str, params: Union[FaceParams, Mapping]) -> bool:
    """Whether everything ``text`` says (per :func:`parse_prompt`) holds for the face."""
    return set(parse_prompt(text)) <= true_attributes(params)


# --------------------------------------------------------------------------
# captions
# --------------------------------------------------------------------------

_DEFAULT_WEIGHT = 0.35        # how often "plain" values are mentioned, relative to others


def _join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _pick(rng: np.random.Generator, seq: Sequence[str]) -> str:
    return seq[int(rng.integers(len(seq)))]


def caption(params: Union[FaceParams, Mapping], rng: Union[np.random.Generator, int, None] = None,
            n_attrs: int | None = None, return_attrs: bool = False, include: str | None = None):
    """A random true caption of the face, e.g. "a smiling person with violet
    hair and glasses" or "a face with blue eyes on a pink background".

    Mentions ``n_attrs`` observable attributes (default: uniform in 1..all),
    chosen at random with "plain" values (short hair, neutral mouth, no
    glasses, no beard) less likely.  With ``return_attrs`` also returns the
    set of ``(attr, value)`` pairs the caption states (which is exactly what
    :func:`parse_prompt` recovers from it).  ``include`` names an attribute the
    caption must state (when it is observable)."""
    p = _as_params(params)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    obs = [a for a in ATTRIBUTES if observable(a, p)]
    k = int(rng.integers(1, len(obs) + 1)) if n_attrs is None else max(1, min(int(n_attrs), len(obs)))
    w = np.array([_DEFAULT_WEIGHT if DEFAULT_VALUES[a] == p.value(a) else 1.0 for a in obs])
    chosen = set(rng.choice(len(obs), size=k, replace=False, p=w / w.sum()).tolist())
    if include is not None and include in obs and obs.index(include) not in chosen:
        chosen.discard(max(chosen))
        chosen.add(obs.index(include))
    chosen_attrs = [a for i, a in enumerate(obs) if i in chosen]
    val = {a: p.value(a) for a in ATTRIBUTES}
    stated: set[AttrValue] = {(a, val[a]) for a in chosen_attrs}

    adjs: list[str] = []
    withs: list[str] = []
    posts: list[str] = []
    bald = val["hair_style"] == "bald"
    todo = list(chosen_attrs)
    rng.shuffle(todo)

    # hair colour: through the beard on a bald face; sometimes merged with the style
    if "hair_color" in todo:
        cw = _pick(rng, HAIR_WORDS[val["hair_color"]])
        if bald:                                        # observable => bearded
            withs.append(f"a {cw} beard")
            stated.add(("beard", "yes"))
            todo.remove("hair_color")
            if "beard" in todo:
                todo.remove("beard")
        elif "hair_style" in todo and rng.random() < 0.6:
            style = val["hair_style"]
            if style == "mohawk":
                withs.append(f"a {cw} mohawk")
            elif style == "long":
                withs.append(f"{_pick(rng, ('long', 'long flowing', 'shoulder-length'))} {cw} hair")
            else:
                withs.append(f"short {cw} hair")
            todo.remove("hair_color")
            todo.remove("hair_style")
        elif val["beard"] == "yes" and "beard" in todo and rng.random() < 0.4:
            withs.extend([f"{cw} hair", f"a {cw} beard"] if rng.random() < 0.5 else [f"a {cw} beard"])
            todo.remove("hair_color")
            todo.remove("beard")

    for a in todo:
        forms = FORMS[(a, val[a])]
        options = [kind for kind in ("with", "adj", "post") if forms[kind]]
        if len(adjs) >= 2 and "adj" in options and len(options) > 1:
            options.remove("adj")
        if a == "hair_style" and bald and val["beard"] == "yes":
            forms = {**forms, "with": ("a bald head", "a shaved head"), "adj": ("bald",)}
        kind = _pick(rng, options)
        phrase = _pick(rng, forms[kind])
        {"with": withs, "adj": adjs, "post": posts}[kind].append(phrase)

    prefix, head = NOUNS[int(rng.integers(len(NOUNS)))]
    core = " ".join(adjs + [head])
    text = f"{prefix}a {core}"
    if posts:                                   # "... with a pink background wearing glasses" reads badly
        withs = [w if not w.endswith(" background") else posts.append(f"on {w}") or "" for w in withs]
        withs = [w for w in withs if w]
    if withs:
        withs.sort(key=lambda s: s.endswith("background"))      # background last
        text += " with " + _join(withs)
    # background phrases go last
    posts.sort(key=lambda s: s.endswith("background"))
    if posts:
        text += " " + " ".join(posts)
    text = _fix_articles(text)
    return (text, stated) if return_attrs else text


def captions(params_list, seed: int | None = 0, n_attrs: int | None = None) -> list[str]:
    """One random caption per face (deterministic given ``seed``)."""
    rng = np.random.default_rng(seed)
    return [caption(p, rng, n_attrs) for p in params_list]


# --------------------------------------------------------------------------
# edit prompts
# --------------------------------------------------------------------------

_TEMPLATE = {            # attribute -> (target template, neutral text); {} = a synonym
    "hair_color": ("{}", "hair"),
    "hair_style": ("a person with {}", "a person"),
    "skin_tone": ("a person with {}", "a person"),
    "eye_color": ("{}", "eyes"),
    "mouth": ("a {} face", "a face"),
    "glasses": ("a face with {}", "a face"),
    "beard": ("a face with {}", "a face"),
    "background": ("a face {}", "a face"),
}


def _prompt_synonyms(attr: str, value: str) -> tuple[str, ...]:
    f = FORMS[(attr, value)]
    if attr == "hair_style" and value == "bald":
        return tuple(f"a {w} person" for w in f["adj"]) + tuple(f"a person with {w}" for w in f["with"])
    if attr == "mouth":
        return tuple(f"a {w} face" for w in f["adj"])
    if attr == "glasses" and value == "no":
        return tuple(f"a face {w}" for w in f["post"])
    if attr == "beard" and value == "no":
        return tuple(f"a {w} face" for w in f["adj"]) + tuple(f"a face {w}" for w in f["post"])
    if attr == "background":
        return tuple(f"a face {w}" for w in f["post"])
    return tuple(_TEMPLATE[attr][0].format(w) for w in f["with"])


def prompt_for(attr: str, value: str, synonym: int = 0) -> str:
    """Canonical edit prompt for ``attr=value`` ("purple hair", "a smiling
    face", "a face with glasses", "a bald person"); ``synonym`` picks an
    alternative wording (modulo the number available)."""
    if value not in ATTRIBUTES[attr]:
        raise ValueError(f"{attr}: unknown value {value!r}")
    syn = _prompt_synonyms(attr, value)
    return _fix_articles(syn[synonym % len(syn)])


def neutral_prompt_for(attr: str) -> str:
    """Neutral text to pair with :func:`prompt_for` (global directions):
    "hair", "eyes", "a person" or "a face"."""
    return _TEMPLATE[attr][1]


def _fix_articles(text: str) -> str:
    return re.sub(r"(?<![\w-])a (?=[aeiou])", "an ", text)


#: (prompt, attr, value) for every non-default value of every attribute
EDIT_PROMPTS: list[tuple[str, str, str]] = [
    (prompt_for(a, v), a, v) for a, vs in ATTRIBUTES.items() for v in vs if v != DEFAULT_VALUES[a]
]
#: every synonym wording of every edit prompt
EDIT_PROMPT_SYNONYMS: list[tuple[str, str, str]] = [
    (_fix_articles(t), a, v) for a, vs in ATTRIBUTES.items() for v in vs if v != DEFAULT_VALUES[a]
    for t in _prompt_synonyms(a, v)
]
