#!/usr/bin/env python3
"""A real SMTP server for tests/it/notify.rs: aiosmtpd with STARTTLS required and AUTH (only
after TLS). Usage: smtp_server.py PORT CERT KEY USER PASSWORD OUTDIR. Each message received is
written to OUTDIR/<n>.eml; prints READY once it listens. Stops when stdin closes."""

import os
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, cert, key, user, password, outdir = sys.argv[1:7]


class Handler:
    async def handle_DATA(self, server, session, envelope):
        n = len(os.listdir(outdir))
        tmp = os.path.join(outdir, f".{n}.tmp")
        with open(tmp, "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.rename(tmp, os.path.join(outdir, f"{n}.eml"))
        return "250 OK"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login.decode() == user
        and auth_data.password.decode() == password
    )
    # handled=False: aiosmtpd answers 535 itself (its default differs between versions).
    return AuthResult(success=ok, handled=False)


ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
controller = Controller(
    Handler(),
    hostname="127.0.0.1",
    port=int(port),
    tls_context=ctx,
    require_starttls=True,
    authenticator=authenticator,
    auth_require_tls=True,
)
controller.start()
print("READY", flush=True)
sys.stdin.read()
controller.stop()
