"""Training: trajectory synthesis, stage-0 vision pre-training, warm-start SFT (and RL)."""
