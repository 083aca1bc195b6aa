"""mnemo-client: a typed Python client for mnemo and adapters for LangGraph, LangChain and
the OpenAI Agents SDK.

Every client and adapter is constructed with the keyword ``base_url=`` (the server root,
e.g. ``http://127.0.0.1:8080``) plus optional ``api_key=`` (a JWT or API key) and ``user=``
(the user an application acts for, sent as ``X-Mnemo-User``).
"""

from ._http import MnemoError, NotFoundError, PreconditionFailedError
from .client import AsyncChangeStream, AsyncMnemoClient, ChangeStream, MnemoClient
from .types import MemoryValue

__all__ = [
    "AsyncChangeStream",
    "AsyncMnemoClient",
    "ChangeStream",
    "MemoryValue",
    "MnemoClient",
    "MnemoError",
    "NotFoundError",
    "PreconditionFailedError",
]
__version__ = "0.1.0"
