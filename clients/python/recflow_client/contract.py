"""The wire contract of recflow's Triton endpoints: tensor names and a default server's settings.

Plain strings and numbers that import nothing. The client is the side that must install without
recflow, so the contract lives here; ``recflow.vocabulary`` (which the Triton stubs import)
re-exports the tensor names and ``recflow.config.ServingConfig`` takes its defaults from here.
"""

# Requests carry raw ids: ranking answers a score per (user, item) pair, the top-k endpoints
# (retrieval, recommend, similar) the best item ids with their scores, per row.
USER_INPUT, ITEM_INPUT = "user_id", "item_id"
K_INPUT, EXCLUDE_SEEN_INPUT = "k", "exclude_seen"
# retrieval and recommend: the user's recent item ids, most recent last, one row per user
# (optional). Rows of one request are padded to one length with -1 (integer ids) or b"" (string
# ids). Each answer row counts the history ids the version does not know (HISTORY_UNKNOWN_OUTPUT).
HISTORY_INPUT, HISTORY_UNKNOWN_OUTPUT = "history", "history_unknown"
HISTORY_PADDING = -1
SCORE_OUTPUT = "score"
ITEM_IDS_OUTPUT, SCORES_OUTPUT = "item_ids", "scores"
RANKED_OUTPUTS = (ITEM_IDS_OUTPUT, SCORES_OUTPUT)

# The endpoints a publish writes, each the Triton model MODEL_NAME names for a model prefix
# (``recflow_recommend``): ranking; retrieval; recommend (retrieve, then order); similar.
RANKING, RETRIEVAL, RECOMMEND, SIMILAR = "ranking", "retrieval", "recommend", "similar"
MODEL_NAME = "{prefix}_{endpoint}"

# A server published and started with recflow's default settings.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT = 8001, 8000
DEFAULT_MODEL_PREFIX = "recflow"
DEFAULT_MAX_BATCH_SIZE = 1024
DEFAULT_MAX_HISTORY = 200
DEFAULT_TIMEOUT_S = 30.0
