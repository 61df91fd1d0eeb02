"""The DER edge agent: a site supervisor, one actor per asset, and an outbound link to the headend.

Run it with `der-edge` (or `python -m edge`); `der-launcher` starts agents for a whole assets.yaml.
"""
