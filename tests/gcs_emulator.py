#!/usr/bin/env python3
"""A Google Cloud Storage for the tests: `gcp-storage-emulator` on 127.0.0.1, in memory.

    python tests/gcs_emulator.py --port 9023 --bucket runs --denied locked

serves the GCS JSON API (what gcsfs and tensorstore speak) with the bucket `runs`, and answers
every request about the bucket `locked` with 403 Forbidden, as GCS does for an account that may
not use that bucket (the emulator itself has no permissions). Downloads carry the object's
generation in `x-goog-generation`, as GCS's do: tensorstore (Orbax) keeps that generation and
sends it back in conditional requests, which it rejects as "Malformed StorageGeneration" when
the header is missing. Prints `ready` when it listens. Nothing is written to disk. The fixture
in tests/gcs_helpers.py starts and stops it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from http import server as http_server
from urllib.parse import urlparse

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import buckets, objects


def _forbid(handler, bucket: str) -> bool:
    path = urlparse(handler.path).path
    if f"/b/{bucket}/" not in path + "/" and not path.startswith(f"/{bucket}/"):
        return False
    body = json.dumps({"error": {"code": 403, "message": (
        f"caller does not have storage.objects access to the Google Cloud Storage bucket "
        f"{bucket}. Permission denied on resource (or it may not exist)."),
        "errors": [{"reason": "forbidden"}]}}).encode()
    handler.send_response(403, "Forbidden")
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.write(body)
    handler.close_connection = True
    return True


def _with_generation(download):
    def handler(request, response, storage, *args, **kwargs):
        download(request, response, storage, *args, **kwargs)
        if response.status.value in (200, 206):
            try:
                obj = storage.get_file_obj(request.params["bucket_name"],
                                           request.params["object_id"])
            except NotFound:
                return
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj["metageneration"])
    return handler


def _patch_downloads() -> None:
    download = objects.download
    objects.download = _with_generation(download)   # objects.get (alt=media) calls it
    for _, methods in server.HANDLERS:
        for method, handler in methods.items():
            if handler is download:
                methods[method] = objects.download


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bucket", action="append", default=[], help="create this bucket")
    parser.add_argument("--denied", default="", help="answer 403 for this bucket")
    args = parser.parse_args(argv)
    # Orbax / tensorstore open many connections at once: a longer accept queue than 5.
    http_server.HTTPServer.request_queue_size = 256
    _patch_downloads()
    if args.denied:
        handle = server.Router.handle

        def guarded(router, method):
            if not _forbid(router._request_handler, args.denied):
                handle(router, method)
        server.Router.handle = guarded
    srv = server.create_server("127.0.0.1", args.port, in_memory=True)
    for name in args.bucket:
        buckets.create_bucket(name, srv._storage)
    srv.start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
