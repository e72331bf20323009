"""mmretain: one KV-cache memory budget for vision-language models.

Every cached entry (layer, KV head, position) gets a retention score; one ranking across
layers, heads and modalities decides which entries stay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

# Public names and the module each lives in. They load on first use, so that the command
# line (and `mmretain --help`) starts without importing torch and transformers.
_EXPORTS = {
    "POLICIES": "policies",
    "Answer": "api",
    "Budget": "budget",
    "Generation": "session",
    "MMRetainError": "errors",
    "Modality": "tags",
    "RetainedVLM": "api",
    "RetentionCache": "cache",
    "RetentionConfig": "config",
    "RetentionPolicy": "policies",
    "RetentionRun": "engine",
    "RetentionStats": "cache",
    "Session": "session",
    "TokenTags": "tags",
    "UnknownPolicyError": "errors",
    "UnsupportedModelError": "errors",
    "VideoProgress": "streaming",
    "VideoPrompt": "adapters.base",
    "allocate": "budget",
    "load": "api",
    "retain": "engine",
    "stream_video": "streaming",
}

if TYPE_CHECKING:
    from .adapters.base import VideoPrompt
    from .api import Answer, RetainedVLM, load
    from .budget import Budget, allocate
    from .cache import RetentionCache, RetentionStats
    from .config import RetentionConfig
    from .engine import RetentionRun, retain
    from .errors import MMRetainError, UnknownPolicyError, UnsupportedModelError
    from .policies import POLICIES, RetentionPolicy
    from .session import Generation, Session
    from .streaming import VideoProgress, stream_video
    from .tags import Modality, TokenTags


# Subpackages a user reaches as attributes (`mmretain.testbed.model_path()`).
_SUBMODULES = ("gates", "media", "relevance", "testbed")

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"
