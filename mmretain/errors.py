"""Typed errors: every user-facing failure says what was wrong and how to fix it."""

from __future__ import annotations


class MMRetainError(Exception):
    """Base class of every error mmretain raises on purpose."""


class UnsupportedModelError(MMRetainError, TypeError):
    """The model is not one of the families mmretain has an adapter for."""


class UnknownPolicyError(MMRetainError, KeyError):
    """A policy name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RetentionStateError(MMRetainError, RuntimeError):
    """A cache or run used outside the context that makes it valid."""


class ConfigError(MMRetainError, ValueError):
    """A `RetentionConfig` field of the wrong type or out of range."""


class GatesMismatchError(MMRetainError, ValueError):
    """Retention gates whose shape (hidden size, layers, KV heads) or variant does not fit."""


class GatesNotFoundError(MMRetainError, FileNotFoundError):
    """A gated policy found no retention gates to load."""


class ModelLoadError(MMRetainError, OSError):
    """A checkpoint or processor that cannot be loaded."""


class MediaError(MMRetainError, ValueError):
    """An image or video that cannot be used as given."""


class MediaNotFoundError(MediaError):
    """A media path that does not name an existing file."""


class CorruptMediaError(MediaError):
    """A file that cannot be decoded as the media asked for: damaged, cut short, or another kind."""


class EmptyVideoError(MediaError):
    """A video container whose video stream holds no frame."""


class FrameSamplingError(MediaError):
    """A frame-sampling request that cannot select frames: bad rate, cap, range or indices."""


class BudgetWarning(UserWarning):
    """Protections that do not fit the KV budget and were lifted, in the documented order."""


class ConversationRestartWarning(UserWarning):
    """A chat conversation that does not extend the cached one: it is prefilled again whole."""


class MediaWarning(UserWarning):
    """Media was read only in part, for example a video cut short mid-stream."""


class UnknownTestbedModelError(MMRetainError, KeyError):
    """A test-bed model name that is not one of the shipped models."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SuiteArgumentError(MMRetainError, ValueError):
    """A test-bed sample that cannot be made: unknown suite or question, bad length or depth."""


class UnknownTaskError(MMRetainError, KeyError):
    """An evaluation task or suite name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DatasetNotFoundError(MMRetainError, FileNotFoundError):
    """An evaluation dataset found neither in the local directory given nor on the hub."""


class UnsafeMediaPathError(MediaError):
    """A dataset row naming a media file outside the folder it must come from."""


class DatasetFormatError(MMRetainError, ValueError):
    """An evaluation dataset whose files cannot be parsed."""


class VideosNotFoundError(MediaNotFoundError):
    """Video files an evaluation dataset refers to that are not where they were looked for."""


class RunMismatchError(MMRetainError, ValueError):
    """An output directory holding rows of a run made with other settings."""


class RunFailedError(MMRetainError, RuntimeError):
    """An evaluation whose first samples all failed: the run, not the samples, is at fault."""


class UsageError(MMRetainError, ValueError):
    """Command-line arguments that do not fit together."""


class GatesTrainingError(MMRetainError, ValueError):
    """Gate-training settings or inputs that cannot train: a bad option, batch or model mask."""


class OutputDirectoryError(MMRetainError, OSError):
    """An output directory that is a file, or that another run is writing now."""
