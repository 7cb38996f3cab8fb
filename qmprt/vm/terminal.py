"""An interactive terminal on a VM's serial console socket (``qmprt console``)."""

from __future__ import annotations

import os
import select
import socket
import sys
import termios
import tty

ESCAPE = b"\x1d"  # Ctrl-]


def attach(console_socket: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(console_socket)
        stdin = sys.stdin.fileno()
        interactive = os.isatty(stdin)
        saved = termios.tcgetattr(stdin) if interactive else None
        if interactive:
            tty.setraw(stdin)
            os.write(sys.stdout.fileno(), b"[connected; Ctrl-] to leave]\r\n")
        try:
            while True:
                readable, _, _ = select.select([conn, stdin], [], [])
                if conn in readable:
                    data = conn.recv(65536)
                    if not data:
                        return
                    os.write(sys.stdout.fileno(), data)
                if stdin in readable:
                    data = os.read(stdin, 4096)
                    if not data or (interactive and ESCAPE in data):
                        return
                    conn.sendall(data)
        finally:
            if saved is not None:
                termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
