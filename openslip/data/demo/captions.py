"""Caption grammar of the demo world: varied truthful phrasings plus web-like noise.

Clean captions always name the colour and shape of every object with the canonical words of
``demo_scene`` (so the zero-shot class names appear in training text); size, texture, position and
background are mentioned with probability ``detail``, through synonyms and several sentence forms.
A fixed fraction of the training captions is replaced by noise, as in scraped alt-text: partial
captions, attribute soup in random order, uninformative strings, and typos.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from openslip.data.demo.scene import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    TEXTURES,
    TONES,
    DemoObject,
    DemoScene,
)

NOISE_KINDS: tuple[str, ...] = ("clean", "partial", "reordered", "uninformative", "typo")
# Share of each kind among the noisy captions.
_NOISE_SHARE = (("partial", 0.35), ("reordered", 0.15), ("uninformative", 0.3), ("typo", 0.2))

_SIZE_WORDS = {"small": ("small", "small", "little", "tiny"), "large": ("large", "large", "big", "huge")}
_TEXTURE_ADJ = {
    "plain": ("plain", "solid"),
    "striped": ("striped", "striped", "stripy"),
    "dotted": ("dotted", "spotted", "polka-dot"),
    "checkered": ("checkered", "checked", "chequered"),
}
_TEXTURE_POST = {
    "plain": ("in a single colour", "with no pattern"),
    "striped": ("with stripes", "with a striped pattern"),
    "dotted": ("with dots", "covered in dots", "with polka dots"),
    "checkered": ("with a checkered pattern", "with a checkerboard pattern"),
}
_RELATION_WORDS = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_SIDE = {
    "left of": ("left", "right"),
    "right of": ("right", "left"),
    "above": ("top", "bottom"),
    "below": ("bottom", "top"),
}
_UNINFORMATIVE = (
    "image",
    "untitled",
    "photo",
    "my photo {year}",
    "IMG_{n4}.jpg",
    "DSC{n4}",
    "screenshot {year}-{n2}-{n2}",
    "no caption",
    "pic",
    "check this out",
    "new wallpaper",
    "random stuff",
    "download ({n1})",
    "image {n4}",
    "my favourite",
    "lol",
)


def _position_phrases(name: str) -> tuple[str, ...]:
    if name == "centre":
        return ("in the centre", "in the center", "in the middle")
    if " " in name:  # a corner
        upper = name.replace("top", "upper").replace("bottom", "lower")
        return (f"in the {name} corner", f"at the {name}", f"in the {upper} corner")
    if name in ("left", "right"):
        return (f"on the {name}", f"on the {name} side", f"at the {name}")
    return (f"at the {name}", f"near the {name}", f"at the {name} of the image")


_POSITION_PHRASES = {name: _position_phrases(name) for name in POSITIONS}


def _choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.random() * len(options))]


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _with_article(phrase: str) -> str:
    return f"{_article(phrase)} {phrase}"


def _object_phrase(obj: DemoObject, rng: np.random.Generator, detail: float) -> str:
    """A noun phrase such as "small red striped circle" (no article)."""
    size = _choice(rng, _SIZE_WORDS[SIZES[obj.size]]) if rng.random() < detail else ""
    texture = TEXTURES[obj.texture]
    # A plain texture is rarely worth saying; a pattern is mentioned with probability `detail`.
    say_texture = rng.random() < (detail * 0.3 if texture == "plain" else detail)
    colour, shape = COLOURS[obj.colour], SHAPES[obj.shape]
    form = rng.random()
    if not say_texture or form < 0.5:
        adj = _choice(rng, _TEXTURE_ADJ[texture]) if say_texture else ""
        words = (size, colour, adj, shape) if form < 0.8 else (size, adj, shape, "in", colour)
    else:
        words = (size, colour, shape, _choice(rng, _TEXTURE_POST[texture]))
    return " ".join(w for w in words if w)


def _background_phrase(scene: DemoScene, rng: np.random.Generator) -> str:
    tone, style = TONES[scene.tone], BACKGROUNDS[scene.background]
    if style == "gradient":
        return _choice(rng, (f"on a {tone} gradient", f"on a {tone} gradient background", f"against a {tone} gradient"))
    if style == "noise":
        return _choice(rng, (f"on a noisy {tone} background", f"on a grainy {tone} background", f"on {tone} noise"))
    return _choice(rng, (f"on a {tone} background", f"against a {tone} backdrop", f"on a plain {tone} background"))


def _single_caption(scene: DemoScene, rng: np.random.Generator, detail: float) -> str:
    obj = scene.objects[0]
    phrase = _object_phrase(obj, rng, detail)
    noun = f"the {phrase}" if rng.random() < 0.15 else _with_article(phrase)
    pos = " " + _choice(rng, _POSITION_PHRASES[POSITIONS[obj.position]]) if rng.random() < detail else ""
    bg = " " + _background_phrase(scene, rng) if rng.random() < 0.6 * detail else ""
    colour, shape = COLOURS[obj.colour], SHAPES[obj.shape]
    form = int(rng.random() * 8)
    if detail >= 1.0:  # retrieval captions: skip the terse last form
        form %= 7
    if form == 0:
        return f"{noun}{pos}{bg}"
    if form == 1:
        return f"a photo of {noun}{pos}{bg}"
    if form == 2:
        return f"an image showing {noun}{pos}{bg}"
    if form == 3:
        return f"there is {noun}{pos or ' here'}"
    if form == 4:
        return f"a picture of {noun}{pos}"
    if form == 5:  # tag style: "red circle, top right, on a dark background"
        parts = [_object_phrase(obj, rng, detail)]
        if pos:
            parts.append(POSITIONS[obj.position])
        if bg:
            parts.append(bg.strip())
        return ", ".join(parts)
    if form == 6:
        size = f" {SIZES[obj.size]}" if rng.random() < detail else ""
        return f"{_with_article((size + ' ' + shape).strip())} coloured {colour}{pos}{bg}"
    texture = TEXTURES[obj.texture]
    extra = f" and {texture}" if texture != "plain" and rng.random() < detail else ""
    return f"the {shape} is {colour}{extra}"


def _pair_caption(scene: DemoScene, rng: np.random.Generator, detail: float) -> str:
    a, b = scene.objects[0], scene.objects[1]
    relation = RELATIONS[scene.relation]
    noun_a = _with_article(_object_phrase(a, rng, detail))
    noun_b = _with_article(_object_phrase(b, rng, detail))
    bg = " " + _background_phrase(scene, rng) if rng.random() < 0.6 * detail else ""
    form = int(rng.random() * 6)
    # With full detail the relation is always stated (forms 0-3), for retrieval captions.
    if detail >= 1.0:
        form %= 4
    if form == 0:
        return f"{noun_a} {_choice(rng, _RELATION_WORDS[relation])} {noun_b}{bg}"
    if form == 1:
        return f"a photo of {noun_a} {_choice(rng, _RELATION_WORDS[relation])} {noun_b}"
    if form == 2:
        return f"{noun_b} {_choice(rng, _RELATION_WORDS[_INVERSE[relation]])} {noun_a}{bg}"
    if form == 3:  # tag style: "red circle left, blue square right"
        side_a, side_b = _SIDE[relation]
        return f"{_object_phrase(a, rng, detail)} {side_a}, {_object_phrase(b, rng, detail)} {side_b}"
    if form == 4:
        return f"{noun_a} and {noun_b}{bg}"
    return f"two shapes: {noun_a} and {noun_b}"


def clean_caption(scene: DemoScene, rng: np.random.Generator, detail: float = 0.5) -> str:
    """A truthful caption naming every object's colour and shape; other attributes with prob. ``detail``."""
    text = _single_caption(scene, rng, detail) if len(scene.objects) == 1 else _pair_caption(scene, rng, detail)
    if rng.random() < 0.25:  # some sentence case and a full stop, as people write
        text = text[:1].upper() + text[1:] + "."
    return text


def _attribute_words(obj: DemoObject) -> list[str]:
    words = [SIZES[obj.size], COLOURS[obj.colour], SHAPES[obj.shape], POSITIONS[obj.position]]
    if TEXTURES[obj.texture] != "plain":
        words.append(TEXTURES[obj.texture])
    return words


def _typo(text: str, rng: np.random.Generator) -> str:
    """One or two character edits (swap, drop, double, substitute) inside words of four letters or more."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    for _ in range(1 + int(rng.random() * 2)):
        if not candidates:
            break
        i = candidates[int(rng.random() * len(candidates))]
        w = words[i]
        j = 1 + int(rng.random() * (len(w) - 2))  # keep the first letter, as most typos do
        op = int(rng.random() * 4)
        if op == 0:
            w = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
        elif op == 1:
            w = w[:j] + w[j + 1 :]
        elif op == 2:
            w = w[:j] + w[j] + w[j:]
        else:
            w = w[:j] + "qwertyuiopasdfghjklzxcvbnm"[int(rng.random() * 26)] + w[j + 1 :]
        words[i] = w
    return " ".join(words)


def noisy_caption(scene: DemoScene, rng: np.random.Generator, kind: str) -> str:
    """A caption of one of the noise kinds of ``NOISE_KINDS`` (other than "clean")."""
    obj = scene.objects[int(rng.random() * len(scene.objects))]
    if kind == "partial":
        colour, shape = COLOURS[obj.colour], SHAPES[obj.shape]
        if rng.random() < 0.5:
            return _choice(rng, (colour, f"something {colour}", f"{colour} thing", f"{colour} object"))
        return _choice(rng, (shape, _with_article(shape), f"{shape} shape", f"a {shape} drawing"))
    if kind == "reordered":
        words = [w for o in scene.objects for w in _attribute_words(o)]
        order = rng.permutation(len(words))
        return (" " if rng.random() < 0.5 else ", ").join(words[k] for k in order)
    if kind == "uninformative":
        template = _choice(rng, _UNINFORMATIVE)
        n = rng.integers(0, 10_000, size=3)
        return template.format(
            year=2000 + int(n[0]) % 25, n4=f"{int(n[1]):04d}", n2=f"{1 + int(n[2]) % 12:02d}", n1=1 + int(n[2]) % 9
        )
    if kind == "typo":
        return _typo(clean_caption(scene, rng), rng)
    raise ValueError(f"unknown caption noise kind {kind!r}; choose one of: {', '.join(NOISE_KINDS[1:])}")


def training_caption(scene: DemoScene, rng: np.random.Generator, noise_prob: float) -> tuple[str, str]:
    """The caption a training sample carries, and its kind (one of ``NOISE_KINDS``)."""
    if rng.random() >= noise_prob:
        return clean_caption(scene, rng, detail=0.3 + 0.6 * rng.random()), "clean"
    u, kind = rng.random(), _NOISE_SHARE[-1][0]
    for name, share in _NOISE_SHARE:
        if u < share:
            kind = name
            break
        u -= share
    return noisy_caption(scene, rng, kind), kind


def alternative_captions(scene: DemoScene, rng: np.random.Generator, n: int) -> list[str]:
    """``n`` clean, fully detailed captions in different phrasings (distinct where possible), for retrieval."""
    captions: list[str] = []
    for _ in range(3 * n):
        text = clean_caption(scene, rng, detail=1.0)
        if text not in captions:
            captions.append(text)
            if len(captions) == n:
                break
    while len(captions) < n:
        captions.append(clean_caption(scene, rng, detail=1.0))
    return captions
