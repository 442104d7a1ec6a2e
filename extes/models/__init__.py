"""Models layer: arms (named chat models), the batched local engine, the openai backend, the server.

Heavy dependencies (torch, transformers, peft, openai) are imported lazily by the modules that need them.
"""

from extes.models.arms import Arm, GenerationSettings, arms_from_config, load_arms
from extes.models.engine import Event, Reply
from extes.models.pool import ArmPool

__all__ = ["Arm", "GenerationSettings", "load_arms", "arms_from_config", "ArmPool", "Reply", "Event"]
