"""The Conversations API driven through the official `openai` SDK (plus raw httpx where the exact
JSON matters). Contract: docs/api.md."""

from __future__ import annotations

import json

import re
import threading
import time
import uuid

import openai
import pytest

from conftest import assert_api_error, assert_json_error

ID_HEX48 = re.compile(r"^[0-9a-fA-F]{48}$")


def gen_id_ok(item_id: str, prefix: str) -> bool:
    return item_id.startswith(prefix) and bool(ID_HEX48.match(item_id[len(prefix):]))


def umsg(text, role="user"):
    return {"type": "message", "role": role, "content": text}


def texts_of(items):
    out = []
    for it in items:
        out.append(it.content[0].text)
    return out


def list_all_sdk(client, cid, order="asc", limit=100, **kw):
    return list(client.conversations.items.list(cid, order=order, limit=limit, **kw))


def list_all_raw(http, cid, order="asc", limit=100, headers=None):
    out, after = [], None
    for _ in range(10_000):
        params = {"order": order, "limit": limit}
        if after:
            params["after"] = after
        r = http.get(f"/v1/conversations/{cid}/items", params=params, headers=headers or {})
        assert r.status_code == 200, r.text
        body = r.json()
        out.extend(body["data"])
        if not body["has_more"]:
            return out
        assert body["data"], f"has_more with empty page: {body}"
        after = body["last_id"]
    raise AssertionError("pagination did not terminate")


def err_type(exc: openai.APIStatusError):
    body = exc.body if isinstance(exc.body, dict) else {}
    return body.get("type")


# ============================================================================ create / retrieve / update / delete

@pytest.mark.storage
def test_create_with_metadata_and_items(client, http):
    before = int(time.time())
    conv = client.conversations.create(
        metadata={"topic": "demo", "owner": "tests", "empty": ""},
        items=[umsg("Hello there"), umsg("General Kenobi", role="assistant")],
    )
    after = int(time.time())
    assert conv.id.startswith("conv_")
    assert conv.object == "conversation"
    assert conv.metadata == {"topic": "demo", "owner": "tests", "empty": ""}
    # clock sanity only (generous window), not a performance assertion
    assert before - 300 <= conv.created_at <= after + 300

    raw = http.get(f"/v1/conversations/{conv.id}").json()
    assert raw == {"id": conv.id, "object": "conversation", "created_at": conv.created_at,
                   "metadata": {"topic": "demo", "owner": "tests", "empty": ""}}
    assert isinstance(raw["created_at"], int)

    items = list_all_sdk(client, conv.id)
    assert [(i.type, i.role, i.content[0].text) for i in items] == [
        ("message", "user", "Hello there"), ("message", "assistant", "General Kenobi")]


@pytest.mark.storage
def test_create_without_params(client, http):
    conv = client.conversations.create()
    assert conv.id.startswith("conv_")
    assert conv.object == "conversation"
    assert conv.metadata == {}
    got = client.conversations.retrieve(conv.id)
    assert (got.id, got.created_at, got.metadata, got.object) == (conv.id, conv.created_at, {}, "conversation")

    r = http.get(f"/v1/conversations/{conv.id}/items")
    assert r.status_code == 200
    assert r.json() == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


def test_create_ids_are_unique(client):
    ids = {client.conversations.create().id for _ in range(20)}
    assert len(ids) == 20


@pytest.mark.storage
def test_retrieve_update_replaces_metadata(client):
    conv = client.conversations.create(metadata={"a": "1", "b": "2"})
    got = client.conversations.retrieve(conv.id)
    assert got.metadata == {"a": "1", "b": "2"}
    assert got.created_at == conv.created_at

    upd = client.conversations.update(conv.id, metadata={"c": "3"})
    assert upd.id == conv.id
    assert upd.object == "conversation"
    assert upd.created_at == conv.created_at
    assert upd.metadata == {"c": "3"}, "update must replace, not merge, the metadata"
    assert client.conversations.retrieve(conv.id).metadata == {"c": "3"}

    upd = client.conversations.update(conv.id, metadata={})
    assert upd.metadata == {}
    assert client.conversations.retrieve(conv.id).metadata == {}


@pytest.mark.storage
def test_delete_conversation_then_404_everywhere(client, http):
    conv = client.conversations.create(items=[umsg("doomed")])
    item_id = list_all_sdk(client, conv.id)[0].id

    deleted = client.conversations.delete(conv.id)
    assert deleted.id == conv.id
    assert deleted.object == "conversation.deleted"
    assert deleted.deleted is True

    calls = {
        "retrieve": lambda: client.conversations.retrieve(conv.id),
        "update": lambda: client.conversations.update(conv.id, metadata={"x": "y"}),
        "delete": lambda: client.conversations.delete(conv.id),
        "items.list": lambda: client.conversations.items.list(conv.id),
        "items.retrieve": lambda: client.conversations.items.retrieve(item_id, conversation_id=conv.id),
        "items.delete": lambda: client.conversations.items.delete(item_id, conversation_id=conv.id),
        "items.create": lambda: client.conversations.items.create(conv.id, items=[umsg("zombie")]),
    }
    for name, call in calls.items():
        with pytest.raises(openai.NotFoundError) as ei:
            call()
        assert err_type(ei.value) == "not_found_error", (name, ei.value.body)
    assert_api_error(http.get(f"/v1/conversations/{conv.id}/items/{item_id}"), 404)


def test_unknown_conversation_404(client, http):
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve("conv_" + "0" * 48)
    assert_api_error(http.get("/v1/conversations/conv_doesnotexist"), 404)
    assert_api_error(http.get("/v1/conversations/conv_doesnotexist/items"), 404)


# ============================================================================ items create / retrieve / delete

@pytest.mark.storage
def test_items_create_returns_list(client, http):
    conv = client.conversations.create()
    res = client.conversations.items.create(
        conv.id, items=[umsg("one"), umsg("two", role="assistant"), umsg("three", role="system")])
    assert res.object == "list"
    assert len(res.data) == 3
    assert [i.content[0].text for i in res.data] == ["one", "two", "three"]
    for it in res.data:
        assert gen_id_ok(it.id, "msg_"), it.id
    assert len({i.id for i in res.data}) == 3
    assert res.first_id == res.data[0].id
    assert res.last_id == res.data[-1].id
    assert res.has_more is False
    # what was returned is what is stored
    stored = list_all_raw(http, conv.id)
    assert [s["id"] for s in stored] == [i.id for i in res.data]
    assert stored == [i.model_dump(mode="json", exclude_unset=True) for i in res.data]


def test_items_create_accepts_include(client):
    conv = client.conversations.create()
    res = client.conversations.items.create(conv.id, items=[umsg("x")],
                                            include=["message.output_text.logprobs"])
    assert [i.content[0].text for i in res.data] == ["x"]


@pytest.mark.storage
def test_item_retrieve_and_delete(client, http):
    conv = client.conversations.create(items=[umsg("a"), umsg("b"), umsg("c")])
    items = list_all_sdk(client, conv.id)
    assert texts_of(items) == ["a", "b", "c"]
    a, b, c = items

    got = client.conversations.items.retrieve(b.id, conversation_id=conv.id)
    assert got.id == b.id and got.content[0].text == "b" and got.role == "user"
    raw = http.get(f"/v1/conversations/{conv.id}/items/{b.id}").json()
    assert raw == {"id": b.id, "type": "message", "status": "completed", "role": "user",
                   "content": [{"type": "input_text", "text": "b"}]}

    res = client.conversations.items.delete(b.id, conversation_id=conv.id)
    assert res.id == conv.id
    assert res.object == "conversation"
    assert res.created_at == conv.created_at

    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(b.id, conversation_id=conv.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.delete(b.id, conversation_id=conv.id)
    assert [i.id for i in list_all_sdk(client, conv.id)] == [a.id, c.id]
    assert [i.id for i in list_all_sdk(client, conv.id, order="desc")] == [c.id, a.id]
    # the conversation itself is untouched
    assert client.conversations.retrieve(conv.id).id == conv.id


def test_item_of_other_conversation_is_404(client):
    c1 = client.conversations.create(items=[umsg("in c1")])
    c2 = client.conversations.create(items=[umsg("in c2")])
    i1 = list_all_sdk(client, c1.id)[0].id
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(i1, conversation_id=c2.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.delete(i1, conversation_id=c2.id)
    assert texts_of(list_all_sdk(client, c1.id)) == ["in c1"]


def test_unknown_item_404(client, http):
    conv = client.conversations.create()
    with pytest.raises(openai.NotFoundError) as ei:
        client.conversations.items.retrieve("msg_" + "a" * 48, conversation_id=conv.id)
    assert err_type(ei.value) == "not_found_error"


# ============================================================================ pagination

N45 = 45


@pytest.fixture(scope="module")
def conv45(server):
    client = server.openai
    texts = [f"item-{i:02d}" for i in range(N45)]
    conv = client.conversations.create(items=[umsg(t) for t in texts[:20]])
    client.conversations.items.create(conv.id, items=[umsg(t) for t in texts[20:40]])
    client.conversations.items.create(conv.id, items=[umsg(t) for t in texts[40:]])
    ids = [i.id for i in client.conversations.items.list(conv.id, order="asc", limit=100)]
    assert len(ids) == N45
    return conv.id, texts, ids


@pytest.mark.storage
def test_autopaginate_asc_exact_order(client, conv45):
    cid, texts, ids = conv45
    items = list(client.conversations.items.list(cid, order="asc", limit=7))
    assert texts_of(items) == texts
    assert [i.id for i in items] == ids


def test_autopaginate_desc_exact_order(client, conv45):
    cid, texts, ids = conv45
    items = list(client.conversations.items.list(cid, order="desc", limit=4))
    assert texts_of(items) == texts[::-1]
    assert [i.id for i in items] == ids[::-1]


def test_autopaginate_default_order_is_desc(client, conv45):
    cid, texts, ids = conv45
    assert texts_of(client.conversations.items.list(cid, limit=10)) == texts[::-1]


def test_include_is_accepted_and_ignored(client, http, conv45):
    cid, texts, ids = conv45
    inc = ["message.output_text.logprobs", "reasoning.encrypted_content"]
    assert [i.id for i in client.conversations.items.list(cid, order="asc", limit=100, include=inc)] == ids
    got = client.conversations.items.retrieve(ids[3], conversation_id=cid, include=inc)
    assert got.id == ids[3] and got.content[0].text == texts[3]
    r = http.get(f"/v1/conversations/{cid}/items/{ids[3]}", params={"include": "anything.at.all"})
    assert r.status_code == 200 and r.json()["id"] == ids[3]


def test_default_limit_and_order(client, http, conv45):
    cid, texts, ids = conv45
    page = client.conversations.items.list(cid)
    assert [i.id for i in page.data] == ids[::-1][:20]
    assert page.has_more is True
    body = http.get(f"/v1/conversations/{cid}/items").json()
    assert [d["id"] for d in body["data"]] == ids[::-1][:20]
    assert body["first_id"] == ids[-1] and body["last_id"] == ids[-20] and body["has_more"] is True
    assert body["object"] == "list"


def test_manual_pages_asc(http, conv45):
    cid, texts, ids = conv45
    seen, after, pages = [], None, []
    while True:
        params = {"order": "asc", "limit": 10}
        if after:
            params["after"] = after
        body = http.get(f"/v1/conversations/{cid}/items", params=params).json()
        page_ids = [d["id"] for d in body["data"]]
        pages.append((len(page_ids), body["has_more"]))
        assert body["first_id"] == page_ids[0] and body["last_id"] == page_ids[-1]
        seen += page_ids
        if not body["has_more"]:
            break
        after = body["last_id"]
    assert pages == [(10, True), (10, True), (10, True), (10, True), (5, False)]
    assert seen == ids


def test_manual_pages_desc_sdk(client, conv45):
    cid, texts, ids = conv45
    page = client.conversations.items.list(cid, order="desc", limit=20)
    got = [i.id for i in page.data]
    assert page.has_more is True
    while page.has_next_page():
        page = page.get_next_page()
        got += [i.id for i in page.data]
    assert got == ids[::-1]


def test_after_in_the_middle_both_orders(client, conv45):
    cid, texts, ids = conv45
    p = client.conversations.items.list(cid, order="asc", after=ids[9], limit=5)
    assert [i.id for i in p.data] == ids[10:15] and p.has_more is True
    p = client.conversations.items.list(cid, order="desc", after=ids[9], limit=5)
    assert [i.id for i in p.data] == [ids[8], ids[7], ids[6], ids[5], ids[4]] and p.has_more is True
    p = client.conversations.items.list(cid, order="desc", after=ids[2], limit=5)
    assert [i.id for i in p.data] == [ids[1], ids[0]] and p.has_more is False
    p = client.conversations.items.list(cid, order="asc", after=ids[40], limit=5)
    assert [i.id for i in p.data] == ids[41:45] and p.has_more is False


def test_page_boundaries_has_more(http, conv45):
    cid, texts, ids = conv45
    for limit, more in ((44, True), (45, False), (46, False), (100, False), (1, True)):
        body = http.get(f"/v1/conversations/{cid}/items", params={"order": "asc", "limit": limit}).json()
        assert [d["id"] for d in body["data"]] == ids[:limit], limit
        assert body["has_more"] is more, limit
    body = http.get(f"/v1/conversations/{cid}/items", params={"order": "asc", "after": ids[-1]}).json()
    assert body == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    body = http.get(f"/v1/conversations/{cid}/items", params={"order": "desc", "after": ids[0]}).json()
    assert body == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


def test_after_unknown_id_is_400(client, http, conv45):
    cid, texts, ids = conv45
    with pytest.raises(openai.BadRequestError):
        client.conversations.items.list(cid, after="msg_" + "f" * 48)
    other = client.conversations.create(items=[umsg("elsewhere")])
    other_id = list_all_sdk(client, other.id)[0].id
    assert_api_error(http.get(f"/v1/conversations/{cid}/items", params={"after": other_id}), 400)


@pytest.mark.parametrize("limit", [0, 101, -1])
def test_list_limit_out_of_range_is_400(client, http, conv45, limit):
    cid, _, _ = conv45
    with pytest.raises(openai.BadRequestError) as ei:
        client.conversations.items.list(cid, limit=limit)
    assert err_type(ei.value) == "invalid_request_error"
    assert_api_error(http.get(f"/v1/conversations/{cid}/items", params={"limit": limit}), 400)


# ============================================================================ limits

def test_21_items_rejected(client, http):
    with pytest.raises(openai.BadRequestError) as ei:
        client.conversations.create(items=[umsg(f"m{i}") for i in range(21)])
    assert err_type(ei.value) == "invalid_request_error"
    conv = client.conversations.create(items=[umsg(f"m{i}") for i in range(20)])
    assert len(list_all_sdk(client, conv.id)) == 20
    with pytest.raises(openai.BadRequestError):
        client.conversations.items.create(conv.id, items=[umsg(f"n{i}") for i in range(21)])
    res = client.conversations.items.create(conv.id, items=[umsg(f"n{i}") for i in range(20)])
    assert len(res.data) == 20
    assert len(list_all_sdk(client, conv.id)) == 40, "a rejected batch must store nothing"


def test_zero_items_append_rejected(client):
    conv = client.conversations.create()
    with pytest.raises(openai.BadRequestError):
        client.conversations.items.create(conv.id, items=[])
    assert list_all_sdk(client, conv.id) == []


def test_metadata_limits(client):
    ok16 = {f"k{i:02d}": f"v{i}" for i in range(16)}
    conv = client.conversations.create(metadata=ok16)
    assert conv.metadata == ok16

    bad17 = {f"k{i:02d}": f"v{i}" for i in range(17)}
    with pytest.raises(openai.BadRequestError):
        client.conversations.create(metadata=bad17)
    with pytest.raises(openai.BadRequestError):
        client.conversations.update(conv.id, metadata=bad17)

    k64, k65 = "k" * 64, "k" * 65
    assert client.conversations.create(metadata={k64: "x"}).metadata == {k64: "x"}
    with pytest.raises(openai.BadRequestError):
        client.conversations.create(metadata={k65: "x"})
    with pytest.raises(openai.BadRequestError):
        client.conversations.update(conv.id, metadata={k65: "x"})

    v512, v513 = "v" * 512, "v" * 513
    assert client.conversations.create(metadata={"k": v512}).metadata == {"k": v512}
    with pytest.raises(openai.BadRequestError):
        client.conversations.create(metadata={"k": v513})
    with pytest.raises(openai.BadRequestError):
        client.conversations.update(conv.id, metadata={"k": v513})

    # failed updates changed nothing
    assert client.conversations.retrieve(conv.id).metadata == ok16


def test_metadata_limits_count_characters_not_bytes(client):
    # limits are in characters: 512 CJK characters (1536 UTF-8 bytes) and a 64-character key of
    # 4-byte emoji are within the limits
    v = "語" * 512
    k = "😀" * 64
    conv = client.conversations.create(metadata={k: v})
    assert client.conversations.retrieve(conv.id).metadata == {k: v}


# ============================================================================ unicode

UNICODE_TEXTS = [
    "emoji 😀👍🏽👨‍👩‍👧‍👦🇯🇵 end",
    "CJK 日本語の文章、中文句子，한국어 문장",
    "Arabic مرحبا بالعالم، كيف حالك؟",
    "Hebrew שלום עולם",
    "combining e\u0301 a\u0300 n\u0303 Z\u0351\u0352\u0353 (must stay decomposed, no NFC)",
    "nul:\u0000:after",
    "controls \t\n\r\u0001\u001f\u007f quotes \" \\ / </script> &amp;",
    "astral 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈, BOM \ufeff, ZWJ \u200d, RLM \u200f, LRO \u202d, U+FFFF \uffff",
    "\u2028\u2029 separators",
]


@pytest.mark.storage
def test_unicode_round_trip_exact(client, http):
    items = []
    for t in UNICODE_TEXTS:
        items.append(umsg(t))
        items.append({"type": "message", "role": "user", "content": [{"type": "input_text", "text": t}]})
    meta = {"ключ": "значение", "😀": UNICODE_TEXTS[0], "nul": "a\u0000b", "rtl": "שלום"}
    conv = client.conversations.create(metadata=meta, items=items[:20])
    assert conv.metadata == meta
    assert client.conversations.retrieve(conv.id).metadata == meta

    stored = list_all_sdk(client, conv.id)
    expected = [t for t in UNICODE_TEXTS for _ in range(2)][:20]
    assert texts_of(stored) == expected
    for it, t in zip(stored, expected):
        assert client.conversations.items.retrieve(it.id, conversation_id=conv.id).content[0].text == t

    raw = list_all_raw(http, conv.id)
    assert [r["content"][0]["text"] for r in raw] == expected
    for r in raw:
        assert r["content"] == [{"type": "input_text", "text": r["content"][0]["text"]}]


# ============================================================================ item shapes

@pytest.mark.storage
def test_string_content_conversion(http):
    conv = http.post("/v1/conversations", json={}).json()
    r = http.post(f"/v1/conversations/{conv['id']}/items", json={"items": [
        {"type": "message", "role": "user", "content": "u"},
        {"type": "message", "role": "assistant", "content": "a"},
        {"type": "message", "role": "system", "content": "s"},
        {"type": "message", "role": "developer", "content": "d"},
        {"role": "user", "content": "no type field"},
    ]})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    expected = [
        ("user", [{"type": "input_text", "text": "u"}]),
        ("assistant", [{"type": "output_text", "text": "a", "annotations": [], "logprobs": []}]),
        ("system", [{"type": "input_text", "text": "s"}]),
        ("developer", [{"type": "input_text", "text": "d"}]),
        ("user", [{"type": "input_text", "text": "no type field"}]),
    ]
    stored = list_all_raw(http, conv["id"])
    assert stored == data
    for item, (role, content) in zip(stored, expected):
        assert item == {"id": item["id"], "type": "message", "status": "completed", "role": role,
                        "content": content}
        assert gen_id_ok(item["id"], "msg_"), item["id"]


def test_sdk_parses_converted_content(client):
    conv = client.conversations.create(items=[umsg("q"), umsg("a", role="assistant")])
    u, a = list_all_sdk(client, conv.id)
    assert u.type == "message" and u.status == "completed" and u.content[0].type == "input_text"
    assert a.content[0].type == "output_text" and a.content[0].text == "a"
    assert a.content[0].annotations == []


def test_list_content_and_extra_fields_kept_exactly(http):
    """Every field given is kept exactly; what OpenAI's schema requires and the client left out
    is filled in as OpenAI does (an `output_text` part's `logprobs`)."""
    conv = http.post("/v1/conversations", json={}).json()
    item = {
        "type": "message", "role": "assistant", "status": "incomplete",
        "content": [{"type": "output_text", "text": "part 1", "annotations": [
            {"type": "url_citation", "url": "https://example.com/?q=1", "title": "ex", "start_index": 0,
             "end_index": 4}]},
            {"type": "refusal", "refusal": "nope"}],
        "x_custom": {"nested": [1, 2.5, None, True, "s", {"deep": []}]},
    }
    r = http.post(f"/v1/conversations/{conv['id']}/items", json={"items": [item]})
    assert r.status_code == 200, r.text
    stored = list_all_raw(http, conv["id"])
    assert len(stored) == 1
    got = dict(stored[0])
    item_id = got.pop("id")
    assert gen_id_ok(item_id, "msg_"), item_id
    expected = json.loads(json.dumps(item))
    expected["content"][0]["logprobs"] = []
    assert got == expected


@pytest.mark.storage
def test_function_call_and_output_round_trip(client, http):
    conv = client.conversations.create()
    args = '{"city": "Paris", "units": "c", "note": "é😀"}'
    out = '{"temperature": 21, "sky": "clear"}'
    res = client.conversations.items.create(conv.id, items=[
        umsg("weather in Paris?"),
        {"type": "function_call", "call_id": "call_abc123", "name": "get_weather", "arguments": args},
        {"type": "function_call_output", "call_id": "call_abc123", "output": out},
    ])
    assert [i.type for i in res.data] == ["message", "function_call", "function_call_output"]
    fc, fco = res.data[1], res.data[2]
    assert gen_id_ok(fc.id, "fc_"), fc.id
    assert fco.id and fco.id not in (fc.id, res.data[0].id)

    items = list_all_sdk(client, conv.id)
    assert [i.id for i in items] == [i.id for i in res.data]
    got_fc = client.conversations.items.retrieve(fc.id, conversation_id=conv.id)
    assert (got_fc.type, got_fc.call_id, got_fc.name, got_fc.arguments) == (
        "function_call", "call_abc123", "get_weather", args)
    assert got_fc.status == "completed"
    got_fco = client.conversations.items.retrieve(fco.id, conversation_id=conv.id)
    assert (got_fco.type, got_fco.call_id, got_fco.output) == ("function_call_output", "call_abc123", out)

    raw = http.get(f"/v1/conversations/{conv.id}/items/{fc.id}").json()
    assert {k: raw[k] for k in ("type", "call_id", "name", "arguments")} == {
        "type": "function_call", "call_id": "call_abc123", "name": "get_weather", "arguments": args}


@pytest.mark.storage
def test_reasoning_item_round_trip(client, http):
    conv = client.conversations.create()
    given = {
        "type": "reasoning", "id": "rs_client_given_1",
        "summary": [{"type": "summary_text", "text": "Thinking about **weather**…"}],
        "content": [{"type": "reasoning_text", "text": "step 1; step 2"}],
        "encrypted_content": "gAAAAABo-opaque-blob==",
    }
    no_id = {"type": "reasoning", "summary": []}
    res = client.conversations.items.create(conv.id, items=[given, no_id])
    assert res.data[0].id == "rs_client_given_1"
    assert gen_id_ok(res.data[1].id, "rs_"), res.data[1].id

    r = client.conversations.items.retrieve("rs_client_given_1", conversation_id=conv.id)
    assert r.type == "reasoning"
    assert [(s.type, s.text) for s in r.summary] == [("summary_text", "Thinking about **weather**…")]
    assert r.encrypted_content == "gAAAAABo-opaque-blob=="
    raw = http.get(f"/v1/conversations/{conv.id}/items/rs_client_given_1").json()
    for k, v in given.items():
        assert raw[k] == v, k
    raw2 = http.get(f"/v1/conversations/{conv.id}/items/{res.data[1].id}").json()
    assert raw2["type"] == "reasoning" and raw2["summary"] == []


@pytest.mark.storage
def test_client_supplied_id_kept_and_duplicate_409(client, http):
    conv = client.conversations.create()
    res = client.conversations.items.create(conv.id, items=[
        {"id": "msg_custom-ID_1", "type": "message", "role": "user", "content": "mine"}])
    assert res.data[0].id == "msg_custom-ID_1"
    got = client.conversations.items.retrieve("msg_custom-ID_1", conversation_id=conv.id)
    assert got.content[0].text == "mine"

    # duplicate in a later request: 409 and the whole request is rejected (atomic)
    with pytest.raises(openai.ConflictError) as ei:
        client.conversations.items.create(conv.id, items=[
            umsg("would be new"),
            {"id": "msg_custom-ID_1", "type": "message", "role": "user", "content": "dup"}])
    assert err_type(ei.value) == "conflict_error"
    stored = list_all_sdk(client, conv.id)
    assert texts_of(stored) == ["mine"]

    # duplicate within one request: 400 or 409, nothing stored
    r = http.post(f"/v1/conversations/{conv.id}/items", json={"items": [
        {"id": "same_id", "role": "user", "content": "1"}, {"id": "same_id", "role": "user", "content": "2"}]})
    assert_api_error(r, {400, 409})
    assert texts_of(list_all_sdk(client, conv.id)) == ["mine"]

    # the same id is fine in another conversation
    other = client.conversations.create(items=[
        {"id": "msg_custom-ID_1", "type": "message", "role": "user", "content": "other"}])
    assert list_all_sdk(client, other.id)[0].id == "msg_custom-ID_1"

    # 128 chars of [A-Za-z0-9_-] ok; 129, empty and other characters rejected
    id128 = "A-_z9" * 25 + "abc"
    assert len(id128) == 128
    res = client.conversations.items.create(conv.id, items=[{"id": id128, "role": "user", "content": "long"}])
    assert res.data[0].id == id128
    for bad in ("x" * 129, "", "has space", "dot.dot", "slash/x", "é", "id\u0000"):
        r = http.post(f"/v1/conversations/{conv.id}/items",
                      json={"items": [{"id": bad, "role": "user", "content": "bad"}]})
        assert_api_error(r, 400)
    assert texts_of(list_all_sdk(client, conv.id)) == ["mine", "long"]


def test_unknown_item_type_and_item_reference_400(client, http):
    conv = client.conversations.create(items=[umsg("keep")])
    keep_id = list_all_sdk(client, conv.id)[0].id
    with pytest.raises(openai.BadRequestError):
        client.conversations.items.create(conv.id, items=[{"type": "banana", "peel": True}])
    with pytest.raises(openai.BadRequestError):
        client.conversations.items.create(conv.id, items=[{"type": "item_reference", "id": keep_id}])
    with pytest.raises(openai.BadRequestError):
        client.conversations.create(items=[{"type": "item_reference", "id": keep_id}])
    # a bad item anywhere rejects the whole request
    with pytest.raises(openai.BadRequestError):
        client.conversations.items.create(conv.id, items=[umsg("ok"), {"type": "banana"}])
    assert texts_of(list_all_sdk(client, conv.id)) == ["keep"]


@pytest.mark.parametrize("item", [
    {"type": "message", "role": "user"},                                    # no content
    {"type": "message", "content": "no role"},                              # no role
    {"type": "message", "role": "critic", "content": "bad role"},           # role not allowed
    {"type": "function_call", "name": "f", "arguments": "{}"},              # no call_id
    {"type": "function_call", "call_id": "c", "arguments": "{}"},           # no name
    {"type": "function_call", "call_id": "c", "name": "f"},                 # no arguments
    {"type": "function_call_output", "call_id": "c"},                       # no output
    {"type": "function_call_output", "output": "x"},                        # no call_id
    {"type": "reasoning"},                                                  # no summary
    {"content": "neither type nor role"},
])
def test_missing_required_fields_400(http, item):
    conv = http.post("/v1/conversations", json={}).json()
    r = http.post(f"/v1/conversations/{conv['id']}/items", json={"items": [item]})
    assert_api_error(r, 400)
    assert list_all_raw(http, conv["id"]) == []


# ============================================================================ X-Mnemo-User

@pytest.mark.storage
def test_user_isolation(client, http):
    alice = {"X-Mnemo-User": "alice-" + uuid.uuid4().hex[:6]}
    bob = {"X-Mnemo-User": "bob-" + uuid.uuid4().hex[:6]}
    conv = client.conversations.create(metadata={"who": "alice"}, items=[umsg("secret")],
                                       extra_headers=alice)
    item_id = list_all_sdk(client, conv.id, extra_headers=alice)[0].id

    for name, call in {
        "retrieve": lambda: client.conversations.retrieve(conv.id, extra_headers=bob),
        "update": lambda: client.conversations.update(conv.id, metadata={"who": "bob"}, extra_headers=bob),
        "items.list": lambda: client.conversations.items.list(conv.id, extra_headers=bob),
        "items.retrieve": lambda: client.conversations.items.retrieve(item_id, conversation_id=conv.id,
                                                                      extra_headers=bob),
        "items.create": lambda: client.conversations.items.create(conv.id, items=[umsg("bob was here")],
                                                                  extra_headers=bob),
        "items.delete": lambda: client.conversations.items.delete(item_id, conversation_id=conv.id,
                                                                  extra_headers=bob),
        "delete": lambda: client.conversations.delete(conv.id, extra_headers=bob),
    }.items():
        with pytest.raises(openai.NotFoundError) as ei:
            call()
        assert err_type(ei.value) == "not_found_error", name

    # nothing bob tried had any effect; alice and the tenant (no header) still see it
    assert client.conversations.retrieve(conv.id, extra_headers=alice).metadata == {"who": "alice"}
    assert client.conversations.retrieve(conv.id).metadata == {"who": "alice"}
    assert texts_of(list_all_sdk(client, conv.id)) == ["secret"]
    assert texts_of(list_all_sdk(client, conv.id, extra_headers=alice)) == ["secret"]

    # a tenant-wide conversation (created without the header) is not owned by alice
    shared = client.conversations.create()
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(shared.id, extra_headers=alice)

    # alice can do everything on her own conversation
    client.conversations.items.create(conv.id, items=[umsg("more")], extra_headers=alice)
    assert texts_of(list_all_sdk(client, conv.id, extra_headers=alice)) == ["secret", "more"]
    assert client.conversations.delete(conv.id, extra_headers=alice).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(conv.id)


def test_user_id_is_bytes_not_just_ascii(http):
    """docs/api.md: X-Mnemo-User is 1-256 bytes with no control characters, so a UTF-8 user id
    (or one with spaces) is a valid, distinct user."""
    juergen = {"X-Mnemo-User": "jürgen smith".encode("utf-8")}
    plain = {"X-Mnemo-User": b"jurgen smith"}
    r = http.post("/v1/conversations", json={}, headers=juergen)
    assert r.status_code == 200, r.text
    cid = r.json()["id"]
    assert http.get(f"/v1/conversations/{cid}", headers=juergen).status_code == 200
    assert_api_error(http.get(f"/v1/conversations/{cid}", headers=plain), 404)
    r = http.post("/v1/conversations", json={}, headers={"X-Mnemo-User": "用户".encode() * 42})  # 252 bytes
    assert r.status_code == 200, r.text
    assert_api_error(http.post("/v1/conversations", json={},
                               headers={"X-Mnemo-User": "用户".encode() * 43}), 400)  # 258 bytes


def test_user_header_validation(http):
    ok = "u" * 256
    r = http.post("/v1/conversations", json={}, headers={"X-Mnemo-User": ok})
    assert r.status_code == 200, r.text
    assert http.get(f"/v1/conversations/{r.json()['id']}", headers={"X-Mnemo-User": ok}).status_code == 200
    for bad in ("u" * 257, "", "tab\tinside"):
        r = http.post("/v1/conversations", json={}, headers={"X-Mnemo-User": bad})
        assert_api_error(r, 400)


# ============================================================================ concurrency

THREADS = 16
REQS_PER_THREAD = 12


@pytest.mark.storage
def test_concurrent_appends_total_order(server):
    client = server.openai
    conv = client.conversations.create()
    records = []  # (thread, seq, texts, returned ids, t_start, t_end)
    lock = threading.Lock()
    errors = []
    barrier = threading.Barrier(THREADS)

    def worker(t):
        try:
            barrier.wait(timeout=30)
            for s in range(REQS_PER_THREAD):
                n = 1 + (s + t) % 3  # 1..3 items per request
                texts = [f"t{t:02d}-s{s:02d}-i{j}" for j in range(n)]
                t0 = time.monotonic()
                res = client.conversations.items.create(conv.id, items=[umsg(x) for x in texts])
                t1 = time.monotonic()
                with lock:
                    records.append((t, s, texts, [i.id for i in res.data], t0, t1))
                assert [i.content[0].text for i in res.data] == texts
        except BaseException as e:  # noqa: BLE001
            errors.append(f"thread {t}: {e!r}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=180)
    assert not any(th.is_alive() for th in threads), "workers hung"
    assert not errors, errors

    asc = list_all_sdk(client, conv.id, order="asc", limit=100)
    asc_texts = texts_of(asc)
    asc_ids = [i.id for i in asc]
    expected_texts = [x for r in records for x in r[2]]
    assert len(asc_texts) == len(expected_texts), "items lost or duplicated"
    assert sorted(asc_texts) == sorted(expected_texts)
    assert len(set(asc_texts)) == len(asc_texts), "duplicated items"
    assert len(set(asc_ids)) == len(asc_ids), "duplicated ids"

    pos = {x: i for i, x in enumerate(asc_texts)}
    for (t, s, texts, ids, t0, t1) in records:
        p = [pos[x] for x in texts]
        # each request's items are stored atomically, contiguously and in the given order
        assert p == list(range(p[0], p[0] + len(p))), f"request t{t} s{s} not contiguous: {p}"
        # ids returned on append are the stored ids
        assert [asc_ids[i] for i in p] == ids
    # per-thread order
    for t in range(THREADS):
        mine = [x for x in asc_texts if x.startswith(f"t{t:02d}-")]
        assert mine == sorted(mine), f"thread {t} order broken: {mine}"
    # real-time order: a request acknowledged before another began is listed before it
    for a in records:
        for b in records:
            if a[5] < b[4]:
                assert pos[a[2][-1]] < pos[b[2][0]], f"{a[2]} acked before {b[2]} started but listed after"
    # desc is the exact reverse; a paginated listing agrees with the full one
    desc = list_all_sdk(client, conv.id, order="desc", limit=100)
    assert [i.id for i in desc] == asc_ids[::-1]
    paged = [i.id for i in client.conversations.items.list(conv.id, order="asc", limit=13)]
    assert paged == asc_ids
