import asyncio
import sys

import grpc

from serving.grpc_edge import CallBudget, GrpcLimits


async def upload(request_iterator, context):
    n = 0
    async for _ in request_iterator:
        n += 1
    return str(n).encode()


async def main(port, budget):
    limits = GrpcLimits(max_messages=10**7)

    class Pass(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation, details):
            return await continuation(details)

    mode = sys.argv[2]
    server = grpc.aio.server(
        options=limits.server_options(),
        interceptors={"budget": [CallBudget(limits)], "pass": [Pass()], "plain": []}[mode],
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "edge.Test", {"Upload": grpc.stream_unary_rpc_method_handler(upload)}
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


asyncio.run(main(int(sys.argv[1]), sys.argv[2] == "budget"))
