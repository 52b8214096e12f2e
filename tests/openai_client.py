#!/usr/bin/env python3
"""Drives `emlab serve` with the official `openai` Python client (used by backend/tests/serve.rs).

    python3 tests/openai_client.py BASE_URL MODEL [MODEL ...]

Lists the models, gets a completion, streams one, and asks for logprobs; prints one JSON summary
line and exits non-zero on any mismatch.
"""
import json
import sys

from openai import OpenAI


def main():
    base_url, models = sys.argv[1], sys.argv[2:]
    client = OpenAI(base_url=base_url, api_key="not-needed", max_retries=0, timeout=300)
    listed = [m.id for m in client.models.list().data]
    assert all(m in listed for m in models), f"models {listed} lack some of {models}"

    messages = [{"role": "user", "content": "Say hello."}]
    first = client.chat.completions.create(model=models[0], messages=messages, max_tokens=8, temperature=0, seed=1)
    text = first.choices[0].message.content
    assert first.choices[0].finish_reason in ("stop", "length"), first
    assert first.usage.completion_tokens > 0 and first.usage.prompt_tokens > 0, first.usage

    chunks = client.chat.completions.create(model=models[0], messages=messages, max_tokens=8, temperature=0, seed=1, stream=True)
    streamed, finish = "", None
    for c in chunks:
        if c.choices:
            streamed += c.choices[0].delta.content or ""
            finish = c.choices[0].finish_reason or finish
    assert streamed == text, f"streamed {streamed!r} != {text!r}"
    assert finish in ("stop", "length"), finish

    lp = client.chat.completions.create(model=models[-1], messages=messages, max_tokens=4, temperature=0,
                                        logprobs=True, top_logprobs=5)
    content = lp.choices[0].logprobs.content
    assert len(content) == lp.usage.completion_tokens, (len(content), lp.usage)
    for t in content:
        assert len(t.top_logprobs) == 5 and t.logprob <= 0.0
        # Greedy: the chosen token is the most likely one.
        assert abs(t.top_logprobs[0].logprob - t.logprob) < 1e-4, t
    print(json.dumps({"models": listed, "text": text, "streamed": streamed,
                      "logprobs": [[t.token, round(t.logprob, 4)] for t in content]}))


if __name__ == "__main__":
    main()
