"""One Chat Completions client for every LLM rule: OpenAI, vLLM, Ollama and llama.cpp's server.

The `openai` package's async client does the HTTP; this layer adds what a long batch job needs:

- the API key is read here from the environment variable that `LLMSettings.api_key_env`
  *names*, so the key never appears in params, logs, cache keys or outputs; a remote endpoint
  whose variable is unset fails before any call, naming the variable; the local judge that
  circuitflow.llm.judge starts is sent a dummy key, never the user's;
- the endpoint is shown (logs, errors, usage) and keys the cache without its user, password,
  query or fragment;
- retries with exponential backoff and jitter on 429, 5xx, timeouts and dropped connections,
  honouring ``Retry-After`` up to `max_retry_wait_s`; other errors (unknown model, bad request)
  are not retried and quote the server's message; a refused key (401/403) stops the job at once;
- a persistent response cache (`ResponseCache`) keyed by the model at its endpoint, so a rerun
  sends nothing already answered; an empty reply, or a JSON reply cut off at max_tokens
  (finish_reason "length"), is returned but never cached, so a rerun asks again;
- JSON replies: JSON mode where asked, tolerant extraction (code fences, text around the
  object), one re-ask on a malformed reply, and the raw reply kept when it still does not parse;
- `run_all`: bounded concurrency where an item whose calls still fail is recorded as failed
  with its reason; the job stops, naming the endpoint and cancelling what is left, after
  `max_consecutive_failures` failed items in a row (a dead or hanging endpoint) or as soon as
  more than `max_failure_share` of the items have failed;
- usage accounting (requests, tokens, cache hits, retries, wall time, a cost estimate when
  prices are set), written next to the outputs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from circuitflow.config import LLMSettings
from circuitflow.io import write_json
from circuitflow.llm.cache import ResponseCache, request_key

log = logging.getLogger("circuitflow.llm")

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
LOCAL_JUDGE_KEY = "circuitflow-local-judge"  # what the workflow's own loopback server is sent
DEFAULT_PORTS = {"http": 80, "https": 443}
REASK = "Your reply was not a valid JSON object. Reply again with only the JSON object, nothing else."
REASK_UNUSABLE = ("That reply cannot be used ({problem}). Look at the examples again and reply with only the "
                  "JSON object, describing the feature in your own words.")


class LLMError(RuntimeError):
    """The endpoint cannot be used (no key, unreachable, unknown model, too many failures)."""


class LLMRequestError(LLMError):
    """One request failed for good; `retryable` says whether retries were tried first."""

    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


@dataclass
class Usage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hits: int = 0
    retries: int = 0
    reasks: int = 0
    failed_requests: int = 0
    unparsed_replies: int = 0
    unusable_replies: int = 0  # parsed, but failed the caller's check even after the re-ask
    incomplete_replies: int = 0  # empty, or JSON cut off at max_tokens: returned, not cached
    wall_seconds: float = 0.0


@dataclass(frozen=True)
class Reply:
    text: str
    cached: bool
    data: Any = None  # the parsed JSON object, for complete_json
    parsed: bool = True
    top_logprobs: dict | None = None  # first completion token's alternatives, token -> logprob
    problem: str | None = None  # why a parsed reply is still unusable (complete_json's `check`)


@dataclass
class Outcome:
    """What `run_all` returns for one item: its result, or why it failed."""

    item: Any
    result: Any = None
    error: str | None = None


def is_loopback(base_url: str) -> bool:
    return (urllib.parse.urlsplit(base_url).hostname or "") in LOOPBACK_HOSTS


def public_endpoint(base_url: str) -> str:
    """`base_url` as it may be logged, published and used in cache keys: scheme and host in lower
    case, without user, password, query or fragment (where credentials can hide), default port
    or trailing slash."""
    parts = urllib.parse.urlsplit(base_url.strip())
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:  # not a number: no server answers there anyway
        port = None
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port and port != DEFAULT_PORTS.get(scheme)
                                                       else "")
    return urllib.parse.urlunsplit((scheme, netloc, parts.path.rstrip("/"), "", ""))


def resolve_api_key(settings: LLMSettings) -> str:
    """The key from the named variable; loopback servers need none."""
    value = os.environ.get(settings.api_key_env, "") if settings.api_key_env else ""
    if value:
        return value
    if is_loopback(settings.base_url):
        return "not-needed"
    raise LLMError(
        f"llm.base_url {public_endpoint(settings.base_url)} is not a local server, but "
        + (f"the environment variable {settings.api_key_env} (llm.api_key_env) is not set"
           if settings.api_key_env else "llm.api_key_env names no environment variable for its key")
        + "; export the key in that variable")


def extract_json(text: str) -> Any:
    """The JSON object in a reply: the whole text, a fenced block, or the first balanced {...}."""
    text = text.strip()
    candidates = [text]
    candidates += re.findall(r"```(?:json)?\s*(.*?)```", text, flags=re.DOTALL)
    start = text.find("{")
    while start != -1:
        depth, in_string, escaped = 0, False, False
        for i in range(start, len(text)):
            ch = text[i]
            if in_string:
                escaped = ch == "\\" and not escaped
                if ch == '"' and not escaped:
                    in_string = False
                elif ch != "\\":
                    escaped = False
            elif ch == '"':
                in_string = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    candidates.append(text[start:i + 1])
                    break
        start = text.find("{", start + 1)
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise ValueError("no JSON object in the reply")


def _first_token_logprobs(choice) -> dict | None:
    """token -> logprob of the first completion token's alternatives, when the server sent them."""
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    first = content[0]
    alternatives = {item.token: item.logprob for item in (first.top_logprobs or [])}
    alternatives.setdefault(first.token, first.logprob)
    return alternatives


class LLMClient:
    """`settings.base_url` must be set (circuitflow.llm.judge fills it in for the local server);
    `identity` names the model in cache keys, by default the served name at the endpoint (a
    local alias stands for whatever GGUF was loaded, so the judge passes the GGUF's hash);
    `local_server` marks the local llama-cpp-python server that the workflow started itself: it
    is sent a dummy key, and its JSON-schema parameter differs from OpenAI's."""

    def __init__(self, settings: LLMSettings, cache_path: str | Path, identity: str | None = None,
                 local_server: bool = False):
        from openai import AsyncOpenAI

        if not settings.base_url:
            raise LLMError("llm.base_url is not set and no local judge was started")
        self.settings = settings
        self.endpoint = public_endpoint(settings.base_url)
        self.identity = identity or f"{settings.model}@{self.endpoint}"
        self.local_server = local_server  # llama-cpp-python's server, started by circuitflow.llm.judge
        # first: a missing key fails before anything is touched; the workflow's own server gets no real key
        api_key = LOCAL_JUDGE_KEY if local_server else resolve_api_key(settings)
        self.cache = ResponseCache(cache_path)
        self.usage = Usage()
        self._client = AsyncOpenAI(base_url=settings.base_url, api_key=api_key, timeout=settings.timeout_s,
                                   max_retries=0)
        self._semaphore = asyncio.Semaphore(settings.max_concurrency)
        self._stopped: str | None = None  # why the job stops; nothing more is sent after it is set
        self._started = time.perf_counter()

    def sampling(self, max_tokens: int | None = None, json_mode: bool | None = None,
                 top_logprobs: int | None = None, schema: dict | None = None) -> dict:
        """Everything besides the messages that shapes a reply (and so keys the cache)."""
        s = self.settings
        json_mode = s.json_mode if json_mode is None else json_mode
        return {"temperature": s.temperature, "top_p": s.top_p, "seed": s.seed,
                "max_tokens": max_tokens or s.max_tokens, "json_mode": json_mode, "top_logprobs": top_logprobs,
                "schema": schema if json_mode and s.json_schema else None}

    async def complete(self, messages: list[dict], max_tokens: int | None = None, json_mode: bool | None = None,
                       top_logprobs: int | None = None, schema: dict | None = None,
                       whole_reply: bool = False) -> Reply:
        """One chat completion, from the cache when it was answered before. `top_logprobs`
        asks for that many alternatives of each completion token (the first one's are returned);
        `schema` constrains a JSON reply where the server supports it (llm.json_schema).

        An empty reply is never cached, nor, with `whole_reply` (a JSON object), one cut off at
        max_tokens. A short answer read from its start is kept even when cut off: llama.cpp
        reports "No." within the yes/no budget of 2 tokens as finish_reason "length"."""
        sampling = self.sampling(max_tokens, json_mode, top_logprobs, schema)
        key = request_key(self.identity, messages, sampling)
        hit = self.cache.get(key)
        if hit is not None:
            self.usage.cache_hits += 1
            return Reply(hit[0], cached=True, top_logprobs=hit[1].get("top_logprobs"))
        async with self._semaphore:
            text, usage, finish_reason = await self._request_with_retries(messages, sampling)
        if text.strip() and not (whole_reply and finish_reason == "length"):
            self.cache.put(key, self.identity, {"messages": messages, **sampling}, text, usage)
        else:  # not an answer to remember: a rerun asks again
            self.usage.incomplete_replies += 1
        return Reply(text, cached=False, top_logprobs=usage.get("top_logprobs"))

    async def complete_json(self, messages: list[dict], *, schema: dict | None = None, max_tokens: int | None = None,
                            check: Callable[[dict], str | None] | None = None) -> Reply:
        """A JSON object reply. One re-ask when it is malformed, or when `check(data)` names a
        problem (an echoed prompt, say); after that the reply comes back with parsed=False
        (malformed) or with `problem` set (unusable), and is counted."""
        first = await self.complete(messages, max_tokens=max_tokens, schema=schema, whole_reply=True)
        problem = "not a valid JSON object"
        try:
            data = extract_json(first.text)
        except ValueError:
            pass
        else:
            problem = check(data) if check else None
            if problem is None:
                return Reply(first.text, first.cached, data)
        self.usage.reasks += 1
        reask = REASK if problem == "not a valid JSON object" else REASK_UNUSABLE.format(problem=problem)
        again = await self.complete([*messages, {"role": "assistant", "content": first.text},
                                     {"role": "user", "content": reask}], max_tokens=max_tokens, schema=schema,
                                    whole_reply=True)
        try:
            data = extract_json(again.text)
        except ValueError:
            self.usage.unparsed_replies += 1
            return Reply(again.text, again.cached, None, parsed=False)
        problem = check(data) if check else None
        if problem is not None:
            self.usage.unusable_replies += 1
        return Reply(again.text, again.cached, data, problem=problem)

    async def _request_with_retries(self, messages: list[dict], sampling: dict) -> tuple[str, dict, str | None]:
        import openai

        s = self.settings
        kwargs: dict = {"model": s.model, "messages": messages, "temperature": sampling["temperature"],
                        "top_p": sampling["top_p"], "max_tokens": sampling["max_tokens"]}
        if sampling["seed"] is not None:
            kwargs["seed"] = sampling["seed"]
        if sampling["schema"] is not None:
            kwargs["response_format"] = self._schema_format(sampling["schema"])
        elif sampling["json_mode"]:
            kwargs["response_format"] = {"type": "json_object"}
        if sampling["top_logprobs"]:
            kwargs["logprobs"], kwargs["top_logprobs"] = True, sampling["top_logprobs"]
        for attempt in range(s.max_retries + 1):
            if self._stopped is not None:  # another item stopped the job while this one waited
                raise LLMError(self._stopped)
            self.usage.requests += 1
            try:
                response = await self._client.chat.completions.create(**kwargs)
            except (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError,
                    openai.InternalServerError) as error:
                reason, retry_after = self._describe(error), self._retry_after(error)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
                self.usage.failed_requests += 1  # every later request would be refused too
                raise self._stop(f"{self.endpoint} refused the API key (HTTP {error.status_code}): "
                                 f"{self._describe(error)}; {self._key_advice()}") from None
            except openai.APIStatusError as error:
                self.usage.failed_requests += 1
                raise LLMRequestError(
                    f"{self.endpoint} refused the request (HTTP {error.status_code}): {self._describe(error)}",
                    retryable=False) from None
            else:
                usage = response.usage
                counts = {"prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
                          "completion_tokens": getattr(usage, "completion_tokens", 0) or 0}
                self.usage.prompt_tokens += counts["prompt_tokens"]
                self.usage.completion_tokens += counts["completion_tokens"]
                choice = response.choices[0]
                first = _first_token_logprobs(choice) if sampling["top_logprobs"] else None
                if first is not None:
                    counts["top_logprobs"] = first  # kept with the reply in the cache
                return choice.message.content or "", counts, choice.finish_reason
            if attempt == s.max_retries:
                break
            self.usage.retries += 1
            if retry_after is None:
                delay = min(s.max_retry_wait_s, s.backoff_s * 2 ** attempt * (0.5 + random.random()))
            else:
                delay = min(s.max_retry_wait_s, retry_after)
                if retry_after > delay:
                    reason += f" (Retry-After {retry_after:.0f}s, capped by llm.max_retry_wait_s)"
            log.warning("%s: %s; retry %d/%d in %.1fs", self.endpoint, reason, attempt + 1, s.max_retries, delay)
            await asyncio.sleep(delay)
        self.usage.failed_requests += 1
        raise LLMRequestError(f"{self.endpoint}: {reason} (after {s.max_retries} retries)", retryable=True)

    def _stop(self, message: str) -> LLMError:
        """The error that ends the job; requests still waiting for their turn are not sent."""
        self._stopped = self._stopped or message
        return LLMError(message)

    def _key_advice(self) -> str:
        """What to fix after a refused key: the variable it came from, named, never its value."""
        variable = self.settings.api_key_env
        if self.local_server:
            return "the local judge was sent circuitflow's dummy key; see its log"
        if not variable:
            return "llm.api_key_env is null, so no key was sent; name the variable that holds this server's key"
        if not os.environ.get(variable):
            return f"the environment variable {variable} (llm.api_key_env) is not set; export this server's key in it"
        return f"check the key in the environment variable {variable} (llm.api_key_env)"

    def _schema_format(self, schema: dict) -> dict:
        """response_format for a JSON schema: llama-cpp-python's server (the local judge) reads
        it from a json_object format; OpenAI, vLLM and Ollama read OpenAI's json_schema form."""
        if self.local_server:
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}

    @staticmethod
    def _describe(error) -> str:
        """The server's own message when it sent one (quoted), else the error's type and text."""
        body = getattr(error, "body", None)
        inner = body.get("error", body) if isinstance(body, dict) else None
        if isinstance(inner, dict) and inner.get("message"):
            return repr(inner["message"])
        return f"{type(error).__name__}: {error}"

    @staticmethod
    def _retry_after(error) -> float | None:
        response = getattr(error, "response", None)
        value = response.headers.get("retry-after") if response is not None else None
        try:
            return max(0.0, float(value)) if value is not None else None
        except ValueError:
            return None

    async def run_all(self, items: list, work: Callable[[Any], Awaitable[Any]]) -> list[Outcome]:
        """`work(item)` for every item, concurrently (bounded by the client's semaphore). An item
        whose calls fail is recorded with its reason; the job stops at once, cancelling the items
        not yet done, on an error every item would hit (key refused, unknown model), after
        llm.max_consecutive_failures failed items in a row, or once more than
        llm.max_failure_share of the items have failed (the job could no longer succeed)."""
        s, failed = self.settings, []
        done = in_a_row = 0

        def tally(outcome: Outcome) -> Outcome:
            nonlocal done, in_a_row
            done += 1
            if outcome.error is None:
                in_a_row = 0
                return outcome
            failed.append(outcome)
            in_a_row += 1
            if in_a_row >= s.max_consecutive_failures:  # a dead or hanging endpoint: stop asking it
                raise self._stop(f"{self.endpoint}: {in_a_row} items in a row failed (llm.max_consecutive_failures); "
                                 f"stopped with {len(items) - done} of {len(items)} items not done; "
                                 f"the last: {outcome.error}")
            if len(failed) / len(items) > s.max_failure_share:
                raise self._stop(f"{self.endpoint}: {len(failed)} of {len(items)} items failed (more than "
                                 f"llm.max_failure_share {s.max_failure_share}); first: {failed[0].error}")
            return outcome

        async def one(item) -> Outcome:
            try:
                outcome = Outcome(item, await work(item))
            except LLMRequestError as error:
                if not error.retryable and "HTTP 404" in str(error):
                    raise self._stop(str(error)) from None  # unknown model: every item would fail
                outcome = Outcome(item, error=str(error))
            return tally(outcome)

        tasks = [asyncio.ensure_future(one(item)) for item in items]
        try:
            return list(await asyncio.gather(*tasks))
        finally:  # after a stop, nothing more is sent
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def usage_record(self) -> dict:
        self.usage.wall_seconds = time.perf_counter() - self._started
        record = {"endpoint": self.endpoint, "model": self.settings.model, "identity": self.identity,
                  **asdict(self.usage)}
        s = self.settings
        if s.price_per_million_prompt is not None and s.price_per_million_completion is not None:
            record["cost_estimate"] = (self.usage.prompt_tokens * s.price_per_million_prompt
                                       + self.usage.completion_tokens * s.price_per_million_completion) / 1e6
        return record

    def write_usage(self, path: str | Path) -> dict:
        record = self.usage_record()
        write_json(path, record)
        return record

    async def aclose(self) -> None:
        await self._client.close()
        self.cache.close()
