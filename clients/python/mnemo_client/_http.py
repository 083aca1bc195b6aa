"""The HTTP layer shared by every client and adapter: one sync and one async transport.

Both take the server's root URL (``http://127.0.0.1:8080``; a trailing ``/v1`` is accepted
and dropped, so the URL given to the OpenAI SDK works too), optional credentials and an
optional acting user, and turn every error answer into :class:`MnemoError`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Mapping, Optional, Sequence

import httpx

DEFAULT_TIMEOUT = 30.0


class MnemoError(Exception):
    """An error answer from mnemo (``{"error": {"message", "type", "param", "code"}}``)."""

    def __init__(
        self,
        status: int,
        message: str,
        type: Optional[str] = None,
        code: Optional[str] = None,
        param: Optional[str] = None,
    ) -> None:
        super().__init__(f"{status} {type or 'error'}: {message}")
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param

    @classmethod
    def from_response(cls, response: httpx.Response) -> "MnemoError":
        try:
            err = response.json().get("error") or {}
        except ValueError:
            err = {}
        if not isinstance(err, dict):
            err = {}
        return cls(
            response.status_code,
            str(err.get("message") or response.text or response.reason_phrase),
            err.get("type"),
            err.get("code"),
            err.get("param"),
        )


class NotFoundError(MnemoError):
    """404: absent, expired, deleted, or outside the caller's scope."""


class PreconditionFailedError(MnemoError):
    """412: an ``If-Match`` / ``If-None-Match`` condition did not hold."""


def _error(response: httpx.Response) -> MnemoError:
    err = MnemoError.from_response(response)
    kind = {404: NotFoundError, 412: PreconditionFailedError}.get(response.status_code)
    if kind is None:
        return err
    return kind(err.status, err.message, err.type, err.code, err.param)


def root_url(base_url: str) -> str:
    """The server root for ``base_url`` (``/v1`` and trailing slashes dropped)."""
    url = base_url.rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url


def _headers(api_key: Optional[str], user: Optional[str]) -> dict[str, str]:
    headers = {}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    if user is not None:
        headers["X-Mnemo-User"] = user
    return headers


class Transport:
    """Synchronous requests to one mnemo server."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: Optional[str] = None,
        user: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        http_client: Optional[httpx.Client] = None,
    ) -> None:
        self.base_url = root_url(base_url)
        self.api_key = api_key
        self.user = user
        self._own = http_client is None
        self._client = http_client or httpx.Client(timeout=timeout)
        self._headers = _headers(api_key, user)

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Optional[Mapping[str, Any]] = None,
        content: Optional[bytes] = None,
        headers: Optional[Mapping[str, str]] = None,
        ok: Sequence[int] = (200,),
        timeout: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        """Sends one request; an answer whose status is not in ``ok`` raises MnemoError.

        ``timeout`` (an ``httpx`` timeout) replaces the client's for this request only.
        """
        h = dict(self._headers)
        if headers:
            h.update(headers)
        response = self._client.request(
            method,
            self.base_url + path,
            json=json,
            params=_params(params),
            content=content,
            headers=h,
            timeout=timeout,
        )
        if response.status_code not in ok:
            raise _error(response)
        return response

    def stream(
        self,
        method: str,
        path: str,
        *,
        params: Optional[Mapping[str, Any]] = None,
        headers: Optional[Mapping[str, str]] = None,
        ok: Sequence[int] = (200,),
        timeout: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        """Sends one request and returns the response with its body unread; the caller
        closes it. An answer whose status is not in ``ok`` is read, closed and raised."""
        h = dict(self._headers)
        if headers:
            h.update(headers)
        request = self._client.build_request(
            method, self.base_url + path, params=_params(params), headers=h, timeout=timeout
        )
        response = self._client.send(request, stream=True)
        if response.status_code not in ok:
            try:
                response.read()
            finally:
                response.close()
            raise _error(response)
        return response

    def close(self) -> None:
        if self._own:
            self._client.close()


class AsyncTransport:
    """Asynchronous requests to one mnemo server."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: Optional[str] = None,
        user: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        http_client: Optional[httpx.AsyncClient] = None,
    ) -> None:
        self.base_url = root_url(base_url)
        self.api_key = api_key
        self.user = user
        self._own = http_client is None
        self._client = http_client or httpx.AsyncClient(timeout=timeout)
        self._headers = _headers(api_key, user)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Optional[Mapping[str, Any]] = None,
        content: Optional[bytes] = None,
        headers: Optional[Mapping[str, str]] = None,
        ok: Sequence[int] = (200,),
        timeout: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        """Sends one request; an answer whose status is not in ``ok`` raises MnemoError.

        ``timeout`` (an ``httpx`` timeout) replaces the client's for this request only.
        """
        h = dict(self._headers)
        if headers:
            h.update(headers)
        response = await self._client.request(
            method,
            self.base_url + path,
            json=json,
            params=_params(params),
            content=content,
            headers=h,
            timeout=timeout,
        )
        if response.status_code not in ok:
            raise _error(response)
        return response

    async def stream(
        self,
        method: str,
        path: str,
        *,
        params: Optional[Mapping[str, Any]] = None,
        headers: Optional[Mapping[str, str]] = None,
        ok: Sequence[int] = (200,),
        timeout: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        """Sends one request and returns the response with its body unread; the caller
        closes it (``aclose``). An answer whose status is not in ``ok`` is read, closed and
        raised."""
        h = dict(self._headers)
        if headers:
            h.update(headers)
        request = self._client.build_request(
            method, self.base_url + path, params=_params(params), headers=h, timeout=timeout
        )
        response = await self._client.send(request, stream=True)
        if response.status_code not in ok:
            try:
                await response.aread()
            finally:
                await response.aclose()
            raise _error(response)
        return response

    async def aclose(self) -> None:
        if self._own:
            await self._client.aclose()


class LoopTransport:
    """An :class:`AsyncTransport` for the running event loop.

    An ``httpx.AsyncClient``'s connections belong to the loop that opened them, so an object
    used from several loops (successive ``asyncio.run`` calls) gets one transport per loop. A
    caller's ``http_client`` is used as given, whatever the loop.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: Optional[str] = None,
        user: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        http_client: Optional[httpx.AsyncClient] = None,
    ) -> None:
        self._base_url, self._api_key, self._user = base_url, api_key, user
        self._timeout = timeout
        self._fixed = http_client
        self._transport: Optional[AsyncTransport] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    def get(self) -> AsyncTransport:
        """The transport for the running loop (created on first use in that loop)."""
        loop = asyncio.get_running_loop()
        if self._transport is None or (self._fixed is None and self._loop is not loop):
            self._transport = AsyncTransport(
                base_url=self._base_url,
                api_key=self._api_key,
                user=self._user,
                timeout=self._timeout,
                http_client=self._fixed,
            )
            self._loop = loop
        return self._transport

    async def aclose(self) -> None:
        """Closes the transport if it belongs to the running loop (and was created here)."""
        if self._transport is not None and self._loop is asyncio.get_running_loop():
            await self._transport.aclose()
        self._transport = self._loop = None


def _params(params: Optional[Mapping[str, Any]]) -> Optional[dict[str, Any]]:
    if params is None:
        return None
    return {k: v for k, v in params.items() if v is not None}
