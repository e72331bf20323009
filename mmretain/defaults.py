"""Defaults shared by `RetentionConfig`, `load()` and the command line, kept light to import."""

# A quarter of the prompt: one default budget everywhere.
DEFAULT_BUDGET = 0.25
# The policy name that picks the best one a model ships (see `config.best_shipped_policy`).
AUTO = "auto"
# The registered policies, named here so that help texts list them without importing torch;
# a test keeps this equal to the registry (`mmretain.policies.POLICIES`).
POLICY_NAMES = (
    "fastv",
    "full",
    "global",
    "h2o",
    "knorm",
    "random",
    "snapkv",
    "streaming",
    "tova",
    "trimkv",
    "visionzip",
)
