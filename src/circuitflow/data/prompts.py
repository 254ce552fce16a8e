"""Prompts for attribution: files in a folder (one prompt per ``<slug>.txt`` or ``<slug>.json``)
or config entries.

The seed's convention is kept: the file holds the prompt *and* the token it should predict,
and the last token is that target, dropped from the prompt
(``The capital of France is Paris`` -> prompt ``The capital of France is``, target `` Paris``).
`drop_last_token_as_target: false` turns this off. One trailing newline is ignored, since
editors add it.

Chat prompts: ``<slug>.json`` holds ``{"messages": [...]}`` or the list of messages itself
(OpenAI style ``{"role", "content"}``, or ShareGPT style ``{"from", "value"}``), rendered with
the tokenizer's chat template. The convention carries over to the conversation:

- when it ends with an ``assistant`` message, the reply is left open (no end-of-turn tokens
  after it, ``continue_final_message``), so the last token of the reply is the target:
  ``[..., {"role": "assistant", "content": "The capital of France is Paris"}]`` attributes
  `` Paris`` given everything before it, template tokens included;
- when it ends with any other message, the template's generation prompt is appended and the
  graph attributes the first token of the model's reply; that needs
  `drop_last_token_as_target: false` (the last token is then template text, not a target),
  and is an error otherwise.

The text kept with the prompt (`Prompt.text`, the graph metadata's ``prompt``) is the
rendered conversation. A ``<slug>.txt`` and a ``<slug>.json`` with the same slug are an error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
RESERVED_SLUGS = {"graph-metadata", "graph-scores"}
CONFIG_ORIGIN = "config:attribution.prompts."  # origin of a prompt written in the config


PROMPT_SUFFIXES = (".txt", ".json")  # plain text; a chat rendered with the chat template
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}  # ShareGPT


class PromptError(ValueError):
    """A prompt file or entry is unusable; the message names it."""


class ChatError(ValueError):
    """A chat (list of messages) is malformed or cannot be rendered; the message says why, the
    caller says where."""


def chat_messages(value) -> list[dict]:
    """Messages as ``[{"role", "content"}]`` from an OpenAI-style list of ``{role, content}``
    or a ShareGPT-style list of ``{from, value}`` (human -> user, gpt -> assistant). Content
    given as a list of parts keeps its text parts. Keys set to null count as absent (rows read
    through Arrow carry every key of every row)."""
    if not isinstance(value, list):
        raise ChatError(f"is a {type(value).__name__}, not a list of messages")
    messages = []
    for j, message in enumerate(value):
        if not isinstance(message, dict):
            raise ChatError(f"message {j} is not an object with role and content ({type(message).__name__})")
        if message.get("role") is not None:
            role, content = message["role"], message.get("content")
        elif message.get("from") is not None:
            role, content = ROLE_ALIASES.get(message["from"], message["from"]), message.get("value")
        else:
            raise ChatError(f"message {j} has neither role/content nor from/value (keys: {sorted(message)})")
        if isinstance(content, list):
            parts = [part for part in content if not (isinstance(part, dict) and part.get("type") == "text")]
            if parts:
                raise ChatError(f"message {j} has a content part that is not text ({str(parts[0])[:60]}); "
                                "only text can be rendered")
            content = "".join(part.get("text") or "" for part in content)
        content = "" if content is None else content
        if not isinstance(role, str) or not isinstance(content, str):
            raise ChatError(f"message {j}: role and content must be strings")
        messages.append({"role": role, "content": content})
    return messages


def render_chat(tokenizer, messages: list[dict], **options) -> str:
    """`messages` as text, with the tokenizer's chat template (which must exist)."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **options)
    except Exception as error:  # jinja's TemplateError ("roles must alternate"), ValueError
        reason = str(error).splitlines()[0] if str(error) else repr(error)
        raise ChatError(f"the chat template rejects it ({reason})") from None


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
        for path in sorted(p for p in folder.iterdir() if p.suffix in PROMPT_SUFFIXES and p.is_file()):
            slug = check_slug(path.stem, str(path))
            if slug in found:
                raise PromptError(f"{path}: prompt name {slug!r} is also used by {found[slug]}; keep one of them")
            found[slug] = str(path)
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


def is_chat_prompt(origin: str) -> bool:
    return origin.endswith(".json") and not origin.startswith(CONFIG_ORIGIN)


def render_chat_prompt(origin: str, text: str, tokenizer, drop_last_token_as_target: bool) -> str:
    """The text of a chat prompt file, rendered with the chat template (see the module notes)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise PromptError(f"prompt file {origin} is not valid JSON ({error}); write "
                          '{"messages": [{"role": "user", "content": "..."}, ...]}') from None
    if isinstance(data, dict):
        if "messages" not in data:
            raise PromptError(f"prompt file {origin} has no 'messages' (keys: {sorted(data)}); write "
                              '{"messages": [{"role": "user", "content": "..."}, ...]}')
        data = data["messages"]
    try:
        messages = chat_messages(data)
    except ChatError as error:
        raise PromptError(f"prompt file {origin}: 'messages' {error}") from None
    if not messages:
        raise PromptError(f"prompt {origin} is empty")
    if not getattr(tokenizer, "chat_template", None):
        raise PromptError(f"prompt file {origin} is a chat but the model's tokenizer has no chat template; "
                          f"write the prompt as plain text in {Path(origin).with_suffix('.txt').name} instead")
    if messages[-1]["role"] == "assistant":
        options = {"continue_final_message": True}
    elif drop_last_token_as_target:
        raise PromptError(
            f"prompt file {origin} ends with a {messages[-1]['role']!r} message; with "
            "attribution.drop_last_token_as_target the last message must be the assistant's reply, whose "
            'last token is the target (e.g. {"role": "assistant", "content": "Paris"}), or set it to false '
            "to attribute the first token of the reply")
    else:
        options = {"add_generation_prompt": True}
    try:
        return render_chat(tokenizer, messages, **options)
    except ChatError as error:
        raise PromptError(f"prompt file {origin}: {error}") from None


def tokenize_prompt(slug: str, origin: str, text: str, tokenizer, drop_last_token_as_target: bool,
                    max_length: int | None) -> Prompt:
    """Token ids of a prompt (BOS first), its target split off when `drop_last_token_as_target`.

    `text` is what `read_prompt_text` returned; a chat prompt file (``.json``) is rendered with
    the chat template first, and the rendered text is what the Prompt keeps."""
    chat = is_chat_prompt(origin)
    if chat:
        text = render_chat_prompt(origin, text, tokenizer, drop_last_token_as_target)
    # A text prompt is text: "<|im_end|>" in it is not the control token (a chat prompt's
    # template writes the special tokens it means).
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=not chat)["input_ids"]
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
