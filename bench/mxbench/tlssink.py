"""A counting SMTP sink that offers STARTTLS (the TLS variant's destination MX).

Run as `python3 tlssink.py PORT [--cert FILE --key FILE]`. With a certificate it
advertises STARTTLS and upgrades on request; without, it is a plain sink, so the
plain and TLS runs pay the same sink cost and differ only by TLS. After every
connection, handshake and message it appends "\rconn=N tls=N mesg=N" to stdout
(redirect to a file; the last record is the current count).

It does NOT verify clients, support BDAT/CHUNKING, store messages or pipeline
replies beyond what asyncio's buffering gives for free.
"""

import argparse
import asyncio
import ssl
import sys

counts = {"conn": 0, "tls": 0, "mesg": 0}


def emit():
    sys.stdout.write(f"\rconn={counts['conn']} tls={counts['tls']} mesg={counts['mesg']}")
    sys.stdout.flush()


async def session(reader, writer, tls_ctx):
    counts["conn"] += 1
    emit()
    writer.write(b"220 tlssink.bench.test ESMTP\r\n")
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                caps = [b"250-tlssink.bench.test", b"250-PIPELINING", b"250-8BITMIME", b"250-SIZE 104857600"]
                if tls_ctx is not None and writer.get_extra_info("sslcontext") is None:
                    caps.append(b"250-STARTTLS")
                caps.append(b"250 ENHANCEDSTATUSCODES")
                writer.write(b"\r\n".join(caps) + b"\r\n")
            elif verb == b"STAR" and tls_ctx is not None:
                writer.write(b"220 2.0.0 go ahead\r\n")
                await writer.drain()
                await writer.start_tls(tls_ctx)
                counts["tls"] += 1
                emit()
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                while True:
                    data = await reader.readline()
                    if not data:
                        return
                    if data == b".\r\n" or data == b".\n":
                        break
                counts["mesg"] += 1
                emit()
                writer.write(b"250 2.0.0 Ok: queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                await writer.drain()
                break
            elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                writer.write(b"250 2.0.0 Ok\r\n")
            else:
                writer.write(b"502 5.5.2 Error: command not recognized\r\n")
            await writer.drain()
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    args = ap.parse_args()
    tls_ctx = None
    if args.cert:
        tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls_ctx.load_cert_chain(args.cert, args.key)
    server = await asyncio.start_server(
        lambda r, w: session(r, w, tls_ctx), "127.0.0.1", args.port, backlog=1024, limit=1 << 20
    )
    emit()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
