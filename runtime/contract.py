"""The contract between `recblr.export` and `recblr.runtime`: the ONNX cell's interface.

The runtime knows a cell only through this file's names; export writes exactly these.
Nothing here imports torch.

Graph inputs
  item      int64   [B]      internal item index (1..n_items; 0 is padding, never fed)
  state     float32 [B, S]   packed recurrent state; all zeros = empty history
  exclude   int64   [B, X]   internal indices never to recommend, -1 = no entry (X >= 1)
Graph outputs
  next_state  float32 [B, S]
  top_items   int64   [B, K]  internal indices, best first; never 0 (padding)
  top_scores  float32 [B, K]

State layout (S = n_layers * conv_width * inner_dim): for each layer in order, the last
conv_width - 1 conv inputs (oldest first, each inner_dim floats) then h (inner_dim floats).
"""

from __future__ import annotations

FORMAT_NAME = "recblr-cell"
FORMAT_VERSION = 1

INPUT_ITEM = "item"
INPUT_STATE = "state"
INPUT_EXCLUDE = "exclude"
OUTPUT_NEXT_STATE = "next_state"
OUTPUT_TOP_ITEMS = "top_items"
OUTPUT_TOP_SCORES = "top_scores"

# metadata_props keys; every value is a string (JSON where structured).
META_FORMAT = "recblr.format"  # == FORMAT_NAME
META_FORMAT_VERSION = "recblr.format_version"  # str(int)
META_CONFIG = "recblr.config"  # JSON object: the model config
META_STATE_SIZE = "recblr.state_size"  # str(int) S
META_TOP_K = "recblr.top_k"  # str(int) K
META_OPSET = "recblr.opset"  # str(int)
META_ITEMS = (
    "recblr.items"  # JSON list: items[i] = external id of internal index i; items[0] = padding
)
META_WEIGHTS_SHA256 = "recblr.weights_sha256"  # hex digest identifying the cell's weights
