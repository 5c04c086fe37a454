"""The review app (`python -m pipeline review`): a local web app where a curator checks what the pipeline
decided and corrects it, one key an answer.

`tables` reads the run's stage parts (column-pruned), `queue` ranks the photos and identities most likely
decided wrong into a cached, paged table, `pending` counts the decisions the run's tables do not show yet,
`apply` runs `decide --apply` in the background, `app` is the Flask app and `serve` starts it on loopback
with a token. Decisions are written only through `pipeline.decide.record` (the decisions log).
"""
