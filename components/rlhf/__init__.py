"""The RLHF phases: a reward model on preference pairs, then alignment with PPO or DPO."""
