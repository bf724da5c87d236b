"""A scripted OpenAI-compatible chat server on loopback: the stand-in for OpenRouter in tests.

Real HTTP, real ``openai`` client, scripted answers, so the LLM-judge pipeline's logic (selection,
rewards, values, retries, failures) can be asserted exactly. It knows ARC-Easy's answer keys (read
from the shared data) and answers by model name:

- ``oracle``: the right letter ("B. because it is."); ``wrong``: a wrong letter;
- ``broken``: HTTP 500 on every expert call (judge calls still work, so a team that draws it as
  its judge still judges);
- ``slow``: sleeps ``slow_s`` before answering (for timeouts);
- judges (the system prompt "Act as a critical judge."): the first attempt of every judge call
  (odd seeds) is prose without a number, so retries happen; then 0.9xx for a right answer and
  0.1xx for a wrong one. Reward calls answer "effective" for right answers, "poor" otherwise.

It counts requests per model and the most requests in flight at once.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

JUDGE = "Act as a critical judge."


def _arc_keys(data_root: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    keys = {}
    for split in ("train", "validation", "test"):
        for line in (data_root / "arc_easy" / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            keys[row["question"].strip()] = (row["answerKey"], tuple(row["choices"]["label"]))
    return keys


class ScriptedLLM:
    """``with ScriptedLLM(data_root) as llm: llm.base_url``: the server runs in a thread."""

    def __init__(self, data_root: Path, slow_s: float = 5.0) -> None:
        self.keys = _arc_keys(data_root)
        self.slow_s = slow_s
        self.requests: dict[str, int] = {}
        self.in_flight = self.max_in_flight = 0
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        app = FastAPI()
        app.post("/v1/chat/completions")(self._chat)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ScriptedLLM:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started, "the scripted server did not start"
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def _key(self, text: str) -> tuple[str, tuple[str, ...]] | None:
        for question, key in self.keys.items():
            if question in text:
                return key
        return None

    async def _chat(self, request: Request) -> JSONResponse:
        body = await request.json()
        model, messages, seed = body["model"], body["messages"], body.get("seed") or 0
        self.requests[model] = self.requests.get(model, 0) + 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.02)  # let concurrent calls overlap
            text = messages[-1]["content"]
            if messages[0]["content"] == JUDGE:
                return self._reply(self._judge(text, seed))
            if model == "broken":
                return JSONResponse({"error": {"message": "scripted failure"}}, status_code=500)
            if model == "slow":
                await asyncio.sleep(self.slow_s)
            key = self._key(text)
            if key is None:
                return self._reply("I am not sure.")
            answer, labels = key
            letter = answer if model == "oracle" else next(label for label in labels if label != answer)
            return self._reply(f"{letter}. because it is.")
        finally:
            self.in_flight -= 1

    def _judge(self, text: str, seed: int) -> str:
        candidate = text.split("Candidate: ", 1)[1].split("\n\n", 1)[0]
        key = self._key(text)
        right = key is not None and re.match(rf"{re.escape(key[0])}\.", candidate) is not None
        if "select a judgement" in text:
            return "effective" if right else "poor"
        if seed % 2:
            return "I would rather not say."
        return f"{0.9 if right else 0.1:.1f}{seed % 10}{(seed // 10) % 10}"

    @staticmethod
    def _reply(text: str) -> JSONResponse:
        return JSONResponse({"id": "scripted", "object": "chat.completion", "created": 0, "model": "scripted",
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": text}}],
                             "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
