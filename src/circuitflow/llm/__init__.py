"""The LLM layer shared by every LLM rule: an OpenAI-compatible Chat Completions client with
retries, a persistent response cache, JSON replies and usage accounting."""

from circuitflow.llm.cache import ResponseCache, request_key
from circuitflow.llm.client import (
    LLMClient,
    LLMError,
    LLMRequestError,
    LLMSettings,
    Outcome,
    Reply,
    extract_json,
    is_loopback,
    resolve_api_key,
)

__all__ = ["LLMClient", "LLMError", "LLMRequestError", "LLMSettings", "Outcome", "Reply", "ResponseCache",
           "extract_json", "is_loopback", "request_key", "resolve_api_key"]
