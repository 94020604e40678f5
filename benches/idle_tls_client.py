"""Idle TLS client for benches/tls_idle.sh.

Usage: idle_tls_client.py PORT CONNECTIONS HOLD_SECS

Opens CONNECTIONS TLS connections to 127.0.0.1:PORT one after another,
sends one GET /about on each and reads the response head, prints
"ready N", and keeps them open for HOLD_SECS seconds. The certificate is
not verified: the gateway under test uses a self-signed one.
"""
import socket
import ssl
import sys
import time

port, count, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
connections = []
for _ in range(count):
    tls = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
    tls.sendall(b"GET /about HTTP/1.1\r\nhost: localhost\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = tls.recv(4096)
        if not chunk:
            sys.exit(f"connection closed before the response head; {len(connections)} connections open")
        head += chunk
    connections.append(tls)
print("ready", len(connections), flush=True)
time.sleep(hold)
