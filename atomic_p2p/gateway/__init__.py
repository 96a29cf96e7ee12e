"""An OpenAI-compatible HTTP gateway to the market: ``atomic gateway --bootstrap ADDR``.

Every existing client of OpenAI's API (the ``openai`` package, LangChain, curl, chat front ends)
buys from atomic-p2p peers through it: ``GET /v1/models`` lists what the gossip directory offers
now, ``POST /v1/chat/completions`` and ``POST /v1/completions`` buy generations (streamed as
server-sent events or not), ``POST /v1/embeddings`` buys embeddings. Each call goes through the
auction, the evaluator, fallback, profiles and the bid log exactly as an SDK call does. Usage,
the ``market`` field and the errors: docs/gateway.md. It needs the ``gateway`` extra
(``pip install 'atomic-p2p[gateway]'``: Starlette and uvicorn)::

    async with Requester(bootstrap=["127.0.0.1:7000"]) as requester:
        async with Gateway(requester).serving("127.0.0.1", 8000) as url:
            ...  # OpenAI(base_url=url + "/v1", api_key="none")
"""

from atomic_p2p.gateway.access import Access, load_keys
from atomic_p2p.gateway.app import Gateway

__all__ = ["Access", "Gateway", "load_keys"]
