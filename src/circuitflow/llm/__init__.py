"""The LLM layer shared by every LLM rule: an OpenAI-compatible Chat Completions client with
retries, a persistent response cache, JSON replies and usage accounting."""

from circuitflow.config import LLMSettings
from circuitflow.llm.cache import ResponseCache, request_key
from circuitflow.llm.client import (
    LLMClient,
    LLMError,
    LLMRequestError,
    Outcome,
    Reply,
    extract_json,
    is_loopback,
    resolve_api_key,
)
from circuitflow.llm.judge import judge_name, open_judge

__all__ = ["LLMClient", "LLMError", "LLMRequestError", "LLMSettings", "Outcome", "Reply", "ResponseCache",
           "extract_json", "is_loopback", "judge_name", "open_judge", "request_key", "resolve_api_key"]
