"""Shared test set-up: keep torch to the machine's two cores and make runs reproducible."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing on a test path may reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
