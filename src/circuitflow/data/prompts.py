"""Prompts for attribution: files in a folder (one prompt per ``<slug>.txt``) or config entries.

The seed's convention is kept: the file holds the prompt *and* the token it should predict,
and the last token is that target, dropped from the prompt
(``The capital of France is Paris`` -> prompt ``The capital of France is``, target `` Paris``).
`drop_last_token_as_target: false` turns this off. One trailing newline is ignored, since
editors add it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
RESERVED_SLUGS = {"graph-metadata", "graph-scores"}
CONFIG_ORIGIN = "config:attribution.prompts."  # origin of a prompt written in the config


class PromptError(ValueError):
    """A prompt file or entry is unusable; the message names it."""


@dataclass(frozen=True)
class Prompt:
    slug: str
    origin: str  # the file path, or CONFIG_ORIGIN + slug
    text: str
    input_ids: tuple[int, ...]  # starts with BOS when the tokenizer has one
    target_id: int | None
    target_token: str | None


def check_slug(slug: str, origin: str) -> str:
    if not SLUG.match(slug) or slug in RESERVED_SLUGS:
        raise PromptError(
            f"{origin}: prompt name {slug!r} must be letters, digits, '-' or '_' (not starting with "
            f"'-' or '_') and not one of {sorted(RESERVED_SLUGS)}")
    return slug


def discover_prompts(prompts_dir: str | None, inline: dict[str, str] | None) -> dict[str, str]:
    """slug -> origin for every prompt, sorted by slug; duplicate slugs are an error."""
    found: dict[str, str] = {}
    if prompts_dir:
        folder = Path(prompts_dir)
        if not folder.is_dir():
            raise PromptError(f"attribution.prompts_dir {prompts_dir!r} is not a folder")
        for path in sorted(folder.glob("*.txt")):
            found[check_slug(path.stem, str(path))] = str(path)
    for slug in sorted(inline or {}):
        origin = CONFIG_ORIGIN + slug
        check_slug(slug, origin)
        if slug in found:
            raise PromptError(f"{origin}: prompt name {slug!r} is also used by {found[slug]}")
        found[slug] = origin
    return dict(sorted(found.items()))


def read_prompt_text(origin: str, inline: dict[str, str] | None = None) -> str:
    if origin.startswith(CONFIG_ORIGIN):
        text = (inline or {})[origin[len(CONFIG_ORIGIN):]]
    else:
        try:
            text = Path(origin).read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise PromptError(f"prompt file {origin} is not UTF-8 text (byte {error.start}: {error.reason}); "
                              "save it as UTF-8") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text.strip():
        raise PromptError(f"prompt {origin} is empty")
    return text


def tokenize_prompt(slug: str, origin: str, text: str, tokenizer, drop_last_token_as_target: bool,
                    max_length: int | None) -> Prompt:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    target_id = target_token = None
    if drop_last_token_as_target:
        if len(ids) < 2:
            raise PromptError(
                f"prompt {origin} has {len(ids)} token(s); with drop_last_token_as_target it needs "
                "at least one prompt token before the target token")
        target_id = ids[-1]
        target_token = tokenizer.decode([target_id])
        ids = ids[:-1]
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    if max_length is not None and len(ids) > max_length:
        raise PromptError(
            f"prompt {origin} is {len(ids)} tokens long, longer than the model's context of "
            f"{max_length} tokens")
    return Prompt(slug, origin, text, tuple(ids), target_id, target_token)
