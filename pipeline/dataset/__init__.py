"""What a finished run is as a dataset: the shards and their index, the dataset card, governance (consent and
safety facts), takedowns. It stands on the engine (the shard step's tasks run through it) and on the stages'
outputs; the applications (report, exports, training, generator) stand on it."""
