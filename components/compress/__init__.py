"""The compress phases: quantize, distill and prune a causal LM or a BERT classifier (quantize a T5 too)."""
