"""The offline default judge: llama.cpp's OpenAI-compatible server on SmolLM2, through the same
client every LLM rule uses (JSON mode, cache, usage)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib

import pytest

from circuitflow.llm import LLMClient, LLMError, LLMSettings, open_judge
from circuitflow.llm.local_server import LocalLlamaServer
from circuitflow.model import resolve_source

from ..conftest import SMOLLM2_SOURCE

PROMPT = ('A feature of a language model fires on the tokens " Paris", " London" and " Rome". '
          'Reply with a JSON object {"explanation": "<what the feature detects>"}.')


def judge_settings(base_url: str) -> LLMSettings:
    return LLMSettings(base_url=base_url, model="local-judge", api_key_env=None, max_concurrency=1, timeout_s=120,
                       max_retries=1, temperature=0.0, max_tokens=64, json_mode=True, max_failure_share=0.0)


def test_smollm2_judge_answers_json_and_reruns_from_the_cache(tmp_path):
    gguf = resolve_source(SMOLLM2_SOURCE).gguf_path
    with LocalLlamaServer(gguf, tmp_path / "judge.log") as server:
        process = server.process

        async def ask():
            client = LLMClient(judge_settings(server.base_url), tmp_path / "cache.sqlite")
            reply = await client.complete_json([{"role": "user", "content": PROMPT}])
            await client.aclose()
            return reply, client.usage_record()

        first, usage = asyncio.run(ask())
        assert first.parsed and isinstance(first.data.get("explanation"), str) and first.data["explanation"]
        assert usage["requests"] == 1 and usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
        again, usage = asyncio.run(ask())
        assert again.cached and again.text == first.text and usage["requests"] == 0 and usage["cache_hits"] == 1
    assert process.poll() is not None  # stopped on exit


def test_open_judge_keys_the_local_judge_by_its_gguf_content(tmp_path, monkeypatch):
    """The workflow's path: the cache key names the GGUF's sha256 (not the loopback port, the
    alias or the file's name), so a rerun on a new port is answered from the cache."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-sent-to-the-local-judge")
    gguf = resolve_source(SMOLLM2_SOURCE).gguf_path
    settings = dataclasses.replace(judge_settings(None), api_key_env="OPENAI_API_KEY", local_model=SMOLLM2_SOURCE)

    async def ask():
        async with open_judge(settings, tmp_path / "cache.sqlite", tmp_path / "judge.log") as client:
            return await client.complete_json([{"role": "user", "content": PROMPT}]), client.identity

    first, identity = asyncio.run(ask())
    assert identity == f"local-gguf:sha256:{hashlib.sha256(gguf.read_bytes()).hexdigest()}"
    again, _ = asyncio.run(ask())
    assert first.parsed and again.cached and again.text == first.text


def test_missing_model_file_is_named(tmp_path):
    with pytest.raises(LLMError, match=r"local judge's model .*missing.gguf does not exist"):
        LocalLlamaServer(tmp_path / "missing.gguf", tmp_path / "judge.log").__enter__()
