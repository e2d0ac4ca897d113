-- A: cluster. The cluster's live slave count.
return live_n(A[1], now_ms())
