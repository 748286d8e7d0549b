"""The TPU-to-runtime converter: `python -m migration.convert -i SRC -o OUT` (see __main__).

`apis` says what is rewritten to what, `rewrite` rewrites one source with pasta, `report`
writes Huawei-compatible reports, `verify` runs the converted entry script.
"""
