"""The LLM layer against a real OpenAI-compatible HTTP server on loopback with scripted
behaviour (no mocked client): retries, timeouts, garbage replies, unknown models, refused keys,
capped waits, failure accounting and when a job stops, the response cache (across a kill -9,
across endpoints, never for cut-off replies), and where the API key may appear."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from circuitflow.llm import LLMClient, LLMError, LLMRequestError, LLMSettings, extract_json
from circuitflow.llm.client import LOCAL_JUDGE_KEY, public_endpoint
from circuitflow.llm.judge import local_identity

from ..llm_server import ScriptedServer


@pytest.fixture
def server():
    srv = ScriptedServer()
    yield srv
    srv.close()


def settings(base_url, **changes) -> LLMSettings:
    values = dict(base_url=base_url, model="judge", api_key_env=None, max_concurrency=4, timeout_s=5.0,
                  max_retries=3, temperature=0.0, max_tokens=64, json_mode=False, max_failure_share=0.5,
                  backoff_s=0.01)
    return LLMSettings(**{**values, **changes})


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def run(coro):
    return asyncio.run(coro)


def test_retries_on_429_and_500_then_answers(server, tmp_path):
    server.script.extend([("status", 429, {"Retry-After": "0"}, {"error": {"message": "slow down"}}),
                          ("status", 500, {}, {"error": {"message": "boom"}}), ("reply", "finally")])

    async def go():
        client = LLMClient(settings(server.base_url), tmp_path / "cache.sqlite")
        reply = await client.complete(ask("hello"))
        await client.aclose()
        return reply, client.usage

    reply, usage = run(go())
    assert reply.text == "finally" and not reply.cached
    assert len(server.requests) == 3 and usage.retries == 2 and usage.requests == 3
    assert (usage.prompt_tokens, usage.completion_tokens) == (11, 3)


def test_a_hung_server_times_out_and_is_reported(server, tmp_path):
    server.default = ("hang", 2.0)

    async def go():
        client = LLMClient(settings(server.base_url, timeout_s=0.3, max_retries=1), tmp_path / "c.sqlite")
        try:
            await client.complete(ask("hello"))
        finally:
            await client.aclose()

    started = time.perf_counter()
    with pytest.raises(LLMRequestError, match=r"127.0.0.1:\d+/v1: .*Timeout.*after 1 retries"):
        run(go())
    assert len(server.requests) == 2 and time.perf_counter() - started < 2.0


def test_garbage_reply_is_reasked_once_then_kept_raw(server, tmp_path):
    server.script.extend([("reply", "I think it detects cats."),
                          ("reply", 'Sure! ```json\n{"label": "cats", "note": "a } in a string"}\n```')])

    async def go():
        client = LLMClient(settings(server.base_url), tmp_path / "c.sqlite")
        good = await client.complete_json(ask("explain feature 1"))
        server.script.extend([("reply", "no"), ("reply", "still no")])
        bad = await client.complete_json(ask("explain feature 2"))
        await client.aclose()
        return good, bad, client.usage

    good, bad, usage = run(go())
    assert good.parsed and good.data == {"label": "cats", "note": "a } in a string"}
    assert server.requests[1]["messages"][-1]["content"].startswith("Your reply was not a valid JSON object")
    assert not bad.parsed and bad.text == "still no" and bad.data is None
    assert usage.reasks == 2 and usage.unparsed_replies == 1


def test_unknown_model_fails_the_job_quoting_the_server(server, tmp_path):
    server.default = ("status", 404, {}, {"error": {"message": "model 'judge' not found, try pulling it first"}})

    async def go():
        client = LLMClient(settings(server.base_url, max_concurrency=1), tmp_path / "c.sqlite")
        try:
            await client.run_all(["a", "b"], lambda item: client.complete(ask(item)))
        finally:
            await client.aclose()

    with pytest.raises(LLMError, match=r"HTTP 404\): \"model 'judge' not found, try pulling it first\""):
        run(go())
    assert len(server.requests) == 1  # not retried, and the other item not sent


def test_failures_are_counted_and_the_job_fails_past_the_share(server, tmp_path):
    server.default = lambda body: (("status", 503, {}, {"error": {"message": "overloaded"}})
                                   if "bad" in body["messages"][0]["content"] else ("reply", "fine"))
    items = ["good 1", "good 2", "good 3", "bad 1"]

    async def go(share):
        client = LLMClient(settings(server.base_url, max_retries=1, max_failure_share=share),
                           tmp_path / f"c{share}.sqlite")
        try:
            return await client.run_all(items, lambda item: client.complete(ask(item))), client
        finally:
            await client.aclose()

    outcomes, client = run(go(0.5))
    assert [o.error is None for o in outcomes] == [True, True, True, False]
    assert "'overloaded' (after 1 retries)" in outcomes[3].error
    assert client.usage_record()["failed_requests"] == 1
    with pytest.raises(LLMError, match=r"127.0.0.1:\d+/v1: 1 of 4 items failed \(more than llm.max_failure_share 0.2\)"):
        run(go(0.2))


def test_the_key_is_read_from_the_named_variable_and_never_stored(server, tmp_path, monkeypatch):
    with pytest.raises(LLMError, match="the environment variable CIRCUITFLOW_TEST_KEY .* is not set"):
        LLMClient(settings("https://api.example.invalid/v1", api_key_env="CIRCUITFLOW_TEST_KEY"), tmp_path / "x")
    assert not server.requests and not (tmp_path / "x").exists()
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("CIRCUITFLOW_TEST_KEY", secret)

    async def go():
        client = LLMClient(settings(server.base_url, api_key_env="CIRCUITFLOW_TEST_KEY", price_per_million_prompt=1.0,
                                    price_per_million_completion=2.0), tmp_path / "cache.sqlite")
        await client.complete(ask("hello"))
        await client.aclose()
        return client.write_usage(tmp_path / "usage.json")

    usage = run(go())
    assert server.headers[0]["Authorization"] == f"Bearer {secret}"
    assert usage["cost_estimate"] == pytest.approx((11 * 1.0 + 3 * 2.0) / 1e6)
    for path in tmp_path.iterdir():
        assert secret.encode() not in path.read_bytes(), path


def test_a_rerun_after_kill_9_resends_nothing_already_answered(tmp_path):
    """A job killed mid-way keeps every reply it had received; the rerun asks only for the rest."""
    server = ScriptedServer(default=lambda body: ("reply", "answer to " + body["messages"][0]["content"]),
                            delay_s=0.3)
    try:
        prompts = [f"feature {i}" for i in range(8)]
        job = textwrap.dedent(f"""
            import asyncio, sys
            from circuitflow.llm import LLMClient, LLMSettings
            settings = LLMSettings(base_url={server.base_url!r}, model="judge", api_key_env=None, max_concurrency=1,
                                   timeout_s=5.0, max_retries=0, temperature=0.0, max_tokens=64, json_mode=False,
                                   max_failure_share=0.0)
            async def main():
                client = LLMClient(settings, {str(tmp_path / "cache.sqlite")!r})
                await client.run_all({prompts!r}, lambda p: client.complete([{{"role": "user", "content": p}}]))
            asyncio.run(main())
        """)
        process = subprocess.Popen([sys.executable, "-c", job])
        deadline = time.time() + 60
        while server.answered < 3:
            assert time.time() < deadline and process.poll() is None
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        sent_before = len(server.requests)
        assert sent_before < len(prompts)  # it really was killed mid-way

        async def rerun():
            client = LLMClient(settings(server.base_url, max_concurrency=1), tmp_path / "cache.sqlite")
            cached = len(client.cache)
            outcomes = await client.run_all(prompts, lambda p: client.complete(ask(p)))
            await client.aclose()
            return cached, outcomes, client.usage

        server.delay_s = 0.0
        cached, outcomes, usage = run(rerun())
        assert cached >= 3 - 1  # replies are committed as they arrive (one may be in flight)
        assert len(server.requests) - sent_before == len(prompts) - cached == usage.requests
        assert usage.cache_hits == cached
        assert [o.result.text for o in outcomes] == [f"answer to {p}" for p in prompts]
    finally:
        server.close()


@pytest.mark.parametrize("text,expected", [
    ('{"a": 1}', {"a": 1}),
    ('Here you go:\n```json\n{"a": [1, 2]}\n```\nDone.', {"a": [1, 2]}),
    ('prefix {"a": "x}y", "b": {"c": 2}} suffix', {"a": "x}y", "b": {"c": 2}}),
    ('["not", "an", "object"] then {"ok": true}', {"ok": True}),
])
def test_extract_json(text, expected):
    assert extract_json(text) == expected


def test_extract_json_refuses_non_objects():
    with pytest.raises(ValueError):
        extract_json("[1, 2, 3]")


def judge_everything(client: LLMClient, items: list):
    async def go():
        try:
            return await client.run_all(items, lambda item: client.complete(ask(item)))
        finally:
            await client.aclose()

    return run(go())


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_stops_the_job_at_the_first_request(server, tmp_path, monkeypatch, status):
    secret = "sk-test-refused-0123456789"
    monkeypatch.setenv("CIRCUITFLOW_TEST_KEY", secret)
    server.default = ("status", status, {}, {"error": {"message": "Incorrect API key provided"}})
    client = LLMClient(settings(server.base_url, api_key_env="CIRCUITFLOW_TEST_KEY", max_concurrency=1),
                       tmp_path / "c.sqlite")
    with pytest.raises(LLMError, match=rf"^http://127.0.0.1:\d+/v1 refused the API key \(HTTP {status}\): "
                                       r"'Incorrect API key provided'; check the key in the environment variable "
                                       r"CIRCUITFLOW_TEST_KEY \(llm.api_key_env\)$") as refused:
        judge_everything(client, [f"feature {i}" for i in range(5)])
    assert len(server.requests) == 1 and secret not in str(refused.value)


def test_a_huge_retry_after_is_capped(server, tmp_path):
    server.script.extend([("status", 429, {"Retry-After": "86400"}, {"error": {"message": "slow down"}}),
                          ("status", 503, {"Retry-After": "3600"}, {"error": {"message": "overloaded"}})])

    async def go():
        client = LLMClient(settings(server.base_url, max_retry_wait_s=0.2), tmp_path / "c.sqlite")
        try:
            return await asyncio.wait_for(client.complete(ask("hello")), timeout=10)
        finally:
            await client.aclose()

    started = time.perf_counter()
    reply = run(go())
    assert reply.text == "ok" and len(server.requests) == 3
    assert 0.4 <= time.perf_counter() - started < 5  # two waits of llm.max_retry_wait_s, not a day


@pytest.mark.parametrize("dead", [("status", 503, {}, {"error": {"message": "overloaded"}}), ("hang", 3.0)],
                         ids=["failing", "hanging"])
def test_consecutive_failures_stop_the_job_without_sending_the_rest(server, tmp_path, dead):
    server.default = dead
    client = LLMClient(settings(server.base_url, max_retries=0, timeout_s=0.2, max_concurrency=1,
                                max_consecutive_failures=3, max_failure_share=1.0), tmp_path / "c.sqlite")
    with pytest.raises(LLMError, match=r"^http://127.0.0.1:\d+/v1: 3 items in a row failed "
                                       r"\(llm.max_consecutive_failures\); stopped with 7 of 10 items not done; "
                                       r"the last: http://127.0.0.1:\d+/v1: .*(overloaded|Timeout)"):
        judge_everything(client, [f"feature {i}" for i in range(10)])
    assert len(server.requests) == 3


def test_an_answer_between_failures_restarts_the_count(server, tmp_path):
    server.default = lambda body: (("status", 503, {}, {"error": {"message": "overloaded"}})
                                   if "bad" in body["messages"][0]["content"] else ("reply", "fine"))
    items = ["bad 1", "bad 2", "good 1", "bad 3", "bad 4", "good 2"]
    client = LLMClient(settings(server.base_url, max_retries=0, max_concurrency=1, max_consecutive_failures=3,
                                max_failure_share=1.0), tmp_path / "c.sqlite")
    outcomes = judge_everything(client, items)
    assert [o.error is None for o in outcomes] == [False, False, True, False, False, True]
    assert len(server.requests) == len(items)


def test_the_failure_share_stops_the_job_once_exceeded(server, tmp_path):
    server.default = lambda body: (("status", 503, {}, {"error": {"message": "overloaded"}})
                                   if "bad" in body["messages"][0]["content"] else ("reply", "fine"))
    items = [f"{kind} {i}" for i in range(5) for kind in ("good", "bad")]
    client = LLMClient(settings(server.base_url, max_retries=0, max_concurrency=1, max_consecutive_failures=10,
                                max_failure_share=0.2), tmp_path / "c.sqlite")
    with pytest.raises(LLMError, match=r"3 of 10 items failed \(more than llm.max_failure_share 0.2\)"):
        judge_everything(client, items)
    assert len(server.requests) == 6  # stopped at the third failure: the job could no longer pass


def test_two_endpoints_serving_the_same_model_name_do_not_share_answers(tmp_path):
    first, second = ScriptedServer(default=("reply", "from the first")), ScriptedServer(default=("reply", "second"))
    try:
        async def go(base_url):
            client = LLMClient(settings(base_url), tmp_path / "cache.sqlite")
            try:
                return await client.complete(ask("hello"))
            finally:
                await client.aclose()

        assert run(go(first.base_url)).text == "from the first"
        reply = run(go(second.base_url))
        assert reply.text == "second" and not reply.cached and len(second.requests) == 1
        assert run(go(first.base_url + "/")).cached  # the same endpoint, however it is written
    finally:
        first.close()
        second.close()


def test_the_endpoint_keys_the_cache_without_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITFLOW_TEST_KEY", "sk-in-the-variable")
    client = LLMClient(settings("HTTPS://user:hunter2@API.Example.com:443/v1/?api-key=sk-in-the-query#frag",
                                api_key_env="CIRCUITFLOW_TEST_KEY"), tmp_path / "c.sqlite")
    run(client.aclose())
    assert client.identity == "judge@https://api.example.com/v1"
    assert client.usage_record()["endpoint"] == "https://api.example.com/v1"


@pytest.mark.parametrize("base_url,expected", [
    ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1"),
    ("http://me:pw@Node-7.cluster:80/v1", "http://node-7.cluster/v1"),
    ("http://[::1]:8080/v1?token=x", "http://[::1]:8080/v1"),
])
def test_public_endpoint(base_url, expected):
    assert public_endpoint(base_url) == expected


def test_empty_or_cut_off_json_replies_are_not_cached(server, tmp_path):
    server.script.extend([("reply", ""), ("truncated", '{"label": "ca'), ("truncated", '{"label": "ca'),
                          ("truncated", "No.")])

    async def go():
        client = LLMClient(settings(server.base_url), tmp_path / "cache.sqlite")
        try:
            return (await client.complete(ask("empty")), await client.complete_json(ask("long")),
                    await client.complete(ask("yes or no?"), max_tokens=2)), client.usage
        finally:
            await client.aclose()

    (empty, cut, short), first_usage = run(go())
    assert (empty.text, cut.text, short.text) == ("", '{"label": "ca', "No.") and not cut.parsed
    assert len(server.requests) == 4  # the cut-off JSON was re-asked once
    server.default = ("reply", '{"label": "cats"}')
    (empty, cut, short), _ = run(go())
    assert (empty.cached, cut.cached, short.cached) == (False, False, True)  # a yes/no answer within its budget
    assert cut.data == {"label": "cats"} and len(server.requests) == 6
    again, usage = run(go())
    assert all(reply.cached for reply in again) and usage.requests == 0
    assert first_usage.incomplete_replies == 3


def test_the_local_judge_is_sent_a_dummy_key_not_the_users(server, tmp_path, monkeypatch):
    secret = "sk-real-user-key-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", secret)

    async def go(local_server):
        client = LLMClient(settings(server.base_url, api_key_env="OPENAI_API_KEY"), tmp_path / "c.sqlite",
                           identity="local-gguf:sha256:0", local_server=local_server)
        try:
            await client.complete(ask(f"hello {local_server}"))
        finally:
            await client.aclose()

    run(go(local_server=True))
    run(go(local_server=False))  # a loopback server the user runs gets the key they named
    assert server.authorizations == [f"Bearer {LOCAL_JUDGE_KEY}", f"Bearer {secret}"]


def test_the_local_judge_is_keyed_by_the_gguf_content_hashed_once(tmp_path):
    one, other = tmp_path / "a" / "judge.gguf", tmp_path / "b" / "judge.gguf"
    for path, content in ((one, b"GGUF quantised one way"), (other, b"GGUF quantised another")):
        path.parent.mkdir()
        path.write_bytes(content)
    cache = tmp_path / "cache.sqlite"
    assert local_identity(one, cache) == f"local-gguf:sha256:{hashlib.sha256(b'GGUF quantised one way').hexdigest()}"
    assert local_identity(other, cache) != local_identity(one, cache)  # same name and size
    # Remembered by path, size and mtime: the same stamp is not read again; a new mtime is.
    stamp = one.stat()
    one.write_bytes(b"GGUF quantised 3rd way")
    os.utime(one, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert local_identity(one, cache).endswith(hashlib.sha256(b"GGUF quantised one way").hexdigest())
    os.utime(one, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    assert local_identity(one, cache).endswith(hashlib.sha256(b"GGUF quantised 3rd way").hexdigest())


def test_the_cache_needs_no_shared_memory_and_is_held_by_one_job(tmp_path):
    """Exclusive locking before WAL: SQLite creates no -shm index (what fails across the nodes of
    a network file system), and a second process cannot use a cache while its job holds it."""
    from circuitflow.llm.cache import ResponseCache
    from circuitflow.paths import RunPaths

    paths = RunPaths(str(tmp_path / "results/run"))
    caches = {paths.judge_cache_of(stage, unit) for stage in ("classify", "explain", "score")
              for unit in ("features", "neurons")}
    assert len(caches) == 6  # one per LLM job: no two jobs share a file
    path = paths.judge_cache_of("classify", "features")
    cache = ResponseCache(path)
    try:
        cache.put("k", "m", {"messages": []}, "reply", {})
        assert cache.get("k")[0] == "reply"
        assert not os.path.exists(path + "-shm")
        probe = ("import sqlite3, sys\n"
                 "db = sqlite3.connect(sys.argv[1], timeout=0.2)\n"
                 "try:\n    db.execute('SELECT COUNT(*) FROM replies').fetchone()\n"
                 "except sqlite3.OperationalError as error:\n    print(error)\n")
        held = subprocess.run([sys.executable, "-c", probe, path], capture_output=True, text=True, timeout=60)
        assert "locked" in held.stdout, held
    finally:
        cache.close()
    again = ResponseCache(path)  # released when its job closes it
    try:
        assert again.get("k")[0] == "reply"
    finally:
        again.close()
