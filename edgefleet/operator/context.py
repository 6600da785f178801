"""Where operator commands find the fleet: flags, then the environment, then a local stack.

After ``edgefleet up``, the local stack's ``stack.json`` names its emulators, bucket and
registry; commands run in the same checkout use it when no flag or variable says
otherwise, so ``edgefleet status`` just works locally and against GCP alike.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

DEFAULT_STACK_DIR = Path(".edgefleet") / "stack"
STACK_DIR_ENV = "EDGEFLEET_STACK_DIR"
# Variables a local stack provides that operator commands use.
_STACK_KEYS = (
    "STORAGE_EMULATOR_HOST",
    "PUBSUB_EMULATOR_HOST",
    "DEPLOY_BUCKET",
    "MODEL_BUCKET",
    "CHANNELS",
    "INSECURE_REGISTRIES",
    "EDGEFLEET_REGISTRY",
)


def stack_dir(env: Mapping[str, str] = os.environ) -> Path:
    return Path(env.get(STACK_DIR_ENV) or DEFAULT_STACK_DIR)


def stack_env(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The env a running local stack recorded, or {} when there is none."""
    path = stack_dir(env) / "stack.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    recorded = state.get("env") if isinstance(state, dict) else None
    if not isinstance(recorded, dict):
        return {}
    return {k: str(v) for k, v in recorded.items() if k in _STACK_KEYS}


def apply_defaults(env: MutableMapping[str, str] = os.environ) -> None:
    """Fill unset variables from a running local stack (explicit settings always win)."""
    for key, value in stack_env(env).items():
        env.setdefault(key, value)
