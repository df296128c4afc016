"""A controllable OpenAI-compatible upstream (a real HTTP server on 127.0.0.1) for the corrector's fault tests.

A real model cannot be told to answer 429, hang or go down, so this server plays those parts on command:

    POST /control {"mode": "ok"|"429"|"500"|"hang"|"malformed"|"html"|"nochoices", "failures": N}
        the next N chat requests misbehave as `mode` (N = -1: until told otherwise), then it answers normally
    GET  /stats   {"count": chat requests received, "auth": the Authorization headers seen}

A normal answer is a fixed, valid correction. `python -m lema.devtools.upstream --port 8123`
"""

from __future__ import annotations

import argparse
import asyncio
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

CORRECTION = (
    "Step 2.\nExplanation: 72 + 23 is 95, not 98.\nCorrect Solution: {\n...\n"
    "Step 2: He has 72 + 23 = 95 inches.\nThe answer is 95.\n}"
)


def build() -> FastAPI:
    app = FastAPI()
    state = {"count": 0, "mode": "ok", "failures": 0, "auth": []}

    @app.post("/control")
    async def control(request: Request):
        body = await request.json()
        state["mode"], state["failures"] = body["mode"], int(body.get("failures", -1))
        return {"ok": True}

    @app.get("/stats")
    async def stats():
        return {"count": state["count"], "auth": sorted(set(state["auth"]))}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "double", "object": "model", "created": 0, "owned_by": "test"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        state["count"] += 1
        state["auth"].append(request.headers.get("authorization", ""))
        mode = state["mode"]
        if mode != "ok" and state["failures"] != 0:
            state["failures"] -= 1 if state["failures"] > 0 else 0
            if mode == "429":
                return JSONResponse(status_code=429, headers={"Retry-After": "0"}, content={"error": {"message": "slow down"}})
            if mode == "500":
                return JSONResponse(status_code=500, content={"error": {"message": "internal error"}})
            if mode == "hang":
                await asyncio.sleep(3600)
            if mode == "malformed":
                return Response(status_code=200, content=b'{"choices": [ {"mess', media_type="application/json")
            if mode == "html":  # a proxy's error page with status 200
                return Response(status_code=200, content=b"<html><body>Bad gateway</body></html>",
                                media_type="text/html")
            if mode == "nochoices":
                return {"id": "x", "object": "chat.completion", "created": 0, "model": "double"}
        return {
            "id": "x", "object": "chat.completion", "created": int(time.time()), "model": "double",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": CORRECTION}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140},
        }

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(build(), host="127.0.0.1", port=args.port, log_level="warning")
