"""The finetune phase: instruction-tune a causal or seq2seq model (LoRA, prompt tuning, IA3, selective, full)."""
