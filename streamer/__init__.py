"""Opening sources, decoding, sampling, keyframes and clip building. No models, no Redis."""
