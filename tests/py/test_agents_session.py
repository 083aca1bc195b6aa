"""The OpenAI Agents SDK's OpenAIConversationsSession on mnemo, end to end and without any
model call: what a session stores is what it reads back, in order."""

from __future__ import annotations

import asyncio
import copy
from typing import Any, Awaitable, Callable

from agents import OpenAIConversationsSession
from openai import AsyncOpenAI

from mnemo_client.langchain_history import MnemoChatMessageHistory


def run(server, body: Callable[[AsyncOpenAI], Awaitable[Any]]) -> Any:
    """Runs body(client) on a fresh event loop with an AsyncOpenAI client aimed at mnemo."""

    async def main() -> Any:
        client = AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
        try:
            return await body(client)
        finally:
            await client.close()

    return asyncio.run(main())


def turn(uid: str, n: int) -> list[dict]:
    """One agent turn as the Agents SDK records it: user input, reasoning, a tool call and
    its output, and the assistant's answer; every item in its full stored shape."""
    return [
        {"id": f"msg_u{n}_{uid}", "type": "message", "role": "user", "status": "completed",
         "content": [{"type": "input_text", "text": f"question {n}: what is {n} + {n}?"}]},
        {"id": f"rs_{n}_{uid}", "type": "reasoning",
         "summary": [{"type": "summary_text", "text": f"add {n} to itself"}],
         "encrypted_content": f"opaque-{n}"},
        {"id": f"fc_{n}_{uid}", "type": "function_call", "status": "completed",
         "call_id": f"call_{n}_{uid}", "name": "add", "arguments": f'{{"a": {n}, "b": {n}}}'},
        {"id": f"fco_{n}_{uid}", "type": "function_call_output", "status": "completed",
         "call_id": f"call_{n}_{uid}", "output": str(2 * n)},
        {"id": f"msg_a{n}_{uid}", "type": "message", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": f"{n} + {n} = {2 * n} ✓", "annotations": [], "logprobs": []}]},
    ]


def test_items_round_trip_in_order(server, uid):
    items = [it for n in range(10) for it in turn(uid, n)]  # 50 items: three requests

    async def body(client: AsyncOpenAI) -> None:
        session = OpenAIConversationsSession(openai_client=client)
        await session.add_items(copy.deepcopy(items))
        assert session.session_id.startswith("conv_")
        assert await session.get_items() == items
        assert await session.get_items(limit=7) == items[-7:]
        assert await session.get_items(limit=1) == items[-1:]
        assert await session.get_items(limit=500) == items
        assert await session.get_items(limit=0) == []

        # A session reopened by id (another client) sees the same items.
        other = AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
        try:
            reopened = OpenAIConversationsSession(conversation_id=session.session_id, openai_client=other)
            assert await reopened.get_items() == items
            limited = OpenAIConversationsSession(
                conversation_id=session.session_id, openai_client=other, session_settings={"limit": 3})
            assert await limited.get_items() == items[-3:]
        finally:
            await other.close()

    run(server, body)


def test_shorthand_items_come_back_in_stored_form(server, uid):
    """Items as a runner passes them (easy input messages, no ids) come back in the stored
    OpenAI form, with ids and statuses filled in and the content unchanged."""
    given = [
        {"role": "user", "content": "hello"},
        {"type": "message", "role": "assistant", "content": "hi there"},
        {"type": "function_call", "call_id": f"c_{uid}", "name": "lookup", "arguments": '{"q": "x"}'},
        {"type": "function_call_output", "call_id": f"c_{uid}", "output": [{"type": "input_text", "text": "found"}]},
        {"type": "reasoning", "summary": []},
    ]

    async def body(client: AsyncOpenAI) -> list[dict]:
        session = OpenAIConversationsSession(openai_client=client)
        await session.add_items(copy.deepcopy(given))
        return await session.get_items()

    got = run(server, body)
    assert [g["id"][: g["id"].index("_") + 1] for g in got] == ["msg_", "msg_", "fc_", "fco_", "rs_"]
    for g in got:
        del g["id"]
    assert got == [
        {"type": "message", "role": "user", "status": "completed",
         "content": [{"type": "input_text", "text": "hello"}]},
        {"type": "message", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "hi there", "annotations": [], "logprobs": []}]},
        {"type": "function_call", "status": "completed", "call_id": f"c_{uid}", "name": "lookup",
         "arguments": '{"q": "x"}'},
        {"type": "function_call_output", "status": "completed", "call_id": f"c_{uid}",
         "output": [{"type": "input_text", "text": "found"}]},
        {"type": "reasoning", "summary": []},
    ]


def test_pop_item_and_clear_session(server, uid):
    items = turn(uid, 1) + turn(uid, 2)

    async def body(client: AsyncOpenAI) -> None:
        session = OpenAIConversationsSession(openai_client=client)
        await session.add_items(copy.deepcopy(items))
        sid = session.session_id

        assert await session.pop_item() == items[-1]
        assert await session.pop_item() == items[-2]
        assert await session.get_items() == items[:-2]
        reopened = OpenAIConversationsSession(conversation_id=sid, openai_client=client)
        assert await reopened.get_items() == items[:-2]
        assert await reopened.pop_item() == items[-3]
        assert await session.get_items() == items[:-3]

        await session.clear_session()  # deletes the conversation
        assert server.http.get(f"/v1/conversations/{sid}").status_code == 404
        assert await session.get_items() == []  # a new, empty conversation
        assert session.session_id != sid
        assert await session.pop_item() is None

    run(server, body)


def test_session_history_is_readable_as_langchain_messages(server, uid):
    """The same conversation read through the LangChain adapter: reasoning is skipped and the
    tool call, its output and the answer keep their content."""

    async def body(client: AsyncOpenAI) -> str:
        session = OpenAIConversationsSession(openai_client=client)
        await session.add_items(turn(uid, 4))
        return session.session_id

    sid = run(server, body)
    msgs = MnemoChatMessageHistory(base_url=server.base_url, conversation_id=sid).messages
    assert [(m.type, m.content) for m in msgs] == [
        ("human", "question 4: what is 4 + 4?"), ("ai", ""), ("tool", "8"), ("ai", "4 + 4 = 8 ✓")]
    assert msgs[1].tool_calls == [{"name": "add", "args": {"a": 4, "b": 4}, "id": f"call_4_{uid}", "type": "tool_call"}]
    assert msgs[1].id == f"fc_4_{uid}" and msgs[2].tool_call_id == f"call_4_{uid}"
