"""The token label: a feature's non-LLM label, built from its top activating tokens and the
tokens its decoder promotes (its top logits), for graph nodes without an LLM explanation and
as the judge's baseline explanation.

Variants of one token ("Paris", " Paris", " paris") are merged in both parts and shown by their
most frequent surface form. The "fires on" part stays honest: whatever the feature fires on is
shown, byte fragments included. The "promotes" part drops what is not a word: byte fragments
(a split multi-byte UTF-8 character decodes to "\\ufffd"), one- or two-letter lowercase pieces
without a leading space, word-continuation pieces in a vocabulary that marks word starts with a
space, and lone punctuation or whitespace; if nothing else is left, the non-fragment logits are
shown as they are (a feature that promotes only punctuation promotes punctuation).

Output-centric features (Gur-Arieh et al. 2025, "Enhancing Automated Interpretability with
Output-Centric Feature Descriptions") are best described by what they promote. The heuristic
here calls a feature output-centric when its inputs are diverse and its outputs coherent:

- inputs diverse: at least MIN_EXAMPLES_FOR_DIVERSITY activating top examples, and the most
  frequent (merged) activating token covers at most DIVERSE_INPUT_MAX_SHARE of them;
- outputs coherent: among the first CONSIDERED_LOGITS top logits, at least MIN_CLEAN_OUTPUTS
  distinct clean words, and either a stem family (clean logits sharing their first STEM_LENGTH
  normalised characters, variants included) of at least MIN_FAMILY_SIZE logits, or at least
  KIND_MIN_SHARE of the merged logits being clean words of one marked kind: numbers,
  capitalised Latin words, or words of one non-Latin script. Lowercase Latin words are not a
  marked kind: they are most of an English vocabulary, so a random direction promotes them too.

Such a feature's label leads with its outputs:
'Promotes "Paris", "France" (output-centric); fires on diverse tokens such as " in", " to".'
Every other feature keeps the input-first wording:
'Fires on the tokens " fires"; promotes " here", " there".'
"""

from __future__ import annotations

import unicodedata
from collections import Counter

from circuitflow.interp.examples import TOP_GROUP, groups, quote

MAX_INPUT_TOKENS = 5  # at most this many in each part: the label is a graph node's label
MAX_OUTPUT_TOKENS = 5
DIVERSE_INPUTS_SHOWN = 3  # an output-centric label's inputs are a sample, not the story
CONSIDERED_LOGITS = 10  # the top logits looked at (the judge's prompt shows as many)
MIN_EXAMPLES_FOR_DIVERSITY = 5
DIVERSE_INPUT_MAX_SHARE = 0.3
MIN_CLEAN_OUTPUTS = 2
STEM_LENGTH = 4
MIN_FAMILY_SIZE = 3
KIND_MIN_SHARE = 0.7
SPACE_MARKED_MIN_SHARE = 0.25  # share of word tokens with a leading space that shows the vocabulary marks word starts
UNMARKED_KIND = "latin-lowercase"

FRAGMENT, PUNCTUATION, SUBWORD, WORD = "fragment", "punctuation", "subword", "word"


class TokenLabelError(ValueError):
    """A feature JSON the token label cannot be built from."""


# --------------------------------------------------------------------------- single tokens


def variant_key(token: str) -> str:
    """What variants of one token share: case and surrounding whitespace removed (whitespace-only
    tokens are their own key, so a newline is not merged with a space)."""
    stripped = unicodedata.normalize("NFKC", token).strip()
    return stripped.casefold() if stripped else token


def token_class(token: str, space_marked: bool) -> str:
    """FRAGMENT, PUNCTUATION (no letter or digit; whitespace included), SUBWORD or WORD."""
    if "\ufffd" in token:
        return FRAGMENT
    stripped = token.strip()
    if not any(c.isalnum() for c in stripped):
        return PUNCTUATION
    starts_word = token[:1].isspace()
    if not starts_word and stripped.isalpha() and stripped.islower():
        # a piece glued to the previous token: junk when short, or when the vocabulary marks
        # word starts with a space (then a lowercase piece without one continues a word)
        if len(stripped) <= 2 or space_marked:
            return SUBWORD
    return WORD


def word_kind(token: str) -> str:
    """"number", "latin-capitalised", "latin-lowercase" or a script name ("cyrillic", "cjk", ...)."""
    stripped = token.strip()
    if stripped.replace(",", "").replace(".", "").lstrip("+-").isdigit():
        return "number"
    letter = next((c for c in stripped if c.isalpha()), None)
    if letter is None:
        return "mixed"
    script = unicodedata.name(letter, "UNKNOWN").split()[0].lower()
    if script == "latin":
        return "latin-capitalised" if letter.isupper() else "latin-lowercase"
    return script


# --------------------------------------------------------------------------- reading the feature


def _feature_name(feature: dict) -> str:
    return f"feature {feature.get('index', '?')}"


def activating_tokens(feature: dict) -> list[str]:
    """The peak token of each activating top example, strongest first."""
    if not isinstance(feature, dict):
        raise TokenLabelError(f"a feature must be a JSON object, got {type(feature).__name__}; "
                              "pass one per-feature JSON as written by collect_features")
    peaks = []
    for i, example in enumerate(groups(feature).get(TOP_GROUP, [])):
        try:
            tokens, acts, peak = example["tokens"], example["tokens_acts_list"], int(example["train_token_ind"])
        except (KeyError, TypeError, ValueError) as error:
            raise TokenLabelError(f"{_feature_name(feature)}: example {i} of {TOP_GROUP!r} lacks tokens, "
                                  f"tokens_acts_list or train_token_ind ({error!r}); "
                                  "regenerate the feature JSON with collect_features") from None
        if not 0 <= peak < min(len(tokens), len(acts)):
            raise TokenLabelError(f"{_feature_name(feature)}: example {i} of {TOP_GROUP!r} has train_token_ind "
                                  f"{peak} outside its {len(tokens)} tokens; regenerate the feature JSON "
                                  "with collect_features")
        if float(acts[peak]) > 0:
            peaks.append(tokens[peak])
    return peaks


def _logits(feature: dict, key: str) -> list[str]:
    values = feature.get(key) or []
    if not isinstance(values, list) or not all(isinstance(t, str) for t in values):
        raise TokenLabelError(f"{_feature_name(feature)}: {key} must be a list of token strings; "
                              "regenerate the feature JSON with collect_features")
    return values


def _space_marked(feature: dict, logits: list[str]) -> bool:
    """Whether the vocabulary marks word starts with a leading space (GPT-2 style byte BPE), from
    the tokens of the feature's examples and its logits."""
    seen = [t for g in groups(feature).values() for e in g if isinstance(e, dict) for t in e.get("tokens", [])]
    seen += logits + _logits(feature, "bottom_logits")
    words = [t for t in seen if isinstance(t, str) and t.strip().isalpha()]
    return bool(words) and sum(t[:1] == " " for t in words) >= SPACE_MARKED_MIN_SHARE * len(words)


# --------------------------------------------------------------------------- merging


def merge_variants(tokens: list[str], *, by_count: bool = True) -> list[tuple[str, int, list[str]]]:
    """(shown form, count, surface forms) per variant group: by descending count (ties keep the
    order of first appearance), or in order of first appearance when not `by_count`. The shown
    form is the most frequent surface form (ties: the first seen)."""
    members: dict[str, list[str]] = {}
    for token in tokens:
        members.setdefault(variant_key(token), []).append(token)
    merged = []
    for forms in members.values():
        counts = Counter(forms)  # insertion-ordered: most_common breaks ties by first appearance
        merged.append((counts.most_common(1)[0][0], len(forms), list(counts)))
    return sorted(merged, key=lambda group: -group[1]) if by_count else merged  # sorted is stable


def input_groups(feature: dict) -> list[tuple[str, int, list[str]]]:
    """The merged activating tokens of the top examples, most frequent first."""
    return merge_variants(activating_tokens(feature))


def output_groups(feature: dict) -> tuple[list[str], list[str], list[str]]:
    """(clean words, all non-fragment tokens, the class of each merged group) of the considered
    top logits, merged over variants, in order of each group's highest logit."""
    logits = _logits(feature, "top_logits")[:CONSIDERED_LOGITS]
    space_marked = _space_marked(feature, logits)
    shown = [form for form, _, _ in merge_variants(logits, by_count=False)]
    classes = [token_class(t, space_marked) for t in shown]
    clean = [t for t, c in zip(shown, classes) if c == WORD]
    usable = [t for t, c in zip(shown, classes) if c != FRAGMENT]
    return clean, usable, classes


def promoted_tokens(feature: dict) -> list[str]:
    """What the "promotes" part shows: the clean words, or the non-fragment tokens where no
    word is left."""
    clean, usable, _ = output_groups(feature)
    return (clean or usable)[:MAX_OUTPUT_TOKENS]


# --------------------------------------------------------------------------- the heuristic


def inputs_diverse(feature: dict) -> bool:
    merged = input_groups(feature)
    total = sum(count for _, count, _ in merged)
    return total >= MIN_EXAMPLES_FOR_DIVERSITY and merged[0][1] <= DIVERSE_INPUT_MAX_SHARE * total


def _stem(token: str) -> str:
    key = variant_key(token)
    return key[:STEM_LENGTH] if len(key) >= STEM_LENGTH else key


def outputs_coherent(feature: dict) -> bool:
    clean, _, classes = output_groups(feature)
    if len(clean) < MIN_CLEAN_OUTPUTS:
        return False
    logits = _logits(feature, "top_logits")[:CONSIDERED_LOGITS]
    clean_stems = {_stem(t) for t in clean}
    families = Counter(_stem(t) for t in logits if _stem(t) in clean_stems)  # variants count
    if families and max(families.values()) >= MIN_FAMILY_SIZE:
        return True
    kinds = Counter(word_kind(t) for t in clean)
    kind, count = min(kinds.items(), key=lambda item: (-item[1], item[0]))  # ties: by name
    return kind not in (UNMARKED_KIND, "mixed") and count >= KIND_MIN_SHARE * len(classes)


def output_centric(feature: dict) -> bool:
    """Whether the feature is best described by what it promotes: diverse inputs, coherent
    outputs (see the module docstring for the thresholds)."""
    return inputs_diverse(feature) and outputs_coherent(feature)


# --------------------------------------------------------------------------- the label


def _quoted(tokens: list[str]) -> str:
    return ", ".join(f'"{quote(t)}"' for t in tokens)


def token_label_fields(feature: dict) -> dict:
    """{"label", "output_centric", "input_tokens", "output_tokens"}: the label and what it was
    built from (the shown forms of the top merged activating tokens and of the promoted words)."""
    inputs = [shown for shown, _, _ in input_groups(feature)[:MAX_INPUT_TOKENS]]
    outputs = promoted_tokens(feature)
    centric = bool(outputs) and output_centric(feature)
    if centric:
        label = (f"Promotes {_quoted(outputs)} (output-centric); "
                 f"fires on diverse tokens such as {_quoted(inputs[:DIVERSE_INPUTS_SHOWN])}.")
    else:
        fires = f"Fires on the tokens {_quoted(inputs)}" if inputs else "Fires rarely"
        label = f"{fires}; promotes {_quoted(outputs)}." if outputs else f"{fires}."
    return {"label": label, "output_centric": centric, "input_tokens": inputs, "output_tokens": outputs}


def token_label(feature: dict) -> str:
    """The non-LLM label of a feature (its JSON in circuit-tracer's per-feature format)."""
    return token_label_fields(feature)["label"]


def input_token_variants(feature: dict, n: int = MAX_INPUT_TOKENS) -> list[str]:
    """Every surface form of the `n` most frequent merged activating tokens (for matching text,
    where " Paris" and "Paris" are different strings)."""
    return [form for _, _, forms in input_groups(feature)[:n] for form in forms]
