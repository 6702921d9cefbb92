"""Video memory: layout, serialization, the Redis + FAISS store, retrieval and assembly."""
