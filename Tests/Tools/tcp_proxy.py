#!/usr/bin/env python3
"""A TCP proxy a test can partition: tcp_proxy.py TARGET_PORT prints the port it listens
on (127.0.0.1), then forwards every connection to 127.0.0.1:TARGET_PORT.

A line "cut" on standard input partitions: from then on no byte crosses in either
direction and new connections are accepted but not forwarded (what a cut network looks
like to both sides: calls hang, nothing is refused). A line "heal" heals: what was
held back flows again. The proxy ends with its standard input. (Commands come on
standard input, not as signals: a test runner may block signals for its children.)
"""
import asyncio
import sys
import threading


async def main() -> None:
    target = int(sys.argv[1])
    open_path = asyncio.Event()
    open_path.set()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await open_path.wait()
                data = await reader.read(65536)
                if not data:
                    break
                await open_path.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        await open_path.wait()
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pump(client_reader, server_writer), pump(server_reader, client_writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    ended = asyncio.Event()

    def commands() -> None:
        for line in sys.stdin:
            command = line.strip()
            if command == "cut":
                loop.call_soon_threadsafe(open_path.clear)
            elif command == "heal":
                loop.call_soon_threadsafe(open_path.set)
            print(f"tcp_proxy {command}", flush=True)
        loop.call_soon_threadsafe(ended.set)

    threading.Thread(target=commands, daemon=True).start()
    print(f"tcp_proxy listening on {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await ended.wait()


asyncio.run(main())
