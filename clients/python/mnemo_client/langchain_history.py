"""LangChain chat message history stored in a mnemo conversation.

:class:`MnemoChatMessageHistory` implements
``langchain_core.chat_history.BaseChatMessageHistory`` on the Conversations API
(``/v1/conversations/{id}/items``). Messages are stored as ordinary OpenAI conversation
items, so the same conversation can be read by the OpenAI SDKs and the OpenAI Agents SDK.

Mapping (both directions)::

    HumanMessage               <-> message, role "user"       (input_text parts)
    SystemMessage              <-> message, role "system"      (input_text parts)
    SystemMessage with additional_kwargs["__openai_role__"] == "developer"
                               <-> message, role "developer"
    AIMessage                  <-> message, role "assistant"   (output_text parts),
                                   followed by one "function_call" item per tool call
                                   (call_id = tool call id, name, arguments = JSON text)
    ToolMessage                <-> "function_call_output" (call_id = tool_call_id, output)

Details:

* Every AIMessage is stored as exactly one assistant message item (with empty content if
  the message only calls tools) followed by its function calls; this makes the grouping
  of function calls into AIMessages unambiguous when reading. Function call items that do
  not follow an assistant message (as written by the Agents SDK) are read as an AIMessage
  with empty content whose id is the first function call's item id.
* Message ids are item ids. A message with an ``id`` is stored under that item id (1-128
  characters of ``[A-Za-z0-9_-]``, unique within the conversation: adding a message whose
  id is already stored fails with 409 and stores nothing of that request); a message
  without one gets a server-generated id (``msg_…``, ``fco_…``) that ``messages`` returns.
* Content: a string stays a string. A list may hold strings, ``{"type": "text"}`` blocks
  and OpenAI content parts (``input_text``, ``output_text``, ``refusal``, ``input_image``,
  ``input_file``, ``input_audio``), which are stored as given. Reading gives a string for
  a single text part, otherwise a list (text parts as ``{"type": "text", "text": ...}``
  blocks, other parts as stored).
* Not stored: ``name``, ``additional_kwargs`` (except ``__openai_role__``),
  ``response_metadata``, ``usage_metadata``, and ToolMessage ``status``/``artifact``.
  Invalid tool calls are stored as function calls with their raw argument text and read
  back as invalid tool calls (without the error text).
* Items with no LangChain equivalent (reasoning, web search calls, …, as written by other
  clients) are skipped when reading.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

import httpx
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call

from ._http import DEFAULT_TIMEOUT, AsyncTransport, LoopTransport, NotFoundError, Transport

__all__ = ["MnemoChatMessageHistory", "messages_to_items", "items_to_messages"]

#: The Conversations API accepts at most this many items per request.
MAX_ITEMS_PER_REQUEST = 20
#: Page size used when reading a conversation (the API's maximum).
PAGE_SIZE = 100

_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_OPENAI_PARTS = frozenset(
    {"input_text", "output_text", "refusal", "input_image", "input_file", "input_audio"}
)
_TEXT_PARTS = frozenset({"input_text", "output_text"})
_ROLE_KEY = "__openai_role__"

Content = Union[str, list[Union[str, dict[str, Any]]]]
Item = dict[str, Any]


# --------------------------------------------------------------------------- conversion


def _text_part(text: str, role: str) -> Item:
    if role == "assistant":
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"type": "input_text", "text": text}


def _content_to_api(content: Any, role: str, where: str) -> Union[str, list[Item]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(f"{where}: content must be a string or a list, not {type(content).__name__}")
    parts: list[Item] = []
    for i, block in enumerate(content):
        if isinstance(block, str):
            parts.append(_text_part(block, role))
        elif isinstance(block, dict) and block.get("type") == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise ValueError(f"{where}: content[{i}] is a text block without a string 'text'")
            parts.append(_text_part(text, role))
        elif isinstance(block, dict) and block.get("type") in _OPENAI_PARTS:
            parts.append(dict(block))
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise ValueError(
                f"{where}: content[{i}] of type {kind!r} cannot be stored; use strings, "
                f"'text' blocks or OpenAI content parts ({', '.join(sorted(_OPENAI_PARTS))})"
            )
    return parts


def _content_from_api(content: Any) -> Content:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    if (
        len(content) == 1
        and isinstance(content[0], dict)
        and content[0].get("type") in _TEXT_PARTS
        and isinstance(content[0].get("text"), str)
    ):
        return str(content[0]["text"])
    blocks: list[Union[str, dict[str, Any]]] = []
    for part in content:
        if isinstance(part, dict) and part.get("type") in _TEXT_PARTS:
            blocks.append({"type": "text", "text": part.get("text", "")})
        else:
            blocks.append(part)
    return blocks


def _check_id(message: BaseMessage, where: str) -> Optional[str]:
    mid = message.id
    if mid is None:
        return None
    if not isinstance(mid, str) or not _ID.match(mid):
        raise ValueError(
            f"{where}: message id {mid!r} cannot be an item id "
            "(1-128 characters of [A-Za-z0-9_-]); leave id=None to let the server assign one"
        )
    return mid


def _arguments(args: Any, where: str) -> str:
    try:
        return json.dumps(args, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: tool call arguments are not JSON-serialisable: {e}") from None


def _message(role: str, content: Union[str, list[Item]], mid: Optional[str]) -> Item:
    item: Item = {"type": "message", "role": role, "content": content}
    if mid is not None:
        item["id"] = mid
    return item


def _message_to_items(message: BaseMessage, where: str) -> list[Item]:
    if isinstance(message, ToolMessage):
        call_id = message.tool_call_id
        if not isinstance(call_id, str) or not call_id:
            raise ValueError(f"{where}: ToolMessage needs a non-empty tool_call_id")
        item: Item = {
            "type": "function_call_output",
            "call_id": call_id,
            "output": _content_to_api(message.content, "tool", where),
        }
        mid = _check_id(message, where)
        if mid is not None:
            item["id"] = mid
        return [item]
    if isinstance(message, AIMessage):
        mid = _check_id(message, where)
        items = [_message("assistant", _content_to_api(message.content, "assistant", where), mid)]
        for tc in message.tool_calls:
            if not tc.get("id"):
                raise ValueError(f"{where}: tool call {tc.get('name')!r} has no id")
            items.append(
                {
                    "type": "function_call",
                    "call_id": tc["id"],
                    "name": tc["name"],
                    "arguments": _arguments(tc["args"], where),
                }
            )
        for itc in message.invalid_tool_calls:
            if not itc.get("id"):
                raise ValueError(f"{where}: invalid tool call {itc.get('name')!r} has no id")
            items.append(
                {
                    "type": "function_call",
                    "call_id": itc["id"],
                    "name": itc.get("name") or "",
                    "arguments": itc.get("args") or "",
                }
            )
        return items
    if isinstance(message, HumanMessage):
        role = "user"
    elif isinstance(message, SystemMessage):
        role = message.additional_kwargs.get(_ROLE_KEY, "system")
        if role not in ("system", "developer"):
            raise ValueError(f"{where}: SystemMessage {_ROLE_KEY} must be 'system' or 'developer'")
    elif isinstance(message, ChatMessage) and message.role in ("user", "system", "developer"):
        role = message.role
    elif isinstance(message, ChatMessage) and message.role == "assistant":
        return _message_to_items(AIMessage(content=message.content, id=message.id), where)
    else:
        kind = type(message).__name__
        extra = f" with role {message.role!r}" if isinstance(message, ChatMessage) else ""
        raise TypeError(
            f"{where}: {kind}{extra} cannot be stored; use HumanMessage, AIMessage, "
            "SystemMessage or ToolMessage"
        )
    return [_message(role, _content_to_api(message.content, role, where), _check_id(message, where))]


def _message_groups(messages: Sequence[BaseMessage]) -> list[list[Item]]:
    """The items of each message (one list per message).

    Raises TypeError for a message type with no item equivalent and ValueError for a value
    that cannot be stored (see the module documentation for the mapping).
    """
    if isinstance(messages, BaseMessage):
        raise TypeError("messages must be a sequence of messages, not a single message")
    out: list[list[Item]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, BaseMessage):
            raise TypeError(f"{where}: expected a langchain BaseMessage, got {type(message).__name__}")
        out.append(_message_to_items(message, where))
    return out


def messages_to_items(messages: Sequence[BaseMessage]) -> list[Item]:
    """Converts messages to Conversations API items, in order.

    Raises TypeError for a message type with no item equivalent and ValueError for a value
    that cannot be stored (see the module documentation for the mapping).
    """
    return [item for group in _message_groups(messages) for item in group]


def _tool_call_from_item(item: Item) -> tuple[bool, Any]:
    args_text = item.get("arguments")
    name = str(item.get("name") or "")
    call_id = item.get("call_id")
    try:
        args = json.loads(args_text) if isinstance(args_text, str) else None
    except ValueError:
        args = None
    if isinstance(args, dict):
        return True, tool_call(name=name, args=args, id=call_id)
    text = args_text if isinstance(args_text, str) else None
    return False, invalid_tool_call(name=name, args=text, id=call_id, error=None)


def items_to_messages(items: Iterable[Item]) -> list[BaseMessage]:
    """Converts stored conversation items (oldest first) to LangChain messages.

    Function call items directly after an assistant message become that AIMessage's tool
    calls; other items without a LangChain equivalent are skipped.
    """
    out: list[BaseMessage] = []
    # The AIMessage that following function_call items attach to, as its constructor fields.
    open_ai: Optional[dict[str, Any]] = None

    def close() -> None:
        nonlocal open_ai
        if open_ai is not None:
            out.append(AIMessage(**open_ai))
            open_ai = None

    for item in items:
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "function_call":
            if open_ai is None:
                open_ai = {"content": "", "id": item.get("id"), "tool_calls": [], "invalid_tool_calls": []}
            valid, call = _tool_call_from_item(item)
            open_ai["tool_calls" if valid else "invalid_tool_calls"].append(call)
            continue
        close()
        if kind == "message":
            role = item.get("role")
            content = _content_from_api(item.get("content"))
            mid = item.get("id")
            if role == "assistant":
                open_ai = {"content": content, "id": mid, "tool_calls": [], "invalid_tool_calls": []}
            elif role == "user":
                out.append(HumanMessage(content=content, id=mid))
            elif role == "system":
                out.append(SystemMessage(content=content, id=mid))
            elif role == "developer":
                out.append(SystemMessage(content=content, id=mid, additional_kwargs={_ROLE_KEY: "developer"}))
        elif kind == "function_call_output":
            output = item.get("output")
            out.append(
                ToolMessage(
                    content=_content_from_api(output) if isinstance(output, list) else str(output or ""),
                    tool_call_id=str(item.get("call_id") or ""),
                    id=item.get("id"),
                )
            )
    close()
    return out


def _batches(groups: Sequence[list[Item]], size: int = MAX_ITEMS_PER_REQUEST) -> Iterator[list[Item]]:
    """Packs whole messages into requests of at most ``size`` items (a message with more
    items than that is split over consecutive requests)."""
    batch: list[Item] = []
    for group in groups:
        if batch and len(batch) + len(group) > size:
            yield batch
            batch = []
        for item in group:
            if len(batch) == size:
                yield batch
                batch = []
            batch.append(item)
    if batch:
        yield batch


# --------------------------------------------------------------------------- history


class MnemoChatMessageHistory(BaseChatMessageHistory):
    """Chat message history kept in one mnemo conversation.

    Args:
        base_url: the server root (``http://127.0.0.1:8080``; a trailing ``/v1`` is accepted).
        conversation_id: an existing conversation; when omitted, one is created by the first
            write (``conversation_id`` is ``None`` until then; ``ensure_conversation``
            creates it at once).
        api_key: a JWT or API key, sent as a bearer token.
        user: the user the application acts for (``X-Mnemo-User``).
        metadata: metadata for a conversation this history creates.
        timeout: request timeout in seconds.
        http_client / async_http_client: clients to use instead of creating them (not closed
            by :meth:`close` / :meth:`aclose`).

    A conversation that does not exist, was deleted, or belongs to another user raises
    :class:`~mnemo_client.NotFoundError` on every read and write; it is never read as an
    empty history.

    ``add_messages`` sends one request per 20 items (the API's limit), whole messages per
    request where possible. Each request is appended atomically; a longer write is not: if
    a request fails, the earlier ones stay stored, the later ones are not sent, and the
    error propagates.

    ``clear`` deletes the items one by one (newest first) and keeps the conversation, its id
    and metadata: one request per item, plus one per 100 items to list them. An interrupted
    clear leaves a prefix of the history. Use :meth:`delete` to drop a long history in one
    request when the conversation id need not survive.
    """

    def __init__(
        self,
        *,
        base_url: str,
        conversation_id: Optional[str] = None,
        api_key: Optional[str] = None,
        user: Optional[str] = None,
        metadata: Optional[Mapping[str, str]] = None,
        timeout: float = DEFAULT_TIMEOUT,
        http_client: Optional[httpx.Client] = None,
        async_http_client: Optional[httpx.AsyncClient] = None,
    ) -> None:
        super().__init__()
        if conversation_id is not None and (not isinstance(conversation_id, str) or not conversation_id):
            raise ValueError("conversation_id must be a non-empty string or None")
        self._conversation_id = conversation_id
        self._metadata = dict(metadata) if metadata is not None else None
        self._base_url = base_url
        self._api_key = api_key
        self._user = user
        self._timeout = timeout
        self._transport = Transport(
            base_url=base_url, api_key=api_key, user=user, timeout=timeout, http_client=http_client
        )
        self._atransport = LoopTransport(
            base_url=base_url,
            api_key=api_key,
            user=user,
            timeout=timeout,
            http_client=async_http_client,
        )
        self._aloop: Optional[asyncio.AbstractEventLoop] = None
        self._alock: Optional[asyncio.Lock] = None
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- identity

    @property
    def conversation_id(self) -> Optional[str]:
        """The conversation's id, or ``None`` while no conversation has been created."""
        return self._conversation_id

    def _path(self, suffix: str = "") -> str:
        assert self._conversation_id is not None
        return f"/v1/conversations/{self._conversation_id}{suffix}"

    def _create_body(self, items: Optional[list[Item]]) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self._metadata is not None:
            body["metadata"] = self._metadata
        if items:
            body["items"] = items
        return body

    def ensure_conversation(self) -> str:
        """Creates the conversation now if it does not exist yet; returns its id."""
        with self._lock:
            if self._conversation_id is None:
                r = self._transport.request("POST", "/v1/conversations", json=self._create_body(None))
                self._conversation_id = str(r.json()["id"])
            return self._conversation_id

    async def aensure_conversation(self) -> str:
        """Async form of :meth:`ensure_conversation`."""
        transport, lock = self._async()
        async with lock:
            if self._conversation_id is None:
                r = await transport.request("POST", "/v1/conversations", json=self._create_body(None))
                self._conversation_id = str(r.json()["id"])
            return self._conversation_id

    # ----------------------------------------------------------------- async plumbing

    def _async(self) -> tuple[AsyncTransport, asyncio.Lock]:
        """The async transport and lock for the running event loop.

        An ``httpx.AsyncClient`` is bound to the loop it first ran on, so a history used from
        several loops (e.g. successive ``asyncio.run`` calls) gets one client per loop.
        """
        loop = asyncio.get_running_loop()
        if self._alock is None or self._aloop is not loop:  # a lock belongs to one loop too
            self._aloop, self._alock = loop, asyncio.Lock()
        return self._atransport.get(), self._alock

    # ----------------------------------------------------------------- read

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """All messages, oldest first (every page of the conversation is read)."""
        if self._conversation_id is None:
            return []
        items: list[Item] = []
        after: Optional[str] = None
        while True:
            r = self._transport.request(
                "GET", self._path("/items"), params={"order": "asc", "limit": PAGE_SIZE, "after": after}
            )
            page = r.json()
            items.extend(page["data"])
            if not page.get("has_more") or not page["data"]:
                return items_to_messages(items)
            after = page["last_id"]

    async def aget_messages(self) -> list[BaseMessage]:
        """Async form of :attr:`messages`."""
        if self._conversation_id is None:
            return []
        transport, _ = self._async()
        items: list[Item] = []
        after: Optional[str] = None
        while True:
            r = await transport.request(
                "GET", self._path("/items"), params={"order": "asc", "limit": PAGE_SIZE, "after": after}
            )
            page = r.json()
            items.extend(page["data"])
            if not page.get("has_more") or not page["data"]:
                return items_to_messages(items)
            after = page["last_id"]

    # ----------------------------------------------------------------- write

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Appends messages in order (see the class documentation for requests and atomicity).

        Every message is converted before anything is sent: a message that cannot be stored
        raises TypeError / ValueError and nothing is written.
        """
        batches = list(_batches(_message_groups(messages)))
        if not batches:
            return
        with self._lock:
            if self._conversation_id is None:
                # The conversation is created together with the first request's items.
                r = self._transport.request("POST", "/v1/conversations", json=self._create_body(batches[0]))
                self._conversation_id = str(r.json()["id"])
                batches = batches[1:]
        for batch in batches:
            self._transport.request("POST", self._path("/items"), json={"items": batch})

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Async form of :meth:`add_messages`."""
        batches = list(_batches(_message_groups(messages)))
        if not batches:
            return
        transport, lock = self._async()
        async with lock:
            if self._conversation_id is None:
                r = await transport.request("POST", "/v1/conversations", json=self._create_body(batches[0]))
                self._conversation_id = str(r.json()["id"])
                batches = batches[1:]
        for batch in batches:
            await transport.request("POST", self._path("/items"), json={"items": batch})

    # ----------------------------------------------------------------- clear / delete

    def _item_ids_newest_first(self) -> list[str]:
        ids: list[str] = []
        after: Optional[str] = None
        while True:
            r = self._transport.request(
                "GET", self._path("/items"), params={"order": "desc", "limit": PAGE_SIZE, "after": after}
            )
            page = r.json()
            ids.extend(str(item["id"]) for item in page["data"])
            if not page.get("has_more") or not page["data"]:
                return ids
            after = page["last_id"]

    def clear(self) -> None:
        """Deletes every message and keeps the (now empty) conversation and its id.

        Items appended while ``clear`` runs may survive it. Raises NotFoundError if the
        conversation is not visible to the caller.
        """
        if self._conversation_id is None:
            return
        for item_id in self._item_ids_newest_first():
            try:
                self._transport.request("DELETE", self._path(f"/items/{item_id}"))
            except NotFoundError:
                self._transport.request("GET", self._path())  # still 404: the conversation is gone
                # otherwise the item was deleted concurrently: nothing left to do for it

    async def aclear(self) -> None:
        """Async form of :meth:`clear`."""
        if self._conversation_id is None:
            return
        transport, _ = self._async()
        ids: list[str] = []
        after: Optional[str] = None
        while True:
            r = await transport.request(
                "GET", self._path("/items"), params={"order": "desc", "limit": PAGE_SIZE, "after": after}
            )
            page = r.json()
            ids.extend(str(item["id"]) for item in page["data"])
            if not page.get("has_more") or not page["data"]:
                break
            after = page["last_id"]
        for item_id in ids:
            try:
                await transport.request("DELETE", self._path(f"/items/{item_id}"))
            except NotFoundError:
                await transport.request("GET", self._path())

    def delete(self) -> None:
        """Deletes the whole conversation in one request; the next write creates a new one
        (``conversation_id`` is ``None`` until then)."""
        with self._lock:
            if self._conversation_id is None:
                return
            self._transport.request("DELETE", self._path())
            self._conversation_id = None

    async def adelete(self) -> None:
        """Async form of :meth:`delete`."""
        transport, lock = self._async()
        async with lock:
            if self._conversation_id is None:
                return
            await transport.request("DELETE", self._path())
            self._conversation_id = None

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Closes the sync HTTP client this history created."""
        self._transport.close()

    async def aclose(self) -> None:
        """Closes the async HTTP client this history created for the running loop."""
        await self._atransport.aclose()
        if self._aloop is asyncio.get_running_loop():
            self._aloop = self._alock = None

    def __enter__(self) -> "MnemoChatMessageHistory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> "MnemoChatMessageHistory":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
        self.close()

    def __repr__(self) -> str:
        return f"MnemoChatMessageHistory(conversation_id={self._conversation_id!r})"
