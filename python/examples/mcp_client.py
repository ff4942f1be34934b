"""An MCP client over slim: the official SDK's ClientSession, unchanged, over
`slim_client` instead of `stdio_client` — the server is reached by its slim
name, wherever it runs. See mcp_server.py.

    SLIM_NODE=slim://127.0.0.1:4500 SPIFFE_ENDPOINT_SOCKET=unix:///tmp/client.sock \
        python python/examples/mcp_client.py [acme/tools/cve-db]
"""

from __future__ import annotations

import asyncio
import sys

from mcp import ClientSession

import slim_agents as slim
from slim_agents.mcp import slim_client

SERVICE = sys.argv[1] if len(sys.argv) > 1 else "acme/tools/cve-db"


async def main() -> None:
    async with await slim.connect(name="acme/agents/remediation") as app:
        # was: async with stdio_client(StdioServerParameters(command="cve-db")) as (read, write):
        async with slim_client(app, SERVICE) as (read, write):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                print("server:", init.serverInfo.name)
                print("tools:", [t.name for t in (await session.list_tools()).tools])
                r = await session.call_tool("lookup", {"cve": "CVE-2024-3094"})
                print("lookup:", r.content[0].text)

                async def progress(done: float, total: float | None, message: str | None) -> None:
                    print(f"  {done}/{total} {message}")

                r = await session.call_tool("scan", {"images": ["nginx:1.21", "redis:7"]},
                                            progress_callback=progress)
                print("scan:", "ERROR" if r.isError else "ok", r.content[0].text)


if __name__ == "__main__":
    asyncio.run(main())
