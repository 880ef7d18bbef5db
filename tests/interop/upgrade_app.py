"""A plain-HTTP app that accepts `Upgrade: websocket` (the handshake without the
framing): it answers 101 and then echoes every byte, prefixed by the identity the
proxy vouched for. Under /lenient it is the backend a proxy must not trust: it
switches protocols whatever the request asked, and then serves any request that
arrives on the switched connection, as a lenient h2c server would. Usage:
upgrade_app.py PORT"""

import socket
import sys
import threading


def read_head(conn, data):
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return None, None, None
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers, rest


def serve(conn):
    with conn:
        conn.settimeout(30)
        request_line, headers, rest = read_head(conn, b"")
        if request_line is None:
            return
        lenient = request_line.split(b" ")[1].startswith(b"/lenient")
        if not lenient and headers.get(b"upgrade", b"").lower() != b"websocket":
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        if lenient:
            # Whatever comes next is served, whatever its path.
            request_line, _, _ = read_head(conn, rest)
            if request_line is not None:
                body = b"served " + request_line.split(b" ")[1]
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            return
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
