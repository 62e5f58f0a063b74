"""A stdio worker written against the protocol by hand, without the helper, for the
integration tests: it can break the protocol on purpose (RAW_FAULT in its environment), or
ignore the end of its input (RAW_FAULT=ignore-eof: a non-daemon thread keeps it alive)."""

import json
import os
import sys

fault = os.environ.get("RAW_FAULT", "")
marker = os.environ.get("RAW_MARKER", "")

if fault == "bad-hello":
    print("starting up...", flush=True)
elif fault == "bad-version":
    print(json.dumps({"corral_protocol": 99, "tasks": ["square"]}), flush=True)
else:
    print(json.dumps({"corral_protocol": 1, "tasks": ["square"]}), flush=True)

for line in sys.stdin:
    request = json.loads(line)
    n = request["input"]
    if n == "garbage" and marker and not os.path.exists(marker):
        # Once: a stray print where the answer should be.
        open(marker, "w").close()
        print("debug: about to answer", flush=True)
        continue
    if fault == "wrong-id":
        request["id"] = "not-the-id"
    output = 0 if n == "garbage" else n * n
    print(json.dumps({"id": request["id"], "output": output}), flush=True)

if fault == "ignore-eof":
    import threading
    import time

    threading.Thread(target=time.sleep, args=(3600,)).start()
