"""The base phase: bring in a pretrained Hugging Face checkpoint as the lifecycle's model."""
