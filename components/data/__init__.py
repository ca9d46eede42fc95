"""The data phases: a text corpus, a BPE tokenizer, instruction data and preference pairs; benchmark loaders."""
