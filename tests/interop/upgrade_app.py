"""A plain-HTTP app that accepts `Upgrade: echo` (like a WebSocket handshake,
without the framing): it answers 101 and then echoes every byte, prefixed by the
identity the proxy vouched for. Usage: upgrade_app.py PORT"""

import socket
import sys
import threading


def serve(conn):
    with conn:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        headers = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"upgrade", b"").lower() != b"echo":
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        who = headers.get(b"x-forwarded-client-cert", b"none").split(b"URI=")[-1]
        conn.sendall(b"hello " + who + b"\n")
        if rest:
            conn.sendall(rest)
        while chunk := conn.recv(4096):
            conn.sendall(chunk)


listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
