"""A peer for the benchmark: the same model and feature code served by LitServe with its own batching.

    python -m bench.litserve_peer --model sound-resnet:latest --port 8000 --max-batch-size 32

POST /predict with a multipart file field `audio` answers as /classify does with its defaults. The
model is opened and its engine chosen as the service does it (`open_classifier`, SOUND_ENGINE and
SOUND_PRECISION honoured: `SOUND_ENGINE=torch` is LitServe as users deploy it, eager PyTorch fp32).
Needs
`pip install litserve==0.2.19 python-multipart`; bench/run.py notes the peer as skipped without it.
"""

from __future__ import annotations

import argparse

import litserve as ls
import numpy as np
from fastapi import HTTPException

from serving.errors import HTTP_STATUS
from soundclassifier.errors import AudioError

BATCH_TIMEOUT_S = 0.01  # how long LitServe waits to fill a batch


class SoundAPI(ls.LitAPI):
    """decode + features per request (in LitServe's worker), one engine call per batch."""

    def __init__(self, model_tag: str, **kwargs):
        super().__init__(**kwargs)
        self.model_tag = model_tag

    def setup(self, device) -> None:
        from soundclassifier.config import Settings
        from soundclassifier.loading import open_classifier

        settings = Settings()
        self.core, report = open_classifier(self.model_tag, settings.engine, precision=settings.precision)
        self.options = self.core.classify_options()
        print(f"litserve peer serving {self.core.tag} on {report['chosen']}", flush=True)

    def decode_request(self, request):
        upload = request["audio"]
        data = upload.file.read() if hasattr(upload, "file") else bytes(upload)
        try:
            return self.core.prepare(data)
        except AudioError as e:
            raise HTTPException(HTTP_STATUS[e.kind], e.to_dict()) from None

    def batch(self, inputs):
        return [a for a, _ in inputs], np.stack([x for _, x in inputs])

    def predict(self, batch):
        audios, x = batch
        return list(zip(audios, self.core.forward(x), strict=True))

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        audio, z = output
        return self.core.classification(audio, z, self.options).model_dump()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.litserve_peer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sound-resnet:latest", help="model tag (default %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default %(default)s)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="LitServe batch size (default %(default)s)")
    parser.add_argument("--batch-timeout", type=float, default=BATCH_TIMEOUT_S,
                        help="seconds to wait for a batch to fill (default %(default)s)")
    args = parser.parse_args(argv)
    api = SoundAPI(args.model, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, generate_client_file=False)


if __name__ == "__main__":
    main()
