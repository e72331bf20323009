"""Defaults shared by `RetentionConfig`, `load()` and the command line, kept light to import."""

# The model every command runs when given none: the embedded test-bed model.
DEFAULT_MODEL = "testbed"
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
# The largest relevance-prior weight. Video entries score a quantile in [0, 1) plus the weight
# times a relevance in [0, 1], in float32: far above 1 the relevance already decides the
# ranking, and this bound keeps the policy's own order (to ~1e-4) among equally relevant
# entries, while huge weights overflow to inf and turn empty slots' scores into NaN.
MAX_PRIOR = 1000.0
