"""Training-ready exports of the shards: `python -m pipeline export --format webdataset|jsonl|multiid`.

One module per format (webdataset: tars; jsonl: InstantID / IP-Adapter-FaceID style lines with
files beside them; multiid: group photos with every face, each labelled person's mask and class word, and
reference pools); plan.py decides from per-shard done-markers what to (re)write, run.py drives one Ray task per
changed source shard. Outputs go to `<run>/exports/<format>/` unless `--dest`.
"""

FORMAT_NAMES = ("webdataset", "jsonl", "multiid")  # here, not from run.py: the CLI's parser must not import Ray
