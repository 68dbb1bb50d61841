"""The one HTTP server shape the viewer and the serving front share: bound at once, IPv4 or IPv6."""

from __future__ import annotations

import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_PORT = 65535


def port_problem(port: int) -> str | None:
    """What is wrong with a `--port`, in the words of the option; None when it can be asked for."""
    if 0 <= port <= MAX_PORT:
        return None
    return f"--port must be 0 to {MAX_PORT} (0: any free port), got {port}"


class LocalHTTPServer(ThreadingHTTPServer):
    """Bound in the constructor (port 0: the port the OS gives, read back in `url`, never picked by
    binding and releasing); an address with a colon is IPv6."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
