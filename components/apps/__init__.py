"""Applications on the deployed endpoint: RAG (a Ray Serve route), program-aided answers, ReAct, LangChain."""
