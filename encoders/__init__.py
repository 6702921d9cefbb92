"""Model adapters: frames -> visual tokens -> language-model KV; question -> answer tokens.

One file per model family. `encoders.loading.load_adapter` is the only entry point the services use. Nothing is
imported here, so light modules (`encoders.options`, the frame describer's options) load without torch.
"""
