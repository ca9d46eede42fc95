"""The pretrain phase: pretrain a causal, masked (BERT) or seq2seq (T5) model from scratch with Ray Train."""
