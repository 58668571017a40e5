#!/usr/bin/env python3
"""A real SMTP server for Postledger's end-to-end tests (aiosmtpd 1.4.6).

    python3 tests/smtp_sink.py --dir DIR [--host 127.0.0.1] [--port 0] [--exit-on-stdin-eof]

Once listening it prints exactly one line, `PORT <n>`, to stdout (so `--port 0` can pick a
free port and the test learns which), then serves until SIGTERM or SIGINT.

The recipient's local part (case-insensitive) chooses what RCPT answers:
  tempfail<N>...  the first N RCPTs of that address get 451, later ones 250 (no digits: N=1)
  reject...       550 5.1.1 User unknown
  anything else   250 OK

AUTH is optional; any credentials are accepted.

Each accepted message becomes two files in DIR, seq counting from 1:
  <seq:08>.json  {"mail_from": ..., "rcpt_tos": [...], "received_at": <unix seconds>}
                 (addresses as aiosmtpd parsed them; the null sender `MAIL FROM:<>` is "<>")
  <seq:08>.eml   the message bytes exactly as received (after SMTP dot-unstuffing)
Both are written under a temporary name and renamed, the .json first, so a reader that
sees the .eml also sees its complete .json.
"""
import argparse
import asyncio
import json
import logging
import os
import re
import signal
import ssl
import sys
import threading
import time

from aiosmtpd.smtp import SMTP, AuthResult

# Big enough for any message the tests send, attachments included (also announced as
# the EHLO SIZE extension).
DATA_SIZE_LIMIT = 64 * 1024 * 1024

TEMPFAIL = re.compile(r"tempfail(\d*)")


class SinkHandler:
    def __init__(self, directory):
        self.dir = directory
        self.seq = 0
        # Per recipient address (lowercased): how many RCPTs were already answered 451.
        self.tempfails = {}

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        # The local part decides; a quoted local part ("tempfail1"@x) counts the same.
        local = address.rsplit("@", 1)[0].strip('"').lower()
        m = TEMPFAIL.match(local)
        if m:
            limit = int(m.group(1)) if m.group(1) else 1
            key = address.lower()
            seen = self.tempfails.get(key, 0)
            if seen < limit:
                self.tempfails[key] = seen + 1
                return "451 4.3.0 Temporary failure, try again later"
        elif local.startswith("reject"):
            return "550 5.1.1 User unknown"
        # A handler that answers RCPT must record the recipient itself.
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content
        if raw is None:
            raw = envelope.content if isinstance(envelope.content, bytes) else b""
        # One event loop thread: taking the number and writing both files has no await
        # in between, so sequence numbers and files stay in step.
        self.seq += 1
        seq = self.seq
        # The TLS version the message came over (STARTTLS or implicit TLS), else None.
        ssl_object = server.transport.get_extra_info("ssl_object") if server.transport else None
        meta = {
            "mail_from": envelope.mail_from or "",
            "rcpt_tos": list(envelope.rcpt_tos),
            "received_at": time.time(),
            "tls": ssl_object.version() if ssl_object is not None else None,
        }
        try:
            self._write(f"{seq:08d}.json", json.dumps(meta).encode("utf-8"))
            self._write(f"{seq:08d}.eml", raw)
        except Exception as e:  # e.g. the directory was removed: tell the client, go on
            logging.exception("could not store message %d", seq)
            return f"451 4.3.0 Sink could not store the message: {e.__class__.__name__}"
        return "250 Message accepted for delivery"

    def _write(self, name, data):
        # The temporary name starts with a dot and does not end in .eml/.json, so a
        # reader looking for <digits>.eml never picks up a half-written file.
        tmp = os.path.join(self.dir, f".tmp-{name}.part")
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, os.path.join(self.dir, name))


def accept_any_login(server, session, envelope, mechanism, auth_data):
    # AUTH is never required, but it is advertised (plain text, no TLS); without an
    # authenticator aiosmtpd would answer 535 to every AUTH, failing any client that was
    # given credentials. So any credentials are accepted.
    return AuthResult(success=True)


def watch_stdin(loop, stop):
    # The test spawns us with a pipe on stdin and never writes to it: EOF means the test
    # process is gone (even if it was SIGKILLed and never killed us), so we go too.
    try:
        while sys.stdin.buffer.read(65536):
            pass
    except Exception:
        pass
    loop.call_soon_threadsafe(stop.set)


async def main(args):
    os.makedirs(args.dir, exist_ok=True)
    handler = SinkHandler(args.dir)
    loop = asyncio.get_running_loop()

    tls_context = None
    if args.tls:
        tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls_context.load_cert_chain(args.tls_cert, args.tls_key)

    def factory():
        return SMTP(
            handler,
            data_size_limit=DATA_SIZE_LIMIT,
            enable_SMTPUTF8=True,
            decode_data=False,  # keep the exact bytes
            # A fixed name: the default calls socket.getfqdn() (a DNS lookup) per connection.
            hostname="postledger-sink.test",
            auth_require_tls=False,
            authenticator=accept_any_login,
            # STARTTLS: offered, and required before MAIL, so a client cannot skip it.
            tls_context=tls_context if args.tls == "starttls" else None,
            require_starttls=args.tls == "starttls",
            loop=loop,
        )

    # A large backlog so that many clients connecting at once are not refused.
    server = await loop.create_server(
        factory,
        host=args.host,
        port=args.port,
        backlog=1024,
        # Implicit TLS: the handshake comes before the greeting.
        ssl=tls_context if args.tls == "implicit" else None,
    )
    port = server.sockets[0].getsockname()[1]

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.exit_on_stdin_eof:
        threading.Thread(target=watch_stdin, args=(loop, stop), daemon=True).start()

    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()

    await stop.wait()
    server.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="SMTP sink for Postledger's end-to-end tests")
    p.add_argument("--dir", required=True, help="where accepted messages are written")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--tls", choices=["starttls", "implicit"], help="offer TLS (needs --tls-cert and --tls-key)")
    p.add_argument("--tls-cert", help="PEM certificate chain")
    p.add_argument("--tls-key", help="PEM private key")
    p.add_argument("--exit-on-stdin-eof", action="store_true",
                   help="exit when stdin is closed (the parent process has gone)")
    # Diagnostics go to stderr; stdout carries only the PORT line.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="smtp_sink: %(levelname)s %(name)s: %(message)s")
    # aiosmtpd itself warns about its own deprecated attribute on every successful AUTH.
    logging.getLogger("mail.log").addFilter(
        lambda r: "login_data is deprecated" not in r.getMessage())
    asyncio.run(main(p.parse_args()))
