"""mmretain: one KV-cache memory budget for vision-language models.

Every cached entry (layer, KV head, position) gets a retention score; one ranking across
layers, heads and modalities decides which entries stay.
"""

from . import attention as _attention  # registers the attention implementation
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

del _attention

__all__ = [
    "POLICIES",
    "Answer",
    "Budget",
    "Generation",
    "MMRetainError",
    "Modality",
    "RetainedVLM",
    "RetentionCache",
    "RetentionConfig",
    "RetentionPolicy",
    "RetentionRun",
    "RetentionStats",
    "Session",
    "TokenTags",
    "UnknownPolicyError",
    "UnsupportedModelError",
    "VideoProgress",
    "allocate",
    "load",
    "retain",
    "stream_video",
]
__version__ = "0.1.0"
