"""Local training: the shared step loop, the text and image trainers, DP-SGD and InfoNCE."""
