"""The classify phase: fine-tune a masked (BERT) encoder with a sequence or token classification head."""
