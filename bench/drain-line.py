#!/usr/bin/env python3
# The run of the README's drain line: a keep-alive app under lastcall (release build), four
# connections that each carried a request, and a health check every 500 ms that says what
# HAProxy's `http-check send-state` says (UP, then DOWN once it has had three 503s).
#   cargo build --release && python3 bench/drain-line.py
import socket, subprocess, sys, time, threading, os
app = r'''
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", 8089), H).serve_forever()
'''
p = subprocess.Popen([os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "lastcall"), "--listen", "127.0.0.1:9755", "--prestop-delay", "10s", "--", "python3", "-c", app], stderr=subprocess.PIPE, text=True)
def wait_port(port):
    for _ in range(100):
        try: socket.create_connection(("127.0.0.1", port)).close(); return
        except OSError: time.sleep(0.05)
wait_port(8089); wait_port(9755)
conns = []
for i in range(4):
    c = socket.create_connection(("127.0.0.1", 8089)); c.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"); c.recv(1000); conns.append(c)
down = threading.Event(); stop = threading.Event()
def check():
    while not stop.is_set():
        word = "DOWN; address=127.0.0.1; port=8089; name=b/s1; node=lb; weight=1/0; scur=0/0; qcur=0" if down.is_set() else "UP; address=127.0.0.1; port=8089; name=b/s1; node=lb; weight=1/1; scur=0/0; qcur=0"
        try:
            s = socket.create_connection(("127.0.0.1", 9755)); s.sendall(("GET /readyz HTTP/1.0\r\nX-Haproxy-Server-State: %s\r\n\r\n" % word).encode())
            r = s.recv(100).decode(); s.close()
            if " 503 " in r: check.n503 += 1
            if check.n503 >= 3: down.set()
        except OSError: pass
        time.sleep(0.5)
check.n503 = 0
t = threading.Thread(target=check); t.start()
time.sleep(1.2)
p.send_signal(15)
out = p.communicate(timeout=30)[1]
stop.set(); t.join()
print(out)
