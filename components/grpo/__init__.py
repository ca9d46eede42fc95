"""The grpo phase: group-relative RL with verifiable rewards (GRPO, Dr. GRPO, RLOO) on the instruction families."""
