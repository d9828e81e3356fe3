"""A fake checkpoint kind for tests/test_parallel.py: "training" writes a file and records when it ran.

spec = {"name": str, "seconds": float, "after": [names], "fail": bool}; the store is $FAKE_CKPT_DIR.
"""

import json
import os
import time
from pathlib import Path


def _store() -> Path:
    return Path(os.environ["FAKE_CKPT_DIR"])


def checkpoint_tasks(specs):
    tasks = {}
    for index, spec in enumerate(specs):
        for dep in spec.get("after", []):
            tasks.setdefault(dep, {"id": dep, "label": f"fake {dep}", "deps": [], "spec": {"name": dep},
                                   "done": (_store() / f"{dep}.done").exists(), "for": []})
        task = tasks.setdefault(spec["name"], {"id": spec["name"], "label": f"fake {spec['name']}",
                                               "deps": list(spec.get("after", [])), "spec": spec,
                                               "done": (_store() / f"{spec['name']}.done").exists(), "for": []})
        task["for"].append(index)
    return list(tasks.values())


def build_checkpoint(task):
    spec = task["spec"]
    start = time.time()
    if spec.get("fail"):
        raise RuntimeError(f"fake {spec['name']} cannot train")
    time.sleep(spec.get("seconds", 0.0))
    (_store() / f"{spec['name']}.done").write_text(json.dumps({"start": start, "end": time.time(), "pid": os.getpid()}))
    return {"id": task["id"], "wall_s": time.time() - start, "cpu_s": time.process_time()}
