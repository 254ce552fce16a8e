"""Is a judge's free-text answer usable as a label? Small models echo their instructions.

Measured on the default run's local judge (SmolLM2-135M): every LLM explanation that reached a
graph node was the prompt echoed back ("The token and its context, in 5-15 words."), an empty
string, or a placeholder copied from a reply template ("..."). `unusable_reason` names what is
wrong with such a reply, so the caller can re-ask once and, failing that, fall back to the
token label instead of showing it. A fluent but wrong description passes here: the detection
score decides whether it is shown (circuitflow.interp.labels).
"""

from __future__ import annotations

import re

MIN_WORDS = 3
# Share of a reply's word trigrams found in the prompt's own instructions above which the
# reply restates them rather than describing the feature.
ECHO_SHARE = 0.5


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def trigrams(tokens: list[str]) -> set[tuple[str, ...]]:
    return {tuple(tokens[i:i + 3]) for i in range(len(tokens) - 2)}


def unusable_reason(text: str | None, instructions: str) -> str | None:
    """Why `text` cannot be a feature's description, or None when it can.

    `instructions` is the prompt text the judge was given other than the evidence (system
    message and fixed request wording): a reply made of its phrases is an echo.
    """
    if not isinstance(text, str) or not text.strip():
        return "empty"
    reply_words = words(text)
    if not reply_words:
        return "no words (a placeholder such as '...')"
    if len(reply_words) < MIN_WORDS:
        return f"shorter than {MIN_WORDS} words"
    reply_trigrams = trigrams(reply_words)
    shared = reply_trigrams & trigrams(words(instructions))
    if reply_trigrams and len(shared) / len(reply_trigrams) >= ECHO_SHARE:
        return "restates the instructions"
    return None
