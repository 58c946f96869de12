"""web.serving on its own: a worker holds at most its cap of request bodies at once."""
from __future__ import annotations


def test_a_worker_holds_at_most_its_cap_of_request_bodies_at_once():
    """Finding 5: unfinished bodies cannot grow a worker without bound; past the cap a request is refused
    (503, retry) and what was held is given back."""
    import asyncio

    from web.serving import BufferedRequests

    def application(environ, start_response):
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(len(body)).encode()]

    requests_ = BufferedRequests(application, threads=2, body_limit=lambda method, path: 1024 * 1024,
                                 max_buffered=1_500_000)
    scope = {"type": "http", "method": "POST", "path": "/x", "raw_path": b"/x", "query_string": b"",
             "headers": [], "http_version": "1.1", "scheme": "http", "root_path": "",
             "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000)}
    part = b"x" * 600_000

    async def scenario() -> list[int]:
        inputs = [asyncio.Queue() for _ in range(4)]
        answers: list[list[dict]] = [[] for _ in range(4)]

        def run(index: int):
            async def receive():
                return await inputs[index].get()

            async def send(message):
                answers[index].append(message)
            return asyncio.create_task(requests_(scope, receive, send))

        async def status(index: int) -> int:
            while not answers[index]:
                await asyncio.sleep(0.01)
            return answers[index][0]["status"]

        tasks = [run(0), run(1)]
        for index in (0, 1):  # two unfinished bodies of 600 KB each
            await inputs[index].put({"type": "http.request", "body": part, "more_body": True})
        await asyncio.sleep(0.1)
        assert requests_.buffered == 1_200_000
        tasks.append(run(2))
        await inputs[2].put({"type": "http.request", "body": part, "more_body": True})
        refused = await status(2)
        for index in (0, 1):
            await inputs[index].put({"type": "http.request", "body": b"", "more_body": False})
        finished = [await status(0), await status(1)]
        await asyncio.gather(*tasks)
        assert requests_.buffered == 0
        tasks = [run(3)]
        await inputs[3].put({"type": "http.request", "body": part, "more_body": False})
        await asyncio.gather(*tasks)
        assert requests_.buffered == 0
        return [refused, *finished, answers[3][0]["status"]]

    assert asyncio.run(scenario()) == [503, 200, 200, 200]
