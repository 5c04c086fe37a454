"""The engine above `stages/`: the stage registry, task planning and markers, the Ray driver, the shard step."""
