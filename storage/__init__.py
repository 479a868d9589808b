"""Files and caches, the bottom layer every package may import (it imports none of them).

* `storage.files`: `write_atomic` (the one way checkpoints, metrics, data archives, embeddings
  and reports are written) and `umask`;
* `storage.cache`: `cache_root`, dvae-q's per-user cache folder.
"""
