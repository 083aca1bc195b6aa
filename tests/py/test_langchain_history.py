"""MnemoChatMessageHistory (mnemo_client.langchain_history) against a real server: the
LangChain <-> Conversations API mapping in both directions, ordering across pages, clear,
async forms, user isolation and bad input."""

from __future__ import annotations

import asyncio
import json

import pytest
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.runnables import RunnableLambda
from langchain_core.runnables.history import RunnableWithMessageHistory

from mnemo_client import MnemoError, NotFoundError
from mnemo_client.langchain_history import (
    MnemoChatMessageHistory,
    items_to_messages,
    messages_to_items,
)


def raw_items(server, cid: str, user: str | None = None) -> list[dict]:
    """Every stored item, oldest first, read with plain HTTP (not through the adapter)."""
    headers = {"X-Mnemo-User": user} if user else {}
    out, after = [], None
    while True:
        params = {"order": "asc", "limit": 100}
        if after:
            params["after"] = after
        r = server.http.get(f"/v1/conversations/{cid}/items", params=params, headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        out.extend(body["data"])
        if not body["has_more"]:
            return out
        after = body["last_id"]


def full_conversation(uid: str) -> list[BaseMessage]:
    """One message of every supported kind, with ids, including tool calls."""
    return [
        SystemMessage("You are terse.", id=f"sys-{uid}"),
        SystemMessage("Developer rules.", id=f"dev-{uid}", additional_kwargs={"__openai_role__": "developer"}),
        HumanMessage("What is the weather in Paris and Oslo? ünïcødé ✓", id=f"h1-{uid}"),
        AIMessage(
            "",
            id=f"a1-{uid}",
            tool_calls=[
                {"name": "weather", "args": {"city": "Paris", "days": [1, 2]}, "id": f"call_p_{uid}"},
                {"name": "weather", "args": {"city": "Oslo", "nested": {"x": None}}, "id": f"call_o_{uid}"},
            ],
        ),
        ToolMessage('{"temp": 21}', tool_call_id=f"call_p_{uid}", id=f"t1-{uid}"),
        ToolMessage("-3 and snowing", tool_call_id=f"call_o_{uid}", id=f"t2-{uid}"),
        AIMessage("Let me also check.", id=f"a2-{uid}",
                  tool_calls=[{"name": "clock", "args": {}, "id": f"call_c_{uid}"}]),
        ToolMessage([{"type": "text", "text": "12:00"}, {"type": "text", "text": "CET"}],
                    tool_call_id=f"call_c_{uid}", id=f"t3-{uid}"),
        AIMessage("Paris 21°, Oslo -3°, noon.", id=f"a3-{uid}"),
        HumanMessage([{"type": "text", "text": "Thanks."}, {"type": "text", "text": "And this?"},
                      {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"}],
                     id=f"h2-{uid}"),
        AIMessage([{"type": "text", "text": "A cat."}, {"type": "text", "text": "Grey."}], id=f"a4-{uid}"),
        AIMessage("", id=f"a5-{uid}"),
        AIMessage("", id=f"a6-{uid}", invalid_tool_calls=[
            {"name": "broken", "args": "{not json", "id": f"call_b_{uid}", "error": None, "type": "invalid_tool_call"}]),
    ]


# ============================================================================ mapping


def test_round_trip_every_message_type(server, uid):
    msgs = full_conversation(uid)
    with MnemoChatMessageHistory(base_url=server.base_url) as h:
        h.add_messages(msgs)
        assert h.messages == msgs
        # A second history over the same conversation reads the same thing.
        with MnemoChatMessageHistory(base_url=server.base_url, conversation_id=h.conversation_id) as h2:
            got = h2.messages
    assert got == msgs
    assert [type(m) for m in got] == [type(m) for m in msgs]
    assert got[3].tool_calls == msgs[3].tool_calls


def test_stored_items_are_openai_conversation_items(server, uid):
    """What the adapter writes is the OpenAI item shape other clients understand."""
    msgs = full_conversation(uid)[:7]
    h = MnemoChatMessageHistory(base_url=server.base_url)
    h.add_messages(msgs)
    items = raw_items(server, h.conversation_id)
    kinds = [(i["type"], i.get("role")) for i in items]
    assert kinds == [
        ("message", "system"), ("message", "developer"), ("message", "user"),
        ("message", "assistant"), ("function_call", None), ("function_call", None),
        ("function_call_output", None), ("function_call_output", None),
        ("message", "assistant"), ("function_call", None),
    ]
    assert items[0]["id"] == f"sys-{uid}"
    assert items[2]["content"] == [{"type": "input_text", "text": msgs[2].content}]
    assert items[8]["content"][0]["type"] == "output_text"
    assert items[8]["content"][0]["text"] == "Let me also check."
    fc = items[4]
    assert fc["call_id"] == f"call_p_{uid}" and fc["name"] == "weather"
    assert isinstance(fc["arguments"], str) and json.loads(fc["arguments"]) == {"city": "Paris", "days": [1, 2]}
    out = items[7]
    assert out == {"type": "function_call_output", "id": f"t2-{uid}", "call_id": f"call_o_{uid}",
                   "output": "-3 and snowing", "status": "completed"}
    # The conversion helpers agree with what is stored.
    assert [i["type"] for i in messages_to_items(msgs)] == [i["type"] for i in items]


def test_ids_assigned_by_server_when_absent(server, uid):
    msgs = [HumanMessage("q"), AIMessage("a", tool_calls=[{"name": "f", "args": {"k": 1}, "id": f"c-{uid}"}]),
            ToolMessage("r", tool_call_id=f"c-{uid}"), AIMessage("done")]
    h = MnemoChatMessageHistory(base_url=server.base_url)
    h.add_messages(msgs)
    got = h.messages
    assert [m.model_copy(update={"id": None}) for m in got] == msgs
    assert got[0].id.startswith("msg_") and got[1].id.startswith("msg_")
    assert got[2].id.startswith("fco_")
    assert len({m.id for m in got}) == 4
    assert [i["id"] for i in raw_items(server, h.conversation_id) if i["type"] != "function_call"] == [m.id for m in got]


def test_reads_items_written_by_other_clients(server, uid):
    """Agents-SDK style history: reasoning is skipped; function calls without a preceding
    assistant message become an AIMessage with empty content."""
    conv = server.openai.conversations.create(items=[
        {"type": "message", "role": "user", "content": "add 2 and 3"},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "use the tool"}]},
        {"type": "function_call", "id": f"fc_{uid}", "call_id": "c1", "name": "add", "arguments": '{"a": 2, "b": 3}'},
        {"type": "function_call", "call_id": "c2", "name": "bad", "arguments": "not json"},
        {"type": "function_call_output", "call_id": "c1", "output": "5"},
        {"type": "message", "role": "assistant", "content": [{"type": "refusal", "refusal": "no more"}]},
    ])
    got = MnemoChatMessageHistory(base_url=server.base_url, conversation_id=conv.id).messages
    assert [type(m) for m in got] == [HumanMessage, AIMessage, ToolMessage, AIMessage]
    assert got[0].content == "add 2 and 3"
    assert got[1].id == f"fc_{uid}" and got[1].content == ""
    assert got[1].tool_calls == [{"name": "add", "args": {"a": 2, "b": 3}, "id": "c1", "type": "tool_call"}]
    assert [(c["name"], c["args"], c["id"]) for c in got[1].invalid_tool_calls] == [("bad", "not json", "c2")]
    assert got[2].tool_call_id == "c1" and got[2].content == "5"
    assert got[3].content == [{"type": "refusal", "refusal": "no more"}]


def test_items_to_messages_groups_calls_only_after_their_assistant_message():
    items = [
        {"type": "message", "role": "assistant", "id": "m1", "content": [{"type": "output_text", "text": "x"}]},
        {"type": "message", "role": "assistant", "id": "m2", "content": []},
        {"type": "function_call", "id": "f1", "call_id": "c1", "name": "f", "arguments": "{}"},
    ]
    got = items_to_messages(items)
    assert got == [AIMessage("x", id="m1"), AIMessage([], id="m2", tool_calls=[{"name": "f", "args": {}, "id": "c1"}])]
    # And the reverse direction keeps one assistant message per AIMessage.
    assert items_to_messages(messages_to_items(got)) == [
        AIMessage("x", id="m1"), AIMessage([], id="m2", tool_calls=[{"name": "f", "args": {}, "id": "c1"}])]


# ============================================================================ order, batching, pagination


def test_order_across_pages_and_request_batches(server, uid):
    msgs: list[BaseMessage] = []
    for i in range(70):
        msgs.append(HumanMessage(f"q{i}", id=f"q{i}-{uid}"))
        msgs.append(AIMessage(f"a{i}", id=f"a{i}-{uid}"))
    h = MnemoChatMessageHistory(base_url=server.base_url)
    h.add_messages(msgs[:3])
    h.add_messages(msgs[3:])  # 137 items: seven requests
    got = h.messages  # 140 items: two pages
    assert [m.content for m in got] == [m.content for m in msgs]
    assert got == msgs
    assert asyncio.run(h.aget_messages()) == msgs


def test_message_with_more_items_than_one_request(server, uid):
    calls = [{"name": "f", "args": {"i": i}, "id": f"c{i}-{uid}"} for i in range(25)]
    msgs = [HumanMessage("go", id=f"h-{uid}"), AIMessage("", id=f"a-{uid}", tool_calls=calls)]
    msgs += [ToolMessage(str(i), tool_call_id=f"c{i}-{uid}", id=f"t{i}-{uid}") for i in range(25)]
    h = MnemoChatMessageHistory(base_url=server.base_url)
    h.add_messages(msgs)  # 52 items
    assert len(raw_items(server, h.conversation_id)) == 52
    assert h.messages == msgs


def test_write_longer_than_one_request_is_atomic_per_request(server, uid):
    h = MnemoChatMessageHistory(base_url=server.base_url)
    h.add_messages([HumanMessage("first", id=f"dup-{uid}")])
    batch = [HumanMessage(f"m{i}", id=f"m{i}-{uid}") for i in range(25)]
    batch[22] = HumanMessage("clash", id=f"dup-{uid}")  # in the second request
    with pytest.raises(MnemoError) as e:
        h.add_messages(batch)
    assert e.value.status == 409
    assert [m.content for m in h.messages] == ["first"] + [f"m{i}" for i in range(20)]


# ============================================================================ lifecycle


def test_lazy_creation_and_metadata(server, uid):
    h = MnemoChatMessageHistory(base_url=server.base_url, metadata={"session": uid})
    assert h.conversation_id is None
    assert h.messages == []
    h.clear()
    assert h.conversation_id is None  # reading and clearing create nothing
    h.add_messages([])
    assert h.conversation_id is None
    h.add_user_message("hello")
    cid = h.conversation_id
    assert cid and cid.startswith("conv_")
    assert server.http.get(f"/v1/conversations/{cid}").json()["metadata"] == {"session": uid}
    h.add_ai_message("hi")
    assert [m.content for m in h.messages] == ["hello", "hi"]
    assert h.ensure_conversation() == cid

    e = MnemoChatMessageHistory(base_url=server.base_url)
    cid2 = e.ensure_conversation()
    assert server.http.get(f"/v1/conversations/{cid2}").status_code == 200
    assert e.messages == []


def test_clear_keeps_the_conversation(server, uid):
    h = MnemoChatMessageHistory(base_url=server.base_url, metadata={"k": uid})
    h.add_messages([HumanMessage(f"m{i}") for i in range(105)])
    cid = h.conversation_id
    h.clear()
    assert h.conversation_id == cid
    assert h.messages == []
    assert raw_items(server, cid) == []
    assert server.http.get(f"/v1/conversations/{cid}").json()["metadata"] == {"k": uid}
    h.add_messages([HumanMessage("again", id=f"again-{uid}")])
    assert h.messages == [HumanMessage("again", id=f"again-{uid}")]


def test_delete_drops_the_conversation(server, uid):
    h = MnemoChatMessageHistory(base_url=server.base_url)
    h.add_user_message("x")
    cid = h.conversation_id
    h.delete()
    assert h.conversation_id is None
    assert server.http.get(f"/v1/conversations/{cid}").status_code == 404
    h.add_user_message("y")
    assert h.conversation_id not in (None, cid)
    assert [m.content for m in h.messages] == ["y"]


def test_async_forms(server, uid):
    msgs = full_conversation(uid)
    h = MnemoChatMessageHistory(base_url=server.base_url, metadata={"a": "1"})

    async def first() -> None:
        await h.aadd_messages(msgs[:5])
        await h.aadd_messages(msgs[5:])
        assert await h.aget_messages() == msgs

    async def second() -> None:  # a new event loop: the history must still work
        assert await h.aget_messages() == msgs
        await h.aclear()
        assert await h.aget_messages() == []
        await h.aadd_messages([HumanMessage("after", id=f"after-{uid}")])
        assert [m.content for m in await h.aget_messages()] == ["after"]
        await h.aclose()

    asyncio.run(first())
    cid = h.conversation_id
    assert cid is not None and h.messages == msgs
    asyncio.run(second())
    assert h.conversation_id == cid
    assert [m.content for m in h.messages] == ["after"]

    async def lifecycle() -> None:
        async with MnemoChatMessageHistory(base_url=server.base_url) as a:
            assert await a.aget_messages() == []
            cid2 = await a.aensure_conversation()
            assert a.conversation_id == cid2
            await a.adelete()
            assert a.conversation_id is None
            assert server.http.get(f"/v1/conversations/{cid2}").status_code == 404

    asyncio.run(lifecycle())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_runnable_with_message_history(server, uid):
    """LangChain's own history wrapper stores each turn through the adapter."""
    histories: dict[str, MnemoChatMessageHistory] = {}

    def get_history(session_id: str) -> MnemoChatMessageHistory:
        if session_id not in histories:
            histories[session_id] = MnemoChatMessageHistory(base_url=server.base_url)
        return histories[session_id]

    def echo_model(messages: list[BaseMessage]) -> AIMessage:
        return AIMessage(f"turn {len(messages) // 2 + 1}: {messages[-1].content}")

    chain = RunnableWithMessageHistory(RunnableLambda(echo_model), get_history)
    cfg = {"configurable": {"session_id": uid}}
    chain.invoke([HumanMessage("one")], config=cfg)
    chain.invoke([HumanMessage("two")], config=cfg)
    stored = MnemoChatMessageHistory(base_url=server.base_url, conversation_id=histories[uid].conversation_id)
    assert [(m.type, m.content) for m in stored.messages] == [
        ("human", "one"), ("ai", "turn 1: one"), ("human", "two"), ("ai", "turn 2: two")]


# ============================================================================ isolation and errors


def test_user_isolation(server, uid):
    a = MnemoChatMessageHistory(base_url=server.base_url, user=f"alice-{uid}")
    a.add_messages([HumanMessage("secret", id=f"s-{uid}")])
    cid = a.conversation_id
    b = MnemoChatMessageHistory(base_url=server.base_url, user=f"bob-{uid}", conversation_id=cid)
    with pytest.raises(NotFoundError):
        b.messages
    with pytest.raises(NotFoundError):
        b.add_messages([HumanMessage("intrude")])
    with pytest.raises(NotFoundError):
        b.clear()
    with pytest.raises(NotFoundError):
        asyncio.run(b.aget_messages())
    with pytest.raises(NotFoundError):
        asyncio.run(b.aclear())
    assert a.messages == [HumanMessage("secret", id=f"s-{uid}")]
    assert [i["id"] for i in raw_items(server, cid, user=f"alice-{uid}")] == [f"s-{uid}"]


def test_unknown_conversation_is_an_error_not_an_empty_history(server):
    h = MnemoChatMessageHistory(base_url=server.base_url, conversation_id="conv_" + "0" * 48)
    with pytest.raises(NotFoundError):
        h.messages
    with pytest.raises(NotFoundError):
        h.add_user_message("x")
    with pytest.raises(ValueError):
        MnemoChatMessageHistory(base_url=server.base_url, conversation_id="")


@pytest.mark.parametrize(
    "bad, exc, words",
    [
        (FunctionMessage("x", name="f"), TypeError, "FunctionMessage"),
        (ChatMessage("x", role="critic"), TypeError, "critic"),
        (HumanMessage("x", id="has.dot"), ValueError, "has.dot"),
        (HumanMessage("x", id="x" * 129), ValueError, "item id"),
        (AIMessage("", tool_calls=[{"name": "f", "args": {}, "id": None}]), ValueError, "no id"),
        (AIMessage("", tool_calls=[{"name": "f", "args": {"o": object()}, "id": "c"}]), ValueError, "JSON"),
        (HumanMessage([{"type": "image_url", "image_url": {"url": "https://x"}}]), ValueError, "image_url"),
        (ToolMessage("x", tool_call_id=""), ValueError, "tool_call_id"),
        (SystemMessage("x", additional_kwargs={"__openai_role__": "user"}), ValueError, "__openai_role__"),
    ],
)
def test_bad_input_is_rejected_before_anything_is_written(server, bad, exc, words):
    h = MnemoChatMessageHistory(base_url=server.base_url)
    with pytest.raises(exc, match=words):
        h.add_messages([HumanMessage("fine"), bad])
    assert h.conversation_id is None  # nothing was sent
    h.add_user_message("ok")
    with pytest.raises(exc, match=words):
        asyncio.run(h.aadd_messages([HumanMessage("fine"), bad]))
    assert [m.content for m in h.messages] == ["ok"]


def test_not_a_message_list(server):
    h = MnemoChatMessageHistory(base_url=server.base_url)
    with pytest.raises(TypeError, match="single message"):
        h.add_messages(HumanMessage("x"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dict"):
        h.add_messages([{"role": "user", "content": "x"}])  # type: ignore[list-item]
