"""Models layer: arms (named chat models), the batched local engine, the openai backend, the server.

`ArmPool` is the one object callers use. The engine is a scheduler (extes.models.scheduler) over a
model runner (extes.models.runner: the fast LLaMA runner or the transformers one); the types callers
see (Request, Event, Reply, EngineStats, the Backend Protocols) live in extes.models.types.
Heavy dependencies (torch, transformers, peft, openai) are imported lazily by the modules that need them.
"""

from extes.models.arms import Arm, GenerationSettings, arms_from_config, load_arms
from extes.models.pool import ArmPool
from extes.models.types import MAX_BATCH, Backend, EngineStats, Event, LocalBackend, Reply, Request

__all__ = ["Arm", "GenerationSettings", "load_arms", "arms_from_config", "ArmPool", "Reply", "Event", "Request",
           "EngineStats", "Backend", "LocalBackend", "MAX_BATCH"]
