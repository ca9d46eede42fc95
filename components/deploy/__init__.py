"""The deploy phase: serve the approved model behind an OpenAI-compatible API on Ray Serve."""
