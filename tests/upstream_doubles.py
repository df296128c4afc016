"""Misbehaving OpenAI-compatible upstreams (real HTTP servers on 127.0.0.1) for the corrector's failure tests.

A real model cannot be told to answer 429 or to go down, so these servers play those parts:
  --mode flaky  : 429 (Retry-After: 0) for the first --failures chat requests, then a fixed valid correction
  --mode down   : 503 for every request
  --mode slow   : sleeps --delay seconds before answering
Every request is counted; GET /count returns the count.

    python tests/upstream_doubles.py --mode flaky --failures 2 --port 8123
"""

from __future__ import annotations

import argparse
import asyncio
import time

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

CORRECTION = (
    "Step 2.\nExplanation: 72 + 23 is 95, not 98.\nCorrect Solution: {\n...\n"
    "Step 2: He has 72 + 23 = 95 inches.\nThe answer is 95.\n}"
)


def build(mode: str, failures: int, delay: float) -> FastAPI:
    app = FastAPI()
    state = {"count": 0}

    @app.get("/count")
    async def count():
        return state

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "double", "object": "model", "created": 0, "owned_by": "test"}]}

    @app.post("/v1/chat/completions")
    async def chat():
        state["count"] += 1
        if mode == "down":
            return JSONResponse(status_code=503, content={"error": {"message": "upstream is down"}})
        if mode == "flaky" and state["count"] <= failures:
            return JSONResponse(status_code=429, headers={"Retry-After": "0"},
                                content={"error": {"message": "slow down"}})
        if mode == "slow":
            await asyncio.sleep(delay)
        return {
            "id": "x", "object": "chat.completion", "created": int(time.time()), "model": "double",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": CORRECTION}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140},
        }

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["flaky", "down", "slow"], required=True)
    parser.add_argument("--failures", type=int, default=2)
    parser.add_argument("--delay", type=float, default=5.0)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(build(args.mode, args.failures, args.delay), host="127.0.0.1", port=args.port, log_level="warning")
