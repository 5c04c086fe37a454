"""The integrated reference generator: PhotoMaker-style stacked-ID generation as a sanity check of the shards.

Heavy libraries (torch, diffusers) load inside the modules that need them; `run.run_generate` is the entry point.
"""
