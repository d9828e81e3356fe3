import os
import tempfile

# Offline: a hub id fails at once instead of after ~23 s of retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
# One checkpoint cache per test session, so organisms trained by one test are reused by the next
# (and never leak into the user's own cache).
if "SPATIALKIT_CACHE" not in os.environ:
    os.environ["SPATIALKIT_CACHE"] = tempfile.mkdtemp(prefix="spatialkit-test-cache-")
