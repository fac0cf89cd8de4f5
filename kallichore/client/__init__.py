"""A trio-native client for a kallichore (or Kallichore) server.

::

    async with open_client(connection_file="server.json") as client:
        sessions = await client.list_sessions()
        async with client.open_channel("my-session") as channel:
            result = await channel.execute("print('hi')", on_output=print)

See ``docs/client.md``.
"""

from __future__ import annotations

from kallichore.client._channel import Channel as Channel
from kallichore.client._channel import open_channel as open_channel
from kallichore.client._comm import Comm as Comm
from kallichore.client._errors import ChannelClosedError as ChannelClosedError
from kallichore.client._errors import ExecutionDroppedError as ExecutionDroppedError
from kallichore.client._errors import KallichoreClientError as KallichoreClientError
from kallichore.client._kernelspec import KernelSpec as KernelSpec
from kallichore.client._kernelspec import find_kernelspec as find_kernelspec
from kallichore.client._kernelspec import list_kernelspecs as list_kernelspecs
from kallichore.client._models import ActiveSession as ActiveSession
from kallichore.client._models import ExecutionError as ExecutionError
from kallichore.client._models import ExecutionResult as ExecutionResult
from kallichore.client._models import InputRequest as InputRequest
from kallichore.client._models import KernelEvent as KernelEvent
from kallichore.client._models import Message as Message
from kallichore.client._models import ServerStatus as ServerStatus
from kallichore.client._models import SessionList as SessionList
from kallichore.client._rest import KallichoreClient as KallichoreClient
from kallichore.client._rest import from_connection_file as from_connection_file
from kallichore.client._rest import open_client as open_client
